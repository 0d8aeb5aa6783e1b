"""The ResNet backbone: torchvision's ResNet with a 3×3 stem (docs/method.md §6, §18.3).

ResNet-18 (BasicBlock, the ManifoldCLR backbone) and ResNet-50 (Bottleneck, expansion 4, the
invariance paper's CIFAR backbone) share the stem, stage layout and initialisation.

The reference uses torchvision's ResNet-18 with random init, `fc` replaced by the identity and
`conv1` replaced by a fresh 3×3 stride-1 convolution. On 32 px images (CIFAR) the max-pool is removed;
on 64 px images (STL-10, TinyImageNet) it is kept, so the stem halves the resolution (64 → 32).

Differences from PyTorch that are inherent to Flax and deliberate:
- BatchNorm running variance is updated with the biased batch variance (PyTorch uses the unbiased
  one); with B·H·W ≥ 2048 values per channel the two differ by < 0.05 %.
- Mixed precision: convolutions run in `dtype` (e.g. bfloat16) while parameters, BatchNorm
  statistics and the pooled output stay float32.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mclr_jax.models.initializers import conv_kernel

# docs/method.md §6: PyTorch BN momentum 0.1 is Flax momentum 0.9 (weight on the old running value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# docs/method.md §6: the replacement conv1 keeps PyTorch's default Conv2d init,
# kaiming_uniform(a=√5), which is U(±1/sqrt(fan_in)), i.e. variance 1/(3·fan_in).
stem_kernel = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

STEMS = ("cifar", "imagenet64")


def _conv_and_norm(block, train: bool):
  """The bias-free, Kaiming-initialised convolution and the PyTorch-style BatchNorm of a residual
  block, in the block's dtypes."""
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_kernel, dtype=block.dtype,
                           param_dtype=block.param_dtype)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                           epsilon=BN_EPSILON, dtype=block.dtype, param_dtype=block.param_dtype)
  return conv, norm


class BasicBlock(nn.Module):
  """Two 3×3 conv-BN layers with an identity or 1×1 conv-BN projection shortcut (torchvision).

  x: (B, H, W, C) -> (B, H/stride, W/stride, features).
  """
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  expansion = 1  # output channels per `features`

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _conv_and_norm(self, train)
    # Explicit symmetric padding: Flax's "SAME" pads (0, 1) for stride 2 on even sizes, PyTorch (1, 1).
    y = conv(self.features, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    # torchvision's default zero_init_residual=False: the last BN starts at γ=1 like every other.
    y = norm(name="bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1, 1), strides=self.strides, padding="VALID",
                      name="shortcut_conv")(x)
      shortcut = norm(name="shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (ResNet v1.5): 1×1 → 3×3 (carrying the stride) → 1×1 conv-BN layers
  with `expansion`× as many output channels as the bottleneck, and a 1×1 conv-BN projection
  shortcut where the shape changes (docs/method.md §18.3).

  x: (B, H, W, C) -> (B, H/stride, W/stride, expansion·features).
  """
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  expansion = 4  # output channels per `features`

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _conv_and_norm(self, train)
    out = self.features * self.expansion
    y = nn.relu(norm(name="bn1")(conv(self.features, (1, 1), padding="VALID", name="conv1")(x)))
    y = conv(self.features, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = norm(name="bn3")(conv(out, (1, 1), padding="VALID", name="conv3")(y))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out:
      shortcut = conv(out, (1, 1), strides=self.strides, padding="VALID", name="shortcut_conv")(x)
      shortcut = norm(name="shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet backbone with a 3×3 stem and no classifier (docs/method.md §6, §18.3).

  Attributes:
    stage_sizes: blocks per stage; stage s has width·2^s (bottleneck) channels and stride 2 from
      stage 2 on.
    block_cls: BasicBlock (ResNet-18) or Bottleneck (ResNet-50).
    width: channels of the stem and the first stage (64 for the papers' networks).
    stem: "cifar" (no max-pool, 32 px) or "imagenet64" (3×3 stride-2 max-pool, 64 px inputs).
    dtype: computation dtype (float32, or bfloat16 for mixed precision).
    param_dtype: parameter dtype (float32).

  `__call__(x (B, H, W, 3) float, train)` -> features (B, feature_dim) float32 with feature_dim =
  width·2^(len(stage_sizes)−1)·expansion, i.e. (B, 8·width) for ResNet-18 and (B, 32·width) for
  ResNet-50. `train=True` normalises with batch statistics and updates the `batch_stats`
  collection (pass `mutable=["batch_stats"]`); `train=False` uses the running ones.
  """
  stage_sizes: Sequence[int]
  block_cls: Any = BasicBlock
  width: int = 64
  stem: str = "cifar"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def feature_dim(self) -> int:
    return self.width * 2 ** (len(self.stage_sizes) - 1) * self.block_cls.expansion

  @nn.compact
  def __call__(self, x, train: bool):
    if self.stem not in STEMS:
      raise ValueError(f"ResNet stem={self.stem!r} is unknown; use one of {STEMS}.")
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC images (B, H, W, C); got shape {x.shape}.")
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=stem_kernel, dtype=self.dtype, param_dtype=self.param_dtype,
                name="stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="stem_bn")(x)
    x = nn.relu(x)
    if self.stem == "imagenet64":
      # STL-10 / TinyImageNet keep torchvision's max-pool (3×3, stride 2, padding 1), §6.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(self.width * 2 ** stage, strides=strides, dtype=self.dtype,
                           param_dtype=self.param_dtype,
                           name=f"stage{stage + 1}_block{block}")(x, train)
    # Global average pool, accumulated in float32 so bf16 training hands float32 features downstream.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)

# config.model.arch -> the backbone constructor (docs/method.md §6, §18.3).
ARCHITECTURES = {"resnet18": ResNet18, "resnet50": ResNet50}


def backbone(arch: str, **kwargs) -> ResNet:
  """The ResNet named `arch` ("resnet18" | "resnet50") with the given attributes."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"Unknown backbone arch={arch!r}; use one of {tuple(ARCHITECTURES)}.")
  return ARCHITECTURES[arch](**kwargs)
