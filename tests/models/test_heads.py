"""Tests for the projection head (docs/method.md §6) against float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.models import ProjectionHead

BATCH, FEATURES, HIDDEN, OUT = 6, 80, 16, 8


def _key(seed):
  # "rbg" compiles much faster than threefry on CPU; the tests only check distributions.
  return jax.random.key(seed, impl="rbg")


def _features(seed=0):
  return np.random.default_rng(seed).normal(size=(BATCH, FEATURES)).astype(np.float32)


@pytest.mark.parametrize("kind,out_dim", [("mlp", OUT), ("linear", OUT), ("none", FEATURES),
                                          ("direct", 64), ("invclr", OUT)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shapes(kind, out_dim, dtype):
  head = ProjectionHead(kind=kind, hidden_dim=HIDDEN, output_dim=OUT, dtype=dtype)
  h = jnp.zeros((BATCH, FEATURES))
  out, _ = jax.eval_shape(lambda: head.init_with_output(_key(0), h, train=False))
  assert out.shape == (BATCH, out_dim) and out.dtype == jnp.float32


def test_identity_kinds_and_linear_without_bias():
  h = _features()
  for kind, want in [("none", h), ("direct", h[:, :64])]:
    head = ProjectionHead(kind=kind)
    out, variables = head.init_with_output(_key(0), h, train=True)
    np.testing.assert_array_equal(out, want)
    assert not variables  # no parameters, no statistics
  head = ProjectionHead(kind="linear", output_dim=OUT)
  out, variables = jax.jit(head.init_with_output, static_argnames="train")(_key(1), h, train=False)
  assert set(variables["params"]) == {"output"}
  assert set(variables["params"]["output"]) == {"kernel"}  # docs/method.md §6: no bias
  kernel = np.asarray(variables["params"]["output"]["kernel"], np.float64)
  np.testing.assert_allclose(out, h.astype(np.float64) @ kernel, rtol=1e-5, atol=1e-6)


def _mlp_reference(h, params, mean, var):
  """Linear → BN(mean, var; γ, β) → ReLU → Linear, float64."""
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  y = np.asarray(h, np.float64) @ p["hidden"]["kernel"] + p["hidden"]["bias"]
  y = (y - mean) / np.sqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
  return np.maximum(y, 0.0) @ p["output"]["kernel"] + p["output"]["bias"]


def test_mlp_batch_norm_train_and_eval():
  head = ProjectionHead(kind="mlp", hidden_dim=HIDDEN, output_dim=OUT)
  h = _features(1)
  variables = jax.jit(head.init, static_argnames="train")(_key(2), h, train=False)
  params = variables["params"]
  train_fn = jax.jit(lambda v, h: head.apply(v, h, train=True, mutable=["batch_stats"]))
  out, updates = train_fn(variables, h)
  pre_bn = (np.asarray(h, np.float64) @ np.asarray(params["hidden"]["kernel"], np.float64)
            + np.asarray(params["hidden"]["bias"], np.float64))
  batch_mean, batch_var = pre_bn.mean(axis=0), pre_bn.var(axis=0)
  # Train mode: normalised with the batch's own (biased) statistics.
  np.testing.assert_allclose(out, _mlp_reference(h, params, batch_mean, batch_var),
                             rtol=1e-4, atol=1e-5)
  # Running statistics: PyTorch momentum 0.1 from the initial (0, 1).
  stats = updates["batch_stats"]["bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * batch_var, rtol=1e-5, atol=1e-6)
  # Eval mode: the running statistics, whatever the batch (here a single other example).
  other = _features(2)[:1]
  got = head.apply({"params": params, **updates}, other, train=False)
  np.testing.assert_allclose(got, _mlp_reference(other, params, stats["mean"], stats["var"]),
                             rtol=1e-4, atol=1e-5)


def test_linear_layers_use_pytorch_default_init():
  fan_in, hidden = 256, 512
  head = ProjectionHead(kind="mlp", hidden_dim=hidden, output_dim=OUT)
  params = jax.jit(head.init, static_argnames="train")(
      _key(3), jnp.zeros((2, fan_in)), train=False)["params"]
  # docs/method.md §6: weight and bias ~ U(±1/sqrt(fan_in)), variance 1/(3·fan_in).
  for layer, layer_fan_in in [("hidden", fan_in), ("output", hidden)]:
    bound = 1 / math.sqrt(layer_fan_in)
    for name in ("kernel", "bias"):
      values = np.asarray(params[layer][name])
      assert np.max(np.abs(values)) <= bound, (layer, name)
  kernel = np.ravel(params["hidden"]["kernel"])  # 131,072 draws: variance known to ≈0.3 %
  np.testing.assert_allclose(kernel.var(), 1 / (3 * fan_in), rtol=0.03)
  assert np.max(np.abs(kernel)) > 0.99 / math.sqrt(fan_in)  # uniform fills the whole interval
  assert abs(kernel.mean()) < 4 * math.sqrt(1 / (3 * fan_in) / kernel.size)


def test_unknown_kind_and_too_narrow_direct_raise():
  h = jnp.zeros((2, 32))
  with pytest.raises(ValueError, match="kind='simclr'"):
    ProjectionHead(kind="simclr").init(_key(0), h, train=False)
  with pytest.raises(ValueError, match="first 64"):
    ProjectionHead(kind="direct").init(_key(0), h, train=False)


def test_invclr_head_matches_float64_reference_in_train_and_eval():
  """docs/method.md §18.2: Linear(D→D, no bias) → BN → ReLU → Linear(D→out, no bias) → BN without
  scale and offset; in train mode the output is batch-standardised per dimension."""
  head = ProjectionHead(kind="invclr", hidden_dim=HIDDEN, output_dim=OUT)
  h = _features(4)
  variables = jax.jit(head.init, static_argnames="train")(_key(4), h, train=False)
  params = variables["params"]
  assert set(params) == {"hidden", "bn", "output"}  # the final BN has no parameters
  assert params["hidden"]["kernel"].shape == (FEATURES, FEATURES)  # d → d, not hidden_dim
  assert "bias" not in params["hidden"] and "bias" not in params["output"]
  assert set(variables["batch_stats"]) == {"bn", "output_bn"}
  # Non-trivial affine parameters on the hidden BN, so that its placement matters.
  rng = np.random.default_rng(5)
  params = dict(params, bn={"scale": rng.uniform(0.5, 1.5, FEATURES).astype(np.float32),
                            "bias": rng.normal(size=FEATURES).astype(np.float32)})
  train_fn = jax.jit(lambda v, h: head.apply(v, h, train=True, mutable=["batch_stats"]))
  out, updates = train_fn({"params": params, "batch_stats": variables["batch_stats"]}, h)
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  y = np.asarray(h, np.float64) @ p["hidden"]["kernel"]
  y = (y - y.mean(0)) / np.sqrt(y.var(0) + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
  z = np.maximum(y, 0.0) @ p["output"]["kernel"]
  want = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.mean(out, axis=0), 0.0, atol=1e-5)
  # Eval mode: the final BN standardises with its running statistics (PyTorch momentum 0.1).
  stats = updates["batch_stats"]["output_bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * z.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * z.var(0), rtol=1e-4, atol=1e-6)
