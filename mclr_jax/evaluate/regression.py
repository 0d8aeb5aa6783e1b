"""Closed-form linear regression probe for Spirograph (docs/method.md §13).

The authors fit the probe with full-batch L-BFGS; the objective is quadratic, so we solve it exactly
in float64 instead. For each target t (column of y) the objective is

    (1/N) Σ_n (y_nt − x_n·W_t − b_t)² + l2·‖W_t‖²        (no penalty on the bias b),

i.e. mean squared error over samples plus l2 times the squared weights; targets decouple, and the
solution equals scikit-learn `Ridge(alpha=l2·N, fit_intercept=True)`. (PyTorch's `MSELoss`, which also
averages over the T targets, corresponds to l2·T here; at the paper's w = 1e-8 the difference is
immaterial.) The same functions measure α-decodability (docs/method.md §13.3): 1 − R² = test MSE /
Var(α).
"""

from typing import Sequence

import numpy as np

SPIROGRAPH_TARGETS = ("m", "b", "sigma", "r_fore")


def fit_linear_regression(x, y, l2: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
  """Exact ridge fit of y ≈ x W + b with the mean-loss scaling in the module docstring.

  x: (N, D) features; y: (N, T) targets (or (N,)). Returns W (D, T) and b (T,) in float64
  (W (D,), b () for 1-D y). Solved by an SVD of the centred features, stable when x is rank
  deficient; with l2 = 0 it is the minimum-norm least-squares solution.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 2 or y.shape[0] != x.shape[0] or y.ndim not in (1, 2):
    raise ValueError(f"x {x.shape} and y {y.shape}: expected x (N, D) and y (N, T) or (N,) with "
                     "the same N.")
  if l2 < 0:
    raise ValueError(f"l2={l2} must be >= 0.")
  x_mean, y_mean = x.mean(0), y.mean(0)
  # Centring absorbs the unpenalised bias exactly.
  u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
  ridge = l2 * x.shape[0]
  cutoff = s.max(initial=0.0) * max(x.shape) * np.finfo(np.float64).eps
  safe = np.where(s > cutoff, s, 1.0)
  shrink = np.where(s > cutoff, safe / (safe ** 2 + ridge), 0.0)  # s / (s² + l2·N)
  w = vt.T @ (shrink[:, None] * (u.T @ (y - y_mean).reshape(x.shape[0], -1)))
  w = w.reshape((x.shape[1],) + y.shape[1:])
  return w, y_mean - x_mean @ w


def predict(params: tuple[np.ndarray, np.ndarray], x) -> np.ndarray:
  """params = (W (D, T), b (T,)); x: (N, D) -> (N, T) float64."""
  w, b = params
  return np.asarray(x, np.float64) @ w + b


def regression_metrics(pred, target, names: Sequence[str]) -> dict:
  """Per-target and mean MSE and R² (R² = 1 − MSE / Var(target); 0 for the mean predictor).

  pred, target: (N, T); names: T names. Returns {"mse/<name>", "r2/<name>", "mse_mean",
  "r2_mean"} as Python floats.
  """
  pred = np.asarray(pred, np.float64).reshape(len(pred), -1)
  target = np.asarray(target, np.float64).reshape(len(target), -1)
  if pred.shape != target.shape or len(names) != target.shape[1]:
    raise ValueError(f"pred {pred.shape}, target {target.shape} and {len(names)} names disagree.")
  mse = np.mean((pred - target) ** 2, axis=0)
  r2 = 1.0 - mse / np.var(target, axis=0)
  out = {}
  for name, m, r in zip(names, mse, r2):
    out[f"mse/{name}"] = float(m)
    out[f"r2/{name}"] = float(r)
  out["mse_mean"] = float(mse.mean())
  out["r2_mean"] = float(r2.mean())
  return out


def spirograph_probe(train_x, train_theta, test_x, test_theta,
                     names: Sequence[str] = SPIROGRAPH_TARGETS, l2: float = 1e-8) -> dict:
  """The Spirograph probe of docs/method.md §13.1: fit on (train_x, train_theta), report the test.

  θ is used raw (unstandardised), as in the paper; the headline number is "mse_mean". Returns the
  `regression_metrics` of the test set plus "train/mse_mean" and "train/r2_mean".
  """
  params = fit_linear_regression(train_x, train_theta, l2)
  out = regression_metrics(predict(params, test_x), test_theta, names)
  train = regression_metrics(predict(params, train_x), train_theta, names)
  out["train/mse_mean"] = train["mse_mean"]
  out["train/r2_mean"] = train["r2_mean"]
  return out
