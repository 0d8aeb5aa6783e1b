"""kNN accuracy (docs/method.md §8) against a brute-force numpy float64 reference."""

from collections import Counter

import numpy as np

from mclr_jax.evaluate import knn


def _numpy_knn_accuracy(train_x, train_y, test_x, test_y, k):
  tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  te = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  correct = 0
  for q, label in zip(te.astype(np.float64), test_y):
    order = np.argsort(-(tr.astype(np.float64) @ q), kind="stable")[:k]
    votes = Counter(train_y[order].tolist())
    best = max(votes.values())
    # Documented tie-break: among tied classes, the one whose nearest member ranks first.
    pred = next(c for c in train_y[order] if votes[c] == best)
    correct += pred == label
  return correct / len(test_y)


def test_matches_bruteforce_numpy():
  rng = np.random.default_rng(0)
  train_x = rng.standard_normal((200, 6)).astype(np.float32)
  train_y = rng.integers(0, 4, 200)
  test_x = rng.standard_normal((70, 6)).astype(np.float32)
  test_y = rng.integers(0, 4, 70)
  for k in (1, 4, 5):
    got = knn.knn_accuracy(train_x, train_y, test_x, test_y, k=k, num_classes=4, batch_size=32)
    assert got == _numpy_knn_accuracy(train_x, train_y, test_x, test_y, k)


def test_tie_goes_to_nearest_neighbours_class():
  # Neighbours of the query by similarity: class 1, class 0, class 0, class 1 -> 2–2 tie -> class 1.
  angles = np.array([0.1, 0.2, 0.3, 0.4])
  train_x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
  train_y = np.array([1, 0, 0, 1])
  query = np.array([[1.0, 0.0]], np.float32)
  assert knn.knn_accuracy(train_x, train_y, query, np.array([1]), k=4) == 1.0


def test_well_separated_clusters_are_perfect():
  rng = np.random.default_rng(1)
  centres = 5.0 * np.eye(3, 5)
  y = np.repeat(np.arange(3), 30)
  x = (centres[y] + 0.1 * rng.standard_normal((90, 5))).astype(np.float32)
  assert knn.knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5) == 1.0
