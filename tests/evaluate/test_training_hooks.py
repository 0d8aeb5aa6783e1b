"""The evaluation the training program runs (docs/method.md §8, §13): the loop's periodic branch and
its interval, the periodic `eval_fn`, the final report and the Spirograph table (the console line
and throughput are tests/train/test_metrics.py's)."""

import json

import jax
import numpy as np
import pytest

from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import report
from mclr_jax.evaluate import runner
from mclr_jax.evaluate import suite
from mclr_jax.train import create
from mclr_jax.train import loop
from tests.tiny import read_metrics, tiny_image_config, tiny_spirograph_config


@pytest.fixture(scope="module")
def periodic_run(tmp_path_factory, fast_compiles):
  """5 steps of tiny Spirograph SimCLR, evaluated every 2 steps by the real periodic eval_fn."""
  config = tiny_spirograph_config(num_train_steps=5)
  config.eval_every_steps = 2
  config.eval.feature_average_copies = 2
  workdir = str(tmp_path_factory.mktemp("periodic"))
  real = runner.make_periodic_eval(config, workdir)
  calls = []

  def eval_fn(state, step):
    results = real(state, step)
    calls.append((step, results))
    return results

  state = loop.train_and_evaluate(config, workdir, eval_fn=eval_fn)
  return config, workdir, state, calls


@pytest.mark.slow  # shares a training run with the two tests below
def test_loop_evaluates_every_interval_and_at_the_end(periodic_run):
  _, workdir, _, calls = periodic_run
  assert [step for step, _ in calls] == [2, 4, 5]
  records = read_metrics(workdir, kind="eval")
  assert [r["step"] for r in records] == [2, 4, 5]
  for record, (_, results) in zip(records, calls):
    assert results and set(results) <= set(record)
    for name, value in results.items():
      assert record[name] == pytest.approx(value)


@pytest.mark.slow  # shares the training run above
def test_periodic_eval_is_the_suite_on_the_live_state(periodic_run):
  """The last periodic evaluation (step 5) is `run_suite` on the final state with the periodic
  key: the same numbers as any later evaluation of that state."""
  config, workdir, state, calls = periodic_run
  step, results = calls[-1]
  key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
  want = suite.run_suite(model_lib.model_from_state(config, state), runner.PERIODIC_SUITES, key,
                         workdir)
  assert results == pytest.approx(report.flatten_scalars(want))
  assert "probe/mse_mean" in results
  assert not any(k.startswith(("knn/", "cluster/")) for k in results)  # skipped on Spirograph
  assert all(isinstance(v, (int, float)) for v in results.values())  # host numbers for the JSONL


@pytest.mark.parametrize("every_steps,every_epochs,steps_per_epoch,want", [
    (7, 100, 4, 7),  # an explicit interval wins
    (0, 100, 4, 0),  # 0: never
    (-1, 3, 4, 12),  # -1: every eval.every_epochs epochs
    (-1, 0, 4, 1),  # at least every step
])
def test_eval_interval(every_steps, every_epochs, steps_per_epoch, want):
  config = tiny_spirograph_config()
  config.eval_every_steps = every_steps
  config.eval.every_epochs = every_epochs
  assert loop._eval_interval(config, steps_per_epoch) == want  # pylint: disable=protected-access


@pytest.mark.slow  # shares the training run above
def test_final_report_spirograph_table(periodic_run, capsys):
  """Trained and random encoder, single view and FA (M = 2): each row is the suite's probe of that
  encoder, with the same α draws for both encoders; the printed table shows every row."""
  config, workdir, state, _ = periodic_run
  table = runner.final_report(config, workdir, state)
  assert list(table) == ["trained/single", "trained/fa2", "random/single", "random/fa2"]
  with open(f"{workdir}/results.json") as f:
    written = json.load(f)
  assert written["step"] == 5 and list(written["results"]) == list(table)
  for label, row in table.items():
    assert written["results"][label] == pytest.approx(row)
  key = jax.random.key(config.seed + 3)
  for name, model in (("trained", model_lib.model_from_state(config, state)),
                      ("random", model_lib.random_model(config))):
    probe = suite.run_suite(model, ["probe"], key, workdir)["probe"]
    assert table[f"{name}/single"] == pytest.approx(probe)
  assert table["trained/single"]["mse_mean"] != table["random/single"]["mse_mean"]
  assert table["trained/fa2"]["mse_mean"] != table["trained/single"]["mse_mean"]
  out = capsys.readouterr().out
  assert "Downstream evaluation at step 5" in out
  for label, row in table.items():
    line = next(l for l in out.splitlines()
                if l.startswith(label.split("/")[0]) and ("FA" in l) == ("fa" in label))
    assert f"{row['mse_mean']:.4f}" in line and f"{row['r2_mean']:.3f}" in line


def test_final_report_images_writes_probe_knn_and_clustering(tmp_path, monkeypatch, capsys,
                                                             fast_cpu_compiles):
  config = tiny_image_config("cifar10", "simclr")
  config.eval.linear_epochs = 20
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  data = ((images(40), np.arange(40) % 10), (images(20), np.arange(20) % 10))
  monkeypatch.setattr(suite, "_image_split_arrays", lambda *args: data)
  _, state, _, _ = create.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
  table = runner.final_report(config, str(tmp_path), state)
  assert set(table) == {"probe", "knn", "cluster"}
  with open(tmp_path / "eval.json") as f:
    assert json.load(f) == {"step": 0, "results": table}
  out = capsys.readouterr().out
  for metric in ("linear_top1", "knn_acc", "cluster_purity"):
    assert metric in out
  assert "{" not in out
