"""Checkpoints with orbax: periodic, the last N kept, atomic, resumable, and recovered when damaged.
(Evaluation restores a run with `mclr_jax.evaluate.model.restore_model`.)

Layout of a workdir:
  WORKDIR/config.json                    the resolved config of the run (checked on resume)
  WORKDIR/checkpoints/<step>/state       the TrainState (orbax)
  WORKDIR/checkpoints/<step>/window      the metrics accumulated since the last log step
  WORKDIR/checkpoints/<step>.corrupt-<t> a checkpoint that failed to restore, moved aside
  WORKDIR/metrics.jsonl                  logged scalars (see metrics.py)

A step folder counts only once orbax has committed it. Orbax finishes a save by recording a commit
time in the folder's `_CHECKPOINT_METADATA` (and, since 0.12, writing `commit_success.txt`) and then
renaming the temporary folder to `<step>`, so a folder with neither (an interrupted copy, an empty
`checkpoints/50`) is ignored, and training moves it aside as `<step>.uncommitted-<t>`
before it could collide with a new save. On resume (`resume`) the newest committed checkpoint that
restores is used: one that fails to restore is moved aside (renamed, never deleted) with a one-line
warning, unless `config.strict_checkpoints`, which refuses instead. A checkpoint whose shapes do not
fit the config is never moved: that is a config change, not damage.
"""

import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from mclr_jax.errors import UserFacingError, disk_error_reason, writing_file
from mclr_jax.train.state import TrainState

# orbax's marker of a finished checkpoint (orbax.checkpoint._src.path.atomicity_types), written by
# orbax >= 0.12 on every file system; older versions mark a local save only by the commit time in
# the step's metadata file (both are read by `is_committed`).
COMMIT_MARKER = "commit_success.txt"
STEP_METADATA = "_CHECKPOINT_METADATA"
# What a checkpoint holds: the TrainState, and the metrics accumulated since the last log step.
ITEMS = ("state", "window")
# Config keys whose change makes a run's checkpoints unusable (or another run): refused on resume.
# loss.nn_queue_size: the support queue's shape is part of the TrainState (docs/method.md §17.3).
LOCKED_SECTIONS = ("method", "data.name", "model", "manifold", "loss.nn_queue_size")


class CheckpointError(UserFacingError, RuntimeError):
  """A checkpoint exists but cannot be used; the message says which one and what to do."""


class WorkdirError(CheckpointError, FileNotFoundError):
  """The workdir cannot hold (or does not hold) a run; the message names it and the fix."""


def prepare_workdir(workdir: str):
  """Creates WORKDIR if needed; raises WorkdirError if it is a file, or cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; choose another --workdir.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"Cannot create --workdir={workdir}: {e.strerror}; choose a writable "
                       f"location.") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir={workdir} is not writable (read-only or no permission); "
                       f"choose a writable --workdir or fix its permissions.")


def make_manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  # The items are declared up front, so that reading a checkpoint's metadata needs no save first.
  handlers = {item: ocp.StandardCheckpointHandler() for item in ITEMS}
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_handlers=handlers)


def step_path(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def is_committed(path: str) -> bool:
  """Whether orbax finished writing the step folder `path`: it holds the commit marker, or (orbax
  before 0.12, which writes no marker on a local disk) its metadata records a commit time."""
  if os.path.exists(os.path.join(path, COMMIT_MARKER)):
    return True
  try:
    with open(os.path.join(path, STEP_METADATA)) as f:
      return json.load(f).get("commit_timestamp_nsecs") is not None
  except (OSError, ValueError, AttributeError):
    return False


def committed_steps(manager: ocp.CheckpointManager) -> list[int]:
  """The steps whose folder orbax finished writing (`is_committed`), ascending."""
  return sorted(s for s in manager.all_steps() if is_committed(step_path(manager, s)))


def set_aside_uncommitted(workdir: str) -> list[str]:
  """Renames WORKDIR/checkpoints/<step> folders without a commit marker to
  `<step>.uncommitted-<time>` (a later save of that step would collide with them); returns the new
  paths. Call on one process, before the CheckpointManager is made."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  moved = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.isdigit() and os.path.isdir(path) and not is_committed(path):
      moved.append(_move_aside(path, "uncommitted"))
      logging.warning("Ignoring %s: orbax never committed it (no %s, no commit time in %s); "
                      "moved it to %s.", path, COMMIT_MARKER, STEP_METADATA, moved[-1])
  return moved


