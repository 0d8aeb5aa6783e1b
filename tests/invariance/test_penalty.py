"""Gradient penalty (docs/method.md §11) against explicit float64 Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.data import spirograph
from mclr_jax.invariance import penalty as gp

B, P, D, L = 4, 3, 5, 6
pytestmark = pytest.mark.usefixtures("float64")

# One compiled program per test instead of one per primitive (eager dispatch is slow on CPU).
exact = jax.jit(gp.exact_penalty, static_argnums=(0, 3))


def init_mlp(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"w1": jax.random.normal(k1, (P, 8)), "b1": jax.random.normal(k2, (8,)),
          "w2": jax.random.normal(k3, (8, D)) / 3, "c": jnp.ones((D,))}


def mlp(weights, alpha):
  return jnp.tanh(alpha @ weights["w1"] + weights["b1"]) @ weights["w2"] + weights["c"]


def data(key):
  k1, k2 = jax.random.split(key)
  return jax.random.uniform(k1, (B, P)), jax.random.uniform(k2, (L, B, P))


def explicit_penalty(fn, alpha, alpha_prime, normalize):
  """mean_{l,i} ‖J_i (α′_{l,i} − α_i)‖², J_i the diagonal blocks of the full-batch jacfwd."""
  def r(a):
    h = fn(a)
    return h / jnp.linalg.norm(h, axis=-1, keepdims=True) if normalize else h
  full = np.asarray(jax.jit(jax.jacfwd(r))(alpha))  # (B, D, B, P)
  jac = np.stack([full[i, :, i, :] for i in range(alpha.shape[0])])  # (B, D, P)
  moved = np.einsum("bdp,lbp->lbd", jac, np.asarray(alpha_prime - alpha))
  return np.mean(np.sum(moved ** 2, -1))


@pytest.mark.parametrize("normalize", [True, False])
def test_exact_penalty_matches_jacfwd(normalize):
  weights = init_mlp(jax.random.key(0))
  alpha, alpha_prime = data(jax.random.key(1))
  fn = lambda a: mlp(weights, a)
  got = exact(lambda a: (fn(a), None), alpha, alpha_prime, normalize)
  np.testing.assert_allclose(got, explicit_penalty(fn, alpha, alpha_prime, normalize), rtol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_monte_carlo_mean_is_unbiased(normalize):
  weights = init_mlp(jax.random.key(2))
  alpha, alpha_prime = data(jax.random.key(3))
  features_fn = lambda a: (mlp(weights, a), None)
  keys = jax.random.split(jax.random.key(4), 4000)
  samples = np.asarray(jax.jit(jax.vmap(
      lambda k: gp.gradient_penalty(features_fn, alpha, alpha_prime, k, clip=jnp.inf,
                                    normalize=normalize)[0]))(keys))
  expected = explicit_penalty(lambda a: mlp(weights, a), alpha, alpha_prime, normalize)
  standard_error = samples.std() / np.sqrt(len(samples))
  assert abs(samples.mean() - expected) < 4 * standard_error, (samples.mean(), expected)
  assert samples.std() > 0  # the probe is genuinely random


def test_normalize_flag_uses_projected_jacobian():
  # Linear encoder h = α A + c: J = A without normalisation and (I − ĥĥᵀ) A / ‖h‖ with it.
  a_mat = jax.random.normal(jax.random.key(5), (P, D))
  c = jnp.arange(1.0, D + 1)
  alpha, alpha_prime = data(jax.random.key(6))
  features_fn = lambda a: (a @ a_mat + c, None)
  h = np.asarray(alpha @ a_mat + c)
  disp = np.asarray(alpha_prime - alpha)
  moved = disp @ np.asarray(a_mat)  # (L, B, D)
  np.testing.assert_allclose(exact(features_fn, alpha, alpha_prime, normalize=False),
                             np.mean(np.sum(moved ** 2, -1)), rtol=1e-12)
  norm = np.linalg.norm(h, axis=-1, keepdims=True)
  unit = h / norm
  projected = (moved - np.sum(moved * unit, -1, keepdims=True) * unit) / norm
  np.testing.assert_allclose(exact(features_fn, alpha, alpha_prime, normalize=True),
                             np.mean(np.sum(projected ** 2, -1)), rtol=1e-12)


def test_clip_and_outputs():
  weights = init_mlp(jax.random.key(7))
  alpha, alpha_prime = data(jax.random.key(8))
  features_fn = lambda a: (mlp(weights, a), {"stats": jnp.sum(a)})
  key = jax.random.key(9)
  unclipped, h, aux = gp.gradient_penalty(features_fn, alpha, alpha_prime, key, clip=jnp.inf)
  assert unclipped > 0
  np.testing.assert_array_equal(h, mlp(weights, alpha))  # un-normalised features
  np.testing.assert_array_equal(aux["stats"], jnp.sum(alpha))
  low, _, _ = gp.gradient_penalty(features_fn, alpha, alpha_prime, key, clip=unclipped / 2)
  high, _, _ = gp.gradient_penalty(features_fn, alpha, alpha_prime, key, clip=2 * unclipped)
  assert low == unclipped / 2 and high == unclipped
  # docs/method.md §11: clipped on the batch mean, the penalty's gradient vanishes.
  clipped_grad = jax.grad(lambda w: gp.gradient_penalty(
      lambda a: (mlp(w, a), None), alpha, alpha_prime, key, clip=unclipped / 2)[0])(weights)
  assert all(np.all(g == 0) for g in jax.tree.leaves(clipped_grad))


def test_second_order_gradient_matches_finite_differences():
  weights = init_mlp(jax.random.key(10))
  alpha, alpha_prime = data(jax.random.key(11))
  key = jax.random.key(12)

  def objective(w):
    return gp.gradient_penalty(lambda a: (mlp(w, a), None), alpha, alpha_prime, key,
                               clip=jnp.inf)[0]

  grad = jax.jit(jax.grad(objective))(weights)
  leaves, treedef = jax.tree.flatten(weights)
  direction = jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape) for k, x in
      zip(jax.random.split(jax.random.key(13), len(leaves)), leaves)])
  step = 1e-5
  shifted = lambda s: jax.tree.map(lambda w, d: w + s * d, weights, direction)
  fd = (objective(shifted(step)) - objective(shifted(-step))) / (2 * step)
  analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
  assert np.isfinite(analytic)
  np.testing.assert_allclose(analytic, fd, rtol=1e-6)


@pytest.mark.slow  # the default tier checks the renderer path against brute force in tests/invariance/test_penalty_in_training.py
def test_penalty_through_spirograph_renderer():
  # The differentiable nuisance of Spirograph (§11.3): α goes straight into the renderer.
  params = spirograph.sample_params(jax.random.key(14), 2).astype(jnp.float64)
  theta, alpha = spirograph.split_params(params)
  alpha_prime = spirograph.sample_nuisance(jax.random.key(15), (3, 2)).astype(jnp.float64)
  w = jax.random.normal(jax.random.key(16), (32 * 32 * 3, 3)) / 32

  def encode(a):
    images = spirograph.render(spirograph.merge_params(theta, a))
    return jnp.tanh(images.reshape(images.shape[:-3] + (-1,)) @ w)

  got = exact(lambda a: (encode(a), None), alpha, alpha_prime)
  np.testing.assert_allclose(got, explicit_penalty(encode, alpha, alpha_prime, True), rtol=1e-10)
  assert got > 0


def test_bad_alpha_prime_shape_raises():
  alpha, alpha_prime = data(jax.random.key(17))
  with pytest.raises(ValueError, match="alpha_prime"):
    gp.gradient_penalty(lambda a: (a, None), alpha, alpha_prime[0], jax.random.key(0), clip=1.0)


def test_sample_rademacher_values():
  eps = np.asarray(gp.sample_rademacher(jax.random.key(18), (1000,)))
  assert set(np.unique(eps)) == {-1.0, 1.0} and abs(eps.mean()) < 4 / np.sqrt(1000)
