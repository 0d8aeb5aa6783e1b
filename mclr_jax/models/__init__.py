"""Networks with parameters: the ResNet backbone, the projection head and PyTorch-style Linear."""

from mclr_jax.models.heads import ProjectionHead
from mclr_jax.models.linear import Linear
from mclr_jax.models.resnet import ResNet, ResNet18

__all__ = ["Linear", "ProjectionHead", "ResNet", "ResNet18"]