def _move_aside(path: str, why: str) -> str:
  target = f"{path}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"
  suffix = 0
  while os.path.exists(target + (f"-{suffix}" if suffix else "")):
    suffix += 1
  target += f"-{suffix}" if suffix else ""
  os.rename(path, target)
  return target


def _items(state, window=None) -> dict:
  items = {"state": ocp.args.StandardSave(state)}
  if window is not None:
    items["window"] = ocp.args.StandardSave(window)
  return items


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, window: Any = None,
         force: bool = False):
  """Starts saving `state` (and the metrics `window`) as checkpoint `step`; raises a one-line
  CheckpointError when the disk is full or not writable (also for an earlier async save)."""
  with _disk_errors(manager, step):
    manager.save(step, args=ocp.args.Composite(**_items(state, window)), force=force)


def wait_until_finished(manager: ocp.CheckpointManager):
  """Waits for a pending async save; raises a one-line CheckpointError if it failed to write."""
  with _disk_errors(manager, manager.latest_step()):
    manager.wait_until_finished()


@contextlib.contextmanager
def _disk_errors(manager, step):
  try:
    yield
  except Exception as e:  # orbax re-raises a failed async write as whatever TensorStore raised
    reason = disk_error_reason(e)
    if reason is None:
      raise
    raise CheckpointError(
        f"Could not write checkpoint {step} to {manager.directory}: {reason}. Free space (or "
        f"raise the limit) and rerun the same command: it resumes from the last complete "
        f"checkpoint.") from e


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState,
                   step: Optional[int] = None) -> Optional[TrainState]:
  """The newest committed (or the given) checkpoint's TrainState, restored into `abstract_state`'s
  shapes and shardings, or None when there is none. Nothing on disk is touched: a checkpoint that
  does not restore raises a one-line CheckpointError naming the steps `--step` could choose."""
  steps = committed_steps(manager)
  if step is None:
    if not steps:
      return None
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f"No committed checkpoint at step {step} in {manager.directory}; "
                          f"available: {steps}. Pass one of them as --step.")
  _check_fits(manager, step, abstract_state)
  try:
    return _restore(manager, step, abstract_state)["state"]
  except Exception as e:  # orbax raises many types (ValueError, FileNotFoundError, TensorStore…)
    others = [s for s in steps if s != step]
    hint = (f"choose another with --step (available: {others})" if others else
            "no other checkpoint is available")
    raise CheckpointError(f"Checkpoint at step {step} ({step_path(manager, step)}) could not be "
                          f"restored ({_one_line(e)}); {hint}.") from e


def resume(manager: ocp.CheckpointManager, abstract_state: TrainState, abstract_window: Any,
           strict: bool = False, is_chief: bool = True) -> Optional[tuple[TrainState, Any]]:
  """(state, metrics window) of the newest committed checkpoint that restores, or None if none.

  A checkpoint that fails to restore is moved aside (`<step>.corrupt-<time>`, by the chief) with a
  one-line warning and the next older one is tried; with `strict`, a CheckpointError is raised
  instead and nothing is touched. A checkpoint that does not fit the config raises either way.
  """
  for step in reversed(committed_steps(manager)):
    _check_fits(manager, step, abstract_state)
    try:
      restored = _restore(manager, step, abstract_state, abstract_window)
      return restored["state"], restored["window"]
    except Exception as e:  # pylint: disable=broad-except  (see restore_latest)
      path = step_path(manager, step)
      if strict:
        raise CheckpointError(
            f"Checkpoint at step {step} ({path}) could not be restored ({_one_line(e)}). Nothing "
            f"was moved (config.strict_checkpoints=True); set --config.strict_checkpoints=False "
            f"to move it aside and resume from the newest checkpoint that restores.") from e
      if is_chief:
        aside = _move_aside(path, "corrupt")
        logging.warning("Checkpoint %s could not be restored (%s); moved it to %s and trying the "
                        "previous one.", path, _one_line(e), aside)
      sync_processes(f"checkpoint_aside_{step}")
      manager.reload()
  return None


def _restore(manager, step, abstract_state, abstract_window=None) -> dict:
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if abstract_window is not None:
    items["window"] = ocp.args.StandardRestore(abstract_window)
  with _quiet_orbax_failures():
    return manager.restore(step, args=ocp.args.Composite(**items))


