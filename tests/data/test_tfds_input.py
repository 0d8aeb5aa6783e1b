"""Tests for mclr_jax.data.tfds_input: TFDS loading, the resumable sharded iterator, prefetch."""

import jax
import numpy as np
import pytest

from mclr_jax.data import tfds_input
from mclr_jax.data.tfds_input import DatasetNotFoundError, TrainIterator


def _toy(n=23):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  return images, np.arange(n, dtype=np.int32)


def _epoch_labels(it, epoch):
  return np.concatenate([next(it)["label"] for _ in range(it.steps_per_epoch)])


def test_each_epoch_is_a_permutation_with_drop_last():
  images, labels = _toy(23)
  it = TrainIterator(images, labels, global_batch_size=5, seed=0)
  assert it.steps_per_epoch == 4
  epochs = [_epoch_labels(it, e) for e in range(3)]
  for seen in epochs:
    # 4 batches of 5 distinct examples: no repeats within an epoch, the last 3 dropped.
    assert len(seen) == 20 and len(np.unique(seen)) == 20
  assert not np.array_equal(epochs[0], epochs[1])


def test_epoch_orders_are_uniform_over_examples_and_positions():
  """Over many epochs every example is kept with probability 20/23 and is equally likely to come
  first: an order that always drops the same tail, or a biased shuffle, fails these counts."""
  n, batch, num_epochs = 23, 5, 2000
  images, labels = _toy(n)
  it = TrainIterator(images, labels, global_batch_size=batch, seed=11)
  epochs = np.stack([_epoch_labels(it, e) for e in range(num_epochs)])  # (E, 20)
  kept = np.bincount(epochs.ravel(), minlength=n)
  p_kept = 20 / n
  sd = np.sqrt(num_epochs * p_kept * (1 - p_kept))
  assert np.all(np.abs(kept - num_epochs * p_kept) < 5 * sd), kept
  first = np.bincount(epochs[:, 0], minlength=n)
  chi2 = np.sum((first - num_epochs / n) ** 2 / (num_epochs / n))
  # 22 degrees of freedom: P(chi2 > 60) < 1e-4 for a uniform first position.
  assert chi2 < 60, (chi2, first)


def test_batch_contents_match_labels_and_dtypes():
  images, labels = _toy()
  batch = next(TrainIterator(images, labels, 4, seed=3))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 2, 2, 3)
  assert batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["label"])


def test_resuming_at_step_k_equals_continuing():
  images, labels = _toy()
  it = TrainIterator(images, labels, 5, seed=7)
  stream = [next(it)["label"] for _ in range(11)]
  resumed = TrainIterator(images, labels, 5, seed=7, start_step=6)
  for t in range(6, 11):
    np.testing.assert_array_equal(next(resumed)["label"], stream[t])


def test_process_shards_are_disjoint_and_form_the_global_batch():
  images, labels = _toy()
  whole = TrainIterator(images, labels, 6, seed=1)
  shards = [TrainIterator(images, labels, 6, seed=1, process_index=p, process_count=2)
            for p in range(2)]
  for _ in range(5):
    parts = [next(s)["label"] for s in shards]
    assert not set(parts[0]) & set(parts[1])
    np.testing.assert_array_equal(np.concatenate(parts), next(whole)["label"])


def test_seed_controls_order():
  images, labels = _toy()
  first = lambda seed: next(TrainIterator(images, labels, 10, seed=seed))["label"]
  np.testing.assert_array_equal(first(4), first(4))
  assert not np.array_equal(first(4), first(5))


def test_invalid_batch_sizes_raise():
  images, labels = _toy(10)
  with pytest.raises(ValueError, match="process_count"):
    TrainIterator(images, labels, 5, seed=0, process_count=2)
  with pytest.raises(ValueError, match="N=10"):
    TrainIterator(images, labels, 11, seed=0)


