"""Linear probe (docs/method.md §8.1): separable data, loss decrease, schedule, optimiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.evaluate import linear_probe


def _clusters(seed, num_classes=4, per_class=64, dim=8, spread=0.3):
  rng = np.random.default_rng(seed)
  centres = 3.0 * np.eye(num_classes, dim)
  y = np.repeat(np.arange(num_classes), per_class)
  x = centres[y] + spread * rng.standard_normal((len(y), dim))
  return x.astype(np.float32), y


@pytest.fixture(scope="module")
def probe():
  train_x, train_y = _clusters(0)
  test_x, test_y = _clusters(1)
  return linear_probe.fit_linear_probe(jax.random.PRNGKey(0), train_x, train_y, test_x, test_y, 4,
                                       num_epochs=10, batch_size=16, lr=5e-2,
                                       final_lr=1e-3)


def test_separable_clusters_are_classified(probe):
  assert probe["top1"] >= 0.99
  assert probe["top5"] >= probe["top1"]
  assert probe["params"]["params"]["kernel"].shape == (8, 4)


def test_train_loss_decreases(probe):
  loss = probe["loss"]
  assert loss.shape == (10,)
  assert loss[-1] < 0.5 * loss[0]


def test_decay_reaches_final_lr():
  gamma = linear_probe.decay_gamma(1e-2, 1e-6, 500)
  np.testing.assert_allclose(1e-2 * gamma**500, 1e-6, rtol=1e-9)


def test_coupled_adam_matches_torch_formula():
  # torch Adam(weight_decay): g ← g + wd·w, then the Adam update; first step is −lr·sign(g').
  w = jnp.array([1.0, -2.0, 0.5])
  g = jnp.array([0.1, 0.0, -0.3])
  tx = linear_probe.coupled_adam(0.1, 0.5)
  updates, _ = tx.update(g, tx.init(w), w)
  g_coupled = np.array(g) + 0.5 * np.array(w)
  expected = -0.1 * g_coupled / (np.abs(g_coupled) + 1e-8)
  np.testing.assert_allclose(updates, expected, rtol=1e-5)


def test_topk_accuracy_against_numpy():
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((50, 7)).astype(np.float32)
  labels = rng.integers(0, 7, 50)
  for k in (1, 3, 5):
    ref = np.mean([labels[i] in np.argsort(-logits[i])[:k] for i in range(50)])
    np.testing.assert_allclose(linear_probe.topk_accuracy(jnp.asarray(logits), jnp.asarray(labels), k),
                               ref, rtol=1e-6)
