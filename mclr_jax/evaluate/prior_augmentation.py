"""Prior-augmentation nearest-neighbour accuracy (docs/method.md §8.4, `prior_aug_acc`).

Pick `num_queries` train features, augment each `num_augmentations` times with the caller's
`augment_fn` (for ManifoldCLR: z ↦ transport(psi, c, z) with c drawn from the learned prior and
clipped to [−1, 1]; built by the caller, so this file does not depend on the manifold code), and
report the fraction of augmented features whose nearest train feature (Euclidean distance, the
whole train set, the query itself included) carries the query's label. A prior that moves features
off their class manifold drives this toward chance.
"""

import jax
import jax.numpy as jnp


def nearest_labels(points, train_x, train_y):
  """Label of the Euclidean nearest train row; points (B, D), train_x (N, D) -> (B,)."""
  # ‖p − x‖² = ‖p‖² − 2 p·x + ‖x‖²; the ‖p‖² term is constant per row and does not change argmin.
  dist = jnp.sum(train_x**2, axis=-1)[None, :] - 2.0 * points @ train_x.T
  return train_y[jnp.argmin(dist, axis=-1)]


def prior_augmentation_nn_accuracy(key, train_x, train_y, augment_fn, num_queries: int = 20,
                                   num_augmentations: int = 8) -> float:
  """Fraction of prior-augmented train features whose nearest train feature shares the label.

  Args:
    key: PRNG key (query choice and augmentation noise).
    train_x: (N, D) features; train_y: (N,) int labels.
    augment_fn: callable (key, z (n, D)) -> (n, D).
    num_queries: train rows to augment (docs/method.md §8: 20), drawn without replacement.
    num_augmentations: augmentations per query (docs/method.md §8: 8).

  Returns:
    accuracy in [0, 1] as a Python float.
  """
  train_x = jnp.asarray(train_x, jnp.float32)
  train_y = jnp.asarray(train_y, jnp.int32)
  if num_queries > train_x.shape[0]:
    raise ValueError(f"num_queries={num_queries} exceeds the {train_x.shape[0]} train rows.")
  query_key, aug_key = jax.random.split(key)
  queries = jax.random.choice(query_key, train_x.shape[0], (num_queries,), replace=False)
  rows = jnp.repeat(queries, num_augmentations)  # (num_queries·num_augmentations,)
  augmented = augment_fn(aug_key, train_x[rows])
  if augmented.shape != (rows.shape[0], train_x.shape[1]):
    raise ValueError(f"augment_fn must map (n, D) -> (n, D); got {augmented.shape} for "
                     f"{(rows.shape[0], train_x.shape[1])}.")
  return float(jnp.mean(nearest_labels(augmented, train_x, train_y) == train_y[rows]))
