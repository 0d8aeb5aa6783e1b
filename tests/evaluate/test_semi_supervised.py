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


def test_transport_callable_and_mixup_run():
  # A small additive perturbation stands in for the transport augmentation.
  noise = lambda key, z: z + 0.05 * jax.random.normal(key, z.shape)
  for kwargs in (dict(augmentation="transport", augment_fn=noise), dict(augmentation="mixup")):
    out = semi_supervised.run_semi_supervised(jax.random.PRNGKey(0), *TRAIN, *TEST, NUM_CLASSES,
                                              num_trials=2, **kwargs, **SMALL)
    assert np.all(np.isfinite(out["test_loss"]))
    assert out["accuracies"].shape == (2,)
    assert out["mean"] > 0.6, kwargs


def test_transport_without_callable_is_rejected():
  with pytest.raises(ValueError, match="augment_fn"):
    semi_supervised.run_semi_supervised([0], *TRAIN, *TEST, NUM_CLASSES, augmentation="transport")
