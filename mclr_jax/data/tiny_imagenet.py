"""TFDS builder for Tiny ImageNet (200 classes, 64×64) from a manual download (docs/method.md §7).

Importing this module registers the builder as `tiny_imagenet`; `tfds_input.load_split` imports it
lazily, so TensorFlow stays out of the core package. Splits: `train` (100k images,
`train/<wnid>/images/*.JPEG`) and `validation` (the official `val` set, 10k images, labels from
`val/val_annotations.txt`), which the paper uses as its test set. Labels are indices into the
sorted wnids of `train/`, the order torchvision's ImageFolder gives the reorganised folders.

Prepare once:
  python -c "import tensorflow_datasets as tfds, mclr_jax.data.tiny_imagenet; \
    tfds.builder('tiny_imagenet', data_dir=DIR).download_and_prepare()"
"""

import os

from etils import epath
import tensorflow_datasets as tfds

_FOLDER = "tiny-imagenet-200"
_NUM_CLASSES = 200
_IMAGE_SHAPE = (64, 64, 3)


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny ImageNet from `tiny-imagenet-200.zip` (or its unpacked folder) in the manual dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: train (100k) and validation (10k)."}
  # TFDS derives this from the module's import path and, for builders outside its own package,
  # needs the `importlib_resources` backport to do so; the file itself is the answer.
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and place either the zip or its
  unpacked `{_FOLDER}/` folder in `<data_dir>/downloads/manual/` (or pass
  `download_config=tfds.download.DownloadConfig(manual_dir=...)`).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Tiny ImageNet: 200 ImageNet classes at 64x64, 500 train and 50 val each.",
        features=tfds.features.FeaturesDict({
            # Files are stored as their original JPEG bytes; grayscale JPEGs decode to 3 channels.
            "image": tfds.features.Image(shape=_IMAGE_SHAPE, encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    )

  def _find_root(self, dl_manager) -> epath.Path:
    manual_dir = epath.Path(dl_manager.manual_dir)
    for candidate in (manual_dir / _FOLDER, manual_dir):
      if (candidate / "train").is_dir() and (candidate / "val").is_dir():
        return candidate
    archive = manual_dir / f"{_FOLDER}.zip"
    if archive.exists():
      return epath.Path(dl_manager.extract(archive)) / _FOLDER
    raise FileNotFoundError(
        f"Tiny ImageNet not found in the manual dir {os.fspath(manual_dir)!r}: expected "
        f"{_FOLDER}.zip or an unpacked {_FOLDER}/ folder there.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

  def _split_generators(self, dl_manager):
    root = self._find_root(dl_manager)
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(wnids) == _NUM_CLASSES:
      self.info.features["label"].names = wnids
    return {
        "train": self._generate_examples(root, wnids, "train"),
        "validation": self._generate_examples(root, wnids, "validation"),
    }

  def _generate_examples(self, root: epath.Path, wnids: list[str], split: str):
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    if split == "train":
      for wnid in wnids:
        for path in sorted((root / "train" / wnid / "images").glob("*.JPEG")):
          yield path.name, {"image": path, "label": label_of[wnid], "file_name": path.name}
      return
    # val_annotations.txt: file name, wnid, then the bounding box, tab separated.
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
      if not line.strip():
        continue
      file_name, wnid = line.split("\t")[:2]
      path = root / "val" / "images" / file_name
      yield file_name, {"image": path, "label": label_of[wnid], "file_name": file_name}
