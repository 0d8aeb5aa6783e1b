"""CIFAR-10 (32 px, CIFAR stem). Default: the paper's CIFAR-10 run, ManifoldCLR + projection head with
soft threshold and best-of-20 sampling (`transop_vi-thresh_proj_cifar10`: M = 32, λ = 0.01, w_KL = 1e-3,
w_L2 = 1e-2).

  python -m mclr_jax.main --config=configs/cifar10.py --workdir=runs/cifar10
  python -m mclr_jax.main --config=configs/cifar10.py:simclr --workdir=runs/cifar10_simclr

1000 epochs × 97 steps of batch 512. Variants: see configs/base.py.
"""

from configs import base


def get_config(variant: str = "thresh"):
  config = base.get_base_config()
  config.data.name = "cifar10"
  config.model.stem = "cifar"
  config.optim.lr = 3e-3
  config.manifold.dictionary_size = 16
  base.apply_variant(config, variant, dataset="cifar10")
  if variant == "thresh":
    config.manifold.dictionary_size = 32
    config.loss.location_l2_weight = 1e-2
  return config
