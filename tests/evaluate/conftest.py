"""Fixtures shared by the evaluation tests."""

import pytest

from mclr_jax.evaluate import model as model_lib
from tests.tiny import tiny_image_config


@pytest.fixture(scope="module")
def image_model(fast_cpu_compiles):
  """A randomly initialised tiny ManifoldCLR image model (CIFAR-10 shapes)."""
  del fast_cpu_compiles  # requested for its side effect: unoptimised compiles
  return model_lib.random_model(tiny_image_config("cifar10", "manifoldclr"))
