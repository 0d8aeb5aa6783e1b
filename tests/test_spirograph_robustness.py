"""experiments/spirograph_robustness.py: the sweep's core on a fake encoder (docs/method.md §13)."""

import importlib.util
import json
import os

import jax
import numpy as np

from configs import spirograph as spirograph_config
from mclr_jax.data import spirograph
from mclr_jax.evaluate import runner
from mclr_jax.train.data import spirograph_split
from mclr_jax.train.views import spirograph_ranges

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "spirograph_robustness.py")
_spec = importlib.util.spec_from_file_location("spirograph_robustness", _PATH)
robustness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(robustness)


class _FakeEncoder:
  """A fixed random linear map of the flattened image (32·32·3 -> 16) that records its inputs."""

  def __init__(self, config):
    self.config = config
    self.weights = np.random.default_rng(0).normal(size=(32 * 32 * 3, 16)) / 50.0
    self.seen = []

  def encode(self, images, batch_size=500):
    images = np.asarray(images, np.float64)
    self.seen.append(images)
    return (images.reshape(len(images), -1) @ self.weights).astype(np.float32)


def _config():
  config = spirograph_config.get_config()
  config.data.num_train, config.data.num_test = 128, 64
  return config


def test_sweep_structure_and_unshifted_row_matches_runner():
  config = _config()
  base = spirograph_ranges(config.data)
  shifts = [("background+0", spirograph.widen_ranges(base, 0.0)),
            ("background+0.4", spirograph.widen_ranges(base, 0.4))]
  model = _FakeEncoder(config)
  key = jax.random.key(0)
  rows = robustness.robustness_sweep(model, config, shifts, key, num_train=128, num_test=64,
                                     fa_copies=2)
  assert [r["shift"] for r in rows] == ["background+0", "background+0.4"]
  for row in rows:
    for kind in ("single", "fa"):
      assert np.isfinite(row[kind]["mse_mean"]) and row[kind]["mse_mean"] >= 0
  json.dumps(rows)  # the script writes this as JSON
  assert rows[1]["ranges"]["r_back"] == [-0.4, 1.0]

  # v = 0 is the training distribution: the same probe as the runner's, same key and splits.
  splits = (spirograph_split(config.data, "train"), spirograph_split(config.data, "test"))
  expected = runner.evaluate_spirograph(model, config, key, splits=splits)
  np.testing.assert_allclose(rows[0]["single"]["mse_mean"], expected["mse_mean"], rtol=1e-6)


def test_wider_background_reaches_outside_the_training_pixel_range():
  """U(−v, 0.6 + v) backgrounds give pixels below 0 (renders are not clipped, §10.3)."""
  config = _config()
  base = spirograph_ranges(config.data)
  model = _FakeEncoder(config)
  robustness.robustness_sweep(model, config, [("bg0", spirograph.widen_ranges(base, 0.0))],
                              jax.random.key(1), num_train=128, num_test=64, fa_copies=1)
  unshifted = np.concatenate([x.reshape(-1) for x in model.seen])
  model.seen.clear()
  robustness.robustness_sweep(model, config, [("bg4", spirograph.widen_ranges(base, 0.4))],
                              jax.random.key(1), num_train=128, num_test=64, fa_copies=1)
  shifted = np.concatenate([x.reshape(-1) for x in model.seen])
  assert unshifted.min() >= 0.0 and unshifted.max() <= 1.0
  assert shifted.min() < -0.1
  assert len(robustness.default_shifts(base)) == 9
