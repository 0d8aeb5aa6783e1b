"""Closed-form ridge probe (docs/method.md §13) against exact maps and scikit-learn."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from mclr_jax.evaluate import regression


def test_recovers_noise_free_linear_map():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6))
  w, b = rng.normal(size=(6, 4)), rng.normal(size=4)
  y = x @ w + b
  w_hat, b_hat = regression.fit_linear_regression(x, y, l2=0.0)
  np.testing.assert_allclose(w_hat, w, atol=1e-10)
  np.testing.assert_allclose(b_hat, b, atol=1e-10)
  metrics = regression.spirograph_probe(x[:150], y[:150], x[150:], y[150:], l2=1e-12)
  assert metrics["mse_mean"] < 1e-16 and metrics["r2_mean"] == pytest.approx(1.0)
  assert set(metrics) >= {"mse/m", "r2/sigma", "train/mse_mean"}


@pytest.mark.parametrize("l2", [1e-3, 0.5])
def test_matches_sklearn_ridge_with_mean_loss_scaling(l2):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(80, 10)) + 3.0  # an offset, so an unpenalised bias matters
  y = x @ rng.normal(size=(10, 2)) + rng.normal(size=(80, 2))
  w, b = regression.fit_linear_regression(x, y, l2=l2)
  ridge = Ridge(alpha=l2 * len(x), fit_intercept=True, solver="svd").fit(x, y)
  np.testing.assert_allclose(w, ridge.coef_.T, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(b, ridge.intercept_, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(regression.predict((w, b), x), ridge.predict(x), atol=1e-8)


def test_rank_deficient_features_are_fine():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(50, 3))
  x = np.concatenate([x, x[:, :1], np.zeros((50, 2))], axis=1)  # duplicated and dead features
  y = x[:, :3] @ np.array([1.0, -2.0, 0.5])
  w, b = regression.fit_linear_regression(x, y, l2=1e-8)
  assert np.all(np.isfinite(w))
  np.testing.assert_allclose(regression.predict((w, b), x), y, atol=1e-5)


def test_mean_predictor_has_zero_r2():
  rng = np.random.default_rng(3)
  target = rng.normal(size=(100, 2))
  pred = np.broadcast_to(target.mean(0), target.shape)
  metrics = regression.regression_metrics(pred, target, ("a", "b"))
  assert metrics["r2/a"] == pytest.approx(0.0, abs=1e-12)
  assert metrics["r2_mean"] == pytest.approx(0.0, abs=1e-12)
  np.testing.assert_allclose(metrics["mse/b"], target[:, 1].var())
