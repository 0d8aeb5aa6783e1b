"""Checkpoints with orbax: periodic, the last N kept, atomic (written to a temporary directory and
renamed), resumable; and `restore_model(workdir)` for evaluation of any run.

Layout of a workdir:
  WORKDIR/config.json        the resolved config of the run (written once, checked on resume)
  WORKDIR/checkpoints/<step> orbax checkpoints of the TrainState
  WORKDIR/metrics.jsonl      logged scalars (see metrics.py)
"""

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mclr_jax.errors import UserFacingError
from mclr_jax.train.state import TrainState


class CheckpointError(UserFacingError, RuntimeError):
  """A checkpoint exists but cannot be used; the message says which one and what to do."""


def make_manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, force: bool = False):
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState,
                   step: Optional[int] = None) -> Optional[TrainState]:
  """The latest (or given) checkpoint restored into `abstract_state`'s shapes and shardings, or None
  when there is none. A corrupt checkpoint raises CheckpointError; nothing on disk is touched."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # orbax raises many types (ValueError, FileNotFoundError, tensorstore…)
    path = os.path.join(str(manager.directory), str(step))
    earlier = [s for s in manager.all_steps() if s < step]
    hint = (f"move {path} aside to resume from step {max(earlier)}" if earlier else
            "move it aside, or use a new --workdir to start afresh")
    raise CheckpointError(
        f"Checkpoint at step {step} ({path}) could not be restored: {type(e).__name__}: {e}. "
        f"Nothing was deleted. To continue, {hint}.") from e


def write_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes WORKDIR/config.json once; on resume refuses a config that changes the model's shapes."""
  path = os.path.join(workdir, "config.json")
  os.makedirs(workdir, exist_ok=True)
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for section in ("model", "manifold"):
      if old.get(section) != new.get(section) or old.get("method") != new.get("method"):
        raise CheckpointError(
            f"{workdir} holds a run with a different config.{section} or method than the one "
            f"given; its checkpoints would not fit. Use a new --workdir, or the same config.")
  with open(path + ".tmp", "w") as f:
    json.dump(new, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config.json in {workdir}: is it a mclr_jax training workdir? "
                            f"Train with: python -m mclr_jax.main --config=... --workdir={workdir}")
  with open(path) as f:
    return ml_collections.ConfigDict(_lists_to_tuples(json.load(f)))


def _lists_to_tuples(x):
  if isinstance(x, dict):
    return {k: _lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_lists_to_tuples(v) for v in x)
  return x


@dataclasses.dataclass
class RestoredModel:
  """A trained model for evaluation: frozen parameters and jitted feature functions.

  encode(images (N, H, W, 3) float, preprocessed) -> (N, D) backbone features, eval-mode BN;
  project(h (N, D)) -> (N, K) projector outputs; prior(z (N, D)) -> (μ_p, log b_p) (N, M), fully
  warmed-up (docs/method.md §3.2); psi (M, K, b, b) or None.
  """
  config: ml_collections.ConfigDict
  step: int
  params: Any
  batch_stats: Any
  networks: Any

  @property
  def psi(self):
    return self.params.get("psi")

  def encode(self, images, batch_size: int = 500) -> np.ndarray:
    fn = _jitted(self.networks.backbone)
    return _batched(lambda x: fn(self.params["backbone"], self.batch_stats["backbone"], x),
                    images, batch_size)

  def project(self, h, batch_size: int = 1000) -> np.ndarray:
    fn = _jitted(self.networks.projector)
    return _batched(lambda x: fn(self.params["projector"], self.batch_stats["projector"], x),
                    h, batch_size)

  def prior(self, z):
    return self.networks.prior.apply({"params": self.params["prior"]}, jnp.asarray(z),
                                     jnp.asarray(10 ** 8, jnp.int32))


def _jitted(module):
  @jax.jit
  def apply(params, stats, x):
    return module.apply({"params": params, "batch_stats": stats}, x, train=False)
  return apply


def _batched(fn, x, batch_size):
  outs = [np.asarray(fn(jnp.asarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
  return np.concatenate(outs) if outs else np.zeros((0,))


def restore_model(workdir: str, step: Optional[int] = None,
                  config: Optional[ml_collections.ConfigDict] = None) -> RestoredModel:
  """Loads the latest (or given) checkpoint of `workdir` for evaluation (no optimiser needed)."""
  from mclr_jax.train import create  # local: avoids an import cycle
  config = config or read_config(workdir)
  manager = make_manager(workdir, keep=config.keep_checkpoints, async_save=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints: train first with "
                            f"python -m mclr_jax.main --config=... --workdir={workdir}")
  networks, abstract_state = create.abstract_train_state(config, steps_per_epoch=1)
  # Evaluation runs on one device: restore there, not with the training mesh's sharding.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_state)
  state = restore_latest(manager, abstract_state, step)
  manager.close()
  return RestoredModel(config=config, step=int(state.step), params=state.params,
                       batch_stats=state.batch_stats, networks=networks)
