"""k-nearest-neighbour accuracy on frozen features (docs/method.md §8 "kNN", `feat_knn_acc`).

Cosine similarity between L2-normalised test and train features, majority vote over the k most
similar train rows. Ties are broken toward the tied class whose best-ranked neighbour is nearest
(so with k=1 or a clear majority this is plain voting, and a 2–2–1 split with k=5 goes to the class
of the nearer of the two pairs). Accuracy is a fraction in [0, 1].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax.losses import l2_normalize


def knn_predict(query, train_x, train_y, k: int, num_classes: int):
  """Majority-vote labels for L2-normalised rows; query (B, D), train_x (N, D) -> (B,) int32."""
  sims = query @ train_x.T
  _, nn_idx = jax.lax.top_k(sims, k)  # (B, k), most similar first
  nn_labels = train_y[nn_idx]
  one_hot = jax.nn.one_hot(nn_labels, num_classes, dtype=jnp.int32)  # (B, k, C)
  counts = one_hot.sum(axis=1)
  # Rank of the nearest neighbour of each class (k if absent). counts·(k+1) dominates any rank
  # difference, so the rank only decides among classes with equal counts.
  ranks = jnp.arange(k, dtype=jnp.int32)[None, :, None]
  first_rank = jnp.min(jnp.where(one_hot > 0, ranks, k), axis=1)
  return jnp.argmax(counts * (k + 1) - first_rank, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _batch_correct(query, query_y, train_x, train_y, k, num_classes):
  pred = knn_predict(query, train_x, train_y, k, num_classes)
  return jnp.sum(pred == query_y)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 5, num_classes: int | None = None,
                 batch_size: int = 1024) -> float:
  """Fraction of test rows whose k-NN (cosine) majority vote equals their label (docs/method.md §8).

  Args:
    train_x: (N, D) features; train_y: (N,) int labels.
    test_x: (M, D) features; test_y: (M,) int labels.
    k: number of neighbours (docs/method.md §8: 5).
    num_classes: C; defaults to max label + 1.
    batch_size: test rows per similarity block (memory is batch_size × N).

  Returns:
    accuracy in [0, 1] as a Python float.
  """
  if k > len(train_x):
    raise ValueError(f"k={k} exceeds the number of train rows {len(train_x)}.")
  if num_classes is None:
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
  train_x = l2_normalize(jnp.asarray(train_x, jnp.float32))
  test_x = l2_normalize(jnp.asarray(test_x, jnp.float32))
  train_y = jnp.asarray(train_y, jnp.int32)
  test_y = jnp.asarray(test_y, jnp.int32)
  correct = 0
  for start in range(0, test_x.shape[0], batch_size):
    # The last block may be short and compile once more; all full blocks share one compilation.
    correct += int(_batch_correct(test_x[start:start + batch_size],
                                  test_y[start:start + batch_size], train_x, train_y,
                                  k=k, num_classes=num_classes))
  return correct / test_x.shape[0]
