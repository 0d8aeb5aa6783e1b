"""The core (models, operators, losses, invariance, Spirograph, the train step and loop) imports without
TensorFlow: TensorFlow is needed only at the edges (reading TFDS datasets, TensorBoard summaries)."""

import subprocess
import sys

CORE_MODULES = ("mclr_jax.manifold", "mclr_jax.models", "mclr_jax.losses", "mclr_jax.invariance",
                "mclr_jax.data.spirograph", "mclr_jax.data.augment", "mclr_jax.train.objective",
                "mclr_jax.train.step", "mclr_jax.train.loop")


def test_core_modules_do_not_import_tensorflow():
  # A fresh interpreter: this test process may already hold TensorFlow from other tests. A finder
  # placed first on sys.meta_path makes any TensorFlow import fail loudly.
  code = "\n".join([
      "import sys",
      "class _NoTensorFlow:",
      "  def find_spec(self, name, path=None, target=None):",
      "    if name.split('.')[0] in ('tensorflow', 'tensorboard', 'tensorflow_datasets'):",
      "      raise ImportError('the core imported ' + name)",
      "sys.meta_path.insert(0, _NoTensorFlow())",
      *[f"import {m}" for m in CORE_MODULES],
  ])
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
