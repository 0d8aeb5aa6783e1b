"""The evaluation suite end to end (docs/method.md §8, §12, §13): each suite against a reference
computed without the suite, on a restored tiny ManifoldCLR Spirograph checkpoint and on injected
images whose label is visible in their colour; and `python -m mclr_jax.evaluate` as a program."""

import dataclasses
import json
import os
import subprocess
import sys

from absl import flags
import jax
import numpy as np
import pytest

from mclr_jax.data import spirograph
from mclr_jax.evaluate import __main__ as evaluate_cli
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import regression
from mclr_jax.evaluate import suite
from mclr_jax.train import data as data_lib
from tests.evaluate.workdirs import save_untrained
from tests.tiny import assert_png, coloured_images, tiny_spirograph_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# CPU compile time dominates these tests; unoptimised compiles check the same properties.
pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fast_cpu_compiles):
  """A restorable ManifoldCLR Spirograph run (step 0: evaluation does not care about training)."""
  config = tiny_spirograph_config("manifoldclr")
  config.data.num_train, config.data.num_test = 64, 32
  config.eval.feature_average_copies = 2
  path = str(tmp_path_factory.mktemp("spiro"))
  save_untrained(config, path)
  return path


@pytest.fixture(scope="module")
def model(workdir):
  return model_lib.restore_model(workdir)


def test_figures_are_written_and_the_result_is_json(model, tmp_path):
  results = suite.run_suite(model, ["figures"], jax.random.key(0), str(tmp_path))
  assert set(results["figures"]) == {"feature_spectra", "operator_orbits", "coefficient_usage",
                                     "operator_spectra"}
  for path in results["figures"].values():
    assert os.path.dirname(path) == str(tmp_path / "figures")
    assert_png(path)
  json.dumps(results)


def test_spirograph_probe_is_the_ridge_fit_of_the_rendered_features(model, tmp_path):
  """With the nuisance ranges collapsed to points every view is render(θ, α*), so the suite's probe
  must equal a ridge fit, made here, of the backbone features of those renders against θ, with
  the probe-train θ (capped) and the test θ; feature averaging over M identical views too."""
  config = model.config.copy_and_resolve_references()
  ranges = dict(spirograph.DEFAULT_RANGES)
  point = {"h": 1.5, "g_fore": 0.7, "b_fore": 0.5, "r_back": 0.2, "g_back": 0.3, "b_back": 0.4}
  ranges.update({k: (v, v) for k, v in point.items()})
  config.data.ranges = ranges
  config.eval.max_train_examples = 48
  fixed = dataclasses.replace(model, config=config)
  results = suite.run_suite(fixed, ["probe", "feature_average"], jax.random.key(5), str(tmp_path))

  content = tuple(config.data.content)
  alpha = np.asarray([point[n] for n in spirograph.nuisance_names(content)], np.float32)

  def split(name, n):
    theta = np.asarray(spirograph.split_params(data_lib.spirograph_split(config.data, name),
                                               content)[0])[:n]
    images = spirograph.render(spirograph.merge_params(theta, np.tile(alpha, (len(theta), 1)),
                                                       content))
    h = model.networks.backbone.apply(model.variables("backbone"), images, train=False)
    return np.asarray(h, np.float64), theta.astype(np.float64)

  (train_h, train_theta), (test_h, test_theta) = split("train", 48), split("test", 32)
  want = regression.spirograph_probe(train_h, train_theta, test_h, test_theta, names=content,
                                     l2=config.eval.probe_l2)
  for got in (results["probe"], results["feature_average"]):
    assert got["mse_mean"] == pytest.approx(want["mse_mean"], rel=1e-3)
    for name in content:
      assert got[f"r2/{name}"] == pytest.approx(want[f"r2/{name}"], rel=1e-3, abs=1e-4)
  assert results["feature_average"]["copies"] == 2
  for name in ("knn", "cluster", "prior_aug", "semi_supervised"):
    assert "skipped" in suite.run_suite(fixed, [name], jax.random.key(0), ".")[name]


@pytest.fixture(scope="module")
def image_data():
  rng = np.random.default_rng(0)
  train_y, test_y = np.arange(60) % 3, np.arange(30) % 3
  return coloured_images(train_y, rng), train_y, coloured_images(test_y, rng), test_y


@pytest.mark.slow  # probe, kNN and clustering on a random ResNet over mock images
def test_image_suites_read_the_labels_of_their_own_rows(image_model, image_data, tmp_path):
  """The label is the image's colour, which even a random encoder separates: probe, kNN and
  clustering are perfect. With the test labels shuffled against their images, every score falls
  to about chance: features and labels must be paired row by row."""
  options = suite.SuiteOptions(linear_epochs=300)
  names = ["probe", "knn", "cluster", "prior_aug"]
  results = suite.run_suite(image_model, names, jax.random.key(0), str(tmp_path),
                            data=image_data, options=options)
  assert results["probe"]["linear_top1"] == 1.0
  assert results["knn"]["knn_acc"] == 1.0
  assert results["cluster"]["cluster_purity"] == 1.0
  assert 0.0 <= results["prior_aug"]["prior_aug_acc"] <= 1.0
  # Zero operators make the transport the identity: each augmented query's nearest train feature
  # is the query itself.
  still = dataclasses.replace(image_model, params=dict(image_model.params,
                                                       psi=np.zeros_like(image_model.psi)))
  assert suite.run_suite(still, ["prior_aug"], jax.random.key(0), str(tmp_path),
                         data=image_data)["prior_aug"]["prior_aug_acc"] == 1.0
  train_x, train_y, test_x, test_y = image_data
  shuffled = np.random.default_rng(1).permutation(test_y)
  assert np.mean(shuffled == test_y) < 0.5
  chance = suite.run_suite(image_model, ["probe", "knn"], jax.random.key(0), str(tmp_path),
                           data=(train_x, train_y, test_x, shuffled), options=options)
  assert chance["probe"]["linear_top1"] < 0.6 and chance["knn"]["knn_acc"] < 0.6


