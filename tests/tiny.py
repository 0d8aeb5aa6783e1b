"""Tiny configs and readers shared by the training tests (plain functions, importable from a
subprocess as `tests.tiny`): seconds per step on a CPU, same code paths as the paper's sizes."""

import importlib
import json
import os

from configs import spirograph


def tiny_spirograph_config(method="simclr", num_train_steps=4):
  """Spirograph (no TensorFlow) with a width-4 ResNet-18 and tiny heads."""
  config = spirograph.get_config("manifoldclr" if method == "manifoldclr" else "cpu")
  config.model.width = 4
  config.model.proj_hidden_dim = 16
  config.model.proj_output_dim = 8
  config.batch_size = 16
  config.data.num_train = 64
  config.data.num_test = 16
  config.data.prefetch = 1
  config.num_train_steps = num_train_steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = 100
  config.eval_every_steps = 0
  _tiny_manifold(config)
  return config


def tiny_image_config(name, method):
  """An image dataset's config (CIFAR-10 / STL-10 ...) at width 4, batch 16, 12 steps."""
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config("simclr" if method == "simclr" else "proj")
  config.model.width = 4
  config.model.proj_hidden_dim = 16
  config.model.proj_output_dim = 8
  config.batch_size = 16
  config.num_train_steps = 12
  config.log_every_steps = 3
  config.checkpoint_every_steps = 6
  config.eval_every_steps = 0
  config.data.prefetch = 1
  config.optim.warmup_epochs = 0
  config.optim.lr = 3e-3
  _tiny_manifold(config)
  return config


def _tiny_manifold(config):
  config.manifold.block_dim = 8
  config.manifold.dictionary_size = 4
  config.manifold.encoder_hidden = (16, 16, 8)
  config.manifold.prior_hidden = (16, 16, 8)


def read_metrics(workdir, kind="train"):
  """The records of WORKDIR/metrics.jsonl of one kind ("train" or "eval")."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if r["kind"] == kind]
