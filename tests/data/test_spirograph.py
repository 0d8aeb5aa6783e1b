"""Spirograph renderer and sampling (docs/method.md §10) against an independent numpy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mclr_jax.data import spirograph as sp


def reference_render(params, normalization):
  """docs/method.md §10 written out pixel by pixel in float64 numpy (no code shared with render)."""
  m, b, h, sigma, r_f, r_b, g_f, g_b, b_f, b_b = [float(v) for v in params]
  t = np.linspace(0.0, 2.0 * np.pi, 40)
  x = (m - h) * np.cos(t) + h * np.cos((m - h) * t / b)
  y = (m - h) * np.sin(t) - h * np.sin((m - h) * t / b)
  grid = np.linspace(-6.0, 6.0, 32)
  v = np.zeros((32, 32))
  for i in range(32):
    for j in range(32):
      v[i, j] = np.mean(np.exp(-((grid[i] - x) ** 2 + (grid[j] - y) ** 2) / sigma))
  if normalization == "row":
    for i in range(32):
      v[i] = v[i] / (v[i].max() + 1e-8)
  else:
    v = v / (v.max() + 1e-8)
  fore, back = np.array([r_f, g_f, b_f]), np.array([r_b, g_b, b_b])
  return v[..., None] * fore + (1.0 - v[..., None]) * back


@pytest.mark.parametrize("normalization", ["row", "image"])
def test_render_matches_numpy_reference(normalization):
  params = sp.sample_params(jax.random.key(0), 3)
  with jax.enable_x64(True):
    images = np.asarray(sp.render(jnp.asarray(np.asarray(params), jnp.float64), normalization))
  for p, image in zip(np.asarray(params, np.float64), images):
    np.testing.assert_allclose(image, reference_render(p, normalization), atol=1e-10)


def test_render_float32_close_to_reference_and_in_unit_interval():
  params = sp.sample_params(jax.random.key(1), 16)
  images = np.asarray(sp.render(params))
  chex.assert_shape(images, (16, 32, 32, 3))
  assert images.min() >= 0.0 and images.max() <= 1.0
  np.testing.assert_allclose(images[0], reference_render(np.asarray(params[0]), "row"), atol=2e-5)


def test_row_axis_is_x():
  # m = 2, h = 1, b = 1 gives x = 2 cos t and y = 0: a segment along the x axis. Pixel (i, j) is
  # (x = g_i, y = g_j), so the segment must light a stretch of rows in one column; a transposed
  # image would light a stretch of columns in one row instead.
  params = jnp.array([[2.0, 1.0, 1.0, 0.25, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
  v = np.asarray(sp.density(params, normalization="image"))[0]
  grid = np.linspace(-6, 6, 32)
  centre = np.argmin(np.abs(grid))  # the column nearest y = 0
  on_segment = np.abs(grid) <= 1.5
  # Along the row axis (x), pixels on the segment are bright; away from it (|x| >= 3.5) dark.
  assert v[on_segment, centre].min() > 0.5
  assert v[np.abs(grid) >= 3.5, centre].max() < 1e-3
  # Along the column axis (y), brightness falls off within a few pixels of y = 0.
  assert v[centre, np.abs(grid) >= 2.0].max() < 1e-3


def test_gradients_in_all_params_match_finite_differences():
  with jax.enable_x64(True):
    params = jnp.asarray(np.asarray(sp.sample_params(jax.random.key(2), 1))[0], jnp.float64)
    weights = jax.random.normal(jax.random.key(3), (32, 32, 3), jnp.float64)
    step = 1e-6
    shifts = step * jnp.eye(10, dtype=jnp.float64)
    for normalization in ("row", "image"):
      loss = lambda p: jnp.sum(weights * sp.render(p, normalization))  # pylint: disable=cell-var-from-loop
      grad = np.asarray(jax.jit(jax.grad(loss))(params))
      batched = jax.jit(jax.vmap(loss))
      fd = np.asarray((batched(params + shifts) - batched(params - shifts)) / (2 * step))
      np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
      assert np.all(grad != 0.0), "every parameter must influence the image"


def test_sampling_is_seeded_and_within_ranges():
  a = np.asarray(sp.sample_params(jax.random.key(4), 256))
  b = np.asarray(sp.sample_params(jax.random.key(4), 256))
  c = np.asarray(sp.sample_params(jax.random.key(5), 256))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).min(axis=0).max() > 0 and not np.allclose(a, c)
  lo = np.array([sp.DEFAULT_RANGES[n][0] for n in sp.PARAM_NAMES])
  hi = np.array([sp.DEFAULT_RANGES[n][1] for n in sp.PARAM_NAMES])
  assert np.all(a >= lo) and np.all(a <= hi)
  # Each column fills its range: the sample mean is within 4 standard errors of the midpoint.
  np.testing.assert_array_less(np.abs(a.mean(0) - (lo + hi) / 2),
                               4 * (hi - lo) / np.sqrt(12 * 256))


def test_split_merge_round_trip_and_nuisance_order():
  params = sp.sample_params(jax.random.key(6), 5)
  theta, alpha = sp.split_params(params)
  chex.assert_shape((theta, alpha), [(5, 4), (5, 6)])
  assert sp.nuisance_names() == ("h", "r_back", "g_fore", "g_back", "b_fore", "b_back")
  np.testing.assert_array_equal(np.asarray(alpha[:, 0]), np.asarray(params[:, 2]))  # h
  np.testing.assert_array_equal(np.asarray(sp.merge_params(theta, alpha)), np.asarray(params))
  content = ("b_back", "h")  # any split works, in any order
  t2, a2 = sp.split_params(params, content)
  np.testing.assert_array_equal(np.asarray(t2[:, 0]), np.asarray(params[:, 9]))
  np.testing.assert_array_equal(np.asarray(sp.merge_params(t2, a2, content)), np.asarray(params))


def test_views_share_theta_and_differ_in_alpha():
  theta, _ = sp.split_params(sp.sample_params(jax.random.key(7), 4))
  images, alphas = sp.make_views(jax.random.key(8), theta, num_views=3)
  chex.assert_shape((images, alphas), [(3, 4, 32, 32, 3), (3, 4, 6)])
  # Re-rendering (θ, α_v) reproduces each view, so the views are exactly the stated parameters.
  params = sp.merge_params(theta, alphas)
  np.testing.assert_allclose(np.asarray(sp.render(params)), np.asarray(images), atol=1e-6)
  stored_theta, stored_alpha = sp.split_params(params)
  for v in range(3):
    np.testing.assert_array_equal(np.asarray(stored_theta[v]), np.asarray(theta))
  assert np.all(np.abs(np.asarray(stored_alpha[0] - stored_alpha[1])) > 0)


def test_save_load_split_round_trip(tmp_path):
  params = np.asarray(sp.sample_params(jax.random.key(9), 6))
  images = np.asarray(sp.render(params))
  path = str(tmp_path / "split.npz")
  sp.save_split(path, params, images)
  loaded = sp.load_split(path)
  np.testing.assert_array_equal(loaded["params"], params)
  np.testing.assert_array_equal(loaded["sigma"], params[:, 3])
  np.testing.assert_array_equal(loaded["images"], images)


def test_save_grid_png_writes_image(tmp_path):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  images = np.asarray(sp.render(sp.sample_params(jax.random.key(10), 5)))
  path = str(tmp_path / "grid.png")
  sp.save_grid_png(path, images, nrow=4)
  grid = matplotlib.image.imread(path)
  assert grid.shape[:2] == (2 * 33 + 1, 4 * 33 + 1)
  np.testing.assert_allclose(grid[1:33, 1:33, :3], images[0], atol=1 / 255 + 1e-6)


def test_range_helpers():
  wide = sp.widen_ranges(sp.DEFAULT_RANGES, 0.2)
  assert wide["r_back"] == pytest.approx((-0.2, 0.8)) and wide["h"] == sp.DEFAULT_RANGES["h"]
  assert sp.shift_range(sp.DEFAULT_RANGES, "h", 0.5)["h"] == pytest.approx((1.0, 3.0))
  for name, rng in sp.scaled_nuisance_ranges(1.0).items():
    assert rng == pytest.approx(sp.DEFAULT_RANGES[name]), name
  assert sp.scaled_nuisance_ranges(0.5)["h"] == pytest.approx((1.0, 2.0))
  alpha = np.asarray(sp.sample_nuisance(jax.random.key(11), (500,), wide))
  assert alpha[:, 1].min() < 0.0 and alpha[:, 1].max() > 0.6  # r_back uses the widened range


@pytest.mark.parametrize("bad, match", [
    ({**sp.DEFAULT_RANGES, "h": (2.0, 1.0)}, "lo > hi"),
    ({**sp.DEFAULT_RANGES, "height": (0.0, 1.0)}, "Unknown"),
    ({k: v for k, v in sp.DEFAULT_RANGES.items() if k != "m"}, "missing"),
])
def test_bad_ranges_raise(bad, match):
  with pytest.raises(ValueError, match=match):
    sp.sample_params(jax.random.key(0), 2, bad)


def test_bad_normalization_raises():
  with pytest.raises(ValueError, match="normalization"):
    sp.render(jnp.ones((10,)), normalization="column")


class RenderVariantsTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("row", "image")
  def test_render_same_under_jit(self, normalization):
    params = sp.sample_params(jax.random.key(12), 2)
    render = self.variant(lambda p: sp.render(p, normalization))
    np.testing.assert_allclose(np.asarray(render(params)),
                               np.asarray(jax.vmap(lambda p: sp.render(p, normalization))(params)),
                               atol=1e-6)
