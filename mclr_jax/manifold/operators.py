"""The operator dictionary Ψ and the transport z ↦ expm(Σ_m c_m Ψ_m) z (docs/method.md §2).

Ψ has shape (M, K, b, b): M dictionary elements, each block-diagonal with K = D / b blocks of size
b × b. Block k acts on the contiguous feature dims [b·k, b·k + b), and one coefficient vector
c ∈ R^M per sample is shared by all K blocks.
"""

import jax
import jax.numpy as jnp
from jax import lax

from mclr_jax.manifold.expm import expm

_OPERATOR_KINDS = ("stable", "gaussian")


def init_operators(key, num_operators, feature_dim, block_dim, kind="stable", real_range=1e-4,
                   imag_range=6.0):
  """Initial dictionary Ψ (docs/method.md §2 "Initialisation").

  kind="stable": for every (m, k), r ~ U(−real_range/2, real_range/2) and
  ω ~ U(−imag_range/2, imag_range/2); Ψ[m, k] is block-diagonal with b/2 copies of
  [[r, −ω], [ω, r]] on the coordinate pairs (0,1), (2,3), ... — nearly a pure rotation generator,
  and all Ψ[·, k] commute. kind="gaussian": i.i.d. N(0, (1/b)²) entries.

  Args:
    key: PRNG key.
    num_operators: M.
    feature_dim: D, a multiple of block_dim.
    block_dim: b (even for kind="stable").
    kind: "stable" or "gaussian".
    real_range, imag_range: widths of the uniform ranges of r and ω.

  Returns:
    psi: (M, K, b, b) float32 with K = feature_dim // block_dim.
  """
  if kind not in _OPERATOR_KINDS:
    raise ValueError(f"init_operators kind must be one of {_OPERATOR_KINDS}; got kind={kind!r}.")
  if block_dim <= 0 or feature_dim % block_dim:
    raise ValueError(f"block_dim must be a positive divisor of feature_dim; got block_dim="
                     f"{block_dim}, feature_dim={feature_dim}.")
  if num_operators <= 0:
    raise ValueError(f"num_operators must be positive; got num_operators={num_operators}.")
  m, k, b = num_operators, feature_dim // block_dim, block_dim
  if kind == "gaussian":
    return jax.random.normal(key, (m, k, b, b), jnp.float32) / b
  if b % 2:
    raise ValueError(f"block_dim must be even for kind='stable' (2×2 rotation blocks); got "
                     f"block_dim={block_dim}.")
  key_r, key_w = jax.random.split(key)
  r = jax.random.uniform(key_r, (m, k), jnp.float32, -real_range / 2, real_range / 2)
  w = jax.random.uniform(key_w, (m, k), jnp.float32, -imag_range / 2, imag_range / 2)
  eye2 = jnp.eye(2, dtype=jnp.float32)
  rot2 = jnp.array([[0.0, -1.0], [1.0, 0.0]], jnp.float32)
  block = r[..., None, None] * eye2 + w[..., None, None] * rot2  # (M, K, 2, 2)
  # Kronecker product eye(b/2) ⊗ block: pair p of the output uses block on dims (2p, 2p+1).
  psi = jnp.einsum("pq,mkij->mkpiqj", jnp.eye(b // 2, dtype=jnp.float32), block)
  return psi.reshape(m, k, b, b)


def generator(psi, coeffs):
  """A(c) = Σ_m c_m Ψ[m] per block.

  Args:
    psi: (M, K, b, b).
    coeffs: (..., M).

  Returns:
    (..., K, b, b).
  """
  if coeffs.shape[-1] != psi.shape[0]:
    raise ValueError(f"coeffs last axis must equal the number of operators M={psi.shape[0]}; got "
                     f"coeffs shape {coeffs.shape}.")
  return jnp.einsum("...m,mkij->...kij", coeffs, psi, precision=lax.Precision.HIGHEST)


def transport(psi, coeffs, z, method="taylor"):
  """ẑ = T(c) z with T(c) = expm(A(c)) applied block-wise (docs/method.md §2 "Forward").

  Computed in (at least) float32 whatever z's dtype (docs/method.md §2.2: the exponential stays
  float32 even under mixed precision); the result is cast back to z's dtype.

  Args:
    psi: (M, K, b, b) operator dictionary.
    coeffs: (..., M) coefficients.
    z: (..., D) features, D >= K·b. Leading axes broadcast with coeffs', e.g. coeffs (J, B, M)
      with z (B, D) gives (J, B, D). The first K·b dimensions are transported; any further ones
      pass through unchanged (ManifoldDirectCLR, docs/method.md §2.5: Ψ covers the first b dims).
    method: expm method, "taylor" or "pade" (see `expm`).

  Returns:
    (..., D) transported features, leading axes broadcast, z's dtype.
  """
  num_blocks, block_dim = psi.shape[1], psi.shape[-1]
  width = num_blocks * block_dim
  if z.shape[-1] < width:
    raise ValueError(f"z last axis must be at least K·b = {num_blocks}·{block_dim} = {width} for "
                     f"psi of shape {psi.shape}; got z shape {z.shape}.")
  dtype = jnp.promote_types(jnp.result_type(psi, coeffs, z), jnp.float32)
  a = generator(psi.astype(dtype), coeffs.astype(dtype))
  t = expm(a, method=method)  # (..., K, b, b)
  z_blocks = z[..., :width].astype(dtype).reshape(z.shape[:-1] + (num_blocks, block_dim, 1))
  out = jnp.matmul(t, z_blocks, precision=lax.Precision.HIGHEST)[..., 0]
  out = out.reshape(out.shape[:-2] + (width,)).astype(z.dtype)
  if z.shape[-1] == width:
    return out
  rest = jnp.broadcast_to(z[..., width:], out.shape[:-1] + (z.shape[-1] - width,))
  return jnp.concatenate([out, rest], axis=-1)