@pytest.mark.slow  # ~1 min: the EMA classifier (momentum 0.999) needs ~1000 steps to move
def test_semi_supervised_learns_colours_from_five_labels(image_model, image_data, tmp_path):
  options = suite.SuiteOptions(semi_supervised_trials=2, semi_supervised_steps=1000,
                               semi_supervised_hidden=16)
  results = suite.run_suite(image_model, ["semi_supervised"], jax.random.key(0), str(tmp_path),
                            data=image_data, options=options)["semi_supervised"]
  assert set(results) == {"transport", "mixup", "none", "featmatch", "supervised", "figure"}
  for method in ("transport", "mixup", "none", "featmatch", "supervised"):
    assert results[method]["mean"] > 0.9, (method, results[method])  # chance is 1/3
  assert_png(results["figure"])


def test_unknown_suite_and_missing_copies_name_the_fix(model):
  with pytest.raises(model_lib.EvaluationError, match="choose from probe,knn"):
    suite.parse_suites("probe,knnn")
  config = model.config.copy_and_resolve_references()
  config.eval.feature_average_copies = 0
  with pytest.raises(model_lib.EvaluationError, match="feature_average_copies"):
    suite.run_suite(dataclasses.replace(model, config=config), ["feature_average"],
                    jax.random.key(0), ".")


def test_cli_main_prints_a_table_and_writes_eval_json_and_metrics(workdir, capsys):
  flag_values = flags.FlagValues()
  evaluate_cli.define_flags(flag_values)
  argv = flag_values(["prog", f"--workdir={workdir}", "--suite=probe,knn"])
  assert evaluate_cli.main(argv, flag_values) is None  # absl would exit with a returned value
  with open(f"{workdir}/eval.json") as f:
    written = json.load(f)
  assert written["step"] == 0 and {"probe", "knn"} <= set(written["results"])
  with open(f"{workdir}/metrics.jsonl") as f:
    last = json.loads(f.readlines()[-1])
  assert last["kind"] == "eval" and last["step"] == 0
  mse = written["results"]["probe"]["mse_mean"]
  assert last["probe/mse_mean"] == pytest.approx(mse)
  out = capsys.readouterr().out
  assert f"mse_mean{' ' * 10}" in out and f"{mse:.4f}" in out
  assert "knn" in out and "skipped" in out and "{" not in out  # a table, not a Python literal


def test_cli_main_refuses_a_bad_config_or_flag_value_before_restoring(workdir):
  from absl import app  # pylint: disable=g-import-not-at-top
  from mclr_jax.train.validate import ConfigError  # pylint: disable=g-import-not-at-top

  def parse(*args):
    flag_values = flags.FlagValues()
    evaluate_cli.define_flags(flag_values)
    return flag_values(["prog", f"--workdir={workdir}", *args]), flag_values

  argv, flag_values = parse("--config=configs/spirograph.py")
  flag_values["config"].value.eval.probe_l2 = -1.0  # as --config.eval.probe_l2=-1 would set it
  with pytest.raises(ConfigError, match=r"eval\.probe_l2"):
    evaluate_cli.main(argv, flag_values)
  argv, flag_values = parse("--config=configs/no_such_config.py")
  with pytest.raises(app.UsageError, match="no_such_config.py"):
    evaluate_cli.main(argv, flag_values)
  for flag in ("--linear_epochs=0", "--feature_average_copies=0"):
    with pytest.raises(flags.IllegalFlagValueError, match=flag[2:].split("=")[0]):
      parse(flag)


def _run_cli(*args):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "mclr_jax.evaluate", *args], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a CLI process; the in-process main above checks the same table
def test_cli_program_exits_zero_with_a_table(workdir):
  done = _run_cli(f"--workdir={workdir}", "--suite=probe")
  assert done.returncode == 0, done.stderr
  assert "mse_mean" in done.stdout and "Results in" in done.stdout
  assert "orbax" not in done.stderr and " INFO " not in done.stderr and "I1" not in done.stderr


def test_help_lists_every_suite_with_its_line():
  # absl's --help prints the main module's docstring.
  for entry in suite.suite_names():
    assert f"\n  {entry} " in evaluate_cli.__doc__, entry


@pytest.mark.slow  # two more processes; the in-process tests cover the same errors
def test_cli_program_errors_are_one_line_and_non_zero(workdir, tmp_path):
  for args, message, code in (
      ([f"--workdir={workdir}", "--suite=probe,bogus"], "Unknown evaluation", 1),
      ([f"--workdir={tmp_path}"], "config.json", 1),
      ([f"--workdir={workdir}", "--config=configs/spirograph.py", "--config.eval.probe_l2=-1"],
       "probe_l2", 1),
      ([f"--workdir={workdir}", "--linear_epochs=0"], "linear_epochs", 2)):
    done = _run_cli(*args)
    assert done.returncode == code, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
  usage = _run_cli("--help").stdout
  assert all(f"\n  {name} " in usage for name in suite.suite_names()), usage
