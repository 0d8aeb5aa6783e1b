"""Tests for mclr_jax.data.augment against numpy/PIL references (docs/method.md §7, §11)."""

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.data import augment
from mclr_jax.data.datasets import DATASETS, get_dataset_info

LUMA = np.array([0.299, 0.587, 0.114])
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _images(seed, shape=(3, 8, 8, 3), low=0.0, high=1.0):
  return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _mid_range(seed, shape=(3, 8, 8, 3)):
  """Low-chroma images near 0.5: no op of the tests below pushes them outside [0, 1]."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(0.4, 0.6, shape[:-1] + (1,))
  return (base + rng.uniform(-0.05, 0.05, shape)).astype(np.float32)


def _factors(b, c, s, h, batch=3):
  return [jnp.full((batch,), v, jnp.float32) for v in (b, c, s, h)]


# Jitted once per shape: eager op-by-op dispatch compiles every primitive separately (slow on CPU).
_sample_boxes = jax.jit(augment.sample_crop_boxes, static_argnums=(1, 2, 3, 4, 5))
_crop_and_resize = jax.jit(augment.crop_and_resize, static_argnames=("out_size",))


def _numpy_hue(x, hue):
  """float64 reference: to YIQ, rotate (I, Q) by 2π·hue, back to RGB (no clip)."""
  yiq = x.astype(np.float64) @ RGB_TO_YIQ.T
  theta = 2 * np.pi * np.asarray(hue, np.float64)[:, None, None]
  i, q = yiq[..., 1], yiq[..., 2]
  yiq = np.stack([yiq[..., 0], i * np.cos(theta) - q * np.sin(theta),
                  i * np.sin(theta) + q * np.cos(theta)], -1)
  return yiq @ np.linalg.inv(RGB_TO_YIQ).T


def test_identity_factors_leave_image_unchanged():
  x = _images(0)
  out = augment.color_jitter(x, *_factors(1.0, 1.0, 1.0, 0.0))
  np.testing.assert_allclose(out, x, atol=1e-5)


def test_brightness_is_multiply_and_clip():
  x = _images(1)
  b = np.array([0.6, 1.0, 1.4], np.float32)
  # contrast 1, saturation 1 and hue 0 are the identity, so only brightness acts.
  out = augment.color_jitter(x, b, jnp.ones(3), jnp.ones(3), jnp.zeros(3))
  np.testing.assert_allclose(out, np.clip(x * b[:, None, None, None], 0, 1), atol=1e-5)


def test_contrast_blends_with_mean_luma():
  x = _images(2)
  c = np.array([0.6, 0.9, 1.3], np.float32)
  out = augment.color_jitter(x, jnp.ones(3), c, jnp.ones(3), jnp.zeros(3))
  mean = (x.astype(np.float64) @ LUMA).mean(axis=(1, 2))[:, None, None, None]
  expected = np.clip(c[:, None, None, None] * x + (1 - c[:, None, None, None]) * mean, 0, 1)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_zero_saturation_gives_luma_in_every_channel():
  x = _images(3)
  out = np.asarray(augment.color_jitter(x, *_factors(1.0, 1.0, 0.0, 0.0)))
  luma = x.astype(np.float64) @ LUMA
  for channel in range(3):
    np.testing.assert_allclose(out[..., channel], luma, atol=1e-5)


def test_grayscale_with_probability_one_matches_luma():
  x = _images(4)
  out = np.asarray(augment.random_grayscale(jax.random.key(0), x, prob=1.0))
  np.testing.assert_allclose(out, np.repeat((x @ LUMA)[..., None], 3, -1), atol=1e-6)


def test_hue_matches_float64_yiq_rotation():
  x = _mid_range(5)
  hue = np.array([-0.1, 0.03, 0.1], np.float32)
  out = augment.color_jitter(x, jnp.ones(3), jnp.ones(3), jnp.ones(3), hue)
  expected = _numpy_hue(x, hue)
  assert expected.min() > 0 and expected.max() < 1  # the clip must not act for this check
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_two_half_turns_of_hue_are_the_identity():
  x = _mid_range(6)
  half = lambda y: augment.color_jitter(y, *_factors(1.0, 1.0, 1.0, 0.5))
  np.testing.assert_allclose(half(half(x)), x, atol=1e-5)
  np.testing.assert_allclose(augment.color_jitter(x, *_factors(1.0, 1.0, 1.0, 1.0)), x, atol=1e-5)


def test_factor_gradients_match_finite_differences():
  x = _mid_range(7, (2, 6, 6, 3))
  weights = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
  factors0 = np.array([1.05, 0.95, 1.1, 0.03], np.float32)

  def loss(f):
    b, c, s, h = [jnp.broadcast_to(v, (2,)) for v in f]
    return jnp.sum(weights * augment.color_jitter(x, b, c, s, h))

  loss = jax.jit(loss)
  grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(factors0)))
  assert np.all(np.isfinite(grad))
  eps = 1e-2
  fd = np.array([(loss(factors0 + eps * e) - loss(factors0 - eps * e)) / (2 * eps)
                 for e in np.eye(4, dtype=np.float32)])
  np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=2e-2)


def test_sample_jitter_params_ranges():
  p = augment.sample_jitter_params(jax.random.key(1), 4000, strength=(0.4, 0.3, 0.2, 0.1))
  for name, (low, high) in {"brightness": (0.6, 1.4), "contrast": (0.7, 1.3),
                            "saturation": (0.8, 1.2), "hue": (-0.1, 0.1)}.items():
    v = np.asarray(p[name])
    chex.assert_shape(v, (4000,))
    assert low <= v.min() and v.max() <= high, name
    # U(low, high) has mean (low + high)/2 and std (high − low)/√12; 5 standard errors.
    assert abs(v.mean() - (low + high) / 2) < 5 * (high - low) / np.sqrt(12 * 4000), name


def test_full_crop_is_the_identity():
  x = _images(9, (2, 16, 16, 3))
  crop = jax.jit(augment.random_resized_crop, static_argnames=("out_size", "scale", "ratio"))
  out = crop(jax.random.key(2), x, out_size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(out, x, atol=1e-5)


def test_crop_without_rescaling_is_a_slice():
  x = _images(10, (2, 24, 24, 3))
  ints = lambda v: jnp.full((2,), v, jnp.int32)
  out = _crop_and_resize(x, ints(3), ints(5), ints(12), ints(12), out_size=12)
  np.testing.assert_allclose(out, x[:, 3:15, 5:17], atol=1e-5)


def test_crop_and_resize_matches_pil_bicubic():
  pil = pytest.importorskip("PIL.Image")
  yy, xx = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32), indexing="ij")
  image = np.stack([0.5 + 0.4 * np.sin(3 * xx + yy), 0.5 + 0.4 * np.cos(2 * yy), xx * yy], -1)
  image = np.round(image * 255).astype(np.uint8)
  top, left, h, w = 2, 4, 24, 20  # shrink to 16: exercises the antialiased path
  reference = np.asarray(pil.fromarray(image).resize(
      (16, 16), pil.BICUBIC, box=(left, top, left + w, top + h)), np.float32) / 255
  ints = lambda v: jnp.array([v], jnp.int32)
  out = _crop_and_resize(image[None], ints(top), ints(left), ints(h), ints(w), out_size=16)[0]
  np.testing.assert_allclose(out, reference, atol=3 / 255)


def test_crop_boxes_follow_scale_and_ratio():
  height = width = 1000  # large, so rounding h and w barely moves area and ratio
  top, left, h, w = map(np.asarray, _sample_boxes(
      jax.random.key(3), 2000, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)))
  area = h * w / (height * width)
  ratio = w / h
  assert area.min() >= 0.2 - 2e-3 and area.max() <= 1.0
  assert ratio.min() >= 3 / 4 - 1e-2 and ratio.max() <= 4 / 3 + 1e-2
  assert np.all(top >= 0) and np.all(left >= 0)
  assert np.all(top + h <= height) and np.all(left + w <= width)
  # log-ratio is symmetric about 0 and offsets spread over the whole valid range.
  assert abs(np.log(ratio).mean()) < 0.02
  assert np.mean(top / np.maximum(height - h, 1)) == pytest.approx(0.5, abs=0.05)


def test_crop_falls_back_to_torchvision_central_crop():
  # Area fractions > 1 never fit, so every image takes the fallback: a 20×40 image (ratio 2)
  # gets the largest centred box with ratio 4/3: h = 20, w = round(20·4/3) = 27.
  top, left, h, w = _sample_boxes(
      jax.random.key(4), 5, 20, 40, scale=(2.0, 3.0), ratio=(3 / 4, 4 / 3))
  np.testing.assert_array_equal(h, 20)
  np.testing.assert_array_equal(w, 27)
  np.testing.assert_array_equal(top, 0)
  np.testing.assert_array_equal(left, (40 - 27) // 2)


def test_flip_permutes_columns_at_rate_half():
  x = _images(11, (400, 4, 5, 3))
  out = np.asarray(augment.random_flip(jax.random.key(5), x))
  same = np.all(out == x, axis=(1, 2, 3))
  mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  # Binomial(400, 0.5): standard deviation of the rate is 0.025.
  assert abs(mirrored.mean() - 0.5) < 0.1


def test_normalize_uint8_matches_numpy():
  x = np.random.default_rng(12).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
  np.testing.assert_allclose(augment.normalize(x, mean, std),
                             (x / 255.0 - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)


class SimclrAugmentTest(chex.TestCase):

  @chex.variants(with_jit=True)  # as training runs it; eagerly it costs ~10 s of dispatches
  def test_constant_image_normalised_to_closed_form(self):
    """Without colour ops, crop/flip keep a constant image, so the output is (c − mean)/std."""
    colour = np.array([0.2, 0.5, 0.7], np.float32)
    x = np.broadcast_to(colour, (2, 12, 12, 3))
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    fn = self.variant(lambda k, y: augment.simclr_augment(
        k, y, out_size=8, mean=mean, std=std, jitter_prob=0.0, grayscale_prob=0.0))
    out = fn(jax.random.key(0), x)
    chex.assert_shape(out, (2, 8, 8, 3))
    chex.assert_type(out, jnp.float32)
    expected = np.broadcast_to((colour - np.array(mean)) / np.array(std), out.shape)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_simclr_augment_deterministic_in_key():
  x = np.random.default_rng(13).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
  kwargs = dict(out_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
  fn = jax.jit(lambda k: augment.two_views(k, x, **kwargs))
  x0, x1 = fn(jax.random.key(1))
  x0_again, _ = fn(jax.random.key(1))
  x0_other, _ = fn(jax.random.key(2))
  chex.assert_shape([x0, x1], (2, 8, 8, 3))
  np.testing.assert_array_equal(x0, x0_again)
  assert not np.allclose(x0, x0_other)
  assert not np.allclose(x0, x1)  # the two views are independent draws


def test_eval_preprocess_cifar_is_normalisation_only():
  info = get_dataset_info("cifar10")
  x = np.random.default_rng(14).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  expected = (x / 255.0 - np.array(info.mean)) / np.array(info.std)
  np.testing.assert_allclose(augment.eval_preprocess(x, info), expected, rtol=1e-5, atol=1e-5)


def test_eval_preprocess_stl10_matches_pil_resize_and_center_crop():
  pil = pytest.importorskip("PIL.Image")
  info = get_dataset_info("stl10")
  yy, xx = np.meshgrid(np.linspace(0, 1, 96), np.linspace(0, 1, 96), indexing="ij")
  image = np.stack([0.5 + 0.4 * np.sin(4 * xx), 0.5 + 0.4 * np.cos(3 * yy), xx * yy], -1)
  image = np.round(image * 255).astype(np.uint8)
  resized = np.asarray(pil.fromarray(image).resize((70, 70), pil.BICUBIC), np.float64) / 255
  expected = (resized[3:67, 3:67] - np.array(info.mean)) / np.array(info.std)
  out = augment.eval_preprocess(image[None], info)[0]
  chex.assert_shape(out, (64, 64, 3))
  np.testing.assert_allclose(out, expected, atol=3 / 255 / min(info.std))


def test_dataset_info_table():
  assert set(DATASETS) == {"cifar10", "cifar100", "stl10", "tinyimagenet"}
  assert get_dataset_info("stl10").train_splits == ("train", "unlabelled")
  assert get_dataset_info("tinyimagenet").test_split == "validation"
  with pytest.raises(ValueError, match="cifar10"):
    get_dataset_info("imagenet")


if __name__ == "__main__":
  absltest.main()
