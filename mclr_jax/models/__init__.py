"""Networks with parameters: the ResNet backbone, the projection head and PyTorch-style Linear."""

from mclr_jax.models.heads import ProjectionHead
from mclr_jax.models.linear import Linear
from mclr_jax.models.resnet import Bottleneck, ResNet, ResNet18, ResNet50

__all__ = ["Bottleneck", "Linear", "ProjectionHead", "ResNet", "ResNet18", "ResNet50"]
