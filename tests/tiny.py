"""Tiny configs, readers and float64 references shared by the training tests (plain functions,
importable from a subprocess as `tests.tiny`): seconds per step on a CPU, same code paths as the
paper's sizes."""

import importlib
import json
import os

import numpy as np

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


def spirograph_objective_inputs(config, batch_size, seed=0):
  """(networks, params, batch_stats, batch) for calling `objective.compute_loss` directly on
  `batch_size` Spirograph draws (their content θ; the views are rendered inside the objective)."""
  import jax  # pylint: disable=g-import-not-at-top  (kept out of the subprocess-light imports)
  from mclr_jax.data import spirograph as spirograph_data  # pylint: disable=g-import-not-at-top
  from mclr_jax.train import objective  # pylint: disable=g-import-not-at-top
  networks = objective.build_networks(config)
  params, batch_stats = objective.init_variables(networks, config, jax.random.key(seed))
  theta, _ = spirograph_data.split_params(
      spirograph_data.sample_params(jax.random.key(seed + 1), batch_size),
      tuple(config.data.content))
  return networks, params, batch_stats, {"theta": theta}


def nt_xent_float64(a, b, tau):
  """NT-Xent over the 2B rows of [a; b] (normalised here), positives (i, i + B); float64 numpy."""
  u = np.concatenate([a, b]).astype(np.float64)
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  n = len(a)
  logits = u @ u.T / tau
  np.fill_diagonal(logits, -np.inf)
  positives = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  return -np.mean(logits[np.arange(2 * n), positives] - np.log(np.sum(np.exp(logits), axis=1)))


def truncate_checkpoint_state(step_dir):
  """Truncates every array and index file of a checkpoint's state to a third (a torn copy)."""
  for d, _, fs in os.walk(os.path.join(step_dir, "state")):
    for f in fs:
      path = os.path.join(d, f)
      if f != "_METADATA" and os.path.getsize(path) > 1:
        with open(path, "r+b") as handle:
          handle.truncate(os.path.getsize(path) // 3)


def sigterm_at(monkeypatch, stop_step):
  """Sends this process a real SIGTERM when the training loop asks whether to stop after
  `stop_step` updates, as a cluster scheduler's preemption would."""
  import signal  # pylint: disable=g-import-not-at-top
  from mclr_jax.train import loop  # pylint: disable=g-import-not-at-top
  reached = loop._Preemption.reached  # pylint: disable=protected-access

  def signal_then_check(self, step):
    if step == stop_step:
      os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
    return reached(self, step)

  monkeypatch.setattr(loop._Preemption, "reached", signal_then_check)  # pylint: disable=W0212


def fake_committed_checkpoint(workdir):
  """A real checkpoint (step 1) of a small stand-in tree, written by the installed orbax the way
  training writes one: enough for the config lock, which reads no arrays. (A hand-made commit
  marker would hide how a given orbax version marks a finished step.)"""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mclr_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint.make_manager(workdir, keep=1, async_save=False)
  checkpoint.save(manager, 1, {"w": jnp.zeros((2,), jnp.float32)})
  manager.close()
  assert checkpoint.has_committed_checkpoint(workdir)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
  """`path` is a PNG file that decodes to a non-blank RGB(A) image."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top  (only the figure tests need it)
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE, f"{path} is not a PNG file"
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.std() > 0, f"{path} is blank"


def coloured_images(labels, rng):
  """uint8 (N, 32, 32, 3): class c is a noisy image of colour c (a red, a green, a blue class)."""
  colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]])
  noise = rng.integers(-30, 31, (len(labels), 32, 32, 3))
  return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def tensorboard_scalars(logdir):
  """[(tag, step, value)] of every scalar in LOGDIR's TensorBoard event files, in file order, read
  by TensorFlow's own iterator; None without TensorFlow (runs then write no event files)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  rows = []
  for path in sorted(tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      rows += [(v.tag, event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value]
  return rows
