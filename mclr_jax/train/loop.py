"""The training loop: mesh, resumable state, jitted step, metrics, checkpoints, SIGTERM, NaN stop.

`train_and_evaluate(config, workdir, eval_fn)` is the whole program behind `mclr_jax.main`. It is
written once for any number of devices and hosts: the global batch is sharded over a 1-D "data"
mesh and the state is replicated; XLA inserts the collectives (global BatchNorm statistics, global
contrastive loss).
"""

import logging
import signal
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mclr_jax.errors import UserFacingError
from mclr_jax.train import checkpoint
from mclr_jax.train import create
from mclr_jax.train import data as data_lib
from mclr_jax.train import metrics as metrics_lib
from mclr_jax.train import objective
from mclr_jax.train import optimizer as optimizer_lib
from mclr_jax.train.state import TrainState
from mclr_jax.train.step import make_train_step
from mclr_jax.train.validate import validate_config

EvalFn = Callable[[TrainState, int], dict]


class NonFiniteError(UserFacingError, FloatingPointError):
  """Training produced NaN/Inf; the message names the step and the term."""


class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint and returns (orbax's own preemption check
  does nothing in a single process)."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def make_mesh():
  """A 1-D data-parallel mesh over every device of every process (automatic axis types, so library
  code written for unsharded arrays keeps working)."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def _raise_if_nonfinite(step: int, metrics: dict):
  flags = {k: float(v) for k, v in jax.device_get(metrics).items() if k.startswith("nonfinite/")}
  bad = [k.split("/", 1)[1] for k, v in flags.items() if v]
  if bad:
    raise NonFiniteError(
        f"Non-finite {', '.join(bad)} at step {step}; the update was not applied and the last "
        f"checkpoint is intact. Lower the learning rates (config.optim.*), check the data, or "
        f"resume from the last checkpoint with a changed config.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       eval_fn: Optional[EvalFn] = None) -> TrainState:
  """Trains (resuming from WORKDIR's latest checkpoint if any) and returns the final state."""
  validate_config(config, jax.device_count(), jax.process_count())
  is_chief = jax.process_index() == 0
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  if is_chief:
    checkpoint.write_config(workdir, config)

  train_data = data_lib.make_train_data(config, jax.process_index(), jax.process_count())
  steps_per_epoch = train_data.steps_per_epoch
  total_steps = create.total_train_steps(config, steps_per_epoch)
  root = jax.random.key(config.seed)
  networks, state, tx, schedules = create.create_train_state(config, jax.random.fold_in(root, 0),
                                                             steps_per_epoch)
  state = jax.device_put(state, replicated)
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          state)
  restored = checkpoint.restore_latest(manager, abstract)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
  start_step = int(jax.device_get(state.step))

  step_fn = jax.jit(make_train_step(networks, config, tx),
                    in_shardings=(replicated, batch_sharding, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=(0,))
  step_rng = jax.random.fold_in(root, 1)
  eval_every = _eval_interval(config, steps_per_epoch)
  groups = [g for g, keys in optimizer_lib.GROUPS.items() if any(k in state.params for k in keys)]

  from mclr_jax.data.tfds_input import prefetch_to_device  # no TensorFlow needed
  batches = prefetch_to_device(train_data.make_iterator(start_step), size=config.data.prefetch,
                               sharding=batch_sharding)
  jsonl = metrics_lib.JsonlWriter(f"{workdir}/metrics.jsonl") if is_chief else None
  tensorboard = metrics_lib.TensorBoardWriter(workdir) if is_chief else None
  progress = metrics_lib.Progress(start_step, total_steps, images_per_step=2 * config.batch_size)
  logging.info("Training %s on %s for %d steps (%d per epoch) on %d %s device(s) in %s "
               "(config.half_precision=%s), from step %d.", config.method, config.data.name,
               total_steps, steps_per_epoch, jax.device_count(), jax.default_backend(),
               jnp.dtype(objective.compute_dtype(config)).name, config.half_precision, start_step)

  collection, merge, accumulated, pending = None, None, None, None
  try:
    with _Preemption() as preemption:
      for step in range(start_step, total_steps):
        state, metrics = step_fn(state, next(batches), step_rng)
        if collection is None:
          names = [k for k in metrics if not k.startswith("nonfinite/")]
          collection = metrics_lib.make_collection(names)
          merge = jax.jit(lambda acc, m: acc.merge(collection.single_from_model_output(
              **{k: m[k] for k in names})))
          accumulated = collection.empty()
        accumulated = merge(accumulated, metrics)
        # Check the previous step's flags while this one runs: no idle device, exact step named.
        if pending is not None:
          _raise_if_nonfinite(*pending)
        pending = (step, metrics)
        done = step + 1
        last = done == total_steps
        if done % config.log_every_steps == 0 or last:
          _raise_if_nonfinite(*pending)
          scalars = metrics_lib.device_get_scalars(accumulated.compute())
          scalars.update(optimizer_lib.learning_rates(schedules, step, groups))
          speed = progress.update(done)
          scalars.update(epoch=done / steps_per_epoch, **speed)
          if is_chief:
            logging.info("%s", metrics_lib.console_line(done, total_steps, scalars, speed))
            jsonl.write(done, scalars)
            tensorboard.write(done, scalars)
          accumulated = collection.empty()
        if done % config.checkpoint_every_steps == 0 or last or preemption.requested.is_set():
          _raise_if_nonfinite(*pending)
          checkpoint.save(manager, state, force=preemption.requested.is_set())
        if eval_fn is not None and eval_every and (done % eval_every == 0 or last):
          results = eval_fn(state, done)
          if is_chief and results:
            jsonl.write(done, results, kind="eval")
            tensorboard.write(done, results)
            logging.info("eval at step %d: %s", done,
                         ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        if preemption.requested.is_set():
          logging.warning("SIGTERM: saved a checkpoint at step %d; rerun the same command to "
                          "resume.", done)
          break
  finally:
    # Also when an error leaves the loop: a save still being written finishes, so the last
    # checkpoint on disk is complete (the NaN stop promises that); and the prefetch thread stops.
    batches.close()
    manager.wait_until_finished()
    manager.close()
  if tensorboard is not None:
    tensorboard.flush()
  return state


def _eval_interval(config, steps_per_epoch: int) -> int:
  if config.eval_every_steps > 0:
    return config.eval_every_steps
  if config.eval_every_steps == 0:
    return 0
  return max(int(config.eval.every_epochs * steps_per_epoch), 1)
