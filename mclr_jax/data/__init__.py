"""Data: on-device augmentations (`augment`), dataset metadata (`datasets`), Spirograph (`spirograph`).

`tfds_input` and `tiny_imagenet` need TensorFlow Datasets for reading; import them explicitly (they
import TensorFlow lazily), so `import mclr_jax.data` never loads TensorFlow.
"""
