"""Host input pipeline: TFDS splits as numpy, a resumable sharded batch iterator, device prefetch.

The image datasets of docs/method.md §7 are small enough (≤ 105k images of ≤ 96 px) to sit in host
memory as one uint8 array, so the pipeline is plain numpy: `load_split` reads a prepared TFDS split once,
`TrainIterator` cuts deterministic per-process batches out of it (augmentation then runs on device,
`augment.py`), and `prefetch_to_device` overlaps the host gather and the transfer with the step.

TensorFlow is imported lazily, inside `load_split` only, so the rest of mclr_jax (and this module's
iterator) works without the `[tf]` extra. Datasets are never downloaded during training: prepare
them once beforehand (see `DatasetNotFoundError`).
"""

import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np

from mclr_jax.data.datasets import DatasetInfo, get_dataset_info
from mclr_jax.errors import UserFacingError


class DatasetNotFoundError(UserFacingError, FileNotFoundError):
  """A dataset split is not prepared under the data_dir (or TensorFlow Datasets is missing)."""


def _preparation_fix(info: DatasetInfo, data_dir: str | None) -> str:
  """The exact commands that prepare `info`'s dataset under `data_dir`."""
  data_dir_arg = "" if data_dir is None else f", data_dir={str(data_dir)!r}"
  if info.name == "tinyimagenet":
    manual = "<data_dir>/downloads/manual/" if data_dir is None else f"{data_dir}/downloads/manual/"
    return (
        "download http://cs231n.stanford.edu/tiny-imagenet-200.zip into "
        f"{manual} (the zip or its unpacked tiny-imagenet-200/ folder), then run "
        "`python -c \"import tensorflow_datasets as tfds; import mclr_jax.data.tiny_imagenet; "
        f"tfds.builder('tiny_imagenet'{data_dir_arg}).download_and_prepare()\"`")
  return (
      "run `python -c \"import tensorflow_datasets as tfds; "
      f"tfds.builder({info.tfds_name!r}{data_dir_arg}).download_and_prepare()\"`")


def _import_tfds(info: DatasetInfo, split: str, data_dir: str | None):
  """Imports tensorflow_datasets, hiding accelerators from TF so it leaves their memory to JAX."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetNotFoundError(
        f"Cannot load {info.name!r} split {split!r}: TensorFlow Datasets is not installed. "
        f"Fix: `pip install -e \".[tf]\"`, then {_preparation_fix(info, data_dir)}.") from e
  tf.config.set_visible_devices([], "GPU")
  if info.name == "tinyimagenet":
    # Importing the module registers the `tiny_imagenet` builder with TFDS.
    from mclr_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top,unused-import
  return tfds


_READ_BATCH = 4096  # examples per chunk when reading a split into host memory


def _load_one_split(info: DatasetInfo, split: str, data_dir: str | None):
  tfds = _import_tfds(info, split, data_dir)
  builder = tfds.builder(info.tfds_name, data_dir=data_dir)
  try:
    dataset = builder.as_dataset(split=split, batch_size=_READ_BATCH, shuffle_files=False)
  except AssertionError as e:
    # TFDS signals "not prepared" with an AssertionError ("could not find data in ...").
    raise DatasetNotFoundError(
        f"Dataset {info.name!r} (TFDS {info.tfds_name!r}), split {split!r}, is not prepared: "
        f"searched data_dir {str(builder.data_dir_root)!r} (expected {builder.data_dir!r}). "
        f"mclr_jax never downloads during training. Fix: `pip install -e \".[tf]\"`, then "
        f"{_preparation_fix(info, data_dir)}.") from e
  # Read in chunks, not with batch_size=−1: TF 2.21 aborts the process (std::length_error) when
  # batching a whole dataset at once, at least for generator-backed (mocked) datasets.
  chunks = list(tfds.as_numpy(dataset))
  images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8, copy=False)
  labels = np.concatenate([c["label"] for c in chunks]).astype(np.int32)
  if info.name == "stl10" and split == "unlabelled":
    labels = np.full_like(labels, -1)  # the 100k unlabelled STL-10 images carry no class
  return images, labels


def load_split(name: str, split: str | Sequence[str],
               data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a prepared TFDS split fully into host memory.

  Args:
    name: "cifar10", "cifar100", "stl10" or "tinyimagenet" (see `datasets.DATASETS`).
    split: a TFDS split name, or a sequence of them to concatenate (e.g. `info.train_splits`,
      STL-10's ("train", "unlabelled") for self-supervised training).
    data_dir: TFDS data directory; None means TFDS's default (~/tensorflow_datasets).

  Returns:
    images: (N, H, W, 3) uint8; labels: (N,) int32 (−1 for STL-10's unlabelled split).

  Raises:
    DatasetNotFoundError: TensorFlow Datasets is missing or the split is not prepared; the message
      names the dataset, split, searched directory and the command that fixes it.
  """
  info = get_dataset_info(name)
  splits = [split] if isinstance(split, str) else list(split)
  parts = [_load_one_split(info, s, data_dir) for s in splits]
  if len(parts) == 1:
    return parts[0]
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


