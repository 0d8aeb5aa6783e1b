"""TinyImageNet (100k images of 64 px, max-pool stem). Default: the paper's run, ManifoldCLR +
projection head (`transop_vi_proj_tin`: M = 128, Ψ weight decay 1e-4).

TinyImageNet has no TFDS download: put tiny-imagenet-200.zip (or the unpacked folder) into
`<data_dir>/downloads/manual/`; the builder in mclr_jax/data/tiny_imagenet.py prepares it.

  python -m mclr_jax.main --config=configs/tinyimagenet.py --workdir=runs/tin

1000 epochs × 195 steps of batch 512. Variants: see configs/base.py.
"""

from configs import base


def get_config(variant: str = "proj"):
  config = base.get_base_config()
  config.data.name = "tinyimagenet"
  config.model.stem = "imagenet64"
  config.optim.lr = 2e-3
  config.manifold.dictionary_size = 128
  base.apply_variant(config, variant, dataset="tinyimagenet")
  if variant == "proj":
    config.optim.psi_weight_decay = 1e-4
  return config
