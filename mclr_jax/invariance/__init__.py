"""Invariance tools of Foster et al. (ICLR 2021): the gradient penalty and test-time averaging.

See docs/method.md §11 (`gradient_penalty`) and §12 (`feature_average`, `augmentation_ensemble`).
"""

from mclr_jax.invariance.averaging import augmentation_ensemble, feature_average
from mclr_jax.invariance.penalty import exact_penalty, gradient_penalty, sample_rademacher

__all__ = [
    "augmentation_ensemble",
    "exact_penalty",
    "feature_average",
    "gradient_penalty",
    "sample_rademacher",
]
