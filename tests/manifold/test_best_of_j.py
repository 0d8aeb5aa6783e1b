"""Tests for best-of-J coefficient selection (docs/method.md §3 "Best-of-J")."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mclr_jax.manifold import init_operators, select_best_of_j


# Test inputs come from numpy: each jax.random call with a new shape costs a CPU compile.
def _uniform(seed, shape, low, high):
  return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), jnp.float32)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)

NUM_SAMPLES, BATCH, NUM_OPS, DIM, BLOCK = 6, 5, 4, 16, 8


def _reference_errors(psi, u, mu, log_scale, z0, z1, threshold, l1_penalty):
  """float64 numpy/scipy transport error of every (j, b), from docs/method.md §3 directly."""
  psi, u, mu, z0, z1 = (np.asarray(x, np.float64) for x in (psi, u, mu, z0, z1))
  b = np.exp(np.asarray(log_scale, np.float64))
  eps = -b * np.sign(u) * np.log(np.maximum(1 - 2 * np.abs(u), 1e-6))
  c = np.where(np.abs(eps) <= threshold, 0.0, mu + np.sign(eps) * (np.abs(eps) - threshold))
  err = np.zeros(u.shape[:2])
  for j in range(u.shape[0]):
    for i in range(u.shape[1]):
      z_hat = np.concatenate([
          scipy.linalg.expm(np.tensordot(c[j, i], psi[:, k], axes=1))
          @ z0[i, BLOCK * k:BLOCK * (k + 1)] for k in range(psi.shape[1])])
      err[j, i] = np.mean((z_hat - z1[i]) ** 2) + l1_penalty * np.abs(c[j, i]).sum()
  return err


def _problem(seed):
  psi = jax.jit(init_operators, static_argnums=(1, 2, 3))(jax.random.PRNGKey(seed), NUM_OPS, DIM,
                                                          BLOCK)
  mu = _uniform(10 * seed + 1, (BATCH, NUM_OPS), -1.0, 1.0)
  log_scale = jnp.log(_uniform(10 * seed + 2, (BATCH, NUM_OPS), 0.05, 0.2))
  u = _uniform(10 * seed + 3, (NUM_SAMPLES, BATCH, NUM_OPS), -0.5, 0.5)
  z0 = jax.nn.relu(_normal(10 * seed + 4, (BATCH, DIM)))
  # z1: z0 moved by a true transformation, so one sample can be clearly best.
  c_true = mu + 0.1 * _normal(10 * seed + 5, (BATCH, NUM_OPS))
  z1 = np.stack([np.concatenate([
      scipy.linalg.expm(np.tensordot(np.asarray(c_true[i], np.float64),
                                     np.asarray(psi[:, k], np.float64), axes=1))
      @ np.asarray(z0[i, BLOCK * k:BLOCK * (k + 1)], np.float64) for k in range(DIM // BLOCK)])
      for i in range(BATCH)])
  return psi, u, mu, log_scale, z0, jnp.asarray(z1, jnp.float32)


@pytest.mark.parametrize("method, threshold, l1_penalty", [
    ("action", 0.0, 0.0), ("action", 0.05, 0.0), ("taylor", 0.05, 0.01), ("pade", 0.0, 0.0)])
def test_best_of_j_picks_the_smallest_error(method, threshold, l1_penalty):
  psi, u, mu, log_scale, z0, z1 = _problem(0)
  select = jax.jit(select_best_of_j, static_argnames="method")
  best, index = select(psi, u, mu, log_scale, z0, z1, threshold, l1_penalty, method=method)
  chex.assert_shape(best, (BATCH, NUM_OPS))
  chex.assert_shape(index, (BATCH,))
  err = _reference_errors(psi, u, mu, log_scale, z0, z1, threshold, l1_penalty)
  np.testing.assert_array_equal(np.asarray(index), np.argmin(err, axis=0))
  np.testing.assert_array_equal(np.asarray(best), np.asarray(u)[np.asarray(index), np.arange(BATCH)])
  # The test is only meaningful if the choice is not trivially constant.
  assert len(set(np.asarray(index).tolist())) > 1


def test_best_of_j_blocks_gradients():
  psi, u, mu, log_scale, z0, z1 = _problem(1)

  def loss(psi, mu, log_scale, z0, z1):
    best, _ = select_best_of_j(psi, u, mu, log_scale, z0, z1, 0.0)
    return jnp.sum(best * mu), best  # only the explicit μ factor may carry gradient

  grads, best = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
      psi, mu, log_scale, z0, z1)
  np.testing.assert_array_equal(grads[1], best)
  for g in (grads[0], grads[2], grads[3], grads[4]):
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("seed", [0, 2])
def test_bf16_selection_agrees_wherever_the_errors_are_separated(seed):
  # bf16 generators round A's entries (relative 2^-9), so the selection may only differ between
  # candidates whose float64 errors are within that rounding of each other.
  psi, u, mu, log_scale, z0, z1 = _problem(seed)
  select = jax.jit(select_best_of_j, static_argnames=("method", "compute_dtype"))
  best, index = select(psi, u, mu, log_scale, z0, z1, 0.0, method="action",
                       compute_dtype=jnp.bfloat16)
  chex.assert_shape(best, (BATCH, NUM_OPS))
  assert best.dtype == u.dtype
  err = _reference_errors(psi, u, mu, log_scale, z0, z1, 0.0, 0.0)
  ordered = np.sort(err, axis=0)
  separated = ordered[1] > 1.1 * ordered[0] + 1e-3 * np.mean(np.square(np.asarray(z1)))
  assert separated.sum() >= 3  # enough clear-cut examples for the check to mean something
  np.testing.assert_array_equal(np.asarray(index)[separated], np.argmin(err, axis=0)[separated])


def test_bf16_selection_needs_the_action_method():
  psi, u, mu, log_scale, z0, z1 = _problem(0)
  with pytest.raises(ValueError, match="action"):
    select_best_of_j(psi, u, mu, log_scale, z0, z1, 0.0, method="taylor",
                     compute_dtype=jnp.bfloat16)
