"""Initialisers that reproduce PyTorch's defaults (docs/method.md §6).

The reference implementation leaves every `nn.Linear` at PyTorch's default initialisation,
U(-1/sqrt(fan_in), +1/sqrt(fan_in)) for both weight and bias, and keeps torchvision's
kaiming-normal (fan_out) convolutions. Flax's defaults differ (lecun-normal, zero bias), so the
linear layers of the heads and the coefficient networks use these instead.
"""

import jax
import jax.numpy as jnp


def torch_linear_kernel(key, shape, dtype=jnp.float32):
  """U(±1/sqrt(fan_in)) for a Dense kernel of shape (fan_in, fan_out)."""
  bound = 1.0 / jnp.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear_bias(fan_in: int):
  """U(±1/sqrt(fan_in)) for a Dense bias; `fan_in` is the layer's input width."""
  def init(key, shape, dtype=jnp.float32):
    bound = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# torchvision ResNet convolutions: kaiming normal, fan_out, ReLU gain.
conv_kernel = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
