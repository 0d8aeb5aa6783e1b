"""The geometry probe and invariance diagnostics (docs/method.md §13 "Invariance diagnostics", §14).

Pure functions of arrays, so they work for any encoder f (h = f(x), (N, D)) and projector g
(z = g(h), (N, K)): spectra and dimension of an embedding, projector Jacobians G_x = ∂g/∂h,
augmentation / data tangents, retention of directions through G_x, principal angles, the
invariance ratio, the conditional-variance sketch and α-decodability. `geometry_report` assembles
them from already-computed arrays.

Reported statistics (spectra, angles, ridge regression) are computed in float64 numpy because they
are host-side numbers where float32 cancellation would show (e.g. tiny principal angles); per-sample
batched linear algebra on Jacobians uses jnp.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax.evaluate import regression
from mclr_jax.losses import l2_normalize


# --- docs/method.md §14.1: spectrum and dimension ---------------------------------------------

def singular_values(x) -> np.ndarray:
  """Singular values (descending, float64) of the column-centred embedding x: (N, D) -> (min(N, D),)."""
  x = np.asarray(x, np.float64)
  return np.linalg.svd(x - x.mean(axis=0), compute_uv=False)


def effective_rank(s) -> float:
  """Roy & Vetterli effective rank exp(H(p)), p_k = s_k / Σ s (0·log 0 = 0); s: (n,) >= 0."""
  s = np.asarray(s, np.float64)
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(s) -> float:
  """(Σλ)² / Σλ² with λ = s²; s: (n,) singular values."""
  lam = np.asarray(s, np.float64) ** 2
  return float(lam.sum() ** 2 / np.sum(lam**2))


def rank_at(s, tau: float) -> int:
  """Number of singular values above tau · s_max; s: (n,)."""
  s = np.asarray(s, np.float64)
  return int(np.sum(s > tau * s.max()))


def spectrum_summary(x, taus=(1e-1, 1e-2, 1e-3)) -> dict:
  """Dimension statistics of an embedding x: (N, D) (docs/method.md §14.1), JSON-serialisable."""
  s = singular_values(x)
  out = dict(effective_rank=effective_rank(s), participation_ratio=participation_ratio(s),
             singular_values=s.tolist())
  for tau in taus:
    out[f"rank@{tau:g}"] = rank_at(s, tau)
  return out


# --- docs/method.md §14.2-§14.4: tangents, Jacobians, retention, angles ------------------------

def projector_jacobians(project_fn, h, batch_size: int = 256, mode: str = "auto"):
  """G_x = ∂g/∂h for every row: project_fn maps one (D,) row to (K,); h: (N, D) -> (N, K, D).

  mode "rev" costs K backward passes per row, "fwd" D forward passes; "auto" picks the cheaper.
  Rows are processed in blocks of `batch_size` to bound memory.
  """
  h = jnp.asarray(h)
  k = jax.eval_shape(project_fn, h[0]).shape[0]
  if mode == "auto":
    mode = "rev" if k < h.shape[1] else "fwd"
  if mode not in ("rev", "fwd"):
    raise ValueError(f"mode={mode!r}; choose 'auto', 'rev' or 'fwd'.")
  jac = jax.jit(jax.vmap(jax.jacrev(project_fn) if mode == "rev" else jax.jacfwd(project_fn)))
  return jnp.concatenate([jac(h[i:i + batch_size]) for i in range(0, h.shape[0], batch_size)])


def _top_right_singular(m, k: int):
  """Top-k right singular vectors of each (..., n, D) block -> (..., D, k)."""
  _, _, vt = jnp.linalg.svd(m, full_matrices=False)
  return jnp.swapaxes(vt[..., :k, :], -1, -2)


def sample_tangents(r_aug, k: int):
  """Augmentation tangents from samples (§14.2): r_aug (N, M, D) -> (N, D, k) orthonormal.

  Per sample, the top-k principal directions of its M augmented encodings.
  """
  r_aug = jnp.asarray(r_aug)
  return _top_right_singular(r_aug - r_aug.mean(axis=1, keepdims=True), k)


def data_tangents_knn(h, k_neighbours: int = 20, dim: int = 4, batch_size: int = 512):
  """Data-manifold tangents by local PCA (§14.3): h (N, D) -> (N, D, dim) orthonormal.

  Each row's neighbourhood is itself plus its `k_neighbours` Euclidean nearest rows, centred on
  the neighbourhood mean.
  """
  h = jnp.asarray(h)
  sq = jnp.sum(h**2, axis=-1)

  @jax.jit
  def block(rows):
    dist = sq[rows][:, None] - 2.0 * h[rows] @ h.T + sq[None, :]
    _, idx = jax.lax.top_k(-dist, k_neighbours + 1)  # includes the row itself (distance 0)
    nbrs = h[idx]
    return _top_right_singular(nbrs - nbrs.mean(axis=1, keepdims=True), dim)

  rows = jnp.arange(h.shape[0])
  return jnp.concatenate([block(rows[i:i + batch_size]) for i in range(0, h.shape[0], batch_size)])


def random_directions(key, num_samples: int, dim: int, k: int):
  """Random orthonormal directions (num_samples, dim, k), the retention reference (§14.4)."""
  q, _ = jnp.linalg.qr(jax.random.normal(key, (num_samples, dim, k)))
  return q


def retention(G, U):
  """ρ(U) = ‖G U‖²_F / (‖U‖²_F · ‖G‖²_F / D) per sample (§14.4); G (N, K, D), U (N, D, r) -> (N,).

  1 means U is passed as well as a random direction would be on average; 0 means filtered out.
  """
  gu = jnp.einsum("nkd,ndr->nkr", G, U)
  d = G.shape[-1]
  return jnp.sum(gu**2, axis=(1, 2)) / (
      jnp.sum(U**2, axis=(1, 2)) * jnp.sum(G**2, axis=(1, 2)) / d)


def relative_retention(G, U):
  """‖G U‖²_F / (‖G‖²_op ‖U‖²_F) per sample, in [0, 1]; G (N, K, D), U (N, D, r) -> (N,).

  1 means U lies in G's top singular direction(s) (e.g. the complement of an orthogonal projector's
  null space), 0 means U lies in its null space.
  """
  gu = jnp.einsum("nkd,ndr->nkr", G, U)
  op_norm = jnp.linalg.norm(G, ord=2, axis=(1, 2))
  return jnp.sum(gu**2, axis=(1, 2)) / (op_norm**2 * jnp.sum(U**2, axis=(1, 2)))


def principal_angles(A, B) -> np.ndarray:
  """Principal angles (radians, ascending) between span(A) and span(B).

  A: (..., D, p), B: (..., D, q) -> (..., min(p, q)). Cosines are the singular values of QAᵀQB
  for orthonormal bases QA, QB; small angles are taken from sines (of (I − QA QAᵀ) QB) because
  arccos is ill-conditioned near 1. Float64 numpy.
  """
  qa, _ = np.linalg.qr(np.asarray(A, np.float64))
  qb, _ = np.linalg.qr(np.asarray(B, np.float64))
  if qa.shape[-1] < qb.shape[-1]:
    qa, qb = qb, qa  # angles are symmetric; the sine formula needs q <= p
  cos = np.linalg.svd(np.swapaxes(qa, -1, -2) @ qb, compute_uv=False)  # descending
  residual = qb - qa @ (np.swapaxes(qa, -1, -2) @ qb)
  sin = np.linalg.svd(residual, compute_uv=False)[..., ::-1]  # ascending, paired with cos
  cos = np.clip(cos, 0.0, 1.0)
  sin = np.clip(sin, 0.0, 1.0)
  return np.where(cos > np.sqrt(0.5), np.arcsin(sin), np.arccos(cos))


# --- docs/method.md §13.3, §14.5: invariance diagnostics -------------------------------------

def invariance_ratio(r) -> float:
  """IR = E_x tr Cov_α(r) / tr Cov_{x,α}(r) for r: (N inputs, M augmentations, d) (§14.5).

  0 for augmentation-invariant r, ≈1 when r ignores x. Population (ddof=0) covariances, so by the
  law of total variance IR ∈ [0, 1].
  """
  r = np.asarray(r, np.float64)
  within = r.var(axis=1).sum(axis=-1).mean()
  total = r.reshape(-1, r.shape[-1]).var(axis=0).sum()
  return float(within / total)


def conditional_variance_sketch(key, r, num_probes: int = 10) -> float:
  """InvCLR conditional variance E_x Var_α(εᵀ r̂), mean over Rademacher probes ε (§13.3).

  r: (N, M, d); r̂ is r L2-normalised over d. In expectation over ε this is E_x tr Cov_α(r̂).
  """
  r = jnp.asarray(r, jnp.float32)
  r_hat = l2_normalize(r)
  eps = jax.random.rademacher(key, (num_probes, r.shape[-1]), dtype=jnp.float32)
  proj = jnp.einsum("nmd,pd->pnm", r_hat, eps)
  return float(jnp.mean(jnp.var(proj, axis=-1)))


def nuisance_decodability(train_r, train_alpha, test_r, test_alpha, l2: float = 1e-8) -> np.ndarray:
  """α-decodability (docs/method.md §13): test MSE / Var(α) per nuisance dimension, 1 = undecodable.

  The closed-form ridge probe of `regression.py` (mean squared error + l2·‖W‖², unpenalised bias,
  float64). train_r (N, d), train_alpha (N, P), test_r (M, d), test_alpha (M, P) -> (P,).
  """
  train_alpha = np.asarray(train_alpha, np.float64).reshape(len(train_r), -1)
  test_alpha = np.asarray(test_alpha, np.float64).reshape(len(test_r), -1)
  params = regression.fit_linear_regression(train_r, train_alpha, l2)
  mse = np.mean((regression.predict(params, test_r) - test_alpha) ** 2, axis=0)
  return mse / test_alpha.var(axis=0)


# --- docs/method.md §14: one report per checkpoint --------------------------------------------

def _l2_normalize(x):
  return np.asarray(l2_normalize(jnp.asarray(x, jnp.float32)), np.float64)


def geometry_report(h, z, *, jacobians=None, aug_tangents=None, data_tangents=None,
                    h_aug=None, z_aug=None, key=None, num_random: int | None = None) -> dict:
  """Assembles the geometry probe for one checkpoint from precomputed arrays (docs/method.md §14).

  Args:
    h: (N, D) encoder features; z: (N, K) projector outputs.
    jacobians: optional (N, K, D) projector Jacobians G_x at h.
    aug_tangents: optional (N, D, r_a) augmentation tangents (in h space).
    data_tangents: optional (N, D, r_d) data-manifold tangents (in h space).
    h_aug, z_aug: optional (N, M, D) / (N, M, K) encodings of M augmentations of each input.
    key: PRNG key for the random-direction reference (needed with `jacobians`).
    num_random: number of random directions (default: r_a, else r_d, else 1).

  Returns:
    JSON-serialisable dict: spectra of "encoder", "projector", "projector_normalized"; with
    jacobians, mean `retention` / `relative_retention` of aug / data / random directions and mean
    principal angles (degrees) between G_x's top right-singular subspace and each tangent; with
    augmented encodings, invariance ratios for h, z and ẑ.
  """
  report = dict(spectra=dict(encoder=spectrum_summary(h), projector=spectrum_summary(z),
                             projector_normalized=spectrum_summary(_l2_normalize(z))))
  if jacobians is not None:
    G = jnp.asarray(jacobians, jnp.float32)
    n, _, d = G.shape
    tangents = {}
    if aug_tangents is not None:
      tangents["aug"] = jnp.asarray(aug_tangents, jnp.float32)
    if data_tangents is not None:
      tangents["data"] = jnp.asarray(data_tangents, jnp.float32)
    if num_random is None:
      num_random = next(iter(tangents.values())).shape[-1] if tangents else 1
    if key is None:
      raise ValueError("geometry_report needs `key` for the random-direction reference when "
                       "`jacobians` are given.")
    tangents["random"] = random_directions(key, n, d, num_random)
    report["retention"] = {name: float(jnp.mean(retention(G, u))) for name, u in tangents.items()}
    report["relative_retention"] = {name: float(jnp.mean(relative_retention(G, u)))
                                    for name, u in tangents.items()}
    report["principal_angles_deg"] = {}
    for name in ("aug", "data"):
      if name in tangents:
        retained = _top_right_singular(G, tangents[name].shape[-1])
        angles = principal_angles(retained, tangents[name])
        report["principal_angles_deg"][name] = np.degrees(angles.mean(axis=0)).tolist()
  if h_aug is not None:
    report["invariance_ratio"] = dict(encoder=invariance_ratio(h_aug))
  if z_aug is not None:
    report.setdefault("invariance_ratio", {})
    report["invariance_ratio"]["projector"] = invariance_ratio(z_aug)
    report["invariance_ratio"]["projector_normalized"] = invariance_ratio(_l2_normalize(z_aug))
  return report
