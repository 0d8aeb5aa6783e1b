"""Laplace sampling, soft threshold with straight-through, and the Laplace KL (docs/method.md §3).

The posterior q(c | z0, z1) and prior p(c | z0) are factorised Laplace distributions over the M
coefficients, parameterised by a location μ and a log-scale log b.
"""

import jax
import jax.numpy as jnp
from jax import lax

# Floor on the argument of the log in the inverse CDF (docs/method.md §3.3):
# |ε| ≤ −log(1e-6)·b ≈ 13.8 b.
_LOG_ARG_FLOOR = 1e-6
# exp() arguments in the KL are clipped here so that b → 0 gives a huge but finite 1/b instead of
# inf (and 0·inf = NaN when μ_q = μ_p). e^80 ≈ 5.5e34 fits float32; for b ≥ e^-80 nothing changes.
_KL_EXP_CLIP = 80.0


def laplace_noise(uniform_noise, log_scale):
  """Reparameterised Laplace(0, b) noise ε = −b·sign(u)·log(max(1 − 2|u|, 1e-6)) (§3.3).

  Args:
    uniform_noise: u in (−½, ½), shape broadcastable with log_scale (e.g. (J, B, M) vs (B, M)).
    log_scale: log b, (..., M).

  Returns:
    ε with the broadcast shape; differentiable in log_scale.
  """
  u = jnp.asarray(uniform_noise)
  scale = jnp.exp(log_scale)
  return -scale * jnp.sign(u) * jnp.log(jnp.maximum(1.0 - 2.0 * jnp.abs(u), _LOG_ARG_FLOOR))


def soft_threshold_straight_through(mu, eps, threshold):
  """Value of the thresholded sample with the gradient of the dense one (docs/method.md §3, §15.1).

  Forward: 0 where |ε| ≤ λ, else μ + sign(ε)(|ε| − λ) — the threshold acts on the noise, and the
  location μ is added back only on the entries that survive. Backward: the gradient of μ + ε on
  every entry, including the zeroed ones (VSC-LT straight-through).

  Args:
    mu: (..., M) locations (broadcast against eps).
    eps: (..., M) Laplace noise.
    threshold: λ ≥ 0, Python float or scalar array.

  Returns:
    c with eps's (broadcast) shape.
  """
  dense = mu + eps
  shrunk = mu + jnp.sign(eps) * (jnp.abs(eps) - threshold)
  thresholded = jnp.where(jnp.abs(eps) <= threshold, jnp.zeros_like(dense), shrunk)
  return dense + lax.stop_gradient(thresholded - dense)


def laplace_sample(uniform_noise, mu, log_scale, threshold=0.0):
  """c = μ + ε, ε ~ Laplace(0, b), optionally soft-thresholded with straight-through (§3.3, §3.4).

  Args:
    uniform_noise: u in (−½, ½) with mu's shape (..., M) or an extra leading J axis (J, ..., M).
    mu: (..., M) location.
    log_scale: (..., M) log b.
    threshold: λ; with a static 0.0 the plain dense sample is returned (the thresholded form would
      also zero the measure-zero entries with ε = 0 exactly).

  Returns:
    c with uniform_noise's shape.
  """
  eps = laplace_noise(uniform_noise, log_scale)
  if isinstance(threshold, (int, float)) and threshold == 0:
    return mu + eps
  return soft_threshold_straight_through(mu, eps, threshold)


def sample_coefficients(key, mu, log_scale, threshold=0.0, num_samples=None):
  """Draws u ~ U(−½, ½) and returns `laplace_sample(u, mu, log_scale, threshold)`.

  Args:
    key: PRNG key.
    mu, log_scale: (..., M).
    threshold: λ (see `laplace_sample`).
    num_samples: None for one sample of shape mu.shape, or J for (J,) + mu.shape.

  Returns:
    c: mu.shape or (J,) + mu.shape.
  """
  shape = mu.shape if num_samples is None else (num_samples,) + mu.shape
  dtype = jnp.promote_types(jnp.result_type(mu), jnp.float32)
  u = jax.random.uniform(key, shape, dtype, minval=-0.5, maxval=0.5)
  return laplace_sample(u, mu, log_scale, threshold)


def laplace_kl(mu_q, log_scale_q, mu_p, log_scale_p):
  """KL(Laplace(μ_q, b_q) ‖ Laplace(μ_p, b_p)) in closed form, summed over M (docs/method.md §3.7).

  Per coefficient, with Δ = |μ_q − μ_p|:
    KL = Δ/b_p + log b_p − log b_q − 1 + (b_q/b_p)·exp(−Δ/b_q).
  Ignores the threshold, as the reference does (docs/method.md §15.1).

  Args:
    mu_q, log_scale_q: (..., M) posterior parameters.
    mu_p, log_scale_p: (..., M) prior parameters.

  Returns:
    (...,) KL summed over the last axis.
  """
  delta = jnp.abs(mu_q - mu_p)
  inv_bp = jnp.exp(jnp.minimum(-log_scale_p, _KL_EXP_CLIP))
  inv_bq = jnp.exp(jnp.minimum(-log_scale_q, _KL_EXP_CLIP))
  # (b_q/b_p)·exp(−Δ/b_q) as one exp keeps the ratio from overflowing when b_p is tiny.
  tail = jnp.exp(jnp.minimum(log_scale_q - log_scale_p, _KL_EXP_CLIP) - delta * inv_bq)
  kl = delta * inv_bp + log_scale_p - log_scale_q - 1.0 + tail
  return jnp.sum(kl, axis=-1)
