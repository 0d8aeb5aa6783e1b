"""Geometry probe and invariance diagnostics (docs/method.md §13, §14) against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.evaluate import geometry
from mclr_jax.evaluate import regression


def _rank_r_embedding(rng, n=200, d=12, r=4):
  """Centred (n, d) embedding with exactly r equal non-zero singular values."""
  u, _ = np.linalg.qr(rng.standard_normal((n, r)))
  u -= u.mean(axis=0)
  u, _ = np.linalg.qr(u)  # orthonormal columns, still orthogonal to the constant vector
  v, _ = np.linalg.qr(rng.standard_normal((d, r)))
  return 3.0 * u @ v.T


def test_equal_spectrum_rank_r():
  x = _rank_r_embedding(np.random.default_rng(0))
  s = geometry.singular_values(x)
  np.testing.assert_allclose(s[:4], 3.0, rtol=1e-10)
  # Numerically-zero singular values contribute 0·log 0 = 0 and 0 to λ sums.
  np.testing.assert_allclose(geometry.effective_rank(s), 4.0, rtol=1e-6)
  np.testing.assert_allclose(geometry.participation_ratio(s), 4.0, rtol=1e-10)
  assert geometry.rank_at(s, 1e-3) == 4
  summary = geometry.spectrum_summary(x)
  assert summary["rank@0.001"] == 4


def test_effective_rank_and_participation_closed_form():
  s = np.array([3.0, 2.0, 1.0])
  p = s / 6
  np.testing.assert_allclose(geometry.effective_rank(s), np.exp(-np.sum(p * np.log(p))))
  np.testing.assert_allclose(geometry.participation_ratio(s), 14.0**2 / 98.0)


@pytest.fixture
def null_projector():
  """G = orthogonal projector onto the complement of span(e_0..e_{k-1}) in R^D, per sample."""
  d, k, n = 6, 2, 3
  G = np.tile(np.diag([0.0] * k + [1.0] * (d - k)), (n, 1, 1))
  null = np.tile(np.eye(d)[:, :k], (n, 1, 1))
  rng = np.random.default_rng(1)
  complement = np.zeros((n, d, 3))
  complement[:, k:, :] = rng.standard_normal((n, d - k, 3))
  return jnp.asarray(G, jnp.float32), null, complement, d, k


def test_retention_closed_form(null_projector):
  G, null, complement, d, k = null_projector
  np.testing.assert_allclose(geometry.retention(G, jnp.asarray(null, jnp.float32)), 0.0, atol=1e-7)
  # ‖GU‖² = ‖U‖² and ‖G‖²_F = D − k along the complement, so ρ = D / (D − k).
  np.testing.assert_allclose(geometry.retention(G, jnp.asarray(complement, jnp.float32)),
                             d / (d - k), rtol=1e-6)


def test_relative_retention_is_one_and_zero(null_projector):
  G, null, complement, _, _ = null_projector
  np.testing.assert_allclose(geometry.relative_retention(G, jnp.asarray(null, jnp.float32)), 0.0,
                             atol=1e-7)
  np.testing.assert_allclose(
      geometry.relative_retention(G, jnp.asarray(complement, jnp.float32)), 1.0, rtol=1e-6)


def test_random_directions_have_unit_mean_retention():
  # E ρ over random directions is 1 for any G (the normalisation of §14.4): Monte Carlo.
  rng = np.random.default_rng(2)
  G = jnp.asarray(np.tile(rng.standard_normal((1, 4, 8)), (4000, 1, 1)), jnp.float32)
  u = geometry.random_directions(jax.random.PRNGKey(0), 4000, 8, 1)
  np.testing.assert_allclose(jnp.mean(geometry.retention(G, u)), 1.0, atol=0.05)


def test_principal_angles():
  rng = np.random.default_rng(3)
  a = rng.standard_normal((5, 3))
  mix = rng.standard_normal((3, 3))
  np.testing.assert_allclose(geometry.principal_angles(a, a @ mix), 0.0, atol=1e-7)
  e = np.eye(4)
  np.testing.assert_allclose(geometry.principal_angles(e[:, :2], e[:, 2:]), np.pi / 2, atol=1e-12)
  # Span(e0) vs span(cos t e0 + sin t e1): one angle t (small, where arccos would lose digits).
  t = 1e-6
  np.testing.assert_allclose(
      geometry.principal_angles(e[:, :1], (np.cos(t) * e[:, 0] + np.sin(t) * e[:, 1])[:, None]),
      [t], rtol=1e-6)


def test_invariance_ratio_extremes():
  rng = np.random.default_rng(4)
  per_input = rng.standard_normal((50, 1, 5))
  invariant = np.repeat(per_input, 8, axis=1)  # r depends on x only
  np.testing.assert_allclose(geometry.invariance_ratio(invariant), 0.0, atol=1e-15)
  ignores_x = rng.standard_normal((50, 8, 5))  # r depends on α only
  # Population variances: E within = (M−1)/M σ², E total = (NM−1)/(NM) σ², so IR → 1 as M grows.
  expected = (7 / 8) / (399 / 400)
  np.testing.assert_allclose(geometry.invariance_ratio(ignores_x), expected, atol=0.05)


def test_conditional_variance_sketch_matches_trace():
  # E_ε Var_α(εᵀ r̂) = tr Cov_α(r̂) for Rademacher ε, so many probes approach the trace.
  rng = np.random.default_rng(5)
  r = rng.standard_normal((20, 6, 4))
  r_hat = r / np.linalg.norm(r, axis=-1, keepdims=True)
  expected = r_hat.var(axis=1).sum(axis=-1).mean()
  got = geometry.conditional_variance_sketch(jax.random.PRNGKey(0), r, num_probes=4000)
  np.testing.assert_allclose(got, expected, rtol=0.05)
  assert geometry.conditional_variance_sketch(jax.random.PRNGKey(0), np.repeat(r[:, :1], 6, 1)) < 1e-10


def test_nuisance_decodability():
  rng = np.random.default_rng(6)
  r = rng.standard_normal((400, 5))
  alpha = np.stack([r @ rng.standard_normal(5) + 2.0, rng.standard_normal(400)], axis=1)
  ratio = geometry.nuisance_decodability(r[:300], alpha[:300], r[300:], alpha[300:])
  assert ratio.shape == (2,)
  assert ratio[0] < 1e-8  # linear in r: decodable
  np.testing.assert_allclose(ratio[1], 1.0, atol=0.15)  # independent of r: ≈ 1


def test_projector_jacobians_match_linear_map():
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  h = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
  for mode in ("rev", "fwd"):
    G = geometry.projector_jacobians(lambda v: jnp.tanh(w @ v), h, batch_size=4, mode=mode)
    expected = (1 - jnp.tanh(h @ w.T) ** 2)[:, :, None] * w[None]
    np.testing.assert_allclose(G, expected, rtol=1e-5, atol=1e-6)


def test_tangents_recover_known_subspaces():
  rng = np.random.default_rng(7)
  basis, _ = np.linalg.qr(rng.standard_normal((6, 2)))
  # Augmentations move each sample within span(basis); data points lie on that plane too.
  centres = rng.standard_normal((4, 1, 6))
  r_aug = centres + (rng.standard_normal((4, 16, 2)) @ basis.T)
  tangents = geometry.sample_tangents(jnp.asarray(r_aug, jnp.float32), 2)
  np.testing.assert_allclose(geometry.principal_angles(tangents, np.tile(basis, (4, 1, 1))), 0.0,
                             atol=1e-3)
  h = rng.standard_normal((60, 2)) @ basis.T
  data = geometry.data_tangents_knn(jnp.asarray(h, jnp.float32), k_neighbours=8, dim=2,
                                    batch_size=16)
  np.testing.assert_allclose(geometry.principal_angles(data, np.tile(basis, (60, 1, 1))), 0.0,
                             atol=1e-3)


def test_geometry_report_assembles():
  rng = np.random.default_rng(8)
  h = rng.standard_normal((30, 6))
  z = h[:, :3]
  G = np.tile(np.eye(6)[:3], (30, 1, 1))
  report = geometry.geometry_report(
      h, z, jacobians=G, aug_tangents=np.tile(np.eye(6)[:, 3:5], (30, 1, 1)),
      data_tangents=np.tile(np.eye(6)[:, :2], (30, 1, 1)), h_aug=rng.standard_normal((30, 4, 6)),
      z_aug=rng.standard_normal((30, 4, 3)), key=jax.random.PRNGKey(0))
  assert report["retention"]["aug"] == 0.0
  np.testing.assert_allclose(report["relative_retention"]["data"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(report["principal_angles_deg"]["data"], 0.0, atol=1e-3)
  assert set(report["invariance_ratio"]) == {"encoder", "projector", "projector_normalized"}
  assert report["spectra"]["projector"]["rank@0.001"] == 3


def test_nuisance_decodability_is_the_ridge_probe_error_ratio():
  # The same closed-form probe as regression.py: test MSE of its prediction over Var(α).
  rng = np.random.default_rng(9)
  r, alpha = rng.standard_normal((120, 4)), rng.standard_normal((120, 2))
  params = regression.fit_linear_regression(r[:80], alpha[:80], 1e-3)
  want = np.mean((regression.predict(params, r[80:]) - alpha[80:]) ** 2, 0) / alpha[80:].var(0)
  np.testing.assert_allclose(
      geometry.nuisance_decodability(r[:80], alpha[:80], r[80:], alpha[80:], l2=1e-3), want,
      rtol=1e-12)
