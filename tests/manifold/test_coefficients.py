"""Laplace sampling, the straight-through soft threshold and the Laplace KL (docs/method.md §3)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from mclr_jax.manifold import (laplace_kl, laplace_noise, laplace_sample, sample_coefficients)


# Test inputs come from numpy: each jax.random call with a new shape costs a CPU compile.
def _uniform(seed, shape, low, high):
  return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), jnp.float32)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_laplace_noise_moments_and_tails():
  # Laplace(0, b): mean 0, E|ε| = b, var = 2b², P(|ε| > t) = exp(−t/b).
  n, b = 200_000, 0.2
  u = _uniform(0, (n,), -0.5, 0.5)
  eps = np.asarray(laplace_noise(u, jnp.full((n,), np.log(b))), np.float64)
  se = np.sqrt(2 * b ** 2 / n)  # standard error of the mean
  assert abs(eps.mean()) < 4 * se
  np.testing.assert_allclose(np.abs(eps).mean(), b, rtol=4 * np.sqrt(1.0 / n))
  np.testing.assert_allclose(eps.var(), 2 * b ** 2, rtol=4 * np.sqrt(5.0 / n))
  for t in (0.5 * b, 2 * b, 5 * b):
    p = np.exp(-t / b)
    np.testing.assert_allclose(np.mean(np.abs(eps) > t), p, atol=4 * np.sqrt(p * (1 - p) / n))
  # The log-argument floor 1e-6 bounds the noise (docs/method.md §15.4).
  assert np.abs(eps).max() <= -np.log(1e-6) * b * (1 + 1e-6)


def test_sample_coefficients_shapes_and_location():
  mu = jnp.array([[0.5, -2.0, 0.0]])
  log_scale = jnp.log(jnp.array([[0.1, 0.01, 0.2]]))
  c = sample_coefficients(jax.random.PRNGKey(1), mu, log_scale, num_samples=40_000)
  chex.assert_shape(c, (40_000, 1, 3))
  # Sample median of a Laplace is μ; its standard error is b/√n.
  np.testing.assert_allclose(np.median(np.asarray(c), axis=0), mu,
                             atol=4 * 0.2 / np.sqrt(40_000))
  chex.assert_shape(sample_coefficients(jax.random.PRNGKey(1), mu, log_scale), (1, 3))


def test_threshold_zeroes_small_noise_and_shrinks_the_rest():
  lam = 0.01
  mu = np.array([0.3, -0.2, 0.05, 1.0], np.float32)
  log_scale = np.log(np.full(4, 0.01, np.float32))
  u = _uniform(2, (1000, 4), -0.5, 0.5)
  eps = np.asarray(laplace_noise(u, log_scale), np.float64)
  c = np.asarray(laplace_sample(u, mu, log_scale, threshold=lam), np.float64)
  small = np.abs(eps) <= lam
  assert 0.3 < small.mean() < 0.9  # both cases occur (P(|ε| ≤ b) = 1 − 1/e)
  np.testing.assert_array_equal(c[small], 0.0)
  expected = (mu + np.sign(eps) * (np.abs(eps) - lam))[~small]
  np.testing.assert_allclose(c[~small], expected, rtol=1e-6, atol=1e-7)


def test_zero_threshold_is_the_dense_sample():
  u = _uniform(3, (5, 4), -0.5, 0.5)
  mu, log_scale = jnp.full((4,), 0.1), jnp.full((4,), -3.0)
  np.testing.assert_array_equal(laplace_sample(u, mu, log_scale, 0.0),
                                mu + laplace_noise(u, log_scale))


def test_straight_through_gradient_equals_dense_gradient():
  u = _uniform(106, (3, 6, 5), -0.5, 0.5)  # (J, B, M)
  mu = _normal(109, (6, 5))
  log_scale = jnp.full((6, 5), np.log(0.02))
  w = _normal(110, (3, 6, 5))

  def loss(params, threshold):
    c = laplace_sample(u, params[0], params[1], threshold)
    return jnp.sum(w * c ** 2)

  def dense_loss(params, c_value):
    # Same loss, linearised at the thresholded value: d/dc of Σ w c² at c_thr, chained through the
    # dense sample μ + ε (what straight-through means).
    c_dense = params[0] + laplace_noise(u, params[1])
    return jnp.sum(2 * w * c_value * c_dense)

  params = (mu, log_scale)
  c_thr = laplace_sample(u, mu, log_scale, 0.015)
  assert np.mean(np.asarray(c_thr) == 0) > 0.1  # the threshold is active on many entries
  grads = jax.jit(jax.grad(loss), static_argnums=1)(params, 0.015)
  expected = jax.jit(jax.grad(dense_loss))(params, c_thr)
  chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-6)


def test_straight_through_linear_loss_gradient_equals_dense():
  # For a linear loss Σ w·c the straight-through gradient is exactly that of Σ w·(μ + ε), also on
  # zeroed entries (a plain jnp.where threshold would give them zero gradient).
  u = _uniform(8, (6, 5), -0.5, 0.5)
  w = _normal(9, (6, 5))
  params = (jnp.zeros((6, 5)), jnp.full((6, 5), np.log(0.02)))
  thresholded = lambda p: jnp.sum(w * laplace_sample(u, p[0], p[1], 0.015))
  dense = lambda p: jnp.sum(w * (p[0] + laplace_noise(u, p[1])))
  assert np.any(np.asarray(laplace_sample(u, *params, 0.015)) == 0)
  grads = jax.jit(jax.grad(thresholded))(params)
  chex.assert_trees_all_close(grads, jax.jit(jax.grad(dense))(params), rtol=1e-6)
  assert np.all(np.asarray(grads[0]) != 0)


def _kl_monte_carlo(mu_q, b_q, mu_p, b_p, n, seed):
  rng = np.random.default_rng(seed)
  x = rng.laplace(mu_q, b_q, size=(n,) + np.shape(mu_q))
  log_q = -np.log(2 * b_q) - np.abs(x - mu_q) / b_q
  log_p = -np.log(2 * b_p) - np.abs(x - mu_p) / b_p
  diff = log_q - log_p
  return diff.mean(0), diff.std(0) / np.sqrt(n)


def test_kl_matches_monte_carlo():
  mu_q = np.array([0.05, 0.3, -0.1, 0.0])
  b_q = np.array([0.01, 0.1, 0.2, 0.05])
  mu_p = np.array([0.0, 0.1, 0.2, 0.0])
  b_p = np.array([0.01, 0.3, 0.05, 0.05])
  mc, se = _kl_monte_carlo(mu_q, b_q, mu_p, b_p, 400_000, 5)
  per_coeff = np.asarray(jax.vmap(laplace_kl, in_axes=(0, 0, 0, 0))(
      *[jnp.asarray(x, jnp.float32)[:, None] for x in (mu_q, np.log(b_q), mu_p, np.log(b_p))]))
  assert np.all(np.abs(per_coeff - mc) <= 4 * se + 1e-6), (per_coeff, mc, se)
  total = laplace_kl(*[jnp.asarray(x, jnp.float32) for x in (mu_q, np.log(b_q), mu_p, np.log(b_p))])
  chex.assert_shape(total, ())
  np.testing.assert_allclose(total, per_coeff.sum(), rtol=1e-5)


def test_kl_zero_for_identical_and_non_negative():
  mu_q = _uniform(107, (64, 8), -5.0, 5.0)
  log_q = _uniform(108, (64, 8), -8.0, -1.5)
  np.testing.assert_allclose(laplace_kl(mu_q, log_q, mu_q, log_q), 0.0, atol=1e-5)
  mu_p = mu_q + 0.1 * _normal(111, (64, 8))
  log_p = log_q + _normal(112, (64, 8))
  kl = np.asarray(laplace_kl(mu_q, log_q, mu_p, log_p))
  chex.assert_shape(kl, (64,))
  assert np.all(kl >= -1e-5)


def test_kl_finite_at_extreme_clamped_scales():
  # log b_q at its clamp −100 + log 0.01 (§3.1) and μ_q = μ_p: the naive Δ/b_q = 0·inf is NaN.
  low = -100 + np.log(0.01)
  kl = laplace_kl(jnp.zeros(3), jnp.full(3, low), jnp.zeros(3), jnp.full(3, np.log(0.01)))
  chex.assert_tree_all_finite(kl)
  grads = jax.grad(lambda m: laplace_kl(m, jnp.full(3, low), jnp.zeros(3), jnp.zeros(3)))(
      jnp.full(3, 0.5))
  chex.assert_tree_all_finite(grads)


class LaplaceSampleVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.0, 0.01)
  def test_laplace_sample_same_under_jit(self, threshold):
    u = _uniform(7, (2, 3, 4), -0.5, 0.5)
    mu = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    log_scale = jnp.full((3, 4), np.log(0.02))
    fn = self.variant(laplace_sample, static_argnames="threshold")
    c = np.asarray(fn(u, mu, log_scale, threshold=threshold), np.float64)
    # Independent float64 numpy evaluation of docs/method.md §3.
    un, mun, bn = np.asarray(u, np.float64), np.asarray(mu, np.float64), 0.02
    eps = -bn * np.sign(un) * np.log(np.maximum(1 - 2 * np.abs(un), 1e-6))
    ref = np.where(np.abs(eps) <= threshold, 0.0, mun + np.sign(eps) * (np.abs(eps) - threshold))
    np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-6)
