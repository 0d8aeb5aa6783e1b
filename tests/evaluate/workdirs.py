"""Workdirs for the evaluation tests without training: a config and a step-0 checkpoint of the
freshly initialised TrainState, restored exactly as a trained run would be (seconds, not a train
step compile)."""

import os

import jax

from mclr_jax.train import checkpoint
from mclr_jax.train import create


def save_untrained(config, workdir: str):
  """Writes WORKDIR/config.json and a checkpoint at step 0; returns the saved TrainState."""
  os.makedirs(workdir, exist_ok=True)
  checkpoint.write_config(workdir, config)
  _, state, _, _ = create.create_train_state(config, jax.random.key(config.seed),
                                             steps_per_epoch=1)
  manager = checkpoint.make_manager(workdir, keep=1, async_save=False)
  checkpoint.save(manager, step=0, state=state, force=True)
  manager.wait_until_finished()
  manager.close()
  return state
