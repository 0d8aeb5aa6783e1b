"""Figures for the evaluation reports (matplotlib, Agg backend; each function returns its path).

They take arrays the caller has already computed (operator orbits, coefficients, eigenvalues,
spectra, semi-supervised results), so they never touch models or checkpoints.
"""

import os

import matplotlib

matplotlib.use("Agg")  # headless: the figures are written on training hosts without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return str(path)


def plot_operator_orbits(path, orbits) -> str:
  """Orbits of features under each operator: orbits (M, T, 2), the 2-D PCA projection of
  exp(t Ψ_m) z over T values of t. One line per operator, with its start marked."""
  orbits = np.asarray(orbits)
  if orbits.ndim != 3 or orbits.shape[-1] != 2:
    raise ValueError(f"orbits must be (M, T, 2), got {orbits.shape}.")
  fig, ax = plt.subplots(figsize=(5, 5))
  colours = plt.cm.viridis(np.linspace(0, 1, len(orbits)))
  for m, (orbit, colour) in enumerate(zip(orbits, colours)):
    ax.plot(orbit[:, 0], orbit[:, 1], color=colour, lw=1.5, label=f"Ψ{m}")
    ax.scatter(orbit[:1, 0], orbit[:1, 1], color=colour, s=15)
  ax.set_xlabel("PC 1")
  ax.set_ylabel("PC 2")
  ax.set_title("Operator orbits exp(tΨ_m) z")
  if len(orbits) <= 16:
    ax.legend(fontsize=6, ncol=2)
  return _save(fig, path)


def plot_coefficient_usage(path, coeffs) -> str:
  """Coefficient statistics: coeffs (N, M). Left: histogram of |c|; right: per operator, the
  fraction of samples where it is used (c ≠ 0) — the complement is the sparsity."""
  coeffs = np.asarray(coeffs)
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
  left.hist(np.abs(coeffs).ravel(), bins=50, color="tab:blue")
  left.set_xlabel("|c|")
  left.set_ylabel("count")
  left.set_title(f"zeros: {np.mean(coeffs == 0):.1%}")
  right.bar(np.arange(coeffs.shape[1]), np.mean(coeffs != 0, axis=0), color="tab:orange")
  right.set_xlabel("operator m")
  right.set_ylabel("fraction used (c ≠ 0)")
  right.set_ylim(0, 1)
  return _save(fig, path)


def plot_operator_spectra(path, eigvals) -> str:
  """Eigenvalues of each operator in the complex plane: eigvals (M, K·b) complex."""
  eigvals = np.asarray(eigvals)
  fig, ax = plt.subplots(figsize=(5, 4))
  colours = plt.cm.viridis(np.linspace(0, 1, len(eigvals)))
  for ev, colour in zip(eigvals, colours):
    ax.scatter(ev.real, ev.imag, s=6, color=colour)
  ax.axvline(0, color="k", lw=0.5)
  ax.set_xlabel("Re λ")
  ax.set_ylabel("Im λ")
  ax.set_title("Operator eigenvalues")
  return _save(fig, path)


def plot_feature_spectra(path, spectra: dict) -> str:
  """Normalised singular-value spectra (log scale): spectra maps name → (n,) singular values,
  e.g. {"encoder": s_h, "projector": s_z}."""
  fig, ax = plt.subplots(figsize=(5, 4))
  for name, s in spectra.items():
    s = np.sort(np.asarray(s, np.float64))[::-1]
    ax.semilogy(np.arange(1, len(s) + 1), s / s[0], label=name)
  ax.set_xlabel("index k")
  ax.set_ylabel("σ_k / σ_1")
  ax.legend()
  return _save(fig, path)


def plot_semi_supervised(path, results: dict) -> str:
  """Bar chart of semi-supervised accuracy: results maps method → (mean, std)."""
  names = list(results)
  means = np.array([results[n][0] for n in names], np.float64)
  stds = np.array([results[n][1] for n in names], np.float64)
  fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
  ax.bar(np.arange(len(names)), means, yerr=stds, capsize=4, color="tab:green")
  ax.set_xticks(np.arange(len(names)), names, rotation=20)
  ax.set_ylabel("test accuracy")
  return _save(fig, path)


def plot_identity_preservation(path, curves: dict, clean: float, view=None) -> str:
  """Linear-probe accuracy against the mean relative distance moved (docs/method.md §17.1):
  curves maps augmentation → (distances (S,), accuracies (S,), stds (S,)) over the strength
  sweep; `clean` is the clean accuracy (a dashed line), `view` an optional (distance, accuracy)
  point for the features of another view."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, (distance, accuracy, std) in curves.items():
    ax.errorbar(distance, accuracy, yerr=std, marker="o", ms=4, capsize=3, label=name)
  ax.axhline(clean, color="k", ls="--", lw=0.8, label="clean")
  if view is not None:
    ax.scatter([view[0]], [view[1]], marker="*", s=120, color="k", zorder=3, label="other view")
  ax.set_xlabel("mean ‖z_aug − z‖ / ‖z‖")
  ax.set_ylabel("linear-probe accuracy")
  ax.set_title("Identity preservation")
  ax.legend(fontsize=8)
  return _save(fig, path)
