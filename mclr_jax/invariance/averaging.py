"""Test-time feature averaging and augmentation ensembling (docs/method.md §12).

Feature averaging (FA) replaces f(x) by h̄(x) = (1/M) Σ_m f(t(x, α_m)) with α_m i.i.d. from the
training augmentation distribution; a fresh linear probe is then fitted on h̄ for both the
probe-train and test sets. Augmentation ensembling instead averages the classifier's probabilities
over the M copies. Both accumulate in a `lax.scan`, so memory does not grow with M.
"""

from typing import Callable

import jax
import jax.numpy as jnp

ViewFn = Callable[[jax.Array, jax.Array], jax.Array]


def _scan_mean(fn: Callable[[jax.Array], jax.Array], key: jax.Array, num_copies: int):
  """mean_m fn(key_m) over keys split from `key`, accumulated one copy at a time."""
  if num_copies < 1:
    raise ValueError(f"num_copies={num_copies}; need at least 1 copy to average.")
  keys = jax.random.split(key, num_copies)
  out = jax.eval_shape(fn, keys[0])
  total, _ = jax.lax.scan(lambda acc, k: (acc + fn(k), None),
                          jnp.zeros(out.shape, out.dtype), keys)
  return total / num_copies


def feature_average(encode_fn: Callable[[jax.Array], jax.Array], view_fn: ViewFn,
                    key: jax.Array, x: jax.Array, num_copies: int) -> jax.Array:
  """h̄(x) = mean over M = num_copies of encode_fn(view_fn(key_m, x)) (docs/method.md §12).

  encode_fn: views -> (B, d), the raw encoder output (not normalised, not the projector).
  view_fn: (key, x) -> one random view of the batch x (e.g. `spirograph.random_view(...)[0]`).
  Returns (B, d). num_copies = 1 is a single random view, not the clean input.
  """
  return _scan_mean(lambda k: encode_fn(view_fn(k, x)), key, num_copies)


def augmentation_ensemble(predict_fn: Callable[[jax.Array], jax.Array], view_fn: ViewFn,
                          key: jax.Array, x: jax.Array, num_copies: int) -> jax.Array:
  """Class probabilities averaged over M random views (docs/method.md §12, the comparison to FA).

  predict_fn: views -> logits (B, C). Returns mean_m softmax(logits_m), (B, C).
  """
  return _scan_mean(lambda k: jax.nn.softmax(predict_fn(view_fn(k, x)), axis=-1), key,
                    num_copies)
