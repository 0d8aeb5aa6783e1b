"""Semi-supervised trials on frozen features (docs/method.md §8 paper experiment), tiny sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.evaluate import semi_supervised

NUM_CLASSES = 3
# Tiny sizes; ema=0.9 because with 0.999 the EMA copy would barely leave its initialisation in
# 100 steps. trials_per_batch=1 lets every call with one configuration share a compilation.
SMALL = dict(labels_per_class=2, num_steps=100, labelled_batch=6, unlabelled_batch=24, lr=1e-2,
             hidden_dim=32, confidence=0.6, ema=0.9, trials_per_batch=1)


def _clusters(seed, per_class=30, dim=6):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(NUM_CLASSES), per_class)
  x = 2.0 * np.eye(NUM_CLASSES, dim)[y] + 0.3 * rng.standard_normal((len(y), dim))
  return x.astype(np.float32), y


# Compilation dominates these tiny runs on 2 CPU cores (flax examples' trick, STYLE.md).
pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


TRAIN = _clusters(0)
TEST = _clusters(1)


@pytest.fixture(scope="module")
def pseudo_label_w0():
  return semi_supervised.run_semi_supervised(
      [0, 1, 2], *TRAIN, *TEST, NUM_CLASSES, augmentation="none", consistency_weight=0.0, **SMALL)


def test_zero_weight_pseudo_labelling_equals_supervised_baseline(pseudo_label_w0):
  baseline = semi_supervised.run_supervised_baseline([0, 1, 2], *TRAIN, *TEST, NUM_CLASSES, **SMALL)
  np.testing.assert_array_equal(pseudo_label_w0["accuracies"], baseline["accuracies"])
  # The two are different XLA programs (the baseline skips the unlabelled branch), so the losses
  # may differ in the last float32 bit through different fusion; the trained models are the same.
  np.testing.assert_allclose(pseudo_label_w0["test_loss"], baseline["test_loss"], rtol=1e-5)


def test_well_above_chance_on_separable_data(pseudo_label_w0):
  assert pseudo_label_w0["accuracies"].shape == (3,)
  assert pseudo_label_w0["mean"] > 0.9  # chance is 1/3
  np.testing.assert_allclose(pseudo_label_w0["std"], np.std(pseudo_label_w0["accuracies"]))


def test_trials_reproducible_per_seed_and_different_across_seeds(pseudo_label_w0):
  # Seed 1 run on its own reproduces trial 1 of the 3-trial run; the three seeds differ.
  alone = semi_supervised.run_semi_supervised(
      [1], *TRAIN, *TEST, NUM_CLASSES, augmentation="none", consistency_weight=0.0, **SMALL)
  np.testing.assert_array_equal(alone["test_loss"][0], pseudo_label_w0["test_loss"][1])
  assert len(set(pseudo_label_w0["test_loss"].tolist())) == 3


def test_label_split_differs_across_seeds_and_is_class_balanced():
  labels = jnp.asarray(TRAIN[1])
  splits = [semi_supervised.split_labelled(jax.random.PRNGKey(s), labels, NUM_CLASSES, 4)
            for s in (0, 1)]
  for labelled, unlabelled in splits:
    np.testing.assert_array_equal(np.bincount(TRAIN[1][labelled]), [4] * NUM_CLASSES)
    # Labelled and unlabelled partition the rows.
    np.testing.assert_array_equal(np.sort(np.concatenate([labelled, unlabelled])),
                                  np.arange(len(labels)))
  assert set(np.asarray(splits[0][0]).tolist()) != set(np.asarray(splits[1][0]).tolist())


@pytest.mark.slow  # every consistency method trains its trials; the float64 references below stay in the default tier
def test_every_consistency_keeps_separable_clusters_separated():
  noise = lambda key, z: z + 0.05 * jax.random.normal(key, z.shape)
  for kwargs in (dict(augmentation="transport", augment_fn=noise), dict(augmentation="mixup"),
                 dict(augmentation="none")):
    out = semi_supervised.run_semi_supervised(jax.random.PRNGKey(0), *TRAIN, *TEST, NUM_CLASSES,
                                              num_trials=2, **kwargs, **SMALL)
    np.testing.assert_array_equal(out["accuracies"], [1.0, 1.0])


def test_consistency_trains_the_augmented_input_towards_the_clean_pseudo_label():
  """An "augmentation" that swaps the class-0 and class-1 clusters teaches the classifier to call
  class-1-looking inputs class 0 (the pseudo-label of the clean input): it confuses the two, so
  accuracy falls from 1 to about 2/3. A consistency term applied to the wrong input, or against
  the wrong target, would leave it at 1."""
  swap = lambda key, z: z[:, jnp.array([1, 0, 2, 3, 4, 5])]
  out = semi_supervised.run_semi_supervised(jax.random.PRNGKey(0), *TRAIN, *TEST, NUM_CLASSES,
                                            num_trials=2, augmentation="transport",
                                            augment_fn=swap, **SMALL)
  assert np.all(out["accuracies"] < 0.8), out["accuracies"]


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_pseudo_label_consistency_against_float64_reference():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(8, 4)) * np.array([[6.0]] * 4 + [[0.5]] * 4)  # 4 confident rows
  logits_aug = rng.normal(size=(8, 4))
  p = _softmax(logits)
  keep = p.max(axis=-1) > 0.9
  assert 0 < keep.sum() < 8
  log_q = logits_aug - np.log(np.exp(logits_aug).sum(-1, keepdims=True))
  ce = -log_q[np.arange(8), p.argmax(-1)]
  want = np.sum(ce * keep) / 8  # divided by the whole batch, not by the kept rows
  got = semi_supervised.pseudo_label_consistency(jnp.asarray(logits, jnp.float32),
                                                 jnp.asarray(logits_aug, jnp.float32), 0.9)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # No gradient through the pseudo-label branch; through the augmented one, (q − onehot)·keep / B.
  grad_clean, grad_aug = jax.grad(semi_supervised.pseudo_label_consistency, argnums=(0, 1))(
      jnp.asarray(logits, jnp.float32), jnp.asarray(logits_aug, jnp.float32), 0.9)
  np.testing.assert_array_equal(grad_clean, 0.0)
  one_hot = np.eye(4)[p.argmax(-1)]
  np.testing.assert_allclose(grad_aug, (np.exp(log_q) - one_hot) * keep[:, None] / 8, atol=1e-6)


def test_mixup_consistency_against_float64_reference():
  rng = np.random.default_rng(4)
  logits_mixed = rng.normal(size=(5, 3))
  target, partner = _softmax(rng.normal(size=(5, 3))), _softmax(rng.normal(size=(5, 3)))
  lam = rng.uniform(size=(5, 1))
  want = np.mean((_softmax(logits_mixed) - (lam * target + (1 - lam) * partner)) ** 2)
  args = [jnp.asarray(a, jnp.float32) for a in (logits_mixed, target, partner, lam)]
  np.testing.assert_allclose(semi_supervised.mixup_consistency(*args), want, rtol=1e-5)
  grads = jax.grad(semi_supervised.mixup_consistency, argnums=(1, 2))(*args)
  for g in grads:  # the EMA teacher's target carries no gradient
    np.testing.assert_array_equal(g, 0.0)
  a, b = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
  np.testing.assert_allclose(semi_supervised.mixup(lam, a, b), lam * a + (1 - lam) * b)


def test_labelled_batches_are_drawn_without_replacement():
  rows = jnp.arange(100, 150)  # 50 labelled rows, batch 32 as the paper's
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  draws = np.asarray(jax.vmap(lambda k: semi_supervised.sample_rows(k, rows, 32, replace=False))(
      keys))
  assert all(len(set(d.tolist())) == 32 for d in draws)
  assert set(draws.ravel().tolist()) <= set(range(100, 150))
  # Uniform over rows: each is in a batch with probability 32/50 (binomial standard error 0.011).
  np.testing.assert_allclose(np.bincount(draws.ravel() - 100) / len(keys), 32 / 50, atol=0.05)
  with_replacement = np.asarray(jax.vmap(
      lambda k: semi_supervised.sample_rows(k, rows, 32, replace=True))(keys))
  assert np.mean([len(set(d.tolist())) < 32 for d in with_replacement]) > 0.9


def test_transport_without_callable_is_rejected():
  with pytest.raises(ValueError, match="augment_fn"):
    semi_supervised.run_semi_supervised([0], *TRAIN, *TEST, NUM_CLASSES, augmentation="transport")


def _featmatch_float64(params, x, prototypes, num_heads=4):
  """FeatMatch's attention refinement (docs/method.md §17.5) in float64 numpy, no dropout."""
  p = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()}
       for k, layer in params["params"].items()}
  lin = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]
  x, prototypes = np.asarray(x, np.float64), np.asarray(prototypes, np.float64)
  width = x.shape[1] // num_heads
  heads = []
  for h in range(num_heads):
    e_x, e_p = lin(f"embed_{h}", x), lin(f"embed_{h}", prototypes)
    a = _softmax(e_x @ e_p.T / np.sqrt(width))
    heads.append(np.maximum(lin(f"mix_{h}", np.concatenate([a @ e_p, e_x], axis=1)), 0))
  return np.maximum(x + lin("output", np.concatenate(heads, axis=1)), 0)


