"""mclr_jax: contrastive representations with learned Lie group augmentations, in JAX/Flax.

Subpackages: `manifold` (operators, expm, coefficient posterior/prior), `models` (ResNet, heads),
`losses`, `data` (augmentations, TFDS input, Spirograph), `invariance` (gradient penalty, feature
averaging), `train` (optimiser, step, loop), `evaluate` (probes, semi-supervised, geometry).
"""

__version__ = "0.1.0"
