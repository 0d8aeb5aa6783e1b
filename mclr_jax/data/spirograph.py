"""The Spirograph dataset: a differentiable renderer, seeded parameter sampling, and fixed splits.

Implements docs/method.md §10. An image is a function of 10 scalars, split into content θ (the
regression target) and nuisance α (the transformation). Only θ is stored for training; every view
renders θ again with a fresh α ~ p(α), so the two positives share θ and have independent α.

Everything is pure JAX: `render` is jittable, vmap-able and differentiable in all 10 parameters,
which is what the gradient-penalty regulariser (docs/method.md §11) and the geometry probe (§14)
need.
The canonical column order of a parameter vector is `PARAM_NAMES`.
"""

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PARAM_NAMES = ("m", "b", "h", "sigma", "r_fore", "r_back", "g_fore", "g_back", "b_fore", "b_back")

# docs/method.md §10 table: every parameter is drawn independently from U(lo, hi).
DEFAULT_RANGES = {
    "m": (2.0, 5.0),
    "b": (0.1, 1.1),
    "h": (0.5, 2.5),
    "sigma": (0.25, 1.0),
    "r_fore": (0.4, 1.0),
    "r_back": (0.0, 0.6),
    "g_fore": (0.4, 1.0),
    "g_back": (0.0, 0.6),
    "b_fore": (0.4, 1.0),
    "b_back": (0.0, 0.6),
}

# docs/method.md §10: θ = (m, b, σ, f_r) is the content and the downstream regression target.
DEFAULT_CONTENT = ("m", "b", "sigma", "r_fore")
BACKGROUND_NAMES = ("r_back", "g_back", "b_back")

NUM_POINTS = 40
IMAGE_SIZE = 32
EXTENT = 6.0


def nuisance_names(content: Sequence[str] = DEFAULT_CONTENT) -> tuple[str, ...]:
  """The names not in `content`, in canonical order (the column order of α, docs/method.md §10)."""
  _check_names(content, "content")
  return tuple(name for name in PARAM_NAMES if name not in content)


def _check_names(names: Sequence[str], what: str) -> None:
  unknown = [name for name in names if name not in PARAM_NAMES]
  if unknown:
    raise ValueError(f"Unknown Spirograph parameter(s) {unknown} in {what}; valid names are "
                     f"{PARAM_NAMES}.")
  if len(set(names)) != len(names):
    raise ValueError(f"Duplicate names in {what}: {tuple(names)}; list each parameter once.")


def _check_ranges(ranges: Mapping[str, tuple[float, float]],
                  required: Sequence[str]) -> None:
  """Raises a ValueError naming the bad entry if `ranges` is unusable for `required`."""
  _check_names(tuple(ranges), "ranges")
  missing = [name for name in required if name not in ranges]
  if missing:
    raise ValueError(f"ranges is missing {missing}; give a (lo, hi) pair for each, e.g. start "
                     "from spirograph.DEFAULT_RANGES.")
  for name in required:
    lo, hi = ranges[name]
    if not lo <= hi:
      raise ValueError(f"ranges[{name!r}] = ({lo}, {hi}) has lo > hi; swap the bounds.")


def _range_vectors(ranges, names):
  _check_ranges(ranges, names)
  lo = np.array([ranges[name][0] for name in names], np.float32)
  hi = np.array([ranges[name][1] for name in names], np.float32)
  return lo, hi


@functools.partial(jax.jit, static_argnums=3)
def _uniform(key, lo, hi, shape):
  """U(lo, hi) per last-axis column; jitted so eager callers compile once per shape."""
  return jax.random.uniform(key, shape, minval=lo, maxval=hi)


