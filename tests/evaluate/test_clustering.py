"""K-means purity (docs/method.md §8) on constructed cases."""

import numpy as np

from mclr_jax.evaluate import clustering


def test_purity_hand_count():
  # Cluster 0 holds labels {0,0,1}, cluster 1 {1,1,1,2}, cluster 2 {2}: (2 + 3 + 1) / 8.
  cluster_ids = np.array([0, 0, 0, 1, 1, 1, 1, 2])
  labels = np.array([0, 0, 1, 1, 1, 1, 2, 2])
  assert clustering.purity(cluster_ids, labels) == 6 / 8


def test_well_separated_clusters_have_purity_one():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 25)
  x = 10.0 * np.eye(4, 6)[y] + 0.1 * rng.standard_normal((100, 6))
  assert clustering.cluster_purity(x, y, num_clusters=4, num_points=100) == 1.0


def test_evenly_spaced_rows():
  rows = clustering.evenly_spaced_rows(100, 5)
  np.testing.assert_array_equal(rows, [0, 25, 50, 74, 99])
  np.testing.assert_array_equal(clustering.evenly_spaced_rows(3, 10), [0, 1, 2])
