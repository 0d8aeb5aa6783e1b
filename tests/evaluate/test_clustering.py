"""K-means purity (docs/method.md §8) on constructed cases."""

import numpy as np
import pytest

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


def test_purity_matches_the_contingency_table():
  # Independent reference: sklearn's contingency matrix, the best label per cluster summed.
  from sklearn.metrics.cluster import contingency_matrix
  rng = np.random.default_rng(1)
  cluster_ids, labels = rng.integers(0, 6, 500), rng.integers(0, 4, 500)
  table = contingency_matrix(labels, cluster_ids)  # (labels, clusters)
  assert clustering.purity(cluster_ids, labels) == table.max(axis=0).sum() / 500


def test_two_labels_sharing_one_blob_give_the_majority_fraction():
  # Blob A holds 30 rows of label 0 and 10 of label 1, blob B 20 rows of label 2: with 2 clusters
  # k-means finds the blobs and purity is (30 + 20) / 60, whatever the order of the rows.
  rng = np.random.default_rng(2)
  x = np.concatenate([rng.normal(0, 0.1, (40, 3)), rng.normal(8, 0.1, (20, 3))])
  y = np.array([0] * 30 + [1] * 10 + [2] * 20)
  order = rng.permutation(60)
  assert clustering.cluster_purity(x[order], y[order], num_clusters=2, num_points=60) == 50 / 60


@pytest.mark.parametrize("num_rows,num_points", [(100, 5), (5000, 5000), (10000, 5000), (7, 3),
                                                 (3, 10)])
def test_evenly_spaced_rows_cover_the_range_with_equal_gaps(num_rows, num_points):
  rows = clustering.evenly_spaced_rows(num_rows, num_points)
  assert len(rows) == min(num_rows, num_points) and len(set(rows.tolist())) == len(rows)
  assert rows[0] == 0 and rows[-1] == num_rows - 1
  if len(rows) > 1:  # gaps differ by at most one: the rounding of (N − 1)/(P − 1)
    gaps = np.diff(rows)
    ideal = (num_rows - 1) / (len(rows) - 1)
    assert gaps.min() >= np.floor(ideal) and gaps.max() <= np.ceil(ideal)
