"""Prior-augmentation NN accuracy (docs/method.md §8.4): identity and label-destroying maps."""

import jax
import numpy as np

from mclr_jax.evaluate import prior_augmentation


def test_identity_is_perfect_and_far_jump_is_wrong():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(2), 20)
  x = (5.0 * np.eye(2, 4)[y] + 0.1 * rng.standard_normal((40, 4))).astype(np.float32)
  identity = lambda key, z: z
  assert prior_augmentation.prior_augmentation_nn_accuracy(
      jax.random.PRNGKey(0), x, y, identity, num_queries=10, num_augmentations=3) == 1.0
  # Moving each feature onto the other class's centre must make every neighbour wrong.
  swap = lambda key, z: z[:, [1, 0, 2, 3]]
  assert prior_augmentation.prior_augmentation_nn_accuracy(
      jax.random.PRNGKey(0), x, y, swap, num_queries=10, num_augmentations=3) == 0.0
