"""A ManifoldCLR model's operators in evaluation (docs/method.md §2, §8): the transport
augmentation against a hand-applied transport, operator eigenvalues of the stable init, orbits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax import manifold
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import operators
from tests.tiny import tiny_spirograph_config

pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


@pytest.fixture(scope="module")
def model(fast_cpu_compiles):
  return model_lib.random_model(tiny_spirograph_config("manifoldclr"))


def _features(model, seed, n=6):
  return jax.random.normal(jax.random.key(seed), (n, model.psi.shape[1] * model.psi.shape[2]))


def test_transport_augment_with_zero_psi_is_identity(model):
  params = dict(model.params, psi=jnp.zeros_like(model.psi))
  augment = operators.transport_augment_fn(dataclasses.replace(model, params=params))
  z = _features(model, 1)
  np.testing.assert_allclose(augment(jax.random.key(2), z), z, rtol=0, atol=1e-6)


def test_transport_augment_matches_hand_applied_transport(model):
  z = _features(model, 1)
  key = jax.random.key(3)
  mu, log_scale = model.prior(z)
  for threshold in (0.0, 0.05):
    coeffs = manifold.sample_coefficients(key, mu, log_scale, threshold)
    expected = manifold.transport(model.psi, coeffs, z, method="pade")
    got = operators.transport_augment_fn(model, threshold=threshold)(key, z)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    clipped = operators.transport_augment_fn(model, threshold=threshold, clip=1.0)(key, z)
    np.testing.assert_allclose(
        clipped, manifold.transport(model.psi, jnp.clip(coeffs, -1, 1), z, method="pade"),
        rtol=1e-4, atol=1e-5)


def test_simclr_model_has_no_operators():
  model = model_lib.random_model(tiny_spirograph_config("simclr"))
  with pytest.raises(model_lib.EvaluationError, match="manifoldclr"):
    operators.transport_augment_fn(model)


def test_operator_eigenvalues_of_stable_init_are_r_plus_minus_i_omega():
  psi = np.asarray(manifold.init_operators(jax.random.key(0), 4, 32, 8), np.float64)
  got = operators.operator_eigenvalues(psi)
  assert got.shape == (4, 32)
  # Each 2x2 rotation block [[r, -ω], [ω, r]] has eigenvalues r ± iω (docs/method.md §2.3).
  for m in range(4):
    r, omega = psi[m, :, 0::2, 0::2].diagonal(axis1=1, axis2=2), psi[m, :, 1::2, 0::2].diagonal(
        axis1=1, axis2=2)
    expected = np.concatenate([(r + 1j * omega).ravel(), (r - 1j * omega).ravel()])
    np.testing.assert_allclose(np.sort_complex(got[m]), np.sort_complex(expected), atol=1e-9)
  assert np.max(np.abs(got.real)) <= 1e-4 and np.max(np.abs(got.imag)) > 0.1


def test_operator_orbits_start_at_the_pca_projection_of_the_point(model):
  z = np.asarray(_features(model, 4, n=20))
  orbits = operators.operator_orbits(model, z, ts=np.linspace(0, 1, 5))
  assert orbits.shape == (model.psi.shape[0], 5, 2)
  mean, components = operators.pca_basis(z)
  for m in range(orbits.shape[0]):  # t = 0 is the identity for every operator
    np.testing.assert_allclose(orbits[m, 0], (z[0] - mean) @ components.T, atol=1e-5)


def test_coefficient_samples_use_the_trained_threshold(model):
  z = _features(model, 5, n=64)
  mu, log_scale = model.prior(z)
  key = jax.random.key(6)
  np.testing.assert_array_equal(
      operators.coefficient_samples(model, z, key),
      manifold.sample_coefficients(key, mu, log_scale, float(model.config.manifold.threshold)))
