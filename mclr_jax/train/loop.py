"""The training loop: mesh, resumable state, jitted step, metrics, checkpoints, SIGTERM, NaN stop.

`train_and_evaluate(config, workdir, eval_fn)` is the whole program behind `mclr_jax.main`. It is
written once for any number of devices and hosts: the global batch is sharded over a 1-D "data"
mesh and the state is replicated; XLA inserts the collectives (global BatchNorm statistics, global
contrastive loss).

The host never waits for the device between boundaries (a log step, a checkpoint step, an
evaluation, the last step, a preemption): the jitted step carries the metrics of the steps since
the last log step and the record of the first non-finite step on the device
(`metrics.StepMetrics`), and the host reads them only at a boundary. There it stops on a non-finite
step, naming the step and the check, before anything is logged or saved: after a refused update
the step applies no further one, so no checkpoint can hold a non-finite value. The metrics window
is checkpointed with the state, so a resumed run logs exactly the rows an uninterrupted one would.

SIGTERM (a preemption) saves a checkpoint after the step in flight, skips evaluation and raises
`Preempted` (exit status 143 from the command line); rerunning the same command resumes.
"""

import contextlib
import gc
import logging
import signal
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mclr_jax.errors import Preempted, UserFacingError
from mclr_jax.train import checkpoint
from mclr_jax.train import create
from mclr_jax.train import data as data_lib
from mclr_jax.train import metrics as metrics_lib
from mclr_jax.train import objective
from mclr_jax.train import optimizer as optimizer_lib
from mclr_jax.train.state import TrainState
from mclr_jax.train import step as step_lib
from mclr_jax.train.validate import validate_config

EvalFn = Callable[[TrainState, int], dict]

# The device-to-host transfer guard the loop runs under between boundaries. The tests set
# "disallow" to prove that the host reads nothing from the device there (jax.transfer_guard).
HOST_TRANSFER_GUARD = "allow"


class NonFiniteError(UserFacingError, FloatingPointError):
  """Training produced NaN/Inf; the message names the step and the check."""


class _EvaluationInterrupted(Exception):
  """A SIGTERM arrived during a periodic evaluation (one process)."""


class _Preemption:
  """Whether a preemption (SIGTERM) asks the loop to stop at `step`.

  One process: a SIGTERM handler sets a flag (orbax's preemption check does nothing in a single
  process). Several processes: JAX's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM on whichever process gets it, tells the others, and names one step at which all
  of them stop together; our own handler would hide the signal from it, so none is installed.
  """

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None
    self._installed = False  # our handler is in place (signal.signal may report None before it)
    self._multi_process = jax.process_count() > 1
    self._evaluating = False

  def __enter__(self):
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    return self

  def _on_sigterm(self, *_):
    self.requested.set()
    if self._evaluating:
      # Runs in the main thread between bytecodes: the evaluation stops within one compiled call
      # instead of running to its end (a probe can take minutes, longer than a grace period).
      raise _EvaluationInterrupted()

  @contextlib.contextmanager
  def interruptible_evaluation(self):
    """Inside, a SIGTERM (one process) raises `_EvaluationInterrupted`. Several processes stop at
    the step the preemption service names instead: one leaving an evaluation alone would leave
    the others waiting in its collectives."""
    if not self._installed:  # no handler of ours: several processes, or not the main thread
      yield
      return
    self._evaluating = True
    try:
      if self.requested.is_set():
        raise _EvaluationInterrupted()
      yield
    finally:
      self._evaluating = False

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                    else signal.SIG_DFL)
      self._installed = False

  def reached(self, step: int) -> bool:
    """Called by every process at every step (the multi-process protocol needs each step id)."""
    if self._multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested.is_set()