def curve(params: jax.Array, num_points: int = NUM_POINTS) -> tuple[jax.Array, jax.Array]:
  """The hypotrochoid sample points of docs/method.md §10.

  params: (..., 10) in canonical order -> (x, y), each (..., num_points).
  """
  m, b, h = params[..., 0:1], params[..., 1:2], params[..., 2:3]
  # docs/method.md §10.2: t covers [0, 2π] with both ends included, so the curve is generally not
  # closed.
  t = jnp.linspace(0.0, 2.0 * jnp.pi, num_points, dtype=params.dtype)
  x = (m - h) * jnp.cos(t) + h * jnp.cos((m - h) * t / b)
  y = (m - h) * jnp.sin(t) - h * jnp.sin((m - h) * t / b)
  return x, y


def density(params: jax.Array, normalization: str = "row", num_points: int = NUM_POINTS,
            image_size: int = IMAGE_SIZE, extent: float = EXTENT) -> jax.Array:
  """Normalised line density v in [0, 1] on the pixel grid (docs/method.md §10 rasterisation).

  params: (..., 10) -> v: (..., image_size, image_size); v[..., i, j] is at (x = g_i, y = g_j).
  """
  if normalization not in ("row", "image"):
    raise ValueError(f"normalization={normalization!r}; use 'row' (the published dataset) or "
                     "'image'.")
  x, y = curve(params, num_points)
  sigma = params[..., 3:4, None]
  grid = jnp.linspace(-extent, extent, image_size, dtype=params.dtype)
  # exp(-(dx² + dy²)/σ) factorises into an x part and a y part, so the (i, j, k) sum is an einsum
  # over k instead of a (size, size, K) broadcast.
  weight_x = jnp.exp(-(grid[:, None] - x[..., None, :]) ** 2 / sigma)  # (..., size, K)
  weight_y = jnp.exp(-(grid[:, None] - y[..., None, :]) ** 2 / sigma)
  v = jnp.einsum("...ik,...jk->...ij", weight_x, weight_y) / num_points
  if normalization == "row":
    # docs/method.md §10.3: each row i (the x coordinate) is divided by its own maximum; this is
    # what the published generator computes, so it defines the dataset.
    return v / (jnp.max(v, axis=-1, keepdims=True) + 1e-8)
  return v / (jnp.max(v, axis=(-2, -1), keepdims=True) + 1e-8)


# Jitted here so that eager calls (scripts, tests) compile once per shape instead of per op.
@functools.partial(jax.jit, static_argnames=("normalization", "num_points", "image_size", "extent"))
def render(params: jax.Array, normalization: str = "row", num_points: int = NUM_POINTS,
           image_size: int = IMAGE_SIZE, extent: float = EXTENT) -> jax.Array:
  """Renders Spirograph images (docs/method.md §10), differentiable in all 10 parameters.

  params: (..., 10) in `PARAM_NAMES` order -> images (..., image_size, image_size, 3), NHWC, the
  row axis being x ("ij" indexing). Values lie in [0, 1] whenever the colour parameters do (the
  §10 ranges); widened robustness ranges may leave it, and are deliberately not clipped.
  normalization: "row" (default, the published dataset) or "image" (per-image maximum).
  """
  params = jnp.asarray(params)
  if params.shape[-1] != len(PARAM_NAMES):
    raise ValueError(f"params has shape {params.shape}; the last axis must hold the "
                     f"{len(PARAM_NAMES)} parameters {PARAM_NAMES}.")
  if not jnp.issubdtype(params.dtype, jnp.floating):
    params = params.astype(jnp.float32)
  v = density(params, normalization, num_points, image_size, extent)[..., None]
  fore = params[..., None, None, 4::2]  # (r_fore, g_fore, b_fore)
  back = params[..., None, None, 5::2]  # (r_back, g_back, b_back)
  return v * fore + (1.0 - v) * back


def sample_params(key: jax.Array, n: int,
                  ranges: Mapping[str, tuple[float, float]] = DEFAULT_RANGES) -> jax.Array:
  """Draws n i.i.d. parameter vectors, each entry uniform on its range (docs/method.md §10), seeded.

  Returns (n, 10) float32 in canonical order.
  """
  lo, hi = _range_vectors(ranges, PARAM_NAMES)
  return _uniform(key, lo, hi, (n, len(PARAM_NAMES)))


