"""Feature-space augmentations of the SimCLR baselines (docs/method.md §17.4), pure functions.

ManifoldCLR's z0_aug = T(c0) z0 is compared in the paper with two hand-made feature-space
augmentations of the backbone feature z0, each using its positive z1 (the other view's feature):
  mixup:    z0_aug = λ z1 + (1 − λ) z0,                 λ ~ U(0, s), one λ per sample;
  gaussian: z0_aug = z0 + s · sqrt(‖z0 − z1‖) · ε,      ε ~ N(0, I_D) per sample, the distance
            without gradient.
s is the strength (`config.loss.feature_aug_strength`; 1 reproduces the published baselines).
The authors' code draws the per-sample coefficient with shape (B,) and broadcasts it along the
feature axis, which mixes (or shifts) each *dimension* by its own amount; mclr_jax draws one
coefficient per sample, as the method is described (docs/method.md §15.10).
"""

import jax
import jax.numpy as jnp

FEATURE_AUGMENTATIONS = ("none", "mixup", "gaussian")


def mixup(key, z0, z1, strength: float = 1.0):
  """z0, z1: (B, D) -> (B, D), λ_i z1_i + (1 − λ_i) z0_i with λ_i ~ U(0, strength)."""
  lam = jax.random.uniform(key, z0.shape[:-1] + (1,), minval=0.0, maxval=strength)
  return lam * z1 + (1.0 - lam) * z0


def gaussian(key, z0, z1, strength: float = 1.0):
  """z0, z1: (B, D) -> (B, D), z0_i + strength · sqrt(‖z0_i − z1_i‖) · ε_i, ε_i ~ N(0, I_D).

  The per-sample variance is the distance to the positive, as the authors'; their broadcast
  shares one noise vector of that size across the batch (docs/method.md §15.10), whose norm,
  with B = D, matches the isotropic noise drawn here.
  """
  dist = jax.lax.stop_gradient(jnp.linalg.norm(z0 - z1, axis=-1, keepdims=True))
  noise = jax.random.normal(key, z0.shape, z0.dtype)
  return z0 + strength * jnp.sqrt(dist) * noise


def augment(kind: str, key, z0, z1, strength: float):
  """The feature-space view of `kind` ("mixup" | "gaussian"): z0, z1 (B, D) -> z0_aug (B, D)."""
  if kind == "mixup":
    return mixup(key, z0, z1, strength)
  if kind == "gaussian":
    return gaussian(key, z0, z1, strength)
  raise ValueError(f"Unknown feature augmentation {kind!r}; choose one of "
                   f"{FEATURE_AUGMENTATIONS[1:]}.")
