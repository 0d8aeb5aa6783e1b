"""The projection head g between backbone features and the contrastive loss (docs/method.md §6)."""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mclr_jax.models.linear import Linear
from mclr_jax.models.resnet import BN_EPSILON, BN_MOMENTUM

HEAD_KINDS = ("mlp", "linear", "none", "direct", "invclr")

# docs/method.md §6 "Direct": the identity followed by keeping the first 64 feature dimensions.
DIRECT_DIM = 64


class ProjectionHead(nn.Module):
  """Projection head g of SimCLR / ManifoldCLR (docs/method.md §6).

  Kinds:
    "mlp": Linear(→hidden_dim) → BatchNorm1d → ReLU → Linear(→output_dim), no final BN (the paper's
      "MLP/SimCLR" projector, 512 → 1024 → 128).
    "linear": Linear(→output_dim) without bias.
    "none": the identity.
    "direct": the identity, then the first 64 dimensions.
    "invclr": Linear(D→D, no bias) → BatchNorm1d → ReLU → Linear(D→output_dim, no bias) →
      BatchNorm1d without scale and offset, the invariance paper's projector (docs/method.md §18.2);
      its hidden width is the input's D (`hidden_dim` is not used).

  All Linear layers use PyTorch's default init. `__call__(h (B, D), train)` -> (B, out) float32,
  out = output_dim, D or 64. In train mode the BNs use batch statistics and update
  `batch_stats` (pass `mutable=["batch_stats"]`); in eval mode it uses the running statistics.
  """
  kind: str = "mlp"
  hidden_dim: int = 1024
  output_dim: int = 128
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, train: bool):
    if self.kind == "mlp":
      y = Linear(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden")(h)
      # BatchNorm1d(hidden) with PyTorch momentum 0.1 / eps 1e-5; statistics in float32.
      y = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(y)
      y = nn.relu(y)
      y = Linear(self.output_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="output")(y)
    elif self.kind == "invclr":
      norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                               epsilon=BN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype)
      y = Linear(h.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="hidden")(h)
      y = nn.relu(norm(name="bn")(y))
      y = Linear(self.output_dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="output")(y)
      # A final BatchNorm with no affine parameters: batch-standardised projections.
      y = norm(use_scale=False, use_bias=False, name="output_bn")(y)
    elif self.kind == "linear":
      y = Linear(self.output_dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="output")(h)
    elif self.kind == "none":
      y = h
    elif self.kind == "direct":
      if h.shape[-1] < DIRECT_DIM:
        raise ValueError(f"ProjectionHead kind='direct' keeps the first {DIRECT_DIM} dims but the "
                         f"features have only {h.shape[-1]}; use kind='none' or wider features.")
      y = h[..., :DIRECT_DIM]
    else:
      raise ValueError(f"ProjectionHead kind={self.kind!r} is unknown; use one of {HEAD_KINDS}.")
    return y.astype(jnp.float32)
