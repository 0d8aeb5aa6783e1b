"""End to end: `train_and_evaluate` on mocked TFDS data (CIFAR-10 and STL-10 shapes), the NaN stop
(NaN data, and a NaN loss term found between boundaries), and a corrupt checkpoint refused without
touching anything under config.strict_checkpoints."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.train import checkpoint
from mclr_jax.train import create
from mclr_jax.train import data as data_lib
from mclr_jax.train import loop
from mclr_jax.train import objective
from tests.tiny import read_metrics, tiny_image_config, tiny_spirograph_config


@pytest.mark.parametrize("name,method,num_examples", [
    # one fixed batch of 32 px images (tests/data/test_tfds_input.py reads mock splits by default)
    pytest.param("cifar10", "manifoldclr", 16, marks=pytest.mark.slow),
    # train + unlabelled = 16 images of 96 px, cropped to 64 px
    pytest.param("stl10", "simclr", 8, marks=pytest.mark.slow),
])
def test_train_on_mock_data_lowers_the_loss(tmp_path, fast_compiles, name, method, num_examples):
  tfds = pytest.importorskip("tensorflow_datasets", reason="the mock-data runs read TFDS splits")
  config = tiny_image_config(name, method)
  config.optim.lr = 1e-2  # a tiny fixed dataset: a larger step makes the decrease unambiguous
  workdir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=num_examples):
    state = loop.train_and_evaluate(config, workdir)
  assert int(state.step) == config.num_train_steps
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [3, 6, 9, 12]
  assert np.mean([r["loss"] for r in records[-2:]]) < np.mean([r["loss"] for r in records[:2]])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(config.num_train_steps)))


@pytest.mark.slow  # a training run; tests/reliability/test_nan_injection.py injects NaNs elsewhere
def test_nan_data_stops_naming_the_step_and_the_data(tmp_path, monkeypatch, fast_compiles):
  bad_step = 2
  config = tiny_spirograph_config(num_train_steps=4)
  config.checkpoint_every_steps = 1
  make = data_lib.make_train_data

  def poisoned(*args, **kwargs):
    train_data = make(*args, **kwargs)
    make_iterator = train_data.make_iterator

    def iterator(start_step):
      for step, batch in enumerate(make_iterator(start_step), start_step):
        if step >= bad_step:  # NaN Spirograph parameters: NaN images
          batch = {k: np.full_like(v, np.nan) for k, v in batch.items()}
        yield batch

    train_data.make_iterator = iterator
    return train_data

  monkeypatch.setattr(data_lib, "make_train_data", poisoned)
  workdir = str(tmp_path)
  # The data is named, not a loss term: on the CPU a NaN batch gives a finite loss (step.py).
  with pytest.raises(loop.NonFiniteError,
                     match=rf"Non-finite data \(and then .*\) at step {bad_step}\b"):
    loop.train_and_evaluate(config, workdir)
  # The last good state (after `bad_step` updates) was checkpointed and restores finite.
  _assert_latest_checkpoint_is_finite(workdir, config, bad_step)


@pytest.mark.slow  # a training run; tests/train/test_metrics.py checks the on-device non-finite flags
def test_nonfinite_loss_term_found_between_boundaries_is_named_and_never_saved(
    tmp_path, monkeypatch, fast_compiles):
  """A NaN contrastive loss at step 2 of a window of 4: the stop at the boundary (step 4) names
  step 2 and the term, and no checkpoint is written at the boundary."""
  bad_step = 2
  config = tiny_spirograph_config(num_train_steps=8)
  config.log_every_steps = config.checkpoint_every_steps = 4
  compute_loss = objective.compute_loss

  def nan_contrastive_from_bad_step(params, batch_stats, batch, rng, step, **kwargs):
    loss, (metrics, stats) = compute_loss(params, batch_stats, batch, rng, step, **kwargs)
    nan = jnp.where(step >= bad_step, jnp.nan, 0.0)
    return loss + nan, (dict(metrics, contrastive=metrics["contrastive"] + nan), stats)

  monkeypatch.setattr(objective, "compute_loss", nan_contrastive_from_bad_step)
  workdir = str(tmp_path)
  with pytest.raises(loop.NonFiniteError,
                     match=rf"Non-finite contrastive at step {bad_step}\b.*no checkpoint"):
    loop.train_and_evaluate(config, workdir)
  assert checkpoint.committed_steps(checkpoint.make_manager(workdir, keep=3)) == []
  # Nothing of the bad window was logged either.
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl")) or read_metrics(workdir) == []


def _assert_latest_checkpoint_is_finite(workdir, config, expected_step):
  manager = checkpoint.make_manager(workdir, keep=3, async_save=False)
  _, abstract = create.abstract_train_state(config, steps_per_epoch=4)
  state = checkpoint.restore_latest(manager, abstract)
  manager.close()
  assert int(state.step) == expected_step
  leaves = jax.tree.leaves(jax.device_get((state.params, state.opt_state, state.batch_stats)))
  assert all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(np.asarray(x).dtype,
                                                                       np.inexact))


@pytest.mark.slow  # two training runs; tests/train/test_checkpoint.py covers the corrupt step itself
def test_corrupt_checkpoint_is_refused_and_kept_when_strict(tmp_path, fast_compiles):
  """config.strict_checkpoints: a checkpoint that does not restore stops the run and stays as it
  is. (By default it is moved aside instead: tests/train/test_checkpoint.py, and
  tests/reliability/test_checkpoint_faults.py on the command line.)"""
  config = tiny_spirograph_config(num_train_steps=2)
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir)
  latest = os.path.join(workdir, "checkpoints", "2")
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs)
  data_files = [f for f in files if "_METADATA" not in f and os.path.getsize(f) > 1]
  for f in data_files:  # truncate every array file of the checkpoint
    with open(f, "r+b") as handle:
      handle.truncate(os.path.getsize(f) // 3)
  before = {f: os.path.getsize(f) for f in files}
  config.num_train_steps = 4
  config.strict_checkpoints = True
  with pytest.raises(checkpoint.CheckpointError, match=latest) as info:
    loop.train_and_evaluate(config, workdir)
  assert "\n" not in str(info.value)
  after = sorted(os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs)
  assert after == files and {f: os.path.getsize(f) for f in after} == before
