"""The host side of training data: which examples, in which order, on which process.

Image datasets are read once into host memory (TFDS, imported lazily by mclr_jax.data.tfds_input);
Spirograph stores only θ, drawn from a seeded generator, and renders views on the device. Batches
come from a TrainIterator whose order depends only on (seed, step), so a resumed run sees exactly the
batches an uninterrupted one would, and each process reads its own disjoint slice of every batch.
"""

import dataclasses
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np

from mclr_jax.data import spirograph
from mclr_jax.data.datasets import get_dataset_info
from mclr_jax.train.views import spirograph_ranges


@dataclasses.dataclass
class TrainData:
  make_iterator: Callable[[int], Iterator[dict]]  # start_step -> per-process host batches
  num_examples: int
  steps_per_epoch: int
  batch_spec: dict  # {key: jax.ShapeDtypeStruct} of one global batch


def spirograph_split(data: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """All 10 parameters of the seeded train or test draws, (N, 10) float32 (docs/method.md §10)."""
  n = data.num_train if split == "train" else data.num_test
  key = jax.random.fold_in(jax.random.key(data.seed), 0 if split == "train" else 1)
  # This process's own CPU device: jax.devices() lists every process's, and only local ones hold
  # arrays this process can read.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    return np.asarray(spirograph.sample_params(key, n, spirograph_ranges(data)), np.float32)


def load_image_split(data: ml_collections.ConfigDict, splits) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, H, W, 3), labels int32 (N,)) of one or several TFDS splits, concatenated."""
  from mclr_jax.data import tfds_input  # TensorFlow only here, lazily
  splits = (splits,) if isinstance(splits, str) else tuple(splits)
  parts = [tfds_input.load_split(data.name, s, data_dir=data.data_dir) for s in splits]
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def make_train_data(config: ml_collections.ConfigDict, process_index: int = 0,
                    process_count: int = 1) -> TrainData:
  from mclr_jax.data.tfds_input import TrainIterator  # the iterator itself needs no TensorFlow
  data = config.data
  if data.name == "spirograph":
    content = tuple(data.content)
    theta, _ = spirograph.split_params(spirograph_split(data, "train"), content)
    arrays, key = (np.asarray(theta, np.float32), np.zeros(len(theta), np.int32)), "theta"
  else:
    arrays, key = load_image_split(data, get_dataset_info(data.name).train_splits), "image"

  def make_iterator(start_step: int):
    it = TrainIterator(arrays[0], arrays[1], config.batch_size, seed=config.seed,
                       process_index=process_index, process_count=process_count,
                       start_step=start_step)
    for batch in it:
      yield {key: batch["image"]}

  spec = jax.ShapeDtypeStruct((config.batch_size,) + arrays[0].shape[1:], arrays[0].dtype)
  return TrainData(make_iterator, len(arrays[0]), len(arrays[0]) // config.batch_size,
                   {key: spec})
