"""Contrastive, transport and coefficient losses of ManifoldCLR (docs/method.md §4), pure jnp.

Written with plain matrix products and `logsumexp` rather than `optax.losses.ntxent`, which fails on
batches sharded over an explicit-sharding mesh. Every loss is computed in float32 whatever the input
dtype, and returns a scalar.
"""

import jax
import jax.numpy as jnp

# Logit given to excluded entries (the self-similarity of NT-Xent): exp(-1e9 - max) is exactly 0 in
# float32, and unlike -inf it keeps every intermediate finite.
_MASKED_LOGIT = -1e9


def l2_normalize(x, axis=-1, eps=1e-12):
  """x / max(‖x‖, eps) along `axis` (as torch.nn.functional.normalize); x: (..., D) -> (..., D).

  Written with rsqrt(max(Σx², eps²)) so the gradient at x = 0 is finite (0), not NaN.
  """
  sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps ** 2))


def _check_pair(name, a, b):
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"{name} expects a and b of the same shape (B, d); got {a.shape} and {b.shape}.")


def nt_xent(a, b, temperature):
  """NT-Xent (SimCLR) loss of two batches of L2-normalised embeddings (docs/method.md §4.1).

  Args:
    a, b: (B, d) L2-normalised embeddings; (a_i, b_i) are the positive pairs.
    temperature: τ > 0.

  Returns:
    () float32: mean over the 2B rows u of U = [a; b] of −log softmax_v(⟨u, v⟩/τ) at the positive
    v, the softmax running over all 2B rows except u itself (the positive is in the denominator).

  The reference subtracts e^{‖u‖/τ} from the full sum as the self term (docs/method.md §15.5),
  which is right only for unit vectors; masking the diagonal is exact for any input.
  """
  _check_pair("nt_xent", a, b)
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  u = jnp.concatenate([a, b], axis=0)
  logits = u @ u.T / temperature
  logits = jnp.where(jnp.eye(u.shape[0], dtype=bool), _MASKED_LOGIT, logits)
  # The positive of row i is row i ± B: the same ⟨a_i, b_i⟩ for both rows of pair i.
  positive = jnp.sum(a * b, axis=-1) / temperature
  positive = jnp.concatenate([positive, positive], axis=0)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - positive)


def _neg_mean_sq_dist(u, v):
  """s(u, v) = −mean_d (u − v)² for all pairs; u: (N, d), v: (P, d) -> (N, P)."""
  sq_dist = (jnp.sum(jnp.square(u), -1)[:, None] + jnp.sum(jnp.square(v), -1)[None, :]
             - 2.0 * u @ v.T)
  # The expansion can round a little below 0 for (near-)identical vectors.
  return -jnp.maximum(sq_dist, 0.0) / u.shape[-1]


def mse_info_nce(a, b, temperature, negatives=None):
  """InfoNCE with the negative mean squared distance as similarity (docs/method.md §4 "mse mode").

  Args:
    a, b: (B, d) raw (un-normalised) features; (a_i, b_i) are the positive pairs.
    temperature: τ > 0.
    negatives: optional (N, d) extra candidates for every row (the reference passes the
      un-augmented z0, N = B, including z0_i for its own pair; docs/method.md §4, §15.5).

  Returns:
    () float32: with s(u, v) = −mean_d (u − v)², rows U = [a; b] and candidates S = [a; b] or
    [a; b; negatives], the mean over the 2B rows u of
    −log( e^{s(a_i, b_i)/τ} / Σ_{v ∈ S} e^{s(u, v)/τ} ). The denominator keeps the self term
    s(u, u) = 0 (it adds e^0 = 1), as the reference does; so the loss is always > 0.
  """
  _check_pair("mse_info_nce", a, b)
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  u = jnp.concatenate([a, b], axis=0)
  candidates = u
  if negatives is not None:
    if negatives.ndim != 2 or negatives.shape[-1] != a.shape[-1]:
      raise ValueError(f"mse_info_nce negatives must be (N, {a.shape[-1]}); got {negatives.shape}.")
    candidates = jnp.concatenate([u, negatives.astype(jnp.float32)], axis=0)
  logits = _neg_mean_sq_dist(u, candidates) / temperature
  # The self term s(u, u) is exactly 0; pin it so rounding in the expansion cannot perturb it.
  num_rows = u.shape[0]
  is_self = jnp.arange(num_rows)[:, None] == jnp.arange(candidates.shape[0])[None, :]
  logits = jnp.where(is_self, 0.0, logits)
  # The numerator uses the exact difference, not the expansion.
  positive = -jnp.mean(jnp.square(a - b), axis=-1) / temperature
  positive = jnp.concatenate([positive, positive], axis=0)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - positive)


def transport_mse(z_hat, z_target):
  """Transport loss mean_{B×D} (ẑ1 − sg z1)² (docs/method.md §4, `transop_loss_detach_z1=True`).

  z_hat, z_target: (..., D) -> () float32; no gradient flows into `z_target`.
  """
  if z_hat.shape != z_target.shape:
    raise ValueError(f"transport_mse expects equal shapes; got {z_hat.shape} and {z_target.shape}.")
  diff = z_hat.astype(jnp.float32) - jax.lax.stop_gradient(z_target).astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


def location_l2(mu):
  """Shift L2 penalty mean_b Σ_m μ_q[b, m]² on the encoder locations (docs/method.md §4).

  mu: (B, M) -> () float32.
  """
  return jnp.mean(jnp.sum(jnp.square(mu.astype(jnp.float32)), axis=-1))
