"""What a trained ManifoldCLR model's operators do to features (docs/method.md §2, §3, §8).

The transport augmentation that the prior-augmentation score and the semi-supervised experiment
use, operator orbits, coefficient samples of the learned prior and operator eigenvalues. Pure array
code on an `EvalModel`, so tests can check each against a hand-applied transport.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax import manifold
from mclr_jax.evaluate.model import EvaluationError, warmed_prior


def require_operators(model):
  if model.psi is None:
    raise EvaluationError(f"The model was trained with method={model.config.method!r} and has no "
                          f"operator dictionary psi; this evaluation needs a manifoldclr "
                          f"checkpoint.")


def prior_fn(model):
  """z (n, D) -> (μ_p, log b_p) of the fully warmed-up prior, a pure JAX function."""
  return warmed_prior(model.networks.prior, model.params["prior"])


def transport_augment_fn(model, threshold: float = 0.0, clip: Optional[float] = None):
  """The transport augmentation (key, z (n, D)) -> (n, D), a pure JAX function (docs/method.md §8).

  c ~ the learned prior p(c | z) at a late step (fully warmed up), soft-thresholded with λ =
  `threshold` (the trained λ for the prior-augmentation score, 0 for the semi-supervised
  experiment: "thresholding disabled"), optionally clipped to [−clip, clip] (prior-aug NN: clip =
  1); z_aug = T(c) z, all under stop_gradient. Build it once per model: the semi-supervised code
  caches compilations by the function's identity.
  """
  require_operators(model)
  psi = jnp.asarray(model.psi)
  prior = prior_fn(model)
  method = model.config.manifold.expm

  def augment(key, z):
    z = jax.lax.stop_gradient(z)
    mu, log_scale = prior(z)
    coeffs = manifold.sample_coefficients(key, mu, log_scale, threshold)
    if clip is not None:
      coeffs = jnp.clip(coeffs, -clip, clip)
    return jax.lax.stop_gradient(manifold.transport(psi, coeffs, z, method=method))

  return augment


def pca_basis(z, num_components: int = 2):
  """(mean (D,), components (num_components, D)) of the centred rows of z: (N, D), float64."""
  z = np.asarray(z, np.float64)
  mean = z.mean(axis=0)
  _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
  return mean, vt[:num_components]


def operator_orbits(model, z, ts: Optional[Sequence[float]] = None, point: int = 0) -> np.ndarray:
  """Orbits exp(t Ψ_m) z_point for every operator m, in the 2-D PCA plane of z.

  Args:
    model: a manifoldclr EvalModel.
    z: (N, D) features; the PCA is fitted on all rows, the orbit starts at row `point`.
    ts: (T,) values of t (coefficients one_hot(m)·t); default 64 values in [0, 1].

  Returns:
    (M, T, 2) float64, for `figures.plot_operator_orbits`.
  """
  require_operators(model)
  psi = jnp.asarray(model.psi)
  ts = jnp.linspace(0.0, 1.0, 64) if ts is None else jnp.asarray(ts, jnp.float32)
  num_operators = psi.shape[0]
  coeffs = jnp.eye(num_operators)[:, None, :] * ts[None, :, None]  # (M, T, M)
  z = np.asarray(z)
  start = jnp.asarray(z[point], jnp.float32)
  moved = manifold.transport(psi, coeffs, start, method="pade")  # (M, T, D)
  mean, components = pca_basis(z)
  return (np.asarray(moved, np.float64) - mean) @ components.T


def coefficient_samples(model, z, key=None, threshold: Optional[float] = None) -> np.ndarray:
  """Coefficients c ~ p(c | z) of the fully warmed-up prior: z (N, D) -> (N, M).

  `threshold` defaults to the training λ (config.manifold.threshold), so the zeros in the usage
  plot are the ones the augmentations actually have.
  """
  require_operators(model)
  key = jax.random.key(0) if key is None else key
  threshold = model.config.manifold.threshold if threshold is None else threshold
  mu, log_scale = model.prior(z)
  return np.asarray(manifold.sample_coefficients(key, mu, log_scale, float(threshold)))


def operator_eigenvalues(psi) -> np.ndarray:
  """Eigenvalues of every block of every operator: psi (M, K, b, b) -> (M, K·b) complex128."""
  psi = np.asarray(psi, np.float64)
  num_operators = psi.shape[0]
  return np.linalg.eigvals(psi).reshape(num_operators, -1)
