"""Tests for mclr_jax.manifold.expm against scipy float64 references and closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg

from mclr_jax.manifold import expm as expm_eager
from mclr_jax.manifold import expm_action as expm_action_eager
from mclr_jax.manifold.expm import TAYLOR_THETA, num_squarings

EPS32 = np.finfo(np.float32).eps
# Jitted once per shape: op-by-op dispatch of the loops is slower than compiling them.
expm = jax.jit(expm_eager, static_argnames="method")
expm_action = jax.jit(expm_action_eager, static_argnames=("num_terms", "num_steps"))
scipy_expm_jax = jax.jit(jax.scipy.linalg.expm)


def _random_matrices(seed, shape, norms):
  """Gaussian matrices rescaled to the given 1-norms, plus a negative shift so exp stays O(1)."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=shape)
  a /= np.abs(a).sum(-2).max(-1)[..., None, None]
  return a * np.asarray(norms)[:, None, None]


def _scipy_expm(a):
  return np.stack([scipy.linalg.expm(x) for x in a.reshape((-1,) + a.shape[-2:])]).reshape(a.shape)


@pytest.mark.parametrize("method", ["taylor", "pade"])
def test_expm_matches_scipy_float64(method):
  # Skew-symmetric part dominant (as for the rotation-like operators of docs/method.md §2.3) plus a
  # general part; norms from tiny to ~50 exercise 0 to ~5 squarings.
  a = _random_matrices(0, (5, 6, 6), [1e-3, 0.5, 2.0, 10.0, 50.0])
  skew = _random_matrices(1, (5, 6, 6), [1e-3, 0.5, 2.0, 10.0, 50.0])
  a = 0.1 * a + (skew - np.swapaxes(skew, -1, -2)) / 2
  ref = _scipy_expm(a)
  out = np.asarray(expm(jnp.asarray(a, jnp.float32), method=method), np.float64)
  rel = np.linalg.norm(out - ref, axis=(-2, -1)) / np.linalg.norm(ref, axis=(-2, -1))
  # Conditioning of exp in float32: error ~ eps·‖A‖ (about 3e-6 for ‖A‖ = 50).
  np.testing.assert_array_less(rel, 1e-4)


def test_num_squarings_uses_the_batch_maximum():
  a = _random_matrices(2, (3, 4, 4), [0.1, 1.0, 37.0])
  expected = int(np.ceil(np.log2(37.0 / TAYLOR_THETA)))
  assert int(num_squarings(jnp.asarray(a, jnp.float32))) == expected
  assert int(num_squarings(jnp.zeros((2, 4, 4)))) == 0


def test_expm_of_zero_is_identity():
  out = expm(jnp.zeros((2, 3, 5, 5), jnp.float32))
  np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(np.eye(5), (2, 3, 5, 5)))


def test_taylor_finite_and_accurate_where_pade_returns_nan():
  # A rotation generator with angle ω = 1e6: ‖A‖₁ = 1e6 > 5.37·2^17, more squarings than
  # jax.scipy.linalg.expm allows (16), but exp(A) is a rotation, perfectly representable.
  # Closed form reference: [[cos ω, −sin ω], [sin ω, cos ω]] (float64). Also embed a 6×6 random
  # skew-symmetric matrix of the same norm (scipy float64 reference).
  omega = 1e6
  rot = np.array([[0.0, -omega], [omega, 0.0]])
  rot_ref = np.array([[np.cos(omega), -np.sin(omega)], [np.sin(omega), np.cos(omega)]])
  s = np.random.default_rng(3).normal(size=(6, 6))
  s = s - s.T
  s *= omega / np.abs(s).sum(0).max()
  for a, ref in [(rot, rot_ref), (s, scipy.linalg.expm(s))]:
    a32 = jnp.asarray(a, jnp.float32)
    assert np.isnan(np.asarray(scipy_expm_jax(a32))).any()  # the motivation, docs/method.md §9
    out = np.asarray(expm(a32), np.float64)
    assert np.isfinite(out).all()
    # The float32 rounding of the angle/entries alone is eps·‖A‖₁ ≈ 0.12 radians; squaring
    # amplifies relative rounding by the same 2^s ≈ ‖A‖₁/θ. Allow 2·eps·‖A‖₁ (Frobenius, on a
    # result of Frobenius norm √n).
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 2 * EPS32 * omega, err


def test_expm_non_finite_input_gives_nan():
  a = np.zeros((2, 3, 3), np.float32)
  a[1, 0, 0] = np.nan
  assert np.isnan(np.asarray(expm(jnp.asarray(a)))).all()
  a[1, 0, 0] = np.inf
  assert np.isnan(np.asarray(expm(jnp.asarray(a)))).all()


