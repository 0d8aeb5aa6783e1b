"""TinyImageNet (100k images of 64 px, max-pool stem). Default: the paper's run, ManifoldCLR +
projection head (`transop_vi_proj_tin`: M = 128, Ψ weight decay 1e-4).

TinyImageNet has no TFDS download: put tiny-imagenet-200.zip (or the unpacked folder) into
`<data_dir>/downloads/manual/`; the builder in mclr_jax/data/tiny_imagenet.py prepares it.

  python -m mclr_jax.main --config=configs/tinyimagenet.py --workdir=runs/tin

1000 epochs × 195 steps of batch 512. Variants: see configs/base.py; `:nn` is the authors'
`transop_vi_nn_proj_tin` (M = 128, Ψ weight decay 1e-4, w_KL 1e-5, w_TO 10, location L2 off,
nearest-neighbour positives from a 65,536-row support queue, docs/method.md §17.3) and `:nnclr`
their `nnclr_tinyimagenet` baseline:

  python -m mclr_jax.main --config=configs/tinyimagenet.py:nn --workdir=runs/tin_nn
"""

from configs import base


def get_config(variant: str = "proj"):
  config = base.get_base_config()
  config.data.name = "tinyimagenet"
  config.model.stem = "imagenet64"
  config.optim.lr = 2e-3
  config.manifold.dictionary_size = 128
  base.apply_variant(config, variant, dataset="tinyimagenet")
  if variant in ("proj", "nn"):
    config.optim.psi_weight_decay = 1e-4
  return config
