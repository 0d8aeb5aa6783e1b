"""The invariance paper's image probe (docs/method.md §18.5): a linear classifier fitted by
full-batch L-BFGS on a stratified share of the probe-train labels.

The classifier minimises the convex objective

  J(W, b) = mean_i CE(W x_i + b, y_i) + w·‖W‖²_F       (the bias unpenalised)

with `optax.lbfgs` (zoom line search, memory 10), from zero, for at most `num_steps` iterations; it
stops early once the gradient norm falls below `tolerance`. The whole fit is one jitted function of
the features, compiled once per (rows, dimension, classes). The authors used torch's L-BFGS (500
outer steps of up to 20 inner iterations each, no line search) on the same objective; both converge
to its unique minimum, which is what the tests check against a float64 reference.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mclr_jax.evaluate.model import EvaluationError


def stratified_subset(labels: np.ndarray, proportion: float, seed: int = 0) -> np.ndarray:
  """Indices (n,) of a class-stratified random share of `labels` (N,) int.

  Every class keeps ⌊N·proportion / C⌋ rows drawn without replacement (all of its rows if it has
  fewer), C the number of distinct labels; proportion 1 keeps every row. Returned sorted.
  """
  labels = np.asarray(labels)
  if not 0 < proportion <= 1:
    raise ValueError(f"proportion={proportion} must be in (0, 1].")
  if proportion == 1:
    return np.arange(len(labels))
  classes = np.unique(labels)
  per_class = int(len(labels) * proportion / len(classes))
  rng = np.random.default_rng(seed)
  keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
  return np.sort(np.concatenate(keep))


def _logits(params, x):
  # Full float32 products: TF32 matmuls would blur the line search's curvature checks.
  return jnp.dot(x, params["w"], precision=jax.lax.Precision.HIGHEST) + params["b"]


def objective(params, x, y, l2):
  """Mean cross-entropy + l2·‖W‖²; params {"w": (D, C), "b": (C,)}, x (N, D), y (N,) int."""
  ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y)
  return jnp.mean(ce) + l2 * jnp.sum(jnp.square(params["w"]))


@functools.partial(jax.jit, static_argnames=("num_classes", "num_steps"))
def _fit(x, y, l2, tolerance, *, num_classes, num_steps):
  params = {"w": jnp.zeros((x.shape[-1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  fn = functools.partial(objective, x=x, y=y, l2=l2)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fn)

  def step(carry):
    params, state, _, count = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fn)
    return optax.apply_updates(params, updates), state, optax.tree.norm(grad), count + 1

  def not_done(carry):
    _, _, grad_norm, count = carry
    return (count < num_steps) & (grad_norm > tolerance)

  init = (params, solver.init(params), jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0))
  params, _, grad_norm, count = jax.lax.while_loop(not_done, step, init)
  return params, fn(params), count


def fit_lbfgs_classifier(features, labels, num_classes: int, l2: float, num_steps: int = 500,
                         tolerance: float = 1e-6) -> dict:
  """Fits the linear classifier; features (N, D) float, labels (N,) int in [0, num_classes).

  Returns {"params": {"w": (D, C), "b": (C,)}, "objective": () the final J, "steps": () int}.
  """
  x = jnp.asarray(features, jnp.float32)
  y = jnp.asarray(labels, jnp.int32)
  params, value, steps = _fit(x, y, jnp.float32(l2), jnp.float32(tolerance),
                              num_classes=int(num_classes), num_steps=int(num_steps))
  return {"params": params, "objective": value, "steps": steps}


@jax.jit
def _scores(params, x, y):
  logits = _logits(params, x)
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
  return accuracy, jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def evaluate_classifier(params, features, labels) -> dict:
  """{"accuracy": fraction in [0, 1], "cross_entropy": mean test CE} of a fitted classifier."""
  accuracy, ce = _scores(params, jnp.asarray(features, jnp.float32),
                         jnp.asarray(labels, jnp.int32))
  return {"accuracy": float(accuracy), "cross_entropy": float(ce)}


def protocol(model, train, test, num_classes: int, key, *, label_proportion: float, l2: float,
             num_steps: int, copies: int, seed: int = 0) -> dict:
  """The probe under the paper's three input modes (docs/method.md §18.5).

  Args:
    model: an `EvalModel` of an image dataset; `model.features(raw, key, num_copies)` gives the
      frozen backbone features (0 copies: untransformed, normalisation only; 1: one random
      training view; M: the average over M views, docs/method.md §12).
    train, test: (uint8 images (N, H, W, 3), int labels (N,)); the classifier sees a stratified
      `label_proportion` of `train` (chosen with `seed`), the test set is complete.
    copies: M of the feature-averaging mode.

  Returns {"untransformed" | "transformed" | "feature_averaging": {"accuracy", "cross_entropy",
  "objective"}, "train_examples": n, "copies": M}.
  """
  (train_x, train_y), (test_x, test_y) = train, test
  keep = stratified_subset(train_y, label_proportion, seed)
  if len(keep) == 0:
    raise EvaluationError(f"config.eval.label_proportion={label_proportion} keeps no row of the "
                          f"{len(train_y)} probe-train examples; raise it (at most 1).")
  train_x, train_y = np.asarray(train_x)[keep], np.asarray(train_y)[keep]
  out = {"train_examples": len(keep), "copies": int(copies)}
  for i, (mode, num_copies) in enumerate((("untransformed", 0), ("transformed", 1),
                                          ("feature_averaging", copies))):
    mode_key = jax.random.fold_in(key, i)
    f_train = model.features(train_x, jax.random.fold_in(mode_key, 0), num_copies)
    f_test = model.features(test_x, jax.random.fold_in(mode_key, 1), num_copies)
    fit = fit_lbfgs_classifier(f_train, train_y, num_classes, l2, num_steps)
    out[mode] = dict(evaluate_classifier(fit["params"], f_test, test_y),
                     objective=float(fit["objective"]))
  return out
