"""Tests for mclr_jax.losses against float64 numpy references written from docs/method.md §4."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mclr_jax import losses

# Jitted once per shape: one whole-program compile is far cheaper on CPU than eager op-by-op dispatch.
# The temperature stays a traced argument, as in the train step.
nt_xent = jax.jit(losses.nt_xent)
mse_info_nce = jax.jit(losses.mse_info_nce)
B, D = 6, 4  # one shape shared by the NT-Xent tests, so they share one compile


def _unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _nt_xent_reference(a, b, temperature):
  """Explicit loops over the 2B rows, num/den form of docs/method.md §4 (cosine mode), float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  batch = a.shape[0]
  u = np.concatenate([a, b])
  total = 0.0
  for i in range(2 * batch):
    positive = (i + batch) % (2 * batch)
    num = np.exp(u[i] @ u[positive] / temperature)
    den = sum(np.exp(u[i] @ u[j] / temperature) for j in range(2 * batch) if j != i)
    total += -np.log(num / den)
  return total / (2 * batch)


def _mse_info_nce_reference(a, b, temperature, negatives=None):
  """Explicit loops, docs/method.md §4 "mse mode": self term kept in the denominator, float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  batch = a.shape[0]
  u = np.concatenate([a, b])
  cands = u if negatives is None else np.concatenate([u, np.asarray(negatives, np.float64)])
  sim = lambda x, y: -np.mean((x - y) ** 2)
  total = 0.0
  for i in range(2 * batch):
    num = np.exp(sim(a[i % batch], b[i % batch]) / temperature)
    den = sum(np.exp(sim(u[i], v) / temperature) for v in cands)
    total += -np.log(num / den)
  return total / (2 * batch)


@pytest.mark.parametrize("temperature", [0.5, 0.1, 0.01])
def test_nt_xent_matches_numpy(temperature):
  # τ = 0.01 puts logits near 100, past float32's exp overflow (≈88.7): checks the logsumexp form.
  rng = np.random.default_rng(0)
  a, b = _unit_rows(rng, B, D), _unit_rows(rng, B, D)
  got = nt_xent(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), temperature)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, _nt_xent_reference(a, b, temperature), rtol=1e-4, atol=1e-5)


def test_nt_xent_invariant_to_joint_permutation():
  rng = np.random.default_rng(1)
  a, b = _unit_rows(rng, B, D), _unit_rows(rng, B, D)
  perm = rng.permutation(B)
  np.testing.assert_allclose(nt_xent(a[perm], b[perm], 0.5), nt_xent(a, b, 0.5),
                             rtol=1e-6)


def test_nt_xent_symmetric_in_views():
  rng = np.random.default_rng(2)
  a, b = _unit_rows(rng, B, D), _unit_rows(rng, B, D)
  np.testing.assert_allclose(nt_xent(b, a, 0.5), nt_xent(a, b, 0.5), rtol=1e-6)


def test_nt_xent_gradient_matches_finite_differences():
  rng = np.random.default_rng(3)
  a, b = _unit_rows(rng, B, D), _unit_rows(rng, B, D)
  grad = jax.jit(jax.grad(losses.nt_xent))(jnp.asarray(a, jnp.float32),
                                           jnp.asarray(b, jnp.float32), 0.5)
  h = 1e-6
  fd = np.zeros_like(a)
  for idx in np.ndindex(a.shape):
    step = np.zeros_like(a)
    step[idx] = h
    fd[idx] = (_nt_xent_reference(a + step, b, 0.5) - _nt_xent_reference(a - step, b, 0.5)) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-5)


class NtXentVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_under_jit(self):
    rng = np.random.default_rng(4)
    a, b = _unit_rows(rng, B, D), _unit_rows(rng, B, D)
    loss_fn = self.variant(functools.partial(losses.nt_xent, temperature=0.2))
    got = loss_fn(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(got, _nt_xent_reference(a, b, 0.2), rtol=1e-4)


class MseInfoNceTest(parameterized.TestCase):

  @parameterized.named_parameters(("no_negatives", False), ("with_negatives", True))
  def test_matches_numpy(self, with_negatives):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    negatives = rng.normal(size=(5, 8)) if with_negatives else None
    got = mse_info_nce(
        jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), 0.5,
        negatives=None if negatives is None else jnp.asarray(negatives, jnp.float32))
    want = _mse_info_nce_reference(a, b, 0.5, negatives)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    self.assertGreater(float(got), 0.0)

  def test_positive_even_for_identical_views(self):
    # a = b: every numerator is e^0 and the self term adds another e^0, so loss ≥ log 2 > 0.
    rng = np.random.default_rng(6)
    a = jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)
    loss = mse_info_nce(a, a, 0.5)
    self.assertGreaterEqual(float(loss), np.log(2.0) - 1e-6)
    np.testing.assert_allclose(loss, _mse_info_nce_reference(a, a, 0.5), rtol=1e-5)

  def test_rejects_mismatched_negatives(self):
    a = jnp.zeros((4, 8))
    with self.assertRaisesRegex(ValueError, "negatives"):
      losses.mse_info_nce(a, a, 0.5, negatives=jnp.zeros((4, 7)))


def test_transport_mse_value_and_gradients():
  rng = np.random.default_rng(7)
  z_hat = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  np.testing.assert_allclose(losses.transport_mse(z_hat, z),
                             np.mean((np.asarray(z_hat, np.float64) - np.asarray(z)) ** 2),
                             rtol=1e-6)
  g_hat, g_target = jax.grad(losses.transport_mse, argnums=(0, 1))(z_hat, z)
  np.testing.assert_allclose(g_hat, 2.0 * (z_hat - z) / z.size, rtol=1e-5)
  np.testing.assert_array_equal(g_target, np.zeros_like(z))


def test_location_l2():
  rng = np.random.default_rng(8)
  mu = rng.normal(size=(6, 4))
  np.testing.assert_allclose(losses.location_l2(jnp.asarray(mu, jnp.float32)),
                             np.mean(np.sum(mu ** 2, axis=1)), rtol=1e-6)


def test_l2_normalize_unit_norm_and_safe_at_zero():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(4, 6))
  np.testing.assert_allclose(losses.l2_normalize(jnp.asarray(x, jnp.float32)),
                             x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-5)
  zero = jnp.zeros((2, 3))
  np.testing.assert_array_equal(losses.l2_normalize(zero), np.zeros((2, 3)))
  grad = jax.grad(lambda v: jnp.sum(losses.l2_normalize(v)))(zero)
  assert np.all(np.isfinite(grad))
