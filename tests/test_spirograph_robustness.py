"""experiments/spirograph_robustness.py (docs/method.md §13.2): the sweep is the evaluation suite's
probe under shifted nuisance ranges, and the script runs end to end at tiny size."""

import dataclasses
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from mclr_jax.data import spirograph
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import suite
from mclr_jax.train import data as data_lib
from mclr_jax.train.views import spirograph_ranges
from tests.evaluate.workdirs import save_untrained
from tests.tiny import tiny_spirograph_config

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                     "spirograph_robustness.py")
_spec = importlib.util.spec_from_file_location("spirograph_robustness", _PATH)
robustness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(robustness)

pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


@pytest.fixture(scope="module")
def model(fast_cpu_compiles):
  config = tiny_spirograph_config()
  config.data.num_train, config.data.num_test = 64, 32
  return model_lib.random_model(config)


@pytest.mark.slow  # renders and probes every shifted test set
def test_unshifted_row_is_the_suite_probe_and_shifts_change_only_the_nuisance(model):
  base = spirograph_ranges(model.config.data)
  shifts = [("background+0", spirograph.widen_ranges(base, 0.0)),
            ("background+0.4", spirograph.widen_ranges(base, 0.4))]
  key = jax.random.key(0)
  rows = robustness.robustness_sweep(model, shifts, key, num_train=48, num_test=32, fa_copies=2)
  assert [r["shift"] for r in rows] == ["background+0", "background+0.4"]
  assert rows[1]["ranges"]["r_back"] == [-0.4, 1.0]
  json.dumps(rows)  # the script writes this as JSON
  # v = 0 is the training distribution: the probe of the suite, on the first 48 training θ.
  config = model.config.copy_and_resolve_references()
  config.eval.max_train_examples, config.eval.max_test_examples = 48, 32
  expected = suite.run_suite(dataclasses.replace(model, config=config), ["probe"], key, ".")
  assert rows[0]["single"] == pytest.approx(expected["probe"])
  assert rows[0]["fa"]["copies"] == 2
  assert rows[1]["single"]["mse_mean"] != rows[0]["single"]["mse_mean"]
  # The shift moves α only: the content θ of both splits is that of the run's config.
  shifted = robustness.shifted_config(model.config, shifts[1][1], 48, 32)
  for name in ("train", "test"):
    content = [spirograph.PARAM_NAMES.index(n) for n in model.config.data.content]
    np.testing.assert_array_equal(data_lib.spirograph_split(shifted.data, name)[:, content],
                                  data_lib.spirograph_split(model.config.data, name)[:, content])


def test_wider_background_reaches_outside_the_training_pixel_range(model):
  """U(−v, 0.6 + v) backgrounds give pixels below 0 (renders are not clipped, §10.3)."""
  base = spirograph_ranges(model.config.data)
  theta = np.asarray(spirograph.sample_params(jax.random.key(1), 64)[:, [0, 1, 3, 4]])
  pixels = {}
  for v in (0.0, 0.4):
    config = robustness.shifted_config(model.config, spirograph.widen_ranges(base, v), 8, 8)
    pixels[v] = np.asarray(model_lib.inputs_for(config).view(jax.random.key(2), theta))
  assert pixels[0.0].min() >= 0.0 and pixels[0.0].max() <= 1.0
  assert pixels[0.4].min() < -0.1
  assert len(robustness.default_shifts(base)) == 9


def test_sizes_beyond_the_run_are_refused(model):
  with pytest.raises(model_lib.EvaluationError, match="num_train=65"):
    robustness.robustness_sweep(model, [], jax.random.key(0), num_train=65, num_test=8,
                                fa_copies=1)


@pytest.mark.slow  # trains and evaluates through the script
def test_main_at_tiny_size(tmp_path, capsys):
  config = tiny_spirograph_config()
  config.data.num_train, config.data.num_test = 64, 32
  workdir = str(tmp_path / "run")
  save_untrained(config, workdir)
  out = tmp_path / "robustness.json"
  assert robustness.main([f"--workdir={workdir}", f"--out={out}", "--num_train=32",
                          "--num_test=16", "--fa_copies=2"]) is None
  results = json.loads(out.read_text())
  assert [r["shift"] for r in results[workdir]] == [n for n, _ in robustness.default_shifts(
      spirograph_ranges(config.data))]
  assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = capsys.readouterr().out.splitlines()
  assert table[0].startswith("shift") and len(table) >= 2 + 9
