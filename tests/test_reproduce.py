"""experiments/reproduce.py: every published table has its command, plan and sources; the summary is
the mean ± std it claims; and the Spirograph table runs end to end at toy size and resumes."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_PATH = ROOT / "experiments" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce", _PATH)
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)

# One table per published table or figure the library covers (the three papers).
EXPECTED_TABLES = ("manifoldclr_linear", "manifoldclr_semi", "spirograph", "invariance_cifar",
                   "geometry")


def _script(*args):
  return subprocess.run([sys.executable, str(_PATH), *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=False)


def test_list_shows_every_table_with_cost_and_datasets():
  out = _script("--list")
  assert out.returncode == 0, out.stderr
  assert set(reproduce.TABLES) == set(EXPECTED_TABLES)
  for name in EXPECTED_TABLES:
    assert name in out.stdout
  assert out.stdout.count("on one H100 (estimate)") == len(EXPECTED_TABLES)
  assert "datasets: cifar10, stl10, tinyimagenet" in out.stdout


def test_unknown_table_is_one_line_naming_the_choices():
  out = _script("--table=spirograf")
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "spirograf" in lines[0] and "spirograph" in lines[0]


@pytest.mark.parametrize("name", EXPECTED_TABLES)
def test_every_table_plans_valid_runs_and_sources_every_published_number(name):
  from mclr_jax.train.validate import validate_config  # pylint: disable=g-import-not-at-top
  table = reproduce.TABLES[name]()
  assert table.runs and table.datasets and table.cells
  for run in table.runs:
    validate_config(run.build())  # every planned run is a valid, full-size config
    validate_config(reproduce.tiny_config(run.build()))
  for cell in table.cells:
    assert cell.metric[0] in table.suites  # every number comes from a suite the runs get
    published = cell.published
    if published.value is None:
      assert published.source == reproduce.NOT_FOUND
    else:  # a number we hold names where it comes from
      assert published.source != reproduce.NOT_FOUND and len(published.source) > 20
  plan = reproduce.format_plan(table, tiny=False)
  for run in table.runs:
    assert f"{run.name}: configs/{run.config}.py:{run.variant} seed {run.seed}" in plan
  assert "estimated training time on one H100" in plan


def test_full_size_step_counts_follow_the_datasets():
  from configs import cifar10, invariance_cifar, spirograph  # pylint: disable=g-import-not-at-top
  # 1000 epochs of ⌊50,000 / 512⌋ = 97 steps; 50 epochs of ⌊100,000 / 512⌋ = 195 steps.
  assert reproduce.full_steps(invariance_cifar.get_config("cifar100_gp")) == 97_000
  assert reproduce.full_steps(cifar10.get_config("thresh")) == 97_000
  assert reproduce.full_steps(spirograph.get_config("paper")) == 9_750
  # The penalty costs more per step than its baseline, a ResNet-50 more than a ResNet-18.
  gp, base = (reproduce.step_ms(invariance_cifar.get_config(v))
              for v in ("cifar10_gp", "cifar10_nogp"))
  assert gp > base > reproduce.step_ms(spirograph.get_config("paper"))


def test_summary_is_mean_and_sample_std_over_seeds():
  table = reproduce.spirograph_table(seeds=(0, 1, 2))
  rng = np.random.default_rng(0)
  results = {run.name: {"probe": {"mse_mean": float(rng.uniform())},
                        "feature_average": {"mse_mean": float(rng.uniform())}}
             for run in table.runs}
  rows = reproduce.summarise(table, results)
  for cell, (row, column, mean, std, n, _) in zip(table.cells, rows):
    values = [results[r.name][cell.metric[0]][cell.metric[1]] for r in cell.runs]
    assert (row, column, n) == (cell.row, cell.column, 3)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
  # A missing run counts as missing, not as zero.
  del results[table.cells[0].runs[0].name]
  assert reproduce.summarise(table, results)[0][4] == 2


@pytest.mark.slow
@pytest.mark.timeout(900)  # four toy trainings: 1.5–3 min on 2 busy cores
def test_spirograph_table_tiny_end_to_end_and_resume(tmp_path, capsys, fast_compiles):
  workdir = str(tmp_path / "reproduce")
  args = ["--table=spirograph", "--tiny", "--seeds=0,1", f"--workdir={workdir}"]
  reproduce.main(args)
  first = capsys.readouterr().out
  table_text = first[first.index("\nSpirograph: linear-regression"):]  # after the plan
  for row in ("baseline (λ = 0)", "gradient penalty (λ = 0.01)",
              "baseline + feature averaging (M = 30)",
              "gradient penalty + feature averaging (M = 30)"):
    line = next(l for l in table_text.splitlines() if l.startswith(row + " "))
    assert "(n=2)" in line and reproduce.NOT_FOUND in line, line
  with open(os.path.join(workdir, "spirograph.json")) as f:
    rows = json.load(f)["rows"]
  assert len(rows) == 4 and all(np.isfinite(r["mean"]) and r["mean"] > 0 for r in rows)
  # Rerunning resumes: every run is found done, nothing retrains, the same table comes out.
  reproduce.main(args)
  second = capsys.readouterr().out
  assert second.count(": done (results in") == 4 and ": training (resumes" not in second
  assert second[second.index("\nSpirograph: linear-regression"):] == table_text