def split_params(params: jax.Array, content: Sequence[str] = DEFAULT_CONTENT
                 ) -> tuple[jax.Array, jax.Array]:
  """Splits params (..., 10) into theta (..., n_c) (in `content` order) and alpha (..., n_a).

  alpha's columns follow canonical order (docs/method.md §10), `nuisance_names(content)`.
  """
  content_index = np.array([PARAM_NAMES.index(name) for name in content])
  nuisance_index = np.array([PARAM_NAMES.index(name) for name in nuisance_names(content)])
  return params[..., content_index], params[..., nuisance_index]


def merge_params(theta: jax.Array, alpha: jax.Array,
                 content: Sequence[str] = DEFAULT_CONTENT) -> jax.Array:
  """Inverse of `split_params`: theta (..., n_c), alpha (..., n_a) -> params (..., 10).

  Leading axes broadcast, so theta (B, n_c) with alpha (V, B, n_a) gives (V, B, 10).
  """
  nuisance = nuisance_names(content)
  if theta.shape[-1] != len(content) or alpha.shape[-1] != len(nuisance):
    raise ValueError(f"theta {theta.shape} / alpha {alpha.shape} do not match content={content} "
                     f"({len(content)} columns) and nuisance={nuisance} ({len(nuisance)}).")
  batch = jnp.broadcast_shapes(theta.shape[:-1], alpha.shape[:-1])
  dtype = jnp.result_type(theta, alpha)
  stacked = jnp.concatenate([jnp.broadcast_to(theta, batch + theta.shape[-1:]).astype(dtype),
                             jnp.broadcast_to(alpha, batch + alpha.shape[-1:]).astype(dtype)], -1)
  order = tuple(content) + nuisance
  return stacked[..., np.array([order.index(name) for name in PARAM_NAMES])]


def sample_nuisance(key: jax.Array, shape: Sequence[int],
                    ranges: Mapping[str, tuple[float, float]] = DEFAULT_RANGES,
                    content: Sequence[str] = DEFAULT_CONTENT) -> jax.Array:
  """Draws α ~ p(α) (docs/method.md §10 augmentation): returns shape + (n_a,) float32."""
  names = nuisance_names(content)
  lo, hi = _range_vectors(ranges, names)
  return _uniform(key, lo, hi, tuple(shape) + (len(names),))


def random_view(key: jax.Array, theta: jax.Array,
                ranges: Mapping[str, tuple[float, float]] = DEFAULT_RANGES,
                content: Sequence[str] = DEFAULT_CONTENT,
                normalization: str = "row") -> tuple[jax.Array, jax.Array]:
  """One view per θ with a fresh α (docs/method.md §10.4): theta (..., n_c) ->
  (images (..., 32, 32, 3), alpha (..., n_a)). `lambda k, t: random_view(k, t)[0]` is a `view_fn` for feature averaging."""
  alpha = sample_nuisance(key, theta.shape[:-1], ranges, content)
  return render(merge_params(theta, alpha, content), normalization), alpha


def make_views(key: jax.Array, theta: jax.Array, num_views: int = 2,
               ranges: Mapping[str, tuple[float, float]] = DEFAULT_RANGES,
               content: Sequence[str] = DEFAULT_CONTENT,
               normalization: str = "row") -> tuple[jax.Array, jax.Array]:
  """Renders num_views views of each θ with independent α (docs/method.md §10: positives share θ).

  theta: (B, n_c) -> images (V, B, 32, 32, 3), alphas (V, B, n_a).
  """
  alpha = sample_nuisance(key, (num_views,) + theta.shape[:-1], ranges, content)
  return render(merge_params(theta, alpha, content), normalization), alpha


# --- Shifted nuisance distributions (docs/method.md §10.5) ---

