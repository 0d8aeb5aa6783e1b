"""Tests for the coefficient encoder and learned prior networks (docs/method.md §3)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax.manifold import CoefficientEncoder, CoefficientPrior


# Test inputs come from numpy: each jax.random call with a new shape costs a CPU compile.
def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)

NUM_OPS, DIM, BATCH = 3, 8, 4
LOG_SCALE_PRIOR = np.log(0.01)


def _features(seed):
  return _normal(2 * seed, (BATCH, DIM)), _normal(2 * seed + 1, (BATCH, DIM))


ENCODER = CoefficientEncoder(NUM_OPS, hidden_dims=(16, 16, 8))
PRIOR = CoefficientPrior(NUM_OPS, hidden_dims=(16, 8, 8), warmup_steps=100)
# Jitted once: every test reuses the same shapes, so each network compiles a handful of times.
_encoder_init = jax.jit(ENCODER.init)
_encoder_apply = jax.jit(ENCODER.apply)
_prior_init = jax.jit(PRIOR.init)
_prior_apply = jax.jit(PRIOR.apply)


def _sum_outputs(outputs):
  return sum(jnp.sum(jnp.sin(o)) for o in outputs)


def test_encoder_inputs_are_stop_gradiented():
  enc = ENCODER
  z0, z1 = _features(0)
  params = _encoder_init(jax.random.PRNGKey(1), z0, z1)
  mu, log_scale = _encoder_apply(params, z0, z1)
  chex.assert_shape([mu, log_scale], (BATCH, NUM_OPS))
  assert mu.dtype == log_scale.dtype == jnp.float32
  grad_z = jax.jit(jax.grad(lambda a, b: _sum_outputs(enc.apply(params, a, b)), argnums=(0, 1)))(
      z0, z1)
  for g in grad_z:
    np.testing.assert_array_equal(g, 0.0)
  grad_params = jax.jit(jax.grad(lambda p: _sum_outputs(enc.apply(p, z0, z1))))(params)
  for leaf in jax.tree_util.tree_leaves(grad_params):
    assert np.any(np.asarray(leaf) != 0)


def test_encoder_clamps_and_shift_on_extreme_inputs():
  z0, z1 = _features(2)
  params = _encoder_init(jax.random.PRNGKey(3), z0, z1)
  for scale in (1e4, -1e4, 1e-6):
    mu, log_scale = _encoder_apply(params, scale * z0, scale * z1)
    assert np.all(np.asarray(mu) >= -5 + 0.05 - 1e-6) and np.all(np.asarray(mu) <= 5 + 0.05 + 1e-6)
    assert np.all(np.asarray(log_scale) <= 3 + LOG_SCALE_PRIOR + 1e-5)
    assert np.all(np.asarray(log_scale) >= -100 + LOG_SCALE_PRIOR - 1e-4)
  # Large inputs saturate at least some heads at the clamp values exactly.
  mu, log_scale = _encoder_apply(params, 1e4 * z0, 1e4 * z1)
  on_clamp = np.isclose(np.abs(np.asarray(mu) - 0.05), 5.0, rtol=0, atol=1e-5)
  assert on_clamp.any()


def test_encoder_matches_numpy_forward():
  # Independent float64 forward of docs/method.md §3 from the parameter values.
  z0, z1 = _features(4)
  params = _encoder_init(jax.random.PRNGKey(5), z0, z1)["params"]
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  h = np.concatenate([np.asarray(z0), np.asarray(z1)], -1).astype(np.float64)
  trunk = p["trunk"]
  for i in range(3):
    if i:
      h = np.where(h > 0, h, 0.01 * h)
    layer = trunk[f"Linear_{i}"]
    h = h @ layer["kernel"] + layer["bias"]
  s = h @ p["scale_head"]["kernel"] + p["scale_head"]["bias"]
  t = h @ p["shift_head"]["kernel"] + p["shift_head"]["bias"]
  mu, log_scale = _encoder_apply({"params": params}, z0, z1)
  np.testing.assert_allclose(mu, np.clip(t, -5, 5) + 0.05, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(log_scale, np.clip(s, -100, 3) + LOG_SCALE_PRIOR, rtol=1e-5, atol=1e-5)


def _prior_raw_heads(params, z0):
  """Learned (fully warmed-up) prior values from a numpy forward: (μ̃, log b̃)."""
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params["params"])
  h = np.asarray(z0, np.float64)
  for i in range(3):
    if i:
      h = np.where(h > 0, h, 0.01 * h)
    h = h @ p["trunk"][f"Linear_{i}"]["kernel"] + p["trunk"][f"Linear_{i}"]["bias"]
  s = h @ p["scale_head"]["kernel"] + p["scale_head"]["bias"]
  t = h @ p["shift_head"]["kernel"] + p["shift_head"]["bias"]
  return np.clip(t, -5, 5), np.minimum(s, 3) + LOG_SCALE_PRIOR


def test_prior_warmup_schedule():
  z0, _ = _features(6)
  params = _prior_init(jax.random.PRNGKey(7), z0, 0)
  mu_learned, log_scale_learned = _prior_raw_heads(params, z0)
  apply = _prior_apply  # jitted: `step` is traced
  mu0, log_scale0 = apply(params, z0, jnp.int32(0))
  np.testing.assert_array_equal(mu0, 0.0)  # docs/method.md §3: μ_p = 0 exactly at step 0
  np.testing.assert_allclose(log_scale0, LOG_SCALE_PRIOR, rtol=1e-6)
  for step in (100, 5000):
    mu, log_scale = apply(params, z0, jnp.int32(step))
    np.testing.assert_allclose(mu, mu_learned, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_scale, log_scale_learned, rtol=1e-5, atol=1e-5)
  # Halfway: log-space mix, and the hyperprior location enters with the sign of the learned one.
  mu, log_scale = apply(params, z0, jnp.int32(50))
  np.testing.assert_allclose(mu, 0.5 * mu_learned + 0.5 * 0.05 * np.sign(mu_learned),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(log_scale, 0.5 * log_scale_learned + 0.5 * LOG_SCALE_PRIOR, rtol=1e-5)


def test_prior_without_warmup_is_learned_from_step_zero():
  prior = CoefficientPrior(NUM_OPS, hidden_dims=(16, 8, 8), warmup_steps=0)
  z0, _ = _features(8)
  params = _prior_init(jax.random.PRNGKey(9), z0, 0)  # same parameter tree as PRIOR
  mu, log_scale = jax.jit(prior.apply)(params, z0, 0)
  mu_learned, log_scale_learned = _prior_raw_heads(params, z0)
  np.testing.assert_allclose(mu, mu_learned, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(log_scale, log_scale_learned, rtol=1e-5, atol=1e-5)


def test_prior_input_is_stop_gradiented():
  prior = PRIOR
  z0, _ = _features(10)
  params = _prior_init(jax.random.PRNGKey(11), z0, 0)
  grad_z = jax.jit(jax.grad(lambda z: _sum_outputs(prior.apply(params, z, 200))))(z0)
  np.testing.assert_array_equal(grad_z, 0.0)
  grad_params = jax.jit(jax.grad(lambda p: _sum_outputs(prior.apply(p, z0, 200))))(params)
  for leaf in jax.tree_util.tree_leaves(grad_params):
    assert np.any(np.asarray(leaf) != 0)


def test_full_size_shapes():
  enc = CoefficientEncoder(32)
  prior = CoefficientPrior(32)
  z = jax.ShapeDtypeStruct((512, 512), jnp.bfloat16)
  enc_vars = jax.eval_shape(enc.init, jax.random.PRNGKey(0), z, z)
  out = jax.eval_shape(enc.apply, enc_vars, z, z)
  chex.assert_shape(out, (512, 32))
  assert out[0].dtype == jnp.float32
  kernels = [x.shape for x in jax.tree_util.tree_leaves(enc_vars) if len(x.shape) == 2]
  assert sorted(kernels) == sorted([(1024, 2048), (2048, 2048), (2048, 512), (512, 32), (512, 32)])
  prior_vars = jax.eval_shape(prior.init, jax.random.PRNGKey(0), z, 0)
  kernels = [x.shape for x in jax.tree_util.tree_leaves(prior_vars) if len(x.shape) == 2]
  assert sorted(kernels) == sorted([(512, 2048), (2048, 1024), (1024, 512), (512, 32), (512, 32)])
