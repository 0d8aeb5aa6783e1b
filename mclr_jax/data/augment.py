"""SimCLR image augmentations on device, in JAX (docs/method.md §7, §11).

Every function is a pure function of a batch `images (B, H, W, 3)` (uint8 in [0, 255] or float in
[0, 1]) and, where random, an explicit `jax.random` key; all of them jit and act independently per
image. The pipeline of docs/method.md §7 is `simclr_augment`:

  ColorJitter(0.4, 0.4, 0.4, 0.1) w.p. 0.8 → RandomGrayscale w.p. 0.1 → RandomResizedCrop
  (scale (0.2, 1), ratio (3/4, 4/3), bicubic) → horizontal flip w.p. 0.5 → Normalize.

Deviations from torchvision, all deliberate:
- Colour jitter applies its four ops in the fixed order brightness → contrast → saturation → hue and
  shifts hue by a rotation of the chroma plane in YIQ space (docs/method.md §11.3). torchvision
  draws a random op order per image and shifts hue in HSV space, which is piecewise and not differentiable
  in the factor. The YIQ version is smooth in the four factors, which the invariance regulariser
  needs (it differentiates the representation with respect to them), and both papers' JAX port
  uses it for SimCLR training too, so one colour model serves both.
- RandomResizedCrop draws a fixed number of candidate boxes in parallel and keeps the first valid
  one, falling back to torchvision's central crop, instead of a Python retry loop (see
  `sample_crop_boxes`). With 10 candidates this is the same distribution as torchvision's 10 tries.
- Bicubic resampling is `jax.image.scale_and_translate(method="cubic")` (Keys kernel, a = −0.5, as
  PIL's bicubic) with antialiasing when shrinking (as PIL), followed by a clip to [0, 1].
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax.data.datasets import DatasetInfo

# ITU-R BT.601 luma, used by torchvision's rgb_to_grayscale and by the contrast/saturation blends.
LUMA = (0.299, 0.587, 0.114)

# NTSC RGB → YIQ; the inverse is taken numerically so that a zero hue rotation is the identity to
# float precision.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)

_HIGHEST = jax.lax.Precision.HIGHEST


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] → float32 [0, 1]; float input is cast to float32 unchanged. Shape kept."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def grayscale(images: jax.Array) -> jax.Array:
  """Per-pixel luma `(..., 3) -> (...)` with the BT.601 weights `LUMA`."""
  x = to_float(images)
  return x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]


def _per_image(factor: jax.Array) -> jax.Array:
  """(B,) → (B, 1, 1, 1) for broadcasting against (B, H, W, 3)."""
  return jnp.asarray(factor, jnp.float32)[:, None, None, None]


def hue_matrices(hue: jax.Array) -> jax.Array:
  """RGB → RGB matrices `(B, 3, 3)` rotating the YIQ chroma (I, Q) by 2π·hue (docs/method.md §11.3).

  I' = I cos θ − Q sin θ, Q' = I sin θ + Q cos θ, Y unchanged; `hue` is `(B,)` in turns.
  """
  theta = 2.0 * jnp.pi * jnp.asarray(hue, jnp.float32)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  one, zero = jnp.ones_like(theta), jnp.zeros_like(theta)
  rotation = jnp.stack([
      jnp.stack([one, zero, zero], -1),
      jnp.stack([zero, cos, -sin], -1),
      jnp.stack([zero, sin, cos], -1),
  ], axis=-2)  # (B, 3, 3) acting on (Y, I, Q)
  to_yiq = jnp.asarray(_RGB_TO_YIQ, jnp.float32)
  to_rgb = jnp.asarray(_YIQ_TO_RGB, jnp.float32)
  return jnp.einsum("ij,bjk,kl->bil", to_rgb, rotation, to_yiq, precision=_HIGHEST)


def color_jitter(images: jax.Array, brightness: jax.Array, contrast: jax.Array,
                 saturation: jax.Array, hue: jax.Array) -> jax.Array:
  """Differentiable colour jitter with explicit per-image factors (docs/method.md §11).

  Fixed order brightness → contrast → saturation → hue, each followed by a clip to [0, 1]:
  brightness multiplies; contrast blends with the image's mean luma; saturation blends with the
  per-pixel luma; hue rotates the YIQ chroma by 2π·hue. Factors (1, 1, 1, 0) are the identity.
  torchvision instead randomises the op order and shifts hue in HSV; this is the smooth stand-in
  (see the module docstring).

  Args:
    images: (B, H, W, 3) uint8 or float in [0, 1].
    brightness, contrast, saturation: (B,) multiplicative factors (1 = unchanged).
    hue: (B,) rotation in turns (0 = unchanged; torchvision's range is [−0.5, 0.5]).

  Returns:
    (B, H, W, 3) float32 in [0, 1], differentiable in the images and all four factors.
  """
  x = to_float(images)
  x = jnp.clip(x * _per_image(brightness), 0.0, 1.0)
  mean_luma = jnp.mean(grayscale(x), axis=(1, 2))[:, None, None, None]
  c = _per_image(contrast)
  x = jnp.clip(c * x + (1.0 - c) * mean_luma, 0.0, 1.0)
  s = _per_image(saturation)
  x = jnp.clip(s * x + (1.0 - s) * grayscale(x)[..., None], 0.0, 1.0)
  x = jnp.einsum("bhwc,bdc->bhwd", x, hue_matrices(hue), precision=_HIGHEST)
  return jnp.clip(x, 0.0, 1.0)


def sample_jitter_params(key: jax.Array, batch: int,
                         strength: Sequence[float] = (0.4, 0.4, 0.4, 0.1)) -> dict[str, jax.Array]:
  """Draws the four colour-jitter factors, each `(B,)` float32 (torchvision's ranges, method.md §7).

  brightness, contrast, saturation ~ U(max(0, 1 − s), 1 + s); hue ~ U(−s_h, s_h).

  Returns:
    {"brightness", "contrast", "saturation", "hue"}, the keyword arguments of `color_jitter`.
  """
  s_b, s_c, s_s, s_h = strength
  keys = jax.random.split(key, 4)
  def uniform(k, low, high):
    return jax.random.uniform(k, (batch,), jnp.float32, low, high)
  return {
      "brightness": uniform(keys[0], max(0.0, 1.0 - s_b), 1.0 + s_b),
      "contrast": uniform(keys[1], max(0.0, 1.0 - s_c), 1.0 + s_c),
      "saturation": uniform(keys[2], max(0.0, 1.0 - s_s), 1.0 + s_s),
      "hue": uniform(keys[3], -s_h, s_h),
  }


def random_grayscale(key: jax.Array, images: jax.Array, prob: float) -> jax.Array:
  """Replaces each image by its luma (copied to 3 channels) with probability `prob`.

  images: (B, H, W, 3) → (B, H, W, 3) float32.
  """
  x = to_float(images)
  apply = jax.random.bernoulli(key, prob, (x.shape[0],))
  gray = jnp.broadcast_to(grayscale(x)[..., None], x.shape)
  return jnp.where(apply[:, None, None, None], gray, x)


def random_flip(key: jax.Array, images: jax.Array, prob: float = 0.5) -> jax.Array:
  """Mirrors each image left↔right with probability `prob`. images: (B, H, W, C), dtype kept."""
  flip = jax.random.bernoulli(key, prob, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def sample_crop_boxes(key: jax.Array, batch: int, height: int, width: int,
                      scale: Sequence[float] = (0.2, 1.0),
                      ratio: Sequence[float] = (3 / 4, 4 / 3),
                      num_candidates: int = 10) -> tuple[jax.Array, ...]:
  """RandomResizedCrop boxes with torchvision's distribution, vectorised (docs/method.md §7).

  Per image, `num_candidates` boxes are drawn at once: area fraction ~ U(scale), aspect ratio w/h
  log-uniform in `ratio`, w = round(√(area·r)), h = round(√(area/r)). The first candidate that fits
  in the image is kept, as torchvision's retry loop would; if none fits, torchvision's fallback is
  used: the largest centred box whose ratio is clamped into `ratio`. The offset is uniform over
  the valid positions.

  Returns:
    (top, left, crop_height, crop_width), each (B,) int32.
  """
  key_area, key_ratio, key_top, key_left = jax.random.split(key, 4)
  shape = (batch, num_candidates)
  area = height * width * jax.random.uniform(key_area, shape, minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(
      key_ratio, shape, minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(valid, axis=1)  # index of the first True (0 if none, handled below)
  any_valid = jnp.any(valid, axis=1)
  h = jnp.take_along_axis(h, first[:, None], axis=1)[:, 0]
  w = jnp.take_along_axis(w, first[:, None], axis=1)[:, 0]

  # torchvision's fallback central crop (static: depends on the shape only).
  in_ratio = width / height
  if in_ratio < min(ratio):
    fallback_w, fallback_h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fallback_w, fallback_h = int(round(height * max(ratio))), height
  else:
    fallback_w, fallback_h = width, height
  h = jnp.where(any_valid, h, fallback_h)
  w = jnp.where(any_valid, w, fallback_w)

  # Uniform integer offsets in [0, H − h], as torch.randint(0, H − h + 1).
  top = jnp.floor(jax.random.uniform(key_top, (batch,)) * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(key_left, (batch,)) * (width - w + 1)).astype(jnp.int32)
  top = jnp.where(any_valid, jnp.minimum(top, height - h), (height - h) // 2)
  left = jnp.where(any_valid, jnp.minimum(left, width - w), (width - w) // 2)
  return top, left, h, w


def crop_and_resize(images: jax.Array, top: jax.Array, left: jax.Array, crop_height: jax.Array,
                    crop_width: jax.Array, out_size: int) -> jax.Array:
  """Bicubic crop+resize of one box per image in a single resampling op.

  `jax.image.scale_and_translate` maps the box [top, top + h) × [left, left + w) onto the
  out_size × out_size output, antialiasing when it shrinks (as PIL does); the result is clipped to
  [0, 1] because the cubic kernel overshoots.

  Args:
    images: (B, H, W, 3); top, left, crop_height, crop_width: (B,) ints; out_size: output side.

  Returns:
    (B, out_size, out_size, 3) float32.
  """
  x = to_float(images)
  scale = jnp.stack([out_size / crop_height, out_size / crop_width], axis=-1).astype(jnp.float32)
  translation = -jnp.stack([top, left], axis=-1).astype(jnp.float32) * scale

  def resample(image, scale, translation):
    return jax.image.scale_and_translate(
        image, (out_size, out_size, image.shape[-1]), (0, 1), scale, translation,
        method="cubic", antialias=True)

  return jnp.clip(jax.vmap(resample)(x, scale, translation), 0.0, 1.0)


def random_resized_crop(key: jax.Array, images: jax.Array, out_size: int,
                        scale: Sequence[float] = (0.2, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """torchvision RandomResizedCrop (bicubic): (B, H, W, 3) → (B, out_size, out_size, 3) float32.

  Boxes from `sample_crop_boxes` (vectorised retries, see there), resampled by `crop_and_resize`.
  """
  batch, height, width = images.shape[:3]
  boxes = sample_crop_boxes(key, batch, height, width, scale, ratio)
  return crop_and_resize(images, *boxes, out_size=out_size)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """(x − mean) / std per channel; uint8 input is first scaled to [0, 1]. (..., 3) float32."""
  x = to_float(images)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def simclr_augment(key: jax.Array, images: jax.Array, *, out_size: int, mean: Sequence[float],
                   std: Sequence[float],
                   jitter_strength: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
                   jitter_prob: float = 0.8, grayscale_prob: float = 0.1,
                   crop_scale: Sequence[float] = (0.2, 1.0),
                   crop_ratio: Sequence[float] = (0.75, 4 / 3),
                   flip_prob: float = 0.5) -> jax.Array:
  """One SimCLR view per image, in the order of docs/method.md §7.

  jitter (w.p. `jitter_prob`) → grayscale (w.p. `grayscale_prob`) → random resized crop to
  `out_size` → horizontal flip (w.p. `flip_prob`) → normalise with `mean`/`std`.

  Args:
    key: PRNG key; images: (B, H, W, 3) uint8 or float in [0, 1].

  Returns:
    (B, out_size, out_size, 3) float32, normalised.
  """
  key_factors, key_apply, key_gray, key_crop, key_flip = jax.random.split(key, 5)
  x = to_float(images)
  batch = x.shape[0]
  factors = sample_jitter_params(key_factors, batch, jitter_strength)
  apply = jax.random.bernoulli(key_apply, jitter_prob, (batch,))
  x = jnp.where(apply[:, None, None, None], color_jitter(x, **factors), x)
  x = random_grayscale(key_gray, x, grayscale_prob)
  x = random_resized_crop(key_crop, x, out_size, crop_scale, crop_ratio)
  x = random_flip(key_flip, x, flip_prob)
  return normalize(x, mean, std)


def two_views(key: jax.Array, images: jax.Array, **kwargs) -> tuple[jax.Array, jax.Array]:
  """Two independent `simclr_augment` views (docs/method.md §7); kwargs as `simclr_augment`.

  Returns:
    (x0, x1), each (B, out_size, out_size, 3) float32.
  """
  key0, key1 = jax.random.split(key)
  return simclr_augment(key0, images, **kwargs), simclr_augment(key1, images, **kwargs)


def eval_preprocess(images: jax.Array, info: DatasetInfo) -> jax.Array:
  """Deterministic probe/test transform of docs/method.md §7: (B, H, W, 3) → (B, S, S, 3) float32.

  STL-10 (`info.eval_resize` set): bicubic resize to eval_resize (70), center crop to
  `info.image_size` (64), normalise. Other datasets: normalise only (size unchanged).
  """
  x = to_float(images)
  if info.eval_resize is not None:
    batch, _, _, channels = x.shape
    size = info.eval_resize
    x = jax.image.resize(x, (batch, size, size, channels), method="cubic", antialias=True)
    x = jnp.clip(x, 0.0, 1.0)
    # torchvision CenterCrop: offset round((size − crop) / 2).
    offset = int(round((size - info.image_size) / 2.0))
    x = x[:, offset:offset + info.image_size, offset:offset + info.image_size]
  return normalize(x, info.mean, info.std)
