"""STL-10 (train + unlabelled, 105k images of 96 px, trained at 64 px with the max-pool stem).
Default: the paper's STL-10 run, ManifoldCLR + projection head (`transop_vi_proj_stl10`: M = 64,
w_TO = 10, w_KL = 1e-5, w_L2 = 1e-3).

  python -m mclr_jax.main --config=configs/stl10.py --workdir=runs/stl10
  python -m mclr_jax.main --config=configs/stl10.py:thresh --workdir=runs/stl10_thresh  # M=128, J=20

1000 epochs × 205 steps of batch 512. Variants: see configs/base.py.
"""

from configs import base


def get_config(variant: str = "proj"):
  config = base.get_base_config()
  config.data.name = "stl10"
  config.model.stem = "imagenet64"
  config.optim.lr = 2e-3
  config.manifold.dictionary_size = 64
  base.apply_variant(config, variant, dataset="stl10")
  if variant == "thresh":
    # The authors' file sets 128 although its name says dict64 (docs/method.md §5).
    config.manifold.dictionary_size = 128
  return config
