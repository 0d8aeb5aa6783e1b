"""Kill-and-resume: a run stopped by SIGTERM and rerun ends bit-for-bit where an uninterrupted run
ends (same state, same logged rows, each step logged once), and the config lock on resume."""

import errno
import json
import os

import jax
import numpy as np
import pytest

from mclr_jax.errors import Preempted
from mclr_jax.train import checkpoint
from mclr_jax.train import loop
from tests.tiny import fake_committed_checkpoint, read_metrics, sigterm_at, tiny_spirograph_config

# Keys of metrics.jsonl that depend on wall time, not on the computation.
TIMING_KEYS = ("steps_per_sec", "images_per_sec", "eta_sec", "step_ms", "dispatch_ms")


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.mark.slow  # two training runs and a restart; the reliability tier also kills and resumes
def test_sigterm_then_rerun_matches_uninterrupted_run(tmp_path, monkeypatch, fast_compiles):
  """Stopped after step 3 of 6 with a log row every 2 steps: the checkpoint holds the half-filled
  window of step 3, so the resumed run's row at step 4 averages steps 3 and 4 like the
  uninterrupted run's, and every row is bit-identical."""
  stop, total = 3, 6
  config = tiny_spirograph_config(num_train_steps=total)
  config.log_every_steps = 2
  whole = loop.train_and_evaluate(config, str(tmp_path / "whole"))

  split_dir = str(tmp_path / "split")
  with monkeypatch.context() as patch:
    sigterm_at(patch, stop)
    with pytest.raises(Preempted, match=rf"step {stop}\b.*rerun the same command") as info:
      loop.train_and_evaluate(config, split_dir)
  assert info.value.step == stop and info.value.exit_code == 143
  manager = checkpoint.make_manager(split_dir, keep=3)
  assert checkpoint.committed_steps(manager) == [stop]
  assert [r["step"] for r in read_metrics(split_dir)] == [2]
  resumed = loop.train_and_evaluate(config, split_dir)

  assert int(resumed.step) == int(whole.step) == total
  _assert_trees_equal((resumed.params, resumed.batch_stats, resumed.opt_state),
                      (whole.params, whole.batch_stats, whole.opt_state))
  whole_log, split_log = read_metrics(str(tmp_path / "whole")), read_metrics(split_dir)
  assert [r["step"] for r in split_log] == [r["step"] for r in whole_log] == [2, 4, 6]
  for w, s in zip(whole_log, split_log):
    assert {k: v for k, v in s.items() if k not in TIMING_KEYS} == {
        k: v for k, v in w.items() if k not in TIMING_KEYS}, s["step"]
  # The second half moved the params, so the equality above is not that of two idle runs.
  restored = checkpoint.restore_latest(manager, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), whole), stop)
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(restored.params),
                       jax.device_get(whole.params))
  assert any(jax.tree.leaves(moved))


@pytest.mark.slow  # a training run
def test_sigterm_during_a_periodic_evaluation_stops_it_and_saves_that_step(tmp_path,
                                                                           fast_compiles):
  """A long evaluation does not hold a preempted job past its grace period: the SIGTERM stops it
  within one compiled call, the step it evaluated is saved (no checkpoint was due there), and
  nothing of the evaluation is logged."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  config = tiny_spirograph_config(num_train_steps=6)
  config.eval_every_steps = 2  # checkpoint_every_steps is 100: step 2 is not a checkpoint step
  finished = []

  def slow_eval(state, step):
    del state
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 120  # stands in for a probe of minutes
    while time.monotonic() < deadline:
      time.sleep(0.05)
    finished.append(step)
    return {"probe/mse_mean": 0.0}

  started = time.monotonic()
  with pytest.raises(Preempted, match=r"step 2\b") as info:
    loop.train_and_evaluate(config, str(tmp_path), eval_fn=slow_eval)
  assert time.monotonic() - started < 60  # not the 120 s the evaluation would take
  assert info.value.step == 2 and not finished
  manager = checkpoint.make_manager(str(tmp_path), keep=3)
  assert checkpoint.committed_steps(manager) == [2]
  assert read_metrics(str(tmp_path), kind="eval") == []


def test_resume_with_changed_model_config_is_refused_naming_each_key(tmp_path):
  workdir = str(tmp_path)
  config = tiny_spirograph_config()
  checkpoint.write_config(workdir, config)
  fake_committed_checkpoint(workdir)
  changed = tiny_spirograph_config()
  changed.model.width, changed.model.proj_output_dim = 8, 4
  changed.optim.lr = 1e-4  # not locked: a resume may change the learning rate
  with pytest.raises(checkpoint.CheckpointError) as info:
    loop.train_and_evaluate(changed, workdir)
  message = str(info.value)
  assert "\n" not in message and workdir in message
  assert "config.model.width: 4 in the run, 8 given" in message
  assert "config.model.proj_output_dim: 8 in the run, 4 given" in message
  assert "optim.lr" not in message
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["width"] == 4  # the run's record is untouched


def test_config_of_a_workdir_without_checkpoints_is_not_locked(tmp_path):
  """A failed start leaves config.json but no checkpoint: the next start may change anything."""
  workdir = str(tmp_path)
  checkpoint.write_config(workdir, tiny_spirograph_config())
  changed = tiny_spirograph_config()
  changed.model.width = 8
  checkpoint.write_config(workdir, changed)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["width"] == 8


def test_config_json_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  checkpoint.write_config(workdir, tiny_spirograph_config())
  path = os.path.join(workdir, "config.json")
  before = open(path).read()

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a write or close raises it

  monkeypatch.setattr(json, "dump", full_disk)
  changed = tiny_spirograph_config()
  changed.model.width = 8
  with pytest.raises(OSError) as raised:
    checkpoint.write_config(workdir, changed)
  assert raised.value.errno == errno.ENOSPC and raised.value.filename == path
  assert open(path).read() == before and os.listdir(workdir) == ["config.json"]
