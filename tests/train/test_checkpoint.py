"""Checkpoint recovery on small pytrees (no training): uncommitted folders are ignored, a corrupt
latest checkpoint is moved aside (never deleted) and the previous one restores, the strict option
refuses, a checkpoint of other shapes is refused without being moved, and every refusal is one line.
"""

import errno
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mclr_jax.train import checkpoint
from tests.tiny import truncate_checkpoint_state

WINDOW = {"count": jnp.zeros((), jnp.int32)}


def _state(value):
  return {"w": jnp.full((3, 2), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _workdir_with_steps(tmp_path, steps=(1, 2)):
  workdir = str(tmp_path / "run")
  manager = checkpoint.make_manager(workdir, keep=5, async_save=False)
  for s in steps:
    checkpoint.save(manager, s, _state(s), WINDOW)
  manager.close()
  return workdir


def _files(path):
  return {os.path.relpath(os.path.join(d, f), path): os.path.getsize(os.path.join(d, f))
          for d, _, fs in os.walk(path) for f in fs}


def _resume(workdir, strict=False, abstract_state=None):
  manager = checkpoint.make_manager(workdir, keep=5, async_save=False)
  try:
    return checkpoint.resume(manager, abstract_state or _abstract(_state(0)), _abstract(WINDOW),
                             strict=strict)
  finally:
    manager.close()


def test_a_checkpoint_of_an_earlier_layout_is_refused_in_one_line_and_kept(tmp_path):
  """A workdir saved as one orbax item ("default", as mclr_jax once did) is neither moved aside
  as damage nor resumed: one line names the step, the layout and the fix, for `resume` and for
  `restore_latest` (evaluation)."""
  workdir = str(tmp_path / "run")
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             options=ocp.CheckpointManagerOptions(create=True)) as old:
    old.save(4, args=ocp.args.StandardSave(_state(4)))
    old.wait_until_finished()
  before = _files(os.path.join(workdir, "checkpoints"))
  for strict in (False, True):
    with pytest.raises(checkpoint.CheckpointError) as info:
      _resume(workdir, strict=strict)
    message = str(info.value)
    assert "\n" not in message and "'default'" in message and "new --workdir" in message, message
  manager = checkpoint.make_manager(workdir, keep=5, async_save=False)
  with pytest.raises(checkpoint.CheckpointError, match="earlier mclr_jax"):
    checkpoint.restore_latest(manager, _abstract(_state(0)))
  manager.close()
  assert _files(os.path.join(workdir, "checkpoints")) == before


def test_uncommitted_step_folders_are_ignored_then_set_aside(tmp_path):
  workdir = _workdir_with_steps(tmp_path)
  directory = os.path.join(workdir, "checkpoints")
  os.makedirs(os.path.join(directory, "50"))  # empty: never written
  os.makedirs(os.path.join(directory, "3", "state"))  # a copy cut short before orbax's rename
  with open(os.path.join(directory, "3", "state", "_METADATA"), "w") as f:
    f.write("{}")
  manager = checkpoint.make_manager(workdir, keep=5, async_save=False)
  assert checkpoint.committed_steps(manager) == [1, 2]
  assert int(checkpoint.restore_latest(manager, _abstract(_state(0)))["step"]) == 2
  manager.close()

  moved = checkpoint.set_aside_uncommitted(workdir)
  assert sorted(os.path.basename(p).split(".")[0] for p in moved) == ["3", "50"]
  assert all(".uncommitted-" in p and os.path.isdir(p) for p in moved)
  assert os.path.exists(os.path.join([p for p in moved if "/3." in p][0], "state", "_METADATA"))
  # Nothing is in the way of a new save of those steps.
  manager = checkpoint.make_manager(workdir, keep=5, async_save=False)
  checkpoint.save(manager, 50, _state(50), WINDOW)
  assert checkpoint.committed_steps(manager) == [1, 2, 50]
  manager.close()


def test_corrupt_latest_is_moved_aside_and_the_previous_one_restores(tmp_path, caplog):
  workdir = _workdir_with_steps(tmp_path)
  latest = os.path.join(workdir, "checkpoints", "2")
  truncate_checkpoint_state(latest)
  before = _files(latest)
  with caplog.at_level(logging.WARNING):
    state, window = _resume(workdir)
  np.testing.assert_array_equal(state["w"], np.full((3, 2), 1.0))
  assert int(window["count"]) == 0
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  aside = [p for p in names if p.startswith("2.corrupt-")]
  assert len(aside) == 1 and not os.path.exists(latest)
  assert _files(os.path.join(workdir, "checkpoints", aside[0])) == before  # renamed, not changed
  # mclr_jax's own warnings (older orbax versions add some of their own about their threads)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and f"{os.sep}mclr_jax{os.sep}" in r.pathname]
  assert len(warnings) == 1 and "\n" not in warnings[0] and latest in warnings[0]


def test_strict_refuses_a_corrupt_checkpoint_in_one_line_and_moves_nothing(tmp_path, capfd):
  workdir = _workdir_with_steps(tmp_path)
  latest = os.path.join(workdir, "checkpoints", "2")
  truncate_checkpoint_state(latest)
  before = _files(os.path.join(workdir, "checkpoints"))
  with pytest.raises(checkpoint.CheckpointError) as info:
    _resume(workdir, strict=True)
  message = str(info.value)
  assert "\n" not in message and len(message) < 600, message
  assert latest in message and "strict_checkpoints=False" in message
  assert _files(os.path.join(workdir, "checkpoints")) == before
  assert "TensorStore" not in capfd.readouterr().err  # orbax's abandoned reads stay quiet


def test_a_checkpoint_of_other_shapes_is_refused_and_never_moved(tmp_path):
  workdir = _workdir_with_steps(tmp_path)
  before = _files(os.path.join(workdir, "checkpoints"))
  wider = {"w": jax.ShapeDtypeStruct((3, 4), jnp.float32),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  with pytest.raises(checkpoint.CheckpointError, match=r"does not fit this config.*\bw\b"):
    _resume(workdir, strict=False, abstract_state=wider)
  assert _files(os.path.join(workdir, "checkpoints")) == before


def test_restoring_a_missing_step_names_the_available_ones(tmp_path):
  workdir = _workdir_with_steps(tmp_path)
  manager = checkpoint.make_manager(workdir, keep=5, async_save=False)
  with pytest.raises(checkpoint.CheckpointError, match=r"step 7.*\[1, 2\].*--step"):
    checkpoint.restore_latest(manager, _abstract(_state(0)), step=7)
  assert int(checkpoint.restore_latest(manager, _abstract(_state(0)), step=1)["step"]) == 1
  manager.close()


def test_a_full_disk_during_a_save_is_one_line(tmp_path, monkeypatch):
  """TensorStore reports a full disk only in its message text; the refusal names the cause."""
  manager = checkpoint.make_manager(str(tmp_path), keep=5, async_save=False)

  def full(*args, **kwargs):
    raise ValueError("Error writing \"state/d/0f3a\": [Errno 28] No space left on device\n"
                     "(spec: {\n  'driver': 'zarr', ... 150 lines ... })")

  monkeypatch.setattr(manager, "save", full)
  with pytest.raises(checkpoint.CheckpointError) as info:
    checkpoint.save(manager, 3, _state(3), WINDOW)
  message = str(info.value)
  assert "\n" not in message and "No space left on device" in message and "rerun" in message
  monkeypatch.setattr(manager, "save", lambda *a, **k: (_ for _ in ()).throw(
      OSError(errno.EIO, "Input/output error")))
  with pytest.raises(OSError):  # not a disk-space problem: left as it is
    checkpoint.save(manager, 3, _state(3), WINDOW)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(checkpoint.WorkdirError, match=rf"--workdir={a_file} is a file"):
    checkpoint.prepare_workdir(str(a_file))
