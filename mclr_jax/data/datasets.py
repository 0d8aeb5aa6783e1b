"""Image dataset metadata: TFDS names, splits, sizes and normalisation (docs/method.md §7).

Pure Python, no TensorFlow, so configs and the augmentation code can read it without the `[tf]`
extra installed. Loading the pixels lives in `tfds_input.py`.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the input pipeline needs to know about one image dataset.

  Attributes:
    name: the mclr_jax name ("cifar10", "cifar100", "stl10", "tinyimagenet").
    tfds_name: the TFDS builder name.
    train_splits: TFDS splits concatenated for self-supervised training.
    probe_train_split: labelled split the linear probe is trained on.
    test_split: split the probe is evaluated on.
    image_size: crop size used in training (and the eval resolution), pixels.
    source_size: stored image side, pixels.
    num_classes: number of labels.
    mean: per-channel RGB mean of images in [0, 1] (docs/method.md §7 table).
    std: per-channel RGB std of images in [0, 1] (docs/method.md §7 table).
    eval_resize: None, or the side an eval image is resized to (bicubic) before the
      `image_size` center crop (STL-10: 70 then 64, docs/method.md §7).
  """
  name: str
  tfds_name: str
  train_splits: tuple[str, ...]
  probe_train_split: str
  test_split: str
  image_size: int
  source_size: int
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  eval_resize: int | None = None


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        tfds_name="cifar10",
        train_splits=("train",),
        probe_train_split="train",
        test_split="test",
        image_size=32,
        source_size=32,
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
    ),
    # docs/method.md §18.4. The mean and std are the per-channel pixel statistics of the 50k
    # training images as commonly quoted for CIFAR-100 (e.g. in torchvision-based CIFAR code);
    # the invariance paper's code divides by (0.2009, 0.1984, 0.2023) instead, a constant rescaling
    # of the input that the stem's BatchNorm removes.
    "cifar100": DatasetInfo(
        name="cifar100",
        tfds_name="cifar100",
        train_splits=("train",),
        probe_train_split="train",
        test_split="test",
        image_size=32,
        source_size=32,
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    # docs/method.md §7: SSL on train+unlabelled (105k) at 64 px from the 96 px source; the probe
    # sees resize-70 → center-crop-64.
    "stl10": DatasetInfo(
        name="stl10",
        tfds_name="stl10",
        train_splits=("train", "unlabelled"),
        probe_train_split="train",
        test_split="test",
        image_size=64,
        source_size=96,
        num_classes=10,
        mean=(0.43, 0.42, 0.39),
        std=(0.27, 0.26, 0.27),
        eval_resize=70,
    ),
    # docs/method.md §7: the test set is the official `val` folder (10k); our TFDS builder names it
    # "validation" (see tiny_imagenet.py).
    "tinyimagenet": DatasetInfo(
        name="tinyimagenet",
        tfds_name="tiny_imagenet",
        train_splits=("train",),
        probe_train_split="train",
        test_split="validation",
        image_size=64,
        source_size=64,
        num_classes=200,
        mean=(0.480, 0.448, 0.398),
        std=(0.277, 0.269, 0.282),
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` for `name`; raises ValueError listing the valid names."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
        f"Unknown image dataset {name!r}; valid names are {sorted(DATASETS)}.") from None
