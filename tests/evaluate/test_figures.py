"""Figures write valid, non-blank PNGs on tiny inputs."""

import numpy as np
import pytest

from mclr_jax.evaluate import figures
from tests.tiny import assert_png

RNG = np.random.default_rng(0)
t = np.linspace(0, 2 * np.pi, 20)

CASES = {
    "plot_operator_orbits": (np.stack([np.stack([np.cos(a * t), np.sin(t)], -1) for a in (1, 2, 3)]),),
    "plot_coefficient_usage": (np.where(RNG.random((40, 5)) < 0.3, 0.0, RNG.laplace(size=(40, 5))),),
    "plot_operator_spectra": (RNG.standard_normal((3, 8)) + 1j * RNG.standard_normal((3, 8)),),
    "plot_feature_spectra": ({"encoder": np.linspace(5, 0.1, 16), "projector": 2.0 ** -np.arange(8)},),
    "plot_semi_supervised": ({"supervised": (0.7, 0.02), "transport": (0.8, 0.03)},),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_writes_nonblank_png(tmp_path, name):
  path = tmp_path / "sub" / f"{name}.png"
  written = getattr(figures, name)(str(path), *CASES[name])
  assert written == str(path)
  assert_png(written)