def test_featmatch_attention_against_float64_reference():
  """Four heads of scaled dot-product attention from the features to the prototypes, each head's
  attended prototypes and own embedding mixed, then a residual and ReLU; with a dropout key the
  attention weights are dropped and rescaled, so the output changes but keeps its shape."""
  rng = np.random.default_rng(5)
  x, prototypes = rng.standard_normal((7, 8)), rng.standard_normal((5, 8))
  module = semi_supervised.FeatMatchAttention()
  params = module.init(jax.random.key(0), x[:1], prototypes)
  out = module.apply(params, jnp.asarray(x, jnp.float32), jnp.asarray(prototypes, jnp.float32))
  np.testing.assert_allclose(np.asarray(out), _featmatch_float64(params, x, prototypes),
                             rtol=1e-4, atol=1e-5)
  dropped = module.apply(params, x, prototypes, dropout_key=jax.random.key(1))
  assert dropped.shape == out.shape and not np.allclose(dropped, out)


@pytest.mark.slow  # two more trial compiles: ~30 s on 2 busy cores
def test_featmatch_keeps_separable_clusters_separated_and_needs_four_heads():
  """The FeatMatch consistency (the attention module trained with the classifier) on 8-d
  clusters: every trial is perfect; 6-d features cannot be split over 4 heads."""
  train, test = _clusters(0, dim=8), _clusters(1, dim=8)
  out = semi_supervised.run_semi_supervised(jax.random.PRNGKey(0), *train, *test, NUM_CLASSES,
                                            num_trials=2, augmentation="featmatch", **SMALL)
  np.testing.assert_array_equal(out["accuracies"], [1.0, 1.0])
  with pytest.raises(ValueError, match="num_heads=4"):
    semi_supervised.run_semi_supervised(jax.random.PRNGKey(0), *TRAIN, *TEST, NUM_CLASSES,
                                        num_trials=1, augmentation="featmatch", **SMALL)
