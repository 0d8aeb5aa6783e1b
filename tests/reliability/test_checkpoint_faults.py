"""Damaged checkpoints on the real command line: a corrupt latest checkpoint is moved aside with
one warning line and the run resumes from the previous one and ends where an uninterrupted run
ends; an uncommitted step folder is ignored; config.strict_checkpoints refuses in one line."""

import os
import shutil

import pytest

from tests.reliability import harness
from tests.tiny import truncate_checkpoint_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _copy_of(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference["workdir"], workdir)
  os.remove(os.path.join(workdir, "results.json"))
  return workdir


def _tree(path):
  return {os.path.relpath(os.path.join(d, f), path): os.path.getsize(os.path.join(d, f))
          for d, _, fs in os.walk(path) for f in fs}


def test_corrupt_latest_and_uncommitted_folders_are_set_aside_and_the_run_recovers(
    tmp_path, cache_dir, reference):
  workdir = _copy_of(reference, tmp_path)
  checkpoints = os.path.join(workdir, "checkpoints")
  latest = os.path.join(checkpoints, str(harness.TOTAL_STEPS))
  truncate_checkpoint_state(latest)
  corrupt_files = _tree(latest)
  os.makedirs(os.path.join(checkpoints, "50"))  # uncommitted: must not be taken as the latest
  done = harness.run_cli(workdir, cache_dir=cache_dir)
  assert done.returncode == 0, done.stderr[-4000:]
  assert "Traceback" not in done.stderr and "TensorStore" not in done.stderr
  warnings = [line for line in done.stderr.splitlines() if "could not be restored" in line]
  assert len(warnings) == 1 and latest in warnings[0], done.stderr[-4000:]
  names = os.listdir(checkpoints)
  corrupt = [n for n in names if n.startswith(f"{harness.TOTAL_STEPS}.corrupt-")]
  assert len(corrupt) == 1 and _tree(os.path.join(checkpoints, corrupt[0])) == corrupt_files
  assert any(n.startswith("50.uncommitted-") for n in names)
  # Resumed from step 8, retrained 9..12: the same end as the uninterrupted run.
  harness.assert_same_state(harness.latest_state(workdir), reference["state"])
  assert harness.without_timing(harness.train_rows(workdir)) == harness.without_timing(
      reference["rows"])


def test_strict_checkpoints_refuse_a_corrupt_one_in_one_line(tmp_path, cache_dir, reference):
  workdir = _copy_of(reference, tmp_path)
  latest = os.path.join(workdir, "checkpoints", str(harness.TOTAL_STEPS))
  truncate_checkpoint_state(latest)
  before = _tree(os.path.join(workdir, "checkpoints"))
  done = harness.run_cli(workdir, "--config.strict_checkpoints=True", cache_dir=cache_dir)
  assert done.returncode == 1
  line = harness.the_one_line(done.stderr)
  assert line.startswith(f"error: Checkpoint at step {harness.TOTAL_STEPS} ({latest})"), line
  assert len(line) < 600 and "strict_checkpoints=False" in line
  assert _tree(os.path.join(workdir, "checkpoints")) == before
