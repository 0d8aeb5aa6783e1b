"""The evaluation model (docs/method.md §8.6): chunked features equal one unchunked forward pass,
feature averaging is an average of views, compilations do not grow with the number of images, and
restoring names what is missing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.data import augment
from mclr_jax.data import spirograph
from mclr_jax.data.datasets import get_dataset_info
from mclr_jax.errors import UserFacingError
from mclr_jax.evaluate import model as model_lib
from mclr_jax.train import checkpoint
from tests.evaluate.workdirs import save_untrained
from tests.tiny import tiny_image_config, tiny_spirograph_config

pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture(scope="module")
def image_model(fast_cpu_compiles):
  return model_lib.random_model(tiny_image_config("cifar10", "simclr"))


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _backbone(model, x):
  """The reference: one eval-mode forward pass of the whole batch, no chunks."""
  return model.networks.backbone.apply(model.variables("backbone"), x, train=False)


def test_chunked_features_equal_one_forward_pass_of_the_clean_images(image_model):
  images = _images(23)  # chunks of 10, 10 and a padded 3
  got = image_model.features(images, chunk_size=10)
  assert isinstance(got, jax.Array) and got.shape == (23, 32)
  assert got.devices() == {jax.local_devices()[0]}  # on the device, not a host copy
  info = get_dataset_info("cifar10")
  want = _backbone(image_model, augment.eval_preprocess(jnp.asarray(images), info))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(image_model.project(got, chunk_size=7),
                             image_model.networks.projector.apply(
                                 image_model.variables("projector"), want, train=False),
                             rtol=1e-4, atol=1e-5)


def test_feature_average_of_identity_views_is_the_clean_feature():
  """With crops of the whole image, no flip, jitter or grayscale, every training view is the
  clean input, so the average over M views equals the clean feature (a sum would be M times it)."""
  config = tiny_image_config("cifar10", "simclr")
  config.data.crop_scale, config.data.crop_ratio = (1.0, 1.0), (1.0, 1.0)
  config.data.flip_prob = config.data.jitter_prob = config.data.grayscale_prob = 0.0
  model = model_lib.random_model(config)
  images = _images(12, seed=1)
  clean = model.features(images, num_copies=0)
  averaged = model.features(images, jax.random.key(0), num_copies=3, chunk_size=5)
  np.testing.assert_allclose(averaged, clean, rtol=1e-3, atol=1e-4)
  views = model.view_features(images, jax.random.key(1), num_views=2)
  assert views.shape == (12, 2, 32)
  np.testing.assert_allclose(views, np.repeat(np.asarray(clean)[:, None], 2, 1), rtol=1e-3,
                             atol=1e-4)


@pytest.mark.slow  # renders and encodes several view sets
def test_spirograph_views_render_the_content_with_the_configured_nuisance():
  """Nuisance ranges collapsed to points: every view is render(θ, α*), so single views, their
  average and a direct forward pass of the rendered images agree."""
  config = tiny_spirograph_config()
  ranges = dict(spirograph.DEFAULT_RANGES)
  alpha_point = {"h": 1.25, "g_fore": 0.6, "b_fore": 0.9, "r_back": 0.1, "g_back": 0.2,
                 "b_back": 0.3}
  ranges.update({k: (v, v) for k, v in alpha_point.items()})
  config.data.ranges = ranges
  model = model_lib.random_model(config)
  theta = np.asarray(spirograph.sample_params(jax.random.key(2), 9)[:, [0, 1, 3, 4]])
  alpha = np.tile([alpha_point[n] for n in spirograph.nuisance_names()], (9, 1))
  want = _backbone(model, spirograph.render(spirograph.merge_params(theta, alpha)))
  single = model.features(theta, jax.random.key(3), chunk_size=4)
  np.testing.assert_allclose(single, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(model.features(theta, jax.random.key(4), num_copies=3), want,
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(model_lib.EvaluationError, match="no untransformed input"):
    model.features(theta, num_copies=0)


def _compilations(fn) -> list:
  """Names of the XLA programs compiled while fn() runs."""
  names = []

  def listener(event, duration, **kwargs):
    del duration
    if event == _COMPILE_EVENT:
      names.append(str(kwargs.get("fun_name", "")))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return names


def test_device_features_are_chunked_on_the_device_with_one_compiled_slice(image_model,
                                                                          monkeypatch):
  """Features already on the device (project, the identity suite) are sliced there: the host
  path (`_pad_rows`) never sees them, the result equals the host path's, and the slice compiles
  once however many chunks there are."""
  features = image_model.features(_images(23), chunk_size=10)
  want = image_model.project(np.asarray(features), chunk_size=7)  # host rows, chunk by chunk
  host_chunks = []
  real_pad = model_lib._pad_rows  # pylint: disable=protected-access
  monkeypatch.setattr(model_lib, "_pad_rows",
                      lambda x, size: host_chunks.append(len(x)) or real_pad(x, size))
  jax.clear_caches()
  compiled = _compilations(lambda: image_model.project(features, chunk_size=7)
                           .block_until_ready())
  assert host_chunks == []
  assert sum("_device_chunk" in name for name in compiled) == 1, compiled  # 4 chunks, 1 compile
  np.testing.assert_array_equal(image_model.project(features, chunk_size=7), want)


def test_compilations_do_not_grow_with_the_number_of_images(image_model):
  chunk = 8
  images = _images(3 * (2 * chunk + 3))
  run = lambda model, x: lambda: model.features(x, chunk_size=chunk).block_until_ready()
  jax.clear_caches()
  small = _compilations(run(image_model, images[:2 * chunk + 3]))  # 3 chunks
  jax.clear_caches()
  large = _compilations(run(image_model, images))  # 8 chunks
  assert sorted(small) == sorted(large), (small, large)
  assert sum("_input_features" in name for name in large) == 1, large
  # Another model of the same architecture (new parameters) reuses every compiled program.
  other = model_lib.random_model(image_model.config, seed_offset=7)
  assert _compilations(run(other, images)) == []


def test_model_from_state_copies_the_parameters_to_one_local_device(tmp_path):
  config = tiny_spirograph_config()
  state = save_untrained(config, str(tmp_path))
  model = model_lib.model_from_state(config, state)
  assert model.step == 0
  for leaf in jax.tree.leaves(model.params):
    assert leaf.devices() == {jax.local_devices()[0]}
  restored = model_lib.restore_model(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, restored.params, model.params)


def test_restore_names_what_is_missing(tmp_path):
  config = tiny_spirograph_config()
  checkpoint.write_config(str(tmp_path), config)
  with pytest.raises(model_lib.EvaluationError, match="No checkpoint in"):
    model_lib.restore_model(str(tmp_path))
  save_untrained(config, str(tmp_path))
  with pytest.raises(UserFacingError, match=r"step 5 .*available: \[0\]"):
    model_lib.restore_model(str(tmp_path), step=5)


@pytest.mark.slow  # counts compiles over several evaluations; the image-count case stays in the default tier
def test_new_spirograph_nuisance_ranges_reuse_the_compiled_program():
  """The ranges are arrays, not part of the program: a robustness sweep over 9 shifted ranges
  compiles the network once."""
  config = tiny_spirograph_config()
  model = model_lib.random_model(config)
  theta = np.asarray(spirograph.sample_params(jax.random.key(0), 20)[:, [0, 1, 3, 4]])
  first = np.asarray(model.features(theta, jax.random.key(1)))
  shifted = config.copy_and_resolve_references()
  shifted.data.ranges = spirograph.widen_ranges(spirograph.DEFAULT_RANGES, 0.4)
  other = dataclasses.replace(model, config=shifted)
  moved = []
  assert _compilations(lambda: moved.append(np.asarray(other.features(theta,
                                                                      jax.random.key(1))))) == []
  assert not np.allclose(moved[0], first)  # the same draws, rendered from the wider ranges
