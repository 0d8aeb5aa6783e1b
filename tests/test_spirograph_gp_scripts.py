"""The gradient-penalty experiment scripts (docs/method.md §11.6): the sweep's report is the mean
and sample standard deviation of its runs' numbers, with each setting's command and the commit
each run was trained with, and the diagnostics read only checkpoints orbax finished writing."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.errors import UserFacingError
from mclr_jax.train import checkpoint
from tests.tiny import assert_png

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fake_run(root, setting, weight, seed, rng, code="abc1234"):
  """A finished sweep run as the sweep reads it: sweep_run.json, results.json, metrics.jsonl."""
  workdir = root / setting / f"lam{weight:g}_seed{seed}"
  workdir.mkdir(parents=True)
  probe = lambda: {"mse_mean": float(rng.uniform(0.01, 0.1)), "mse/m": float(rng.uniform())}
  results = {"trained/single": probe(), "trained/fa5": probe(), "random/single": probe(),
             "random/fa5": probe()}
  (workdir / "sweep_run.json").write_text(json.dumps(
      {"setting": setting, "variant": "cpu", "overrides": {}, "weight": weight, "seed": seed,
       **({"code": code} if code else {})}))
  (workdir / "results.json").write_text(json.dumps({"step": 8, "results": results}))
  rows = [{"kind": "train", "step": s, "contrastive": 4.0 - s / 10, "grad_norm": 3.0,
           **({"penalty": 100.0 / s} if weight else {})} for s in (4, 8)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return results


def _sweep(*args):
  return subprocess.run([sys.executable, "experiments/spirograph_gp_sweep.py", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_sweep_report_is_the_mean_and_sample_std_of_the_runs(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "runs"
  single = {w: [_fake_run(root, "cpu", w, s, rng)["trained/single"]["mse_mean"] for s in (0, 1, 2)]
            for w in (0.0, 0.01)}
  md, png = tmp_path / "sweep.md", tmp_path / "figures" / "sweep.png"
  done = _sweep("--report_only", f"--root={root}", f"--out_md={md}", f"--out_png={png}")
  assert done.returncode == 0, done.stderr
  text = md.read_text()
  for weight, values in single.items():
    cell = f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    assert f"| {weight:g} | 0,1,2 | {cell} |" in text, (cell, text)
  assert ("`python experiments/spirograph_gp_sweep.py --settings=cpu --weights=0,0.01 "
          "--seeds=0,1,2`") in text
  assert "](figures/sweep.png)" in text  # the plot, embedded relative to the page
  # Per-run rows: the penalty's first → last logged value (100/4 → 100/8), none without it.
  row = next(line for line in text.splitlines() if line.startswith("| 0.01 | 0 | "))
  assert "| 25 → 12.5 |" in row, row
  row = next(line for line in text.splitlines() if line.startswith("| 0 | 0 | "))
  assert row.endswith("| – | – | abc1234 |"), row
  assert "code versions" not in text  # one version: no caveat
  assert_png(png)


def test_sweep_report_names_the_code_versions_a_setting_mixes(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / "runs"
  _fake_run(root, "cpu", 0.0, 0, rng, code="abc1234")
  _fake_run(root, "cpu", 0.0, 1, rng, code=None)  # trained before the sweep recorded it
  _fake_run(root, "long", 0.0, 0, rng, code="abc1234")
  md = tmp_path / "sweep.md"
  done = _sweep("--report_only", f"--root={root}", f"--out_md={md}",
                f"--out_png={tmp_path / 'sweep.png'}")
  assert done.returncode == 0, done.stderr
  text = md.read_text()
  cpu, long = text.split("## `long`")
  assert "trained with 2 code versions (abc1234, not recorded)" in cpu
  assert "code versions" not in long
  assert "| 0 | 1 | " in cpu and cpu.count("| not recorded |") == 1


def test_sweep_records_the_commit_it_trains_with(tmp_path, monkeypatch):
  sweep = _load("spirograph_gp_sweep")
  commands = []
  monkeypatch.setattr(sweep.subprocess, "call", lambda command, **kw: commands.append(command) or 0)
  setting = sweep.SETTINGS["cpu_clip50"]
  assert sweep.train("cpu_clip50", setting, 0.01, 3, False, str(tmp_path)) is None
  assert "--config.invariance.clip=50" in commands[0] and "--config.seed=3" in commands[0]
  record = tmp_path / "cpu_clip50" / "lam0.01_seed3" / "sweep_run.json"
  code = json.loads(record.read_text())["code"]
  head = subprocess.run(["git", "log", "-1", "--format=%H"], cwd=REPO, capture_output=True,
                        text=True)
  if head.returncode != 0:  # not a git checkout (an unpacked archive)
    assert code == "unknown"
  else:  # the abbreviated commit, "-dirty" when tracked files have uncommitted changes
    assert len(code.removesuffix("-dirty")) >= 7
    assert head.stdout.strip().startswith(code.removesuffix("-dirty")), code
  # Resumed under another commit (its results.json not written yet): both are kept, in order.
  record.write_text(json.dumps({**json.loads(record.read_text()), "code": "0000000"}))
  assert sweep.train("cpu_clip50", setting, 0.01, 3, False, str(tmp_path)) is None
  assert json.loads(record.read_text())["code"] == f"0000000+{code}"


def test_sweep_without_finished_runs_is_one_line_and_non_zero(tmp_path):
  done = _sweep("--report_only", f"--root={tmp_path}/none", f"--out_md={tmp_path}/x.md",
                f"--out_png={tmp_path}/x.png")
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "No finished runs" in lines[0], lines
  assert not os.path.exists(tmp_path / "x.md")


def test_diagnostics_read_the_newest_committed_checkpoint_only(tmp_path):
  diagnostics = _load("spirograph_gp_diagnostics")
  workdir = str(tmp_path)
  with pytest.raises(UserFacingError, match="no committed checkpoint"):
    diagnostics._restore_final(workdir)  # pylint: disable=protected-access
  manager = checkpoint.make_manager(workdir, keep=5, async_save=False)
  for step in (2, 4):
    tree = {"params": {"w": jnp.full((3,), float(step))}, "batch_stats": {"m": jnp.zeros((2,))}}
    checkpoint.save(manager, step, tree)
  manager.close()
  # A later step folder whose save never finished (no commit marker or commit time).
  os.makedirs(os.path.join(workdir, "checkpoints", "6", "state"))
  params, batch_stats = diagnostics._restore_final(workdir)  # pylint: disable=protected-access
  np.testing.assert_array_equal(params["w"], np.full((3,), 4.0))
  assert set(batch_stats) == {"m"}