class TrainIterator:
  """Deterministic, resumable, per-process-sharded training batches (drop_last).

  Epoch e visits the examples in the order `np.random.default_rng([seed, e]).permutation(N)`; step
  t reads epoch t // steps_per_epoch, global batch slot t % steps_per_epoch. Process p keeps its
  contiguous slice [p·B_local, (p+1)·B_local) of each global batch, so the processes' shards are
  disjoint and together form the global batch. The batch at step t depends on (seed, t) only, so
  an iterator built with `start_step=k` yields exactly what an uninterrupted one yields from step
  k on; checkpoints need only the step.

  `__next__` returns {"image": uint8 (B_local, H, W, 3), "label": int32 (B_local,)}, with
  B_local = global_batch_size // process_count.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, start_step: int = 0):
    num_examples = len(images)
    if len(labels) != num_examples:
      raise ValueError(f"images ({num_examples}) and labels ({len(labels)}) differ in length.")
    if global_batch_size % process_count:
      raise ValueError(
          f"global_batch_size={global_batch_size} is not divisible by process_count="
          f"{process_count}; choose a batch size that is a multiple of the process count.")
    if not 0 < global_batch_size <= num_examples:
      raise ValueError(
          f"global_batch_size={global_batch_size} must be in [1, N={num_examples}] (drop_last "
          "would leave no batch); lower the batch size.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is outside [0, {process_count}).")
    self.images = images
    self.labels = labels
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.step = start_step
    self.steps_per_epoch = num_examples // global_batch_size
    self._cached_epoch = None
    self._cached_order = None

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch != self._cached_epoch:
      self._cached_order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
      self._cached_epoch = epoch
    return self._cached_order

  def local_indices(self, step: int) -> np.ndarray:
    """Indices (B_local,) into `images` of this process's share of the global batch at `step`."""
    epoch, slot = divmod(step, self.steps_per_epoch)
    start = slot * self.global_batch_size + self.process_index * self.local_batch_size
    return self._epoch_order(epoch)[start:start + self.local_batch_size]

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    index = self.local_indices(self.step)
    self.step += 1
    return {"image": self.images[index], "label": self.labels[index].astype(np.int32)}


class _Failure:
  """Carries an exception from the prefetch thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


def prefetch_to_device(iterator: Iterable[Any], size: int = 2,
                       sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
  """Moves batches to device `size` steps ahead, in a background thread.

  Single process: `jax.device_put(batch, sharding)` (default device when `sharding` is None).
  Several processes: each batch holds this process's rows, assembled into global arrays with
  `jax.make_array_from_process_local_data(sharding, x)`. Exceptions raised by `iterator` are
  re-raised by this generator; closing the generator stops the thread.

  Args:
    iterator: yields pytrees of host arrays (e.g. `TrainIterator` batches).
    size: how many batches to keep in flight.
    sharding: a `NamedSharding` over the batch axis, or None.

  Yields:
    The same pytrees as `iterator`, as `jax.Array`s.
  """
  if size < 1:
    raise ValueError(f"prefetch size={size} must be >= 1.")
  multi_process = sharding is not None and jax.process_count() > 1

  def to_device(batch):
    if multi_process:
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return jax.device_put(batch, sharding)

  buffer = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for batch in iterator:
        if not put(to_device(batch)):
          return
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      put(_Failure(e))
    else:
      put(done)

  thread = threading.Thread(target=produce, name="prefetch_to_device", daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is done:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
