"""ManifoldCLR's Lie group operators, coefficient posterior/prior and KL (docs/method.md §2, §3)."""

from mclr_jax.manifold.best_of_j import select_best_of_j
from mclr_jax.manifold.coefficients import (laplace_kl, laplace_noise, laplace_sample,
                                            sample_coefficients, soft_threshold_straight_through)
from mclr_jax.manifold.expm import expm, expm_action
from mclr_jax.manifold.networks import CoefficientEncoder, CoefficientPrior
from mclr_jax.manifold.operators import generator, init_operators, transport

__all__ = [
    "CoefficientEncoder",
    "CoefficientPrior",
    "expm",
    "expm_action",
    "generator",
    "init_operators",
    "laplace_kl",
    "laplace_noise",
    "laplace_sample",
    "sample_coefficients",
    "select_best_of_j",
    "soft_threshold_straight_through",
    "transport",
]
