"""The invariance paper's image probe (docs/method.md §18.5): the L-BFGS classifier against a
float64 scipy optimum and a closed form, and the stratified label subset."""

import numpy as np
import pytest
import scipy.optimize

from mclr_jax.evaluate import invariance_probe

N, D, C = 240, 6, 4


def _problem(seed=0, model_seed=0):
  """Linearly structured but noisy labels: the optimum is interior (finite W) for any l2 > 0."""
  w = np.random.default_rng([model_seed, 1]).normal(size=(D, C))
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, D)).astype(np.float32)
  y = np.argmax(x @ w + rng.gumbel(size=(N, C)) + np.array([0.0, 0.5, 1.0, -0.5]), axis=1)
  return x, y


def _reference(x, y, l2):
  """The minimiser of mean CE + l2·‖W‖² (bias free) in float64 by scipy's L-BFGS-B, to 1e-12."""
  x = x.astype(np.float64)
  rows = np.arange(len(y))

  def value_and_grad(theta):
    w, b = theta[:D * C].reshape(D, C), theta[D * C:]
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    p = np.exp(z - lse[:, None])
    p[rows, y] -= 1
    p /= len(y)
    value = np.mean(lse - z[rows, y]) + l2 * np.sum(w ** 2)
    return value, np.concatenate([(x.T @ p + 2 * l2 * w).ravel(), p.sum(axis=0)])

  res = scipy.optimize.minimize(value_and_grad, np.zeros(D * C + C), jac=True, method="L-BFGS-B",
                                options=dict(gtol=1e-12, ftol=1e-16, maxiter=20_000))
  return res.fun, res.x[:D * C].reshape(D, C), res.x[D * C:]


@pytest.mark.parametrize("l2", [1e-5, 1e-2])
def test_lbfgs_reaches_the_float64_optimum(l2):
  x, y = _problem()
  fit = invariance_probe.fit_lbfgs_classifier(x, y, C, l2, num_steps=500)
  value, w, b = _reference(x, y, l2)
  np.testing.assert_allclose(float(fit["objective"]), value, rtol=2e-6)
  # Near the optimum J − J* ≈ ½ δᵀHδ: parameters agree to about √(float32 ε)·cond.
  np.testing.assert_allclose(fit["params"]["w"], w, atol=2e-3 * max(1.0, np.abs(w).max()))
  np.testing.assert_allclose(fit["params"]["b"] - fit["params"]["b"].mean(), b - b.mean(),
                             atol=2e-3 * max(1.0, np.abs(b).max()))


def test_bias_is_unpenalised_so_a_huge_l2_leaves_the_class_frequencies():
  """With W forced to ~0, the optimal logits are the bias alone and softmax(b) must equal the
  empirical class frequencies; a penalised bias would be pulled towards uniform."""
  x, y = _problem(1)
  fit = invariance_probe.fit_lbfgs_classifier(x, y, C, l2=1e4, num_steps=500)
  assert np.abs(fit["params"]["w"]).max() < 1e-3
  b = np.asarray(fit["params"]["b"], np.float64)
  softmax = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
  freq = np.bincount(y, minlength=C) / len(y)
  np.testing.assert_allclose(softmax, freq, atol=1e-4)
  assert np.ptp(freq) > 0.1  # the classes really are unbalanced


def test_scores_match_numpy():
  x, y = _problem(2)
  fit = invariance_probe.fit_lbfgs_classifier(x, y, C, 1e-3)
  w, b = (np.asarray(fit["params"][k], np.float64) for k in ("w", "b"))
  x_test, y_test = _problem(3)
  logits = x_test.astype(np.float64) @ w + b
  shifted = logits - logits.max(axis=1, keepdims=True)
  ce = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(N), y_test])
  scores = invariance_probe.evaluate_classifier(fit["params"], x_test, y_test)
  assert scores["accuracy"] == pytest.approx(np.mean(np.argmax(logits, 1) == y_test), abs=1e-6)
  assert scores["cross_entropy"] == pytest.approx(ce, rel=1e-5)
  assert 0.5 < scores["accuracy"] < 1  # better than chance (0.25), not trivially separable


