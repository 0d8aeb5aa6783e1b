"""Coefficient posterior q(c | z0, z1) and learned prior p(c | z0) networks (docs/method.md §3).

Both output the Laplace parameters (μ, log b) of M coefficients from stop-gradiented backbone
features: the encoder and prior are trained only through the KL, transport and augmentation
losses' dependence on their outputs, never by moving the features they read.
"""

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from mclr_jax.models.linear import Linear

_LEAKY_SLOPE = 0.01


class _MLPTrunk(nn.Module):
  """Linear → LeakyReLU(0.01) → ... → Linear, no activation after the last (docs/method.md §3.1)."""
  hidden_dims: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.hidden_dims):
      if i:
        x = nn.leaky_relu(x, _LEAKY_SLOPE)
      x = Linear(width, dtype=self.dtype)(x)
    return x


class CoefficientEncoder(nn.Module):
  """Posterior network q(c | sg z0, sg z1) (docs/method.md §3 "Posterior network").

  Input concat[sg z0, sg z1]; trunk h; heads s, t = Linear(M)(h);
  log b_q = clip(s, −100, 3) + log(scale_prior), μ_q = clip(t, −5, 5) + shift_prior.

  Attributes:
    num_operators: M.
    hidden_dims: trunk widths (paper: 2048, 2048, 512).
    scale_prior: b of the fixed hyperprior (0.01); offsets log b_q.
    shift_prior: constant offset added to μ_q (0.05).
    input_dim: read only the first input_dim feature dimensions (None: all); ManifoldDirectCLR
      reads the b transported ones (docs/method.md §2.5).
    dtype: compute dtype of the linear layers; outputs are float32.
  """
  num_operators: int
  hidden_dims: Sequence[int] = (2048, 2048, 512)
  scale_prior: float = 0.01
  shift_prior: float = 0.05
  input_dim: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z0, z1):
    """z0, z1: (B, D) -> (mu_q, log_scale_q), each (B, M) float32."""
    z0, z1 = z0[..., :self.input_dim], z1[..., :self.input_dim]
    x = jnp.concatenate([lax.stop_gradient(z0), lax.stop_gradient(z1)], axis=-1)
    h = _MLPTrunk(self.hidden_dims, self.dtype, name="trunk")(x)
    s = Linear(self.num_operators, dtype=self.dtype, name="scale_head")(h).astype(jnp.float32)
    t = Linear(self.num_operators, dtype=self.dtype, name="shift_head")(h).astype(jnp.float32)
    log_scale = jnp.clip(s, -100.0, 3.0) + math.log(self.scale_prior)
    mu = jnp.clip(t, -5.0, 5.0) + self.shift_prior
    return mu, log_scale


class CoefficientPrior(nn.Module):
  """Learned prior p(c | sg z0) with hyperprior warm-up (docs/method.md §3 "Learned prior").

  log b̃ = min(s, 3) + log(scale_prior), μ̃ = clip(t, −5, 5); with w = min(step/warmup_steps, 1):
  log b_p = w·log b̃ + (1−w)·log(scale_prior), μ_p = w·μ̃ + (1−w)·shift_prior·sign(sg(w·μ̃)),
  so μ_p = 0 exactly at step 0 (docs/method.md §15.9: mixing in log-space, detached sign).

  Attributes:
    num_operators: M.
    hidden_dims: trunk widths (paper: 2048, 1024, 512).
    scale_prior, shift_prior: the fixed hyperprior's b (0.01) and location (0.05).
    warmup_steps: prior warm-up length in global steps (0: no warm-up, w = 1).
    input_dim: read only the first input_dim feature dimensions (None: all; docs/method.md §2.5).
    dtype: compute dtype of the linear layers; outputs are float32.
  """
  num_operators: int
  hidden_dims: Sequence[int] = (2048, 1024, 512)
  scale_prior: float = 0.01
  shift_prior: float = 0.05
  warmup_steps: int = 10000
  input_dim: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z0, step):
    """z0: (B, D); step: global step (int, possibly traced) -> (mu_p, log_scale_p), (B, M)."""
    x = lax.stop_gradient(z0[..., :self.input_dim])
    h = _MLPTrunk(self.hidden_dims, self.dtype, name="trunk")(x)
    s = Linear(self.num_operators, dtype=self.dtype, name="scale_head")(h).astype(jnp.float32)
    t = Linear(self.num_operators, dtype=self.dtype, name="shift_head")(h).astype(jnp.float32)
    log_scale_prior = math.log(self.scale_prior)
    log_scale_learned = jnp.minimum(s, 3.0) + log_scale_prior
    mu_learned = jnp.clip(t, -5.0, 5.0)
    if self.warmup_steps <= 0:
      weight = jnp.float32(1.0)
    else:
      weight = jnp.minimum(jnp.asarray(step, jnp.float32) / self.warmup_steps, 1.0)
    log_scale = weight * log_scale_learned + (1.0 - weight) * log_scale_prior
    mu = weight * mu_learned + (1.0 - weight) * self.shift_prior * jnp.sign(
        lax.stop_gradient(weight * mu_learned))
    return mu, log_scale