def widen_ranges(ranges: Mapping[str, tuple[float, float]], amount: float,
                 names: Sequence[str] = BACKGROUND_NAMES) -> dict:
  """Each named range (lo, hi) becomes (lo − amount, hi + amount); others are copied.

  With the defaults this is docs/method.md §13's background U(−v, 0.6 + v); names=("h",) widens h.
  """
  _check_ranges(ranges, names)
  out = dict(ranges)
  for name in names:
    lo, hi = ranges[name]
    out[name] = (lo - amount, hi + amount)
  _check_ranges(out, names)  # a negative amount may cross the bounds
  return out


def shift_range(ranges: Mapping[str, tuple[float, float]], name: str, shift: float) -> dict:
  """Moves one range by `shift` (docs/method.md §13: shift the mean of h); others are copied."""
  _check_ranges(ranges, (name,))
  out = dict(ranges)
  lo, hi = ranges[name]
  out[name] = (lo + shift, hi + shift)
  return out


def scaled_nuisance_ranges(strength: float,
                           base: Mapping[str, tuple[float, float]] = DEFAULT_RANGES) -> dict:
  """Nuisance ranges scaled about their midpoints by `strength` s (docs/method.md §10.5).

  h ∈ 1.5 ± s, backgrounds ∈ 0.3 ± 0.3 s, g_fore/b_fore ∈ 0.7 ± 0.3 s; content ranges come from
  `base`. s = 1 recovers the §10 table.
  """
  if strength < 0:
    raise ValueError(f"strength={strength} must be >= 0 (0 = no nuisance variation).")
  out = dict(base)
  half_widths = {"h": 1.0, "g_fore": 0.3, "b_fore": 0.3, "r_back": 0.3, "g_back": 0.3,
                 "b_back": 0.3}
  for name, half in half_widths.items():
    centre = 0.5 * (DEFAULT_RANGES[name][0] + DEFAULT_RANGES[name][1])
    out[name] = (centre - half * strength, centre + half * strength)
  return out


# --- Fixed splits and pictures (docs/method.md §10: saved splits with all 10 parameters) ---

def save_split(path: str, params, images=None) -> None:
  """Saves params (N, 10) as named columns (and optional images (N, 32, 32, 3)) to a .npz."""
  params = np.asarray(params)
  if params.ndim != 2 or params.shape[1] != len(PARAM_NAMES):
    raise ValueError(f"params has shape {params.shape}; expected (N, {len(PARAM_NAMES)}).")
  arrays = {name: params[:, i] for i, name in enumerate(PARAM_NAMES)}
  if images is not None:
    images = np.asarray(images)
    if images.shape[0] != params.shape[0]:
      raise ValueError(f"images has {images.shape[0]} rows but params has {params.shape[0]}.")
    arrays["images"] = images
  np.savez(path, **arrays)


def load_split(path: str) -> dict:
  """Loads a `save_split` file: {name: (N,)} for each of the 10 names, "params" (N, 10) in
  canonical order, and "images" (N, 32, 32, 3) when saved."""
  with np.load(path) as data:
    out = {name: data[name] for name in data.files}
  missing = [name for name in PARAM_NAMES if name not in out]
  if missing:
    raise ValueError(f"{path} lacks parameter column(s) {missing}; was it written by save_split?")
  out["params"] = np.stack([out[name] for name in PARAM_NAMES], axis=1)
  return out


def save_grid_png(path: str, images, nrow: int = 8, pad: int = 1) -> None:
  """Tiles images (N, H, W, 3) into rows of `nrow` with a white `pad`, clipped to [0, 1], as PNG."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top  (host-only, Agg-free writer)
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, height, width, channels = images.shape
  ncol = min(nrow, n)
  rows = -(-n // ncol)
  grid = np.ones((rows * (height + pad) + pad, ncol * (width + pad) + pad, channels), np.float32)
  for index in range(n):
    r, c = divmod(index, ncol)
    top, left = pad + r * (height + pad), pad + c * (width + pad)
    grid[top:top + height, left:left + width] = images[index]
  matplotlib.image.imsave(path, grid)