@contextlib.contextmanager
def _quiet_orbax_failures():
  """A failed restore leaves orbax coroutines and threads that report their own failure on stderr
  (each with a ~150-line TensorStore spec); the error raised here already says what failed."""
  unraisable, excepthook = sys.unraisablehook, threading.excepthook
  sys.unraisablehook = lambda *_: None
  threading.excepthook = lambda *_: None
  try:
    yield
  finally:
    gc.collect()  # the abandoned coroutines report while they are collected: now, not later
    sys.unraisablehook, threading.excepthook = unraisable, excepthook


def _check_fits(manager, step: int, abstract_state):
  """Raises CheckpointError if checkpoint `step` holds arrays of other shapes than `abstract_state`
  (another config), or items of another layout than `ITEMS` (an earlier version of mclr_jax
  saved one item, "default"); silent when its metadata cannot be read (the restore then reports
  damage)."""
  path = step_path(manager, step)
  items = sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))
  if items and "state" not in items:
    raise CheckpointError(
        f"Checkpoint at step {step} ({path}) holds the items {items}, a layout of an earlier "
        f"mclr_jax, not {list(ITEMS)}; this version cannot resume it. Train in a new --workdir "
        f"(nothing was moved).")
  try:
    with _quiet_orbax_failures():
      stored = manager.item_metadata(step)["state"]
    stored = _shapes(getattr(stored, "tree", stored))
  except Exception:  # pylint: disable=broad-except
    return
  wanted = _shapes(abstract_state)
  if stored and stored != wanted:
    differ = sorted(set(stored) ^ set(wanted)) or sorted(
        k for k in stored if stored[k] != wanted[k])
    raise CheckpointError(
        f"Checkpoint at step {step} ({step_path(manager, step)}) does not fit this config (first "
        f"difference: {'/'.join(differ[0])}); it was written with another model, manifold or "
        f"optimiser setting. Use the config it was written with, or a new --workdir.")


def _shapes(tree) -> dict:
  """{path of names: shape} of the array leaves of a TrainState, its orbax metadata or a dict."""
  if hasattr(tree, "__dataclass_fields__") and not hasattr(tree, "shape"):
    tree = {f: getattr(tree, f) for f in tree.__dataclass_fields__}
  out = {}

  def visit(node, path):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(v, path + (str(k),))
    elif isinstance(node, tuple) and hasattr(node, "_fields"):  # optax states: orbax names fields
      visit(dict(zip(node._fields, node)), path)
    elif isinstance(node, (list, tuple)) and not hasattr(node, "shape"):
      for i, v in enumerate(node):
        visit(v, path + (str(i),))
    elif hasattr(node, "__dataclass_fields__") and not hasattr(node, "shape"):
      visit({f: getattr(node, f) for f in node.__dataclass_fields__}, path)
    elif node is not None:
      out[path] = tuple(getattr(node, "shape", ()))

  visit(tree, ())
  return out


def _one_line(e: BaseException, limit: int = 160) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


def sync_processes(name: str):
  """A barrier of all processes (nothing with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def has_committed_checkpoint(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints holds a step folder orbax finished writing (`is_committed`)."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(
      name.isdigit() and is_committed(os.path.join(directory, name))
      for name in os.listdir(directory))


def write_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes WORKDIR/config.json. When the workdir already holds a committed checkpoint, refuses a
  config that changes a LOCKED_SECTIONS value, naming every differing key with both values; without
  one (e.g. after a start that failed) nothing is locked."""
  path = os.path.join(workdir, "config.json")
  new = json.loads(config.to_json_best_effort())
  if has_committed_checkpoint(workdir) and os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    differ = [(k, old_flat.get(k), new_flat.get(k))
              for old_flat, new_flat in [(_flatten(old), _flatten(new))]
              for k in sorted(set(old_flat) | set(new_flat))
              if k.startswith(LOCKED_SECTIONS) and old_flat.get(k) != new_flat.get(k)]
    if differ:
      changes = "; ".join(f"config.{k}: {a!r} in the run, {b!r} given" for k, a, b in differ)
      raise CheckpointError(
          f"{workdir} holds checkpoints of a run with another config ({changes}); they would not "
          f"fit. Use the run's values, or a new --workdir.")
  with writing_file(path, path + ".tmp"):
    with open(path + ".tmp", "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise WorkdirError(f"No config.json in {workdir}: is it a mclr_jax training workdir? "
                       f"Train with: python -m mclr_jax.main --config=... --workdir={workdir}")
  with open(path) as f:
    return ml_collections.ConfigDict(_lists_to_tuples(json.load(f)))


def _lists_to_tuples(x):
  if isinstance(x, dict):
    return {k: _lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_lists_to_tuples(v) for v in x)
  return x
