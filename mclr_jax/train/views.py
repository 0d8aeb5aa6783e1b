"""Two views of a batch, made on the device inside the jitted step (docs/method.md §1, §7, §10).

View 0 is returned as a function of its nuisance parameters α so that the gradient-penalty
regulariser (docs/method.md §11) can differentiate the representation with respect to α. Without the
penalty the same function is simply called once.
  * Spirograph: α is the rendered nuisance (h and the colours); the view is render(θ, α).
  * Images, no penalty: both views are the SimCLR augmentation of docs/method.md §7 (α unused).
  * Images with the penalty: crop and flip are drawn first and stay fixed, α = the four colour-jitter
    factors, applied with probability `jitter_prob`, then grayscale; the differentiable colour ops
    are those of docs/method.md §11.3. (Crop-then-jitter differs from §7's jitter-then-crop only
    through the contrast op's image mean.)
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from mclr_jax.data import augment
from mclr_jax.data import spirograph
from mclr_jax.data.datasets import get_dataset_info


class Views(NamedTuple):
  view0_fn: Callable[[jax.Array], jax.Array]  # α (B, p) -> x0 (B, H, W, 3)
  alpha0: jax.Array  # (B, p)
  sample_alpha: Callable[[jax.Array, tuple], jax.Array]  # (key, shape) -> shape + (p,)
  x1: jax.Array  # (B, H, W, 3)


def spirograph_ranges(data: ml_collections.ConfigDict) -> dict:
  """The parameter ranges of config.data (docs/method.md §10 table, with optional overrides)."""
  ranges = dict(spirograph.DEFAULT_RANGES)
  for name, value in dict(data.get("ranges", {}) or {}).items():
    ranges[name] = tuple(value)
  return ranges


def simclr_options(data: ml_collections.ConfigDict) -> dict:
  """The keyword arguments of `augment.simclr_augment` for config.data (docs/method.md §7)."""
  info = get_dataset_info(data.name)
  return dict(out_size=info.image_size, mean=info.mean, std=info.std,
              jitter_strength=tuple(data.jitter_strength), jitter_prob=data.jitter_prob,
              grayscale_prob=data.grayscale_prob, crop_scale=tuple(data.crop_scale),
              crop_ratio=tuple(data.crop_ratio), flip_prob=data.flip_prob)


def make_views(key: jax.Array, batch: dict, config: ml_collections.ConfigDict,
               differentiable: bool = False) -> Views:
  """Builds the two views of `batch` ({"theta": (B, n_c)} or {"image": (B, H, W, 3)})."""
  data = config.data
  k0, k1 = jax.random.split(key)
  if data.name == "spirograph":
    ranges = spirograph_ranges(data)
    content = tuple(data.content)
    sample_alpha = lambda k, shape: spirograph.sample_nuisance(k, shape, ranges, content)
    theta = batch["theta"]
    batch_size = theta.shape[0]
    alpha0, alpha1 = sample_alpha(k0, (batch_size,)), sample_alpha(k1, (batch_size,))
    view0_fn = lambda a: spirograph.render(spirograph.merge_params(theta, a, content),
                                           normalization=data.normalization)
    x1 = view0_fn(alpha1)
    return Views(view0_fn, alpha0, sample_alpha, x1)

  info = get_dataset_info(data.name)
  images = batch["image"]
  batch_size = images.shape[0]
  kwargs = simclr_options(data)
  x1 = augment.simclr_augment(k1, images, **kwargs)
  strength = tuple(data.jitter_strength)
  sample_alpha = lambda k, shape: _jitter_alpha(k, shape, strength)
  if not differentiable:
    x0 = augment.simclr_augment(k0, images, **kwargs)
    return Views(lambda a: x0, jnp.zeros((batch_size, 4)), sample_alpha, x1)

  k_crop, k_flip, k_apply, k_gray, k_alpha = jax.random.split(k0, 5)
  base = augment.random_resized_crop(k_crop, images, info.image_size, scale=tuple(data.crop_scale),
                                     ratio=tuple(data.crop_ratio))
  base = augment.random_flip(k_flip, base, data.flip_prob)
  apply_jitter = jax.random.bernoulli(k_apply, data.jitter_prob, (batch_size,))
  gray_key = k_gray

  def view0_fn(alpha):
    jittered = augment.color_jitter(base, alpha[:, 0], alpha[:, 1], alpha[:, 2], alpha[:, 3])
    # Samples that skip the jitter get zero gradient in α (docs/method.md §11).
    x = jnp.where(apply_jitter[:, None, None, None], jittered, base)
    x = augment.random_grayscale(gray_key, x, data.grayscale_prob)
    return augment.normalize(x, info.mean, info.std)

  return Views(view0_fn, sample_alpha(k_alpha, (batch_size,)), sample_alpha, x1)


def _jitter_alpha(key, shape, strength):
  """(brightness, contrast, saturation, hue) factors ~ U(1 ± s) and U(±s_hue): shape + (4,)."""
  lo = jnp.array([1 - strength[0], 1 - strength[1], 1 - strength[2], -strength[3]])
  hi = jnp.array([1 + strength[0], 1 + strength[1], 1 + strength[2], strength[3]])
  return jax.random.uniform(key, tuple(shape) + (4,), minval=lo, maxval=hi)