def test_expm_gradient_matches_finite_differences():
  # Norm ~12 needs 3 squarings, so the custom VJP's squaring phase is exercised.
  a = _random_matrices(4, (2, 4, 4), [12.0, 0.3])
  w = np.random.default_rng(5).normal(size=a.shape)
  direction = np.random.default_rng(6).normal(size=a.shape)
  with jax.enable_x64(True):
    loss = jax.jit(lambda x: jnp.sum(jnp.asarray(w) * expm(x)))
    grad = np.asarray(jax.grad(loss)(jnp.asarray(a)))
    h = 1e-6
    fd = (loss(jnp.asarray(a + h * direction)) - loss(jnp.asarray(a - h * direction))) / (2 * h)
    # Independent: derivative of the exact exponential by scipy's Fréchet derivative.
    frechet = sum(np.sum(w[i] * scipy.linalg.expm_frechet(a[i], direction[i], compute_expm=False))
                  for i in range(2))
  np.testing.assert_allclose(np.sum(grad * direction), float(fd), rtol=1e-6)
  np.testing.assert_allclose(np.sum(grad * direction), frechet, rtol=1e-6)


def test_expm_gradient_float32_matches_the_float64_frechet_derivative():
  """In float32, up to ‖A‖₁ = 100 (entries of exp(A) near 1e25), the VJP of Σ exp(A)² is finite
  and equals L(Aᵀ, 2 exp(A)), scipy's float64 Fréchet derivative, to 1e-4 of its largest entry."""
  a = _random_matrices(7, (3, 4, 4), [0.0, 3.0, 100.0])
  grad = jax.jit(jax.grad(lambda x: jnp.sum(expm_eager(x) ** 2)))(jnp.asarray(a, jnp.float32))
  chex.assert_tree_all_finite(grad)
  for got, x in zip(np.asarray(grad, np.float64), a):
    want = scipy.linalg.expm_frechet(x.T, 2 * scipy.linalg.expm(x), compute_expm=False)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (np.abs(got - want).max(),
                                                                   np.abs(want).max())


def test_expm_rejects_unknown_method():
  with pytest.raises(ValueError, match="method"):
    expm(jnp.zeros((2, 2)), method="eig")


@pytest.mark.parametrize("num_steps", [None, 3])
def test_expm_action_matches_scipy(num_steps):
  rng = np.random.default_rng(8)
  a = _random_matrices(9, (3, 5, 5), [0.2, 4.0, 25.0])
  v = rng.normal(size=(3, 5))
  ref = np.stack([scipy.sparse.linalg.expm_multiply(a[i], v[i]) for i in range(3)])
  with jax.enable_x64(True):
    # With a fixed small num_steps the 16-term Taylor per step is accurate only while
    # ‖A‖/num_steps stays small; use the norm-derived steps for the largest matrix.
    out = np.asarray(expm_action(jnp.asarray(a), jnp.asarray(v), num_steps=num_steps))
  if num_steps is None:
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())
  else:
    # ‖A‖/3 ≤ 1.4 for the first two: truncation error below 1e-9 relative.
    np.testing.assert_allclose(out[:2], ref[:2], rtol=1e-9, atol=1e-9 * np.abs(ref[:2]).max())


def test_expm_action_broadcasts_like_best_of_j():
  # a (J, B, K, n, n) with v (B, K, n), as used by best-of-J selection.
  a = _random_matrices(10, (2 * 3 * 2, 4, 4), np.linspace(0.1, 6.0, 12)).reshape(2, 3, 2, 4, 4)
  v = np.random.default_rng(11).normal(size=(3, 2, 4))
  out = np.asarray(expm_action(jnp.asarray(a, jnp.float32), jnp.asarray(v, jnp.float32)))
  chex.assert_shape(out, (2, 3, 2, 4))
  ref = np.einsum("jbkmn,bkn->jbkm", _scipy_expm(a), v)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_expm_action_with_bf16_matrices_keeps_float32_vectors():
  # bf16 A halves the memory the action reads; the vectors and sums stay float32, so the error is
  # that of rounding A's entries (relative 2^-9 ≈ 2e-3, amplified by at most ‖A‖ for the exp).
  a = _random_matrices(12, (4, 8, 8), [0.3, 1.0, 3.0, 6.0])
  a = (a - np.swapaxes(a, -1, -2)) / 2  # rotation-like, as the stable-init generators
  v = np.random.default_rng(13).normal(size=(4, 8))
  out = expm_action(jnp.asarray(a, jnp.bfloat16), jnp.asarray(v, jnp.float32))
  assert out.dtype == jnp.float32
  ref = np.einsum("bmn,bn->bm", _scipy_expm(a), v)
  rel = np.linalg.norm(np.asarray(out, np.float64) - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
  norms = np.abs(a).sum(-2).max(-1)
  np.testing.assert_array_less(rel, 2 ** -8 * (1 + norms))
  # ...and not float32-accurate (~1e-7): the bf16 path really is in use.
  assert rel.max() > 1e-5