def make_mesh():
  """A 1-D data-parallel mesh over every device of every process (automatic axis types, so library
  code written for unsharded arrays keeps working)."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def _raise_if_nonfinite(window: metrics_lib.StepMetrics, manager):
  """At a boundary: raises NonFiniteError if a step of the window was refused (reads the device)."""
  step, checks = window.failed_checks()
  if step is None:
    return
  checkpoint.wait_until_finished(manager)  # name the latest checkpoint once it is complete
  latest = checkpoint.committed_steps(manager) or [None]
  kept = (f"the latest checkpoint (step {latest[-1]}, {manager.directory}) is intact"
          if latest[-1] is not None else "no checkpoint was written")
  also = f" (and then {', '.join(checks[1:])})" if len(checks) > 1 else ""
  fix = ("check the input data (config.data.*)" if checks[0] == "data" else
         "lower the learning rates (--config.optim.lr, psi_lr, coeff_lr) or check the data and "
         "config.optim.eps")
  raise NonFiniteError(
      f"Non-finite {checks[0]}{also} at step {step}: that update was refused and never saved; "
      f"{kept}. To continue, {fix}, then rerun the same command to resume.")


def _accumulating(train_step):
  """(state, window, batch, rng) -> (state, window): the step, with its metrics added to the
  device-side window. Once a step of the window was refused as non-finite, no later one is
  applied, so the state the host sees at the boundary is the last good one."""

  def step_fn(state, window, batch, rng):
    new_state, metrics = train_step(state, batch, rng)
    new_state = jax.tree.map(lambda new, old: jnp.where(window.clean, new, old), new_state, state)
    return new_state, window.add(metrics, state.step)

  return step_fn


def _compile_step(train_step, state, window, batch_spec, rng, mesh):
  """The accumulating step, jitted once with the state and window replicated and donated and the
  batch sharded over "data", and compiled ahead of the loop (so that no step's timing includes
  the compilation)."""
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                       batch_spec)
  jitted = jax.jit(_accumulating(train_step),
                   in_shardings=(replicated, replicated, batch_sharding, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=(0, 1))
  return jitted.lower(state, window, batch, rng).compile()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       eval_fn: Optional[EvalFn] = None) -> TrainState:
  """Trains (resuming from WORKDIR's newest usable checkpoint if any) and returns the final state.

  Raises Preempted after saving a checkpoint when SIGTERM arrives, NonFiniteError when a step goes
  non-finite, and ConfigError / CheckpointError / DatasetNotFoundError before any work.
  """
  validate_config(config, jax.device_count(), jax.process_count())
  is_chief = jax.process_index() == 0
  if is_chief:
    checkpoint.prepare_workdir(workdir)
    checkpoint.set_aside_uncommitted(workdir)
    checkpoint.write_config(workdir, config)
  checkpoint.sync_processes("workdir_ready")  # the others list checkpoints after the chief
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  train_data = data_lib.make_train_data(config, jax.process_index(), jax.process_count())
  steps_per_epoch = train_data.steps_per_epoch
  total_steps = create.total_train_steps(config, steps_per_epoch)
  root = jax.random.key(config.seed)
  networks, state, tx, schedules = create.create_train_state(config, jax.random.fold_in(root, 0),
                                                             steps_per_epoch, sharding=replicated)
  step_rng = jax.jit(lambda: jax.random.fold_in(root, 1), out_shardings=replicated)()
  # Jitted on its own too, so that tracing it here for the metric names is reused by step_fn.
  train_step = jax.jit(step_lib.make_train_step(networks, config, tx))
  _, metric_shapes = jax.eval_shape(train_step, state, train_data.batch_spec, step_rng)
  # A fresh window is made on the devices (a host value put on a multi-process sharding would be
  # compared across the processes at every log step).
  empty_window = jax.jit(lambda: metrics_lib.StepMetrics.empty(metric_shapes, step_lib.CHECKS),
                         out_shardings=replicated)
  window = empty_window()

  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          (state, window))
  restored = checkpoint.resume(manager, *abstract, strict=config.strict_checkpoints,
                               is_chief=is_chief)
  if restored is not None:
    state, window = restored
    logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
  start_step = int(jax.device_get(state.step))

  compile_started = time.perf_counter()
  step_fn = _compile_step(train_step, state, window, train_data.batch_spec, step_rng, mesh)
  logging.info("Compiled the train step in %.1f s.", time.perf_counter() - compile_started)
  eval_every = _eval_interval(config, steps_per_epoch)
  groups = [g for g, keys in optimizer_lib.GROUPS.items() if any(k in state.params for k in keys)]

  from mclr_jax.data.tfds_input import prefetch_to_device  # no TensorFlow needed
  batches = prefetch_to_device(train_data.make_iterator(start_step), size=config.data.prefetch,
                               sharding=batch_sharding)
  jsonl = tensorboard = None
  if is_chief:
    jsonl = metrics_lib.JsonlWriter(f"{workdir}/metrics.jsonl")
    dropped = jsonl.truncate_after(start_step)
    if dropped:
      logging.info("metrics.jsonl: dropped %d row(s) after step %d (logged again now).", dropped,
                   start_step)
    tensorboard = metrics_lib.TensorBoardWriter(workdir, resume_step=start_step)
    if tensorboard.dropped:
      logging.info("TensorBoard: dropped %d event(s) after step %d (logged again now).",
                   tensorboard.dropped, start_step)
  progress = metrics_lib.Progress(start_step, total_steps, images_per_step=2 * config.batch_size)
  logging.info("Training %s on %s for %d steps (%d per epoch) on %d %s device(s) in %s "
               "(config.half_precision=%s), from step %d.", config.method, config.data.name,
               total_steps, steps_per_epoch, jax.device_count(), jax.default_backend(),
               jnp.dtype(objective.compute_dtype(config)).name, config.half_precision, start_step)

  # Everything alive now (traced and compiled programs, the data, library state) lives for the
  # whole run: frozen, it is skipped by Python's periodic full garbage collections, which would
  # otherwise pause the host for a scan of all of it (0.6 s measured in a test process).
  gc.collect()
  gc.freeze()
  error = None
  try:
    with _Preemption() as preemption:
      for step in range(start_step, total_steps):
        started = time.perf_counter()
        with jax.transfer_guard_device_to_host(HOST_TRANSFER_GUARD):
          state, window = step_fn(state, window, next(batches), step_rng)
          done = step + 1
          last = done == total_steps
          preempted = preemption.reached(done)
          log = done % config.log_every_steps == 0 or last
          save = done % config.checkpoint_every_steps == 0 or last or preempted
          evaluate = (eval_fn is not None and bool(eval_every) and not preempted
                      and (done % eval_every == 0 or last))
          if not (log or save or evaluate):
            progress.dispatched(time.perf_counter() - started)
            continue
        # A boundary: the host reads the device from here on.
        _raise_if_nonfinite(window, manager)
        if log:
          scalars = window.means()
          scalars.update(optimizer_lib.learning_rates(schedules, step, groups))
          speed = progress.update(done)
          scalars.update(epoch=done / steps_per_epoch, **speed)
          if is_chief:
            logging.info("%s", metrics_lib.console_line(done, total_steps, scalars, speed))
            jsonl.write(done, scalars)
            tensorboard.write(done, scalars)
          window = empty_window()
        if save:
          checkpoint.save(manager, done, state, window, force=preempted)
        if evaluate:
          try:
            with preemption.interruptible_evaluation():
              results = eval_fn(state, done)
          except _EvaluationInterrupted:
            results, preempted = None, True
            if not save:
              checkpoint.save(manager, done, state, window, force=True)
          if is_chief and results:
            jsonl.write(done, results, kind="eval")
            tensorboard.write(done, results)
            logging.info("eval at step %d: %s", done,
                         ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        if preempted:
          checkpoint.wait_until_finished(manager)
          raise Preempted(done, f"SIGTERM: saved a checkpoint at step {done} in "
                                f"{manager.directory} and skipped (or stopped) evaluation; rerun "
                                f"the same command to resume (exit status 143: requeue).")
  except BaseException as e:
    error = e
    raise
  finally:
    # Also when an error leaves the loop: a save still being written finishes, so the last
    # checkpoint on disk is complete (the NaN stop promises that); and the prefetch thread stops.
    batches.close()
    try:
      checkpoint.wait_until_finished(manager)
    except checkpoint.CheckpointError as e:
      if error is None:
        raise
      logging.warning("%s", e)  # the error already leaving the loop is the one to report
    finally:
      manager.close()
      gc.unfreeze()
  if tensorboard is not None:
    tensorboard.close()
  return state


def _eval_interval(config, steps_per_epoch: int) -> int:
  if config.eval_every_steps > 0:
    return config.eval_every_steps
  if config.eval_every_steps == 0:
    return 0
  return max(int(config.eval.every_epochs * steps_per_epoch), 1)