def test_stratified_subset_keeps_an_equal_share_of_every_class():
  rng = np.random.default_rng(0)
  labels = rng.permutation(np.repeat(np.arange(5), [40, 30, 50, 20, 60]))  # N = 200
  idx = invariance_probe.stratified_subset(labels, 0.5, seed=3)
  per_class = int(200 * 0.5 / 5)  # 20: the smallest class gives all of its 20 rows
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=5), [per_class] * 5)
  assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(idx, invariance_probe.stratified_subset(labels, 0.5, seed=3))
  assert not np.array_equal(idx, invariance_probe.stratified_subset(labels, 0.5, seed=4))
  np.testing.assert_array_equal(invariance_probe.stratified_subset(labels, 1.0), np.arange(200))
  with pytest.raises(ValueError, match="proportion=0"):
    invariance_probe.stratified_subset(labels, 0.0)


def test_stratified_subset_is_uniform_within_each_class():
  """Over many seeds every row of a class is kept with probability per_class / class size."""
  labels = np.repeat(np.arange(2), [10, 30])
  kept = np.zeros(40)
  trials = 2000
  for seed in range(trials):
    kept[invariance_probe.stratified_subset(labels, 0.25, seed=seed)] += 1
  per_class = int(40 * 0.25 / 2)  # 5
  for rows, size in ((slice(0, 10), 10), (slice(10, 40), 30)):
    p = per_class / size
    sd = np.sqrt(trials * p * (1 - p))
    assert np.all(np.abs(kept[rows] - trials * p) < 5 * sd), kept[rows]


# --------------------------------------------------------------------------------------------
# The `invariance_probe` suite on a randomly initialised encoder
# --------------------------------------------------------------------------------------------

def _brightness_images(per_class, seed):
  """Three classes told apart by overall brightness only: (3·per_class, 32, 32, 3) uint8."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(3), per_class)
  images = labels[:, None, None, None] * 90 + rng.integers(0, 40, (len(labels), 32, 32, 3))
  return images.astype(np.uint8), labels.astype(np.int32)


@pytest.fixture(scope="module")
def random_image_model(fast_cpu_compiles):
  del fast_cpu_compiles
  from configs import invariance_cifar  # pylint: disable=g-import-not-at-top
  from mclr_jax.evaluate import model as model_lib  # pylint: disable=g-import-not-at-top
  config = invariance_cifar.get_config("cifar10_nogp")
  # The protocol does not depend on the backbone; a narrow ResNet-18 compiles in seconds.
  config.model.arch, config.model.width = "resnet18", 4
  config.eval.feature_average_copies = 3
  config.eval.lbfgs_steps = 100
  return model_lib.random_model(config)


@pytest.mark.slow  # the whole suite on a random ResNet; the L-BFGS fit is checked in the default tier
def test_suite_reports_the_three_input_modes_on_half_the_labels(random_image_model, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from mclr_jax.evaluate import suite as suite_lib  # pylint: disable=g-import-not-at-top
  train, test = _brightness_images(20, 0), _brightness_images(10, 1)
  data = (*train, *test)
  run = lambda seed: suite_lib.run_suite(random_image_model, ["invariance_probe"],
                                         jax.random.key(seed), str(tmp_path), data=data,
                                         options=suite_lib.SuiteOptions(num_classes=3)
                                         )["invariance_probe"]
  first, second = run(0), run(1)
  # A stratified half: ⌊60 · 0.5 / 3⌋ = 10 rows of each class.
  assert first["train_examples"] == 30 and first["copies"] == 3
  for mode in ("untransformed", "transformed", "feature_averaging"):
    assert 0 <= first[mode]["accuracy"] <= 1 and first[mode]["cross_entropy"] > 0
  # Untransformed inputs are normalisation only: the evaluation key changes nothing there, while
  # the random views (one view, and the average over three) change with it.
  assert first["untransformed"] == second["untransformed"]
  assert first["transformed"] != second["transformed"]
  assert first["feature_averaging"] != second["feature_averaging"]
  # Brightness alone separates the classes: clean features of even a random encoder carry it.
  assert first["untransformed"]["accuracy"] >= 0.9
