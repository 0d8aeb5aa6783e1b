"""The gradient-penalty invariance regulariser of Foster et al. (ICLR 2021), docs/method.md §11.

The penalty sketches the conditional variance Var_α[h(t(x, α)) | x] by its first-order Taylor
expansion, ‖J_α (α′ − α)‖², with J_α = ∂r/∂α never formed: one vector–Jacobian product against a
Rademacher probe ε gives g_i = J_iᵀ ε_i, and E_ε[(g_iᵀ v)²] = ‖J_i v‖² (Hutchinson).

`features_fn` maps the differentiable nuisance α to representations; the caller closes over the
network parameters, the clean inputs and any non-differentiable augmentation, e.g. for Spirograph
`lambda a: encoder(render(merge_params(theta, a)))`.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

FeaturesFn = Callable[[jax.Array], tuple[jax.Array, Any]]


def sample_rademacher(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Independent ±1 entries with probability ½ each, of the given shape and dtype."""
  return jax.random.rademacher(key, tuple(shape), dtype=dtype)


def _representation(features_fn: FeaturesFn, normalize: bool):
  """α -> (r, (h, aux)), r = h/‖h‖ (docs/method.md §11 step 1, the default) or h."""
  def fn(alpha):
    h, aux = features_fn(alpha)
    r = h * jax.lax.rsqrt(jnp.maximum(jnp.sum(h * h, -1, keepdims=True), 1e-24)) if normalize else h
    return r, (h, aux)
  return fn


def gradient_penalty(features_fn: FeaturesFn, alpha: jax.Array, alpha_prime: jax.Array,
                     key: jax.Array, *, clip: float, normalize: bool = True
                     ) -> tuple[jax.Array, jax.Array, Any]:
  """Single-probe Monte-Carlo gradient penalty P of docs/method.md §11 (view 1 only).

  features_fn: alpha (B, p) -> (h (B, d), aux); aux (e.g. updated BatchNorm stats) comes from
    the same forward pass, so the caller threads BN state once.
  alpha: (B, p) the nuisance of view 1. alpha_prime: (L, B, p) fresh draws from p(α).
  key: draws the Rademacher probe ε (B, d).
  clip: U; P = min(U, mean_{l,i} (g_iᵀ(α′_{l,i} − α_i))²), clipped on the batch mean (§11.2).
  normalize: penalise ĥ = h/‖h‖ (the paper's default) instead of h.
  Returns (P (), h (B, d) un-normalised, aux). g is computed with `jax.vjp`, which stays
  differentiable, so `jax.grad` of a loss using P w.r.t. the network is second order (§11.2).
  """
  if alpha_prime.ndim != alpha.ndim + 1 or alpha_prime.shape[1:] != alpha.shape:
    raise ValueError(f"alpha_prime has shape {alpha_prime.shape}; expected (L,) + alpha.shape = "
                     f"(L, {', '.join(map(str, alpha.shape))}).")
  r, vjp_fn, (h, aux) = jax.vjp(_representation(features_fn, normalize), alpha, has_aux=True)
  eps = sample_rademacher(key, r.shape, r.dtype)
  # S = Σ_i ε_iᵀ r_i, so ∂S/∂α_i = J_iᵀ ε_i (plus BatchNorm's small cross-sample terms, §11.2).
  (g,) = vjp_fn(eps)
  projections = jnp.sum(g * (alpha_prime - alpha), axis=-1)  # (L, B)
  penalty = jnp.minimum(clip, jnp.mean(projections ** 2))
  return penalty, h, aux


def exact_penalty(features_fn: FeaturesFn, alpha: jax.Array, alpha_prime: jax.Array,
                  normalize: bool = True) -> jax.Array:
  """Deterministic mean_{l,i} ‖J_i (α′_{l,i} − α_i)‖², one `jax.jvp` per displacement (unclipped). The expectation of `gradient_penalty` over ε for encoders without
  cross-sample coupling (BatchNorm in eval mode); for tests and diagnostics.

  alpha: (B, p); alpha_prime: (L, B, p) -> ().
  """
  representation = _representation(features_fn, normalize)

  def squared_norms(displacement):
    _, tangent_out, _ = jax.jvp(representation, (alpha,), (displacement,), has_aux=True)
    return jnp.sum(tangent_out ** 2, axis=-1)  # (B,)

  return jnp.mean(jax.lax.map(squared_norms, alpha_prime - alpha))