def test_prefetch_to_device_yields_iterator_values():
  images, labels = _toy()
  expected = TrainIterator(images, labels, 4, seed=2)
  fetched = tfds_input.prefetch_to_device(TrainIterator(images, labels, 4, seed=2), size=2)
  for _ in range(7):
    got, want = next(fetched), next(expected)
    assert isinstance(got["image"], jax.Array)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  fetched.close()


def test_prefetch_to_device_propagates_errors():
  def failing():
    yield {"x": np.zeros(2)}
    raise RuntimeError("boom")
  fetched = tfds_input.prefetch_to_device(failing())
  next(fetched)
  with pytest.raises(RuntimeError, match="boom"):
    next(fetched)


@pytest.mark.parametrize("name,split,size", [
    ("cifar10", "test", 32), ("cifar100", "train", 32), ("stl10", ("train", "unlabelled"), 96)])
def test_load_split_on_mock_data(name, split, size):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=3):
    images, labels = tfds_input.load_split(name, split)
  n = 3 if isinstance(split, str) else 6
  assert images.shape == (n, size, size, 3) and images.dtype == np.uint8
  assert labels.shape == (n,) and labels.dtype == np.int32
  if name == "stl10":
    np.testing.assert_array_equal(labels[3:], -1)  # the unlabelled split carries no class
    assert np.all((labels[:3] >= 0) & (labels[:3] < 10))
  else:  # the fine labels: 100 classes for CIFAR-100, not its 20 coarse ones
    from mclr_jax.data.datasets import get_dataset_info  # pylint: disable=g-import-not-at-top
    assert np.all((labels >= 0) & (labels < get_dataset_info(name).num_classes))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_dataset_table_agrees_with_tfds_metadata(name):
  """Classes and stored image side of our table against the TFDS builder's own features."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from mclr_jax.data.datasets import get_dataset_info  # pylint: disable=g-import-not-at-top
  info = get_dataset_info(name)
  features = tfds.builder(info.tfds_name).info.features
  assert features["label"].num_classes == info.num_classes
  assert features["image"].shape[:2] == (info.source_size, info.source_size)


def test_missing_dataset_error_names_dataset_dir_and_fix(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DatasetNotFoundError) as info:
    tfds_input.load_split("cifar10", "train", data_dir=str(tmp_path))
  message = str(info.value)
  assert "'cifar10'" in message and "'train'" in message
  assert str(tmp_path) in message
  assert 'pip install -e ".[tf]"' in message and "download_and_prepare()" in message
  assert isinstance(info.value, FileNotFoundError)


def _write_fake_tiny_imagenet(root, wnids=("n01", "n02"), per_class=2):
  pil = pytest.importorskip("PIL.Image")
  rng = np.random.default_rng(0)
  folder = root / "tiny-imagenet-200"
  (folder / "val" / "images").mkdir(parents=True)
  annotations = []
  for wnid in wnids:
    (folder / "train" / wnid / "images").mkdir(parents=True)
    for i in range(per_class):
      pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
      pil.fromarray(pixels).save(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "JPEG")
    name = f"val_{wnid}.JPEG"
    # one grayscale validation image per class: must still decode to 3 channels
    pil.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(
        folder / "val" / "images" / name, "JPEG")
    annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
  (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def test_tiny_imagenet_builder_prepares_and_loads(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from mclr_jax.data import tiny_imagenet  # noqa: F401  (registers the builder)
  data_dir = tmp_path / "tfds"
  _write_fake_tiny_imagenet(data_dir / "downloads" / "manual")
  tfds.builder("tiny_imagenet", data_dir=str(data_dir)).download_and_prepare()
  images, labels = tfds_input.load_split("tinyimagenet", "train", data_dir=str(data_dir))
  assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.sort(labels), [0, 0, 1, 1])
  images, labels = tfds_input.load_split("tinyimagenet", "validation", data_dir=str(data_dir))
  assert images.shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(np.sort(labels), [0, 1])
