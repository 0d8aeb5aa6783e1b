"""K-means cluster purity on frozen features (docs/method.md §8 "Clustering", `feat_cluster_acc`).

sklearn KMeans(num_clusters, random_state=seed) on `num_points` evenly spaced rows (10 clusters
even for TinyImageNet, as in the reference); purity = Σ_clusters (largest class count) / N.
"""

import numpy as np
from sklearn.cluster import KMeans


def purity(cluster_ids, labels) -> float:
  """Σ over clusters of the most frequent label's count, divided by N; both (N,) int arrays."""
  cluster_ids = np.asarray(cluster_ids)
  labels = np.asarray(labels)
  total = 0
  for cluster in np.unique(cluster_ids):
    total += np.bincount(labels[cluster_ids == cluster]).max()
  return total / len(labels)


def evenly_spaced_rows(num_rows: int, num_points: int) -> np.ndarray:
  """Indices of min(num_points, num_rows) rows spread evenly over [0, num_rows)."""
  num_points = min(num_points, num_rows)
  return np.linspace(0, num_rows - 1, num_points).round().astype(np.int64)


def cluster_purity(x, y, num_clusters: int = 10, num_points: int = 5000, seed: int = 0) -> float:
  """K-means purity of features x: (N, D) against int labels y: (N,), a fraction in [0, 1]."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.int64)
  if x.ndim != 2 or len(x) != len(y):
    raise ValueError(f"x must be (N, D) with N == len(y); got {x.shape} and {y.shape}.")
  rows = evenly_spaced_rows(len(x), num_points)
  if len(rows) < num_clusters:
    raise ValueError(f"num_points={len(rows)} rows cannot form num_clusters={num_clusters} clusters.")
  kmeans = KMeans(n_clusters=num_clusters, random_state=seed, n_init="auto")
  return purity(kmeans.fit_predict(x[rows]), y[rows])
