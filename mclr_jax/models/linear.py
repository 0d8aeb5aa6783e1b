"""A Dense layer with PyTorch's default initialisation (docs/method.md §6)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mclr_jax.models.initializers import torch_linear_bias, torch_linear_kernel


class Linear(nn.Module):
  """y = x W + b with W, b ~ U(±1/sqrt(fan_in)), fan_in = x.shape[-1].

  x: (..., fan_in) -> (..., features). Parameters are stored in `param_dtype` (float32) and the
  product is computed in `dtype` (bf16 for mixed precision, float32 by default).
  """
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_linear_kernel, (fan_in, self.features), self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", torch_linear_bias(fan_in), (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
