"""Semi-supervised classification on frozen features (docs/method.md §8.5 "Paper semi-supervised
experiment").

Per trial, `labels_per_class` labelled rows per class are drawn with the trial's seed; every other
train row is unlabelled. An MLP D→hidden→LeakyReLU(0.01)→C is trained for `num_steps` steps on
CE(labelled batch) + w·consistency(unlabelled batch), with Adam + coupled L2 (torch style), and its
EMA copy (momentum 0.999) is evaluated on the test set. The consistency terms are the pure functions
below (docs/method.md §8.5):

- "transport" / "none": `pseudo_label_consistency`, FixMatch-style pseudo-labelling of clf(aug(z_u))
  against argmax softmax(clf(z_u)). "transport" uses the caller's `augment_fn(key, z (n, D)) ->
  (n, D)` (the evaluation suite passes z ↦ transport(psi, c ~ prior(z), z) with λ = 0); "none"
  uses the identity (plain pseudo-labelling).
- "mixup" ("MMICT"): `mixup_consistency`, λ ~ Beta(0.5, 0.5) per row, the mixing partner an
  independent unlabelled batch (as the authors' code), the target the same mix of the EMA
  classifier's softmaxes, squared error on probabilities.
- "featmatch": `pseudo_label_consistency` with the learned feature augmentation of FeatMatch
  (`FeatMatchAttention`, docs/method.md §17.5): z_u is refined by 4-head attention over the
  step's labelled features as prototypes; the module is trained jointly with the classifier (the
  consistency term's gradient reaches it, and the same Adam updates both).

The labelled batch is drawn without replacement each step (min(labelled_batch, number labelled)
distinct rows, as a shuffled loader gives); the unlabelled batch with replacement (a permutation
of ~50k rows per step would dominate the cost; a batch of 480 from 50k rows repeats about two).
All trials run in one jitted call: `jax.vmap` over trial keys, `lax.scan` over steps; the feature
arrays are shared (not copied) across trials. Accuracies are fractions in [0, 1]; `std` is the
population std (ddof=0) over trials.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mclr_jax.evaluate.linear_probe import coupled_adam
from mclr_jax.models.linear import Linear

AUGMENTATIONS = ("transport", "mixup", "none", "featmatch")


class Classifier(nn.Module):
  """MLP (..., D) -> (..., num_classes), one hidden layer, LeakyReLU(0.01) (docs/method.md §8.5)."""
  num_classes: int
  hidden_dim: int = 2048

  @nn.compact
  def __call__(self, x):
    x = nn.leaky_relu(Linear(self.hidden_dim)(x), negative_slope=0.01)
    return Linear(self.num_classes)(x)


class FeatMatchAttention(nn.Module):
  """FeatMatch's learned feature augmentation (Kuo et al. 2020, §3.2; docs/method.md §17.5).

  For features x (n, D) and prototypes p (P, D), per head h (H = num_heads, width w = D/H):
    e_x, e_p = E_h x, E_h p                       (Linear D → w, shared by x and p)
    a = softmax(e_x e_pᵀ / √w)                    (n, P), attention dropout `dropout` in training
    o_h = ReLU(F_h [a e_p, e_x])                  (Linear 2w → w)
  and x' = ReLU(x + O [o_1, ..., o_H]) (Linear D → D). The prototypes are the labelled features of
  the step, as the authors' semi-supervised script uses them, with 4 heads; FeatMatch itself draws
  them from k-means of a memory bank. Attention dropout 0.1 is our choice (docs/method.md §17.5).
  PyTorch's default Linear initialisation.
  """
  num_heads: int = 4
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, prototypes, dropout_key=None):
    """x (n, D), prototypes (P, D) -> (n, D); dropout_key None: no dropout (evaluation)."""
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"FeatMatchAttention needs the feature width {dim} to be divisible by "
                       f"num_heads={self.num_heads}.")
    width = dim // self.num_heads
    heads = []
    for h in range(self.num_heads):
      embed = Linear(width, name=f"embed_{h}")
      e_x, e_p = embed(x), embed(prototypes)
      weights = jax.nn.softmax(e_x @ e_p.T / jnp.sqrt(float(width)), axis=-1)
      if dropout_key is not None and self.dropout > 0:
        keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, h), 1.0 - self.dropout,
                                    weights.shape)
        weights = jnp.where(keep, weights / (1.0 - self.dropout), 0.0)
      mixed = jnp.concatenate([weights @ e_p, e_x], axis=-1)
      heads.append(nn.relu(Linear(width, name=f"mix_{h}")(mixed)))
    return nn.relu(x + Linear(dim, name="output")(jnp.concatenate(heads, axis=-1)))


def split_labelled(key, labels, num_classes: int, labels_per_class: int):
  """Trial split: `labels_per_class` random rows of each class are labelled, the rest unlabelled.

  Args:
    key: PRNG key of the trial.
    labels: (N,) int labels.

  Returns:
    labelled: (num_classes·labels_per_class,) row indices, grouped by class.
    unlabelled: (N − num_classes·labels_per_class,) row indices (random order).
  """
  n = labels.shape[0]
  scores = jax.random.uniform(key, (n,))
  # Per class, the rows with the smallest scores among that class are labelled (a uniform draw
  # without replacement); rows of other classes get score 2 and sort last.
  def pick(c):
    return jnp.argsort(jnp.where(labels == c, scores, 2.0))[:labels_per_class]
  labelled = jax.vmap(pick)(jnp.arange(num_classes)).reshape(-1)
  is_labelled = jnp.zeros((n,), bool).at[labelled].set(True)
  unlabelled = jnp.argsort(jnp.where(is_labelled, 2.0, scores))[:n - labelled.shape[0]]
  return labelled, unlabelled


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sample_rows(key, rows, size: int, replace: bool):
  """`size` entries of the index vector rows (n,): with replacement, or distinct (size <= n)."""
  if replace:
    return rows[jax.random.randint(key, (size,), 0, rows.shape[0])]
  return rows[jax.random.permutation(key, rows.shape[0])[:size]]


def pseudo_label_consistency(logits, logits_aug, confidence: float):
  """FixMatch-style consistency of one unlabelled batch (docs/method.md §8.5).

  logits: (B, C) the classifier on z_u (no gradient flows through it); logits_aug: (B, C) the
  classifier on aug(z_u). With p = softmax(logits): Σ_b 1[max_c p_bc > confidence] ·
  CE(logits_aug_b, argmax_c p_bc) / B, a sum over the confident rows divided by the whole batch.
  Returns () float32.
  """
  probs = jax.lax.stop_gradient(jax.nn.softmax(logits))
  mask = jnp.max(probs, axis=-1) > confidence
  ce = _cross_entropy(logits_aug, jnp.argmax(probs, axis=-1))
  return jnp.sum(jnp.where(mask, ce, 0.0)) / logits.shape[0]


def mixup(lam, a, b):
  """λ a + (1 − λ) b row-wise; lam (B, 1), a and b (B, d) -> (B, d)."""
  return lam * a + (1.0 - lam) * b


def mixup_consistency(logits_mixed, target_probs, partner_probs, lam):
  """Mixup ("MMICT") consistency (docs/method.md §8.5): mean over rows and classes of
  (softmax(logits_mixed) − [λ p + (1 − λ) p'])², with no gradient through the target.

  logits_mixed: (B, C) the classifier on mixup(λ, z_u, z_u'); target_probs, partner_probs: (B, C)
  the EMA classifier's probabilities of z_u and of its partner z_u'; lam: (B, 1). Returns ().
  """
  target = jax.lax.stop_gradient(mixup(lam, target_probs, partner_probs))
  return jnp.mean((jax.nn.softmax(logits_mixed) - target) ** 2)


def _run_trial(trial_key, train_x, train_y, test_x, test_y, *, model, augment_fn, augmentation,
               use_consistency, num_classes, labels_per_class, num_steps, labelled_batch,
               unlabelled_batch, lr, weight_decay, ema, consistency_weight, confidence):
  """Trains one classifier; returns its EMA copy's test accuracy and test cross-entropy (scalars).

  The trained parameters are {"classifier"} (+ {"featmatch"}, the FeatMatch module trained with
  it); the EMA copy is the classifier's.
  """
  split_key, init_key, train_key = jax.random.split(trial_key, 3)
  labelled, unlabelled = split_labelled(split_key, train_y, num_classes, labels_per_class)
  params = {"classifier": model.init(init_key, train_x[:1])}
  featmatch = FeatMatchAttention() if augmentation == "featmatch" and use_consistency else None
  if featmatch is not None:
    params["featmatch"] = featmatch.init(jax.random.fold_in(init_key, 1), train_x[:1],
                                         train_x[:1])
  tx = coupled_adam(lr, weight_decay)

  def consistency(p, ema_clf, key, z_l):
    rows_key, partner_key, lam_key, aug_key = jax.random.split(key, 4)
    clf = lambda z: model.apply(p["classifier"], z)
    z_u = train_x[sample_rows(rows_key, unlabelled, unlabelled_batch, replace=True)]
    if augmentation == "mixup":
      partner = train_x[sample_rows(partner_key, unlabelled, unlabelled_batch, replace=True)]
      lam = jax.random.beta(lam_key, 0.5, 0.5, (unlabelled_batch, 1))
      teacher = lambda z: jax.nn.softmax(model.apply(ema_clf, z))
      return mixup_consistency(clf(mixup(lam, z_u, partner)), teacher(z_u), teacher(partner), lam)
    if augmentation == "featmatch":  # learned: the gradient reaches the attention module
      z_aug = featmatch.apply(p["featmatch"], z_u, z_l, dropout_key=aug_key)
    elif augmentation == "none":
      z_aug = z_u
    else:
      z_aug = jax.lax.stop_gradient(augment_fn(aug_key, z_u))
    return pseudo_label_consistency(clf(z_u), clf(z_aug), confidence)

  def loss_fn(p, ema_clf, step_key):
    # The same keys are drawn whether or not the consistency term is used, so the supervised
    # baseline sees exactly the labelled batches that the semi-supervised run sees.
    lab_key, unl_key = jax.random.split(step_key)
    rows = sample_rows(lab_key, labelled, min(labelled_batch, labelled.shape[0]), replace=False)
    z_l = train_x[rows]
    loss = jnp.mean(_cross_entropy(model.apply(p["classifier"], z_l), train_y[rows]))
    if use_consistency:
      loss = loss + consistency_weight * consistency(p, ema_clf, unl_key, z_l)
    return loss

  def step(carry, step_index):
    p, ema_clf, opt_state = carry
    grads = jax.grad(loss_fn)(p, ema_clf, jax.random.fold_in(train_key, step_index))
    updates, opt_state = tx.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    ema_clf = jax.tree.map(lambda e, q: ema * e + (1 - ema) * q, ema_clf, p["classifier"])
    return (p, ema_clf, opt_state), None

  (_, ema_params, _), _ = jax.lax.scan(
      step, (params, params["classifier"], tx.init(params)), jnp.arange(num_steps))
  logits = model.apply(ema_params, test_x)
  return (jnp.mean(jnp.argmax(logits, axis=-1) == test_y),
          jnp.mean(_cross_entropy(logits, test_y)))


@functools.lru_cache(maxsize=8)
def _compiled_trials(model, **options):
  """jit(vmap(trial)) over trial keys, cached per configuration so repeated calls (chunks, seeds)
  with the same options and shapes reuse one compilation."""
  trial = functools.partial(_run_trial, model=model, **options)
  return jax.jit(jax.vmap(trial, in_axes=(0, None, None, None, None)))


def _trial_keys(key_or_seeds, num_trials):
  """Trial keys: PRNGKey(seed) for explicit int seeds, fold_in(key, t) for a key."""
  if isinstance(key_or_seeds, (int, np.integer)):
    raise TypeError("key_or_seeds must be a PRNG key or a sequence of int seeds, got the int "
                    f"{key_or_seeds}; pass range({key_or_seeds}, {key_or_seeds} + num_trials).")
  if isinstance(key_or_seeds, (list, tuple, range, np.ndarray)) and not (
      isinstance(key_or_seeds, np.ndarray) and key_or_seeds.dtype == np.uint32):
    return jnp.stack([jax.random.PRNGKey(int(s)) for s in key_or_seeds])
  return jax.vmap(lambda t: jax.random.fold_in(key_or_seeds, t))(jnp.arange(num_trials))


def run_semi_supervised(key_or_seeds, train_x, train_y, test_x, test_y, num_classes: int, *,
                        labels_per_class: int = 5, num_trials: int = 50, num_steps: int = 10000,
                        labelled_batch: int = 32, unlabelled_batch: int = 480, lr: float = 5e-4,
                        weight_decay: float = 5e-4, ema: float = 0.999,
                        consistency_weight: float = 1.0, confidence: float = 0.95,
                        augmentation: str = "transport", augment_fn: Callable | None = None,
                        hidden_dim: int = 2048, trials_per_batch: int | None = None) -> dict:
  """Runs `num_trials` semi-supervised trials on frozen features (docs/method.md §8.5).

  Args:
    key_or_seeds: a sequence of int seeds (trial t uses PRNGKey(seeds[t]) for its label split, init
      and batches; `num_trials` is then len(seeds)), or a PRNG key (trial t uses fold_in(key, t)).
      The paper uses seeds range(50).
    train_x: (N, D) frozen train features; train_y: (N,) int labels (only the labelled subset's are
      read by the loss).
    test_x: (M, D); test_y: (M,).
    num_classes: C.
    augmentation: "transport" (needs `augment_fn`), "mixup", "none" or "featmatch" (D divisible
      by 4, the attention heads).
    augment_fn: callable (key, z (n, D)) -> (n, D), traced inside the jitted step (must be JAX-pure).
    hidden_dim: MLP width (paper: 2048).
    trials_per_batch: trials vmapped together per compiled call (None = all), to bound memory.
    Others: docs/method.md §8 values as defaults.

  Returns:
    dict(mean, std, accuracies (num_trials,), test_loss (num_trials,)): accuracies in [0, 1] and
    the test cross-entropy of each trial's EMA classifier (numpy).
  """
  return _run(key_or_seeds, train_x, train_y, test_x, test_y, num_classes,
              labels_per_class=labels_per_class, num_trials=num_trials, num_steps=num_steps,
              labelled_batch=labelled_batch, unlabelled_batch=unlabelled_batch, lr=lr,
              weight_decay=weight_decay, ema=ema, consistency_weight=consistency_weight,
              confidence=confidence, augmentation=augmentation, augment_fn=augment_fn,
              hidden_dim=hidden_dim, trials_per_batch=trials_per_batch, use_consistency=True)


def _run(key_or_seeds, train_x, train_y, test_x, test_y, num_classes, *, labels_per_class,
         num_trials, num_steps, labelled_batch, unlabelled_batch, lr, weight_decay, ema,
         consistency_weight, confidence, augmentation, augment_fn, hidden_dim, trials_per_batch,
         use_consistency):
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f"augmentation={augmentation!r}; choose one of {AUGMENTATIONS}.")
  if augmentation == "transport" and augment_fn is None and use_consistency:
    raise ValueError("augmentation='transport' needs augment_fn(key, z) -> z_aug, e.g. "
                     "z ↦ transport(psi, sample_coefficients(...), z).")
  counts = np.bincount(np.asarray(train_y), minlength=num_classes)
  if counts.min() <= labels_per_class:
    raise ValueError(f"class {counts.argmin()} has {counts.min()} train rows; need more than "
                     f"labels_per_class={labels_per_class}.")
  keys = _trial_keys(key_or_seeds, num_trials)
  num_trials = keys.shape[0]
  trials_per_batch = num_trials if trials_per_batch is None else min(trials_per_batch, num_trials)

  run_chunk = _compiled_trials(
      Classifier(num_classes, hidden_dim), augment_fn=augment_fn, augmentation=augmentation,
      use_consistency=use_consistency, num_classes=num_classes, labels_per_class=labels_per_class,
      num_steps=num_steps, labelled_batch=labelled_batch, unlabelled_batch=unlabelled_batch,
      lr=lr, weight_decay=weight_decay, ema=ema, consistency_weight=consistency_weight,
      confidence=confidence)

  arrays = (jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
            jnp.asarray(test_x, jnp.float32), jnp.asarray(test_y, jnp.int32))
  accuracies, losses = [], []
  for start in range(0, num_trials, trials_per_batch):
    chunk = keys[start:start + trials_per_batch]
    valid = chunk.shape[0]
    # Pad the last chunk with repeats of its first key so every chunk reuses one compilation.
    pad = jnp.repeat(chunk[:1], trials_per_batch - valid, axis=0)
    accuracy, loss = run_chunk(jnp.concatenate([chunk, pad]), *arrays)
    accuracies.append(np.asarray(accuracy)[:valid])
    losses.append(np.asarray(loss)[:valid])
  accuracies = np.concatenate(accuracies)
  return dict(mean=float(accuracies.mean()), std=float(accuracies.std()), accuracies=accuracies,
              test_loss=np.concatenate(losses))


def run_supervised_baseline(key_or_seeds, train_x, train_y, test_x, test_y, num_classes: int,
                            **kwargs) -> dict:
  """Supervised-only baseline (docs/method.md §8: "None" with consistency weight 0).

  Same arguments and trial seeds as `run_semi_supervised`; the unlabelled branch is not computed at
  all (rather than multiplied by 0), which is what makes it a cheap baseline.
  """
  options = dict(labels_per_class=5, num_trials=50, num_steps=10000, labelled_batch=32,
                 unlabelled_batch=480, lr=5e-4, weight_decay=5e-4, ema=0.999, confidence=0.95,
                 hidden_dim=2048, trials_per_batch=None)
  unknown = set(kwargs) - set(options)
  if unknown:
    raise TypeError(f"run_supervised_baseline got unexpected arguments {sorted(unknown)}.")
  options.update(kwargs)
  return _run(key_or_seeds, train_x, train_y, test_x, test_y, num_classes, augmentation="none",
              augment_fn=None, consistency_weight=0.0, use_consistency=False, **options)
