"""End to end: `train_and_evaluate` on mocked TFDS data (CIFAR-10 and STL-10 shapes), the NaN stop,
and a corrupt checkpoint refused without deleting anything."""

import os

import jax
import numpy as np
import pytest

from mclr_jax.train import checkpoint
from mclr_jax.train import data as data_lib
from mclr_jax.train import loop
from tests.tiny import read_metrics, tiny_image_config, tiny_spirograph_config


@pytest.mark.parametrize("name,method,num_examples", [
    ("cifar10", "manifoldclr", 16),  # one fixed batch of 32 px images
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


def test_nonfinite_loss_stops_naming_step_and_term(tmp_path, monkeypatch, fast_compiles):
  bad_step = 2
  config = tiny_spirograph_config(num_train_steps=4)
  config.checkpoint_every_steps = 1
  make = data_lib.make_train_data

  def poisoned(*args, **kwargs):
    train_data = make(*args, **kwargs)
    make_iterator = train_data.make_iterator

    def iterator(start_step):
      for step, batch in enumerate(make_iterator(start_step), start_step):
        if step >= bad_step:  # NaN Spirograph parameters: NaN images, features and loss
          batch = {k: np.full_like(v, np.nan) for k, v in batch.items()}
        yield batch

    train_data.make_iterator = iterator
    return train_data

  monkeypatch.setattr(data_lib, "make_train_data", poisoned)
  workdir = str(tmp_path)
  with pytest.raises(loop.NonFiniteError, match=rf"contrastive.*at step {bad_step}\b"):
    loop.train_and_evaluate(config, workdir)
  # The last good state (after `bad_step` updates) was checkpointed and restores finite.
  model = checkpoint.restore_model(workdir)
  assert model.step == bad_step
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(model.params)))


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path, fast_compiles):
  config = tiny_spirograph_config(num_train_steps=2)
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir)
  latest = os.path.join(workdir, "checkpoints", "2")
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs)
  data_files = [f for f in files if "_METADATA" not in f and os.path.getsize(f) > 0]
  for f in data_files:  # truncate every array file of the checkpoint
    with open(f, "r+b") as handle:
      handle.truncate(max(os.path.getsize(f) // 3, 1))
  before = {f: os.path.getsize(f) for f in files}
  config.num_train_steps = 4
  with pytest.raises(checkpoint.CheckpointError, match=latest):
    loop.train_and_evaluate(config, workdir)
  after = sorted(os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs)
  assert after == files and {f: os.path.getsize(f) for f in after} == before
