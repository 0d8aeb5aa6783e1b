"""The geometry probe of a model (docs/method.md §14) and experiments/geometry_sweep.py: exact
Spirograph tangents against per-row reverse-mode Jacobians, the random-direction control, the
invariance ratio of augmentations that change nothing, and the sweep script at tiny size."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.data import spirograph
from mclr_jax.evaluate import geometry_probe
from mclr_jax.evaluate import model as model_lib
from tests.evaluate.workdirs import save_untrained
from tests.tiny import tiny_image_config, tiny_spirograph_config

pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


def _load_sweep():
  path = pathlib.Path(__file__).parents[2] / "experiments" / "geometry_sweep.py"
  spec = importlib.util.spec_from_file_location("geometry_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sweep = _load_sweep()


@pytest.fixture(scope="module")
def spiro_model(fast_cpu_compiles):
  return model_lib.random_model(tiny_spirograph_config())


@pytest.mark.slow  # full Jacobians of the renderer and encoder
def test_exact_spirograph_tangents_are_each_rows_own_jacobian(spiro_model):
  """The probe takes all rows' Jacobian columns from one batched forward-mode pass (rows are
  independent in eval mode); the reference differentiates each row alone, in reverse mode."""
  model = spiro_model
  inputs = model.inputs
  theta = jnp.asarray(spirograph.sample_params(jax.random.key(0), 5)[:, [0, 1, 3, 4]])
  alpha = inputs.sample_alpha(jax.random.key(1), (5,))
  h, u_aug, u_data = geometry_probe.spirograph_tangents(model, theta, alpha, chunk_size=2)
  assert u_aug.shape == (5, 32, 6) and u_data.shape == (5, 32, 4)
  encode = lambda t, a: model.networks.backbone.apply(
      model.variables("backbone"), inputs.render(t[None], a[None]), train=False)[0]
  jacobians = jax.jit(jax.jacrev(encode, argnums=(0, 1)))  # one row: (D, n_c), (D, n_a)
  for i in range(5):
    np.testing.assert_allclose(h[i], encode(theta[i], alpha[i]), rtol=1e-4, atol=1e-5)
    d_theta, d_alpha = jacobians(theta[i], alpha[i])
    np.testing.assert_allclose(u_aug[i], d_alpha, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(u_data[i], d_theta, rtol=1e-3, atol=1e-4)


@pytest.mark.slow  # image encoders and their Jacobians at 32 px
def test_image_probe_invariance_ratio_is_zero_for_identity_views():
  """Crops of the whole image without flip, jitter or grayscale change nothing: IR = 0 for h, z
  and z/|z| (an IR taken over inputs instead of views would be large)."""
  config = tiny_image_config("cifar10", "simclr")
  config.data.crop_scale, config.data.crop_ratio = (1.0, 1.0), (1.0, 1.0)
  config.data.flip_prob = config.data.jitter_prob = config.data.grayscale_prob = 0.0
  images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
  report = geometry_probe.probe(model_lib.random_model(config), images, jax.random.key(0),
                                num_views=3, tangent_dim=2, k_neighbours=5)
  for name in ("encoder", "projector", "projector_normalized"):
    assert report["invariance_ratio"][name] < 1e-4, report["invariance_ratio"]
  assert report["tangents"]["data"].startswith("local PCA")
  assert report["retention"]["random"] == pytest.approx(1.0, abs=0.2)


def test_with_strength_scales_the_augmentation():
  config = tiny_spirograph_config()
  zero = sweep.spirograph_ranges(sweep.with_strength(config, 0.0).data)
  for name in spirograph.nuisance_names():
    mid = 0.5 * sum(spirograph.DEFAULT_RANGES[name])
    assert zero[name][0] == zero[name][1] == pytest.approx(mid)
  for name in config.data.content:
    assert zero[name] == spirograph.DEFAULT_RANGES[name]
  one = sweep.spirograph_ranges(sweep.with_strength(config, 1.0).data)
  assert {k: pytest.approx(v) for k, v in one.items()} == spirograph.DEFAULT_RANGES
  assert "ranges" not in config.data or not config.data.ranges  # the input is not modified
  images = tiny_image_config("cifar10", "simclr")
  half = sweep.with_strength(images, 0.5)
  np.testing.assert_allclose(half.data.jitter_strength,
                             0.5 * np.asarray(images.data.jitter_strength))


def test_tabulate_rows():
  rows = [dict(run="a", encoder_effective_rank=120.5, projector_effective_rank=30.25),
          dict(run="b", encoder_effective_rank=118.0, projector_effective_rank=9.5,
               ir_encoder=0.125)]
  lines = sweep.tabulate(rows).splitlines()
  assert len(lines) == 2 + len(rows)  # header, rule, one line per row
  assert lines[0].split() == ["run", "encoder_effective_rank", "projector_effective_rank",
                              "ir_encoder"]
  assert len({len(line) for line in lines}) == 1  # aligned columns
  assert lines[2].split() == ["a", "120.5", "30.25", "-"]
  assert lines[3].split() == ["b", "118", "9.5", "0.125"]


@pytest.mark.slow  # trains two runs through the sweep script
def test_sweep_main_over_two_runs(tmp_path, capsys):
  """Two runs with the same parameters, probed at strength 0 (every nuisance range one point, so
  all views are the same image) and 1: invariance ratio 0 exactly at s = 0 and not at s = 1, and
  random directions retained ≈ 1 (E ρ = 1 by construction) in both."""
  config = tiny_spirograph_config()
  config.data.num_test = 48
  runs = [str(tmp_path / "run0"), str(tmp_path / "run1")]
  for run in runs:
    save_untrained(config, run)
  out = tmp_path / "geometry"
  assert sweep.main([f"--workdirs={','.join(runs)}", "--strengths=0,1", f"--output_dir={out}",
                     "--num_points=48", "--num_views=3"]) is None
  table = (out / "geometry_table.txt").read_text().splitlines()
  assert [line.split()[0] for line in table[2:]] == ["run0@0", "run1@1"]
  reports = [json.loads((out / f"geometry_{i}.json").read_text()) for i in range(2)]
  for report, strength in zip(reports, (0.0, 1.0)):
    assert report["strength"] == strength and report["step"] == 0
    assert set(report["retention"]) == {"aug", "data", "random"}
    assert report["retention"]["random"] == pytest.approx(1.0, abs=0.15)
    assert report["tangents"]["aug"].startswith("exact")
  for name in ("encoder", "projector", "projector_normalized"):
    assert reports[0]["invariance_ratio"][name] < 1e-6
    assert reports[1]["invariance_ratio"][name] > 0.01
  assert "run0@0" in capsys.readouterr().out
  with pytest.raises(model_lib.EvaluationError, match="one strength per workdir"):
    sweep.main([f"--workdirs={runs[0]}", "--strengths=0.5,1", f"--output_dir={out}"])
