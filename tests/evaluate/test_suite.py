"""The evaluation suite end to end: a tiny ManifoldCLR Spirograph run, restored and evaluated
(figures, probe, eval.json, the CLI), the transport augmentation against a hand-applied transport,
the operator spectra of the stable init, and one semi-supervised run on tiny injected images."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from configs import cifar10 as cifar10_config
from configs import spirograph as spirograph_config
from mclr_jax import manifold
from mclr_jax.evaluate import __main__ as evaluate_cli
from mclr_jax.evaluate import runner
from mclr_jax.evaluate import suite
from mclr_jax.train import checkpoint
from mclr_jax.train import loop

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# CPU compile time dominates these tests; unoptimised compiles check the same properties.
pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


def _tiny_manifold(config):
  config.method = "manifoldclr"
  config.model.width = 4
  config.model.proj_hidden_dim = 16
  config.model.proj_output_dim = 8
  config.manifold.block_dim = 8
  config.manifold.dictionary_size = 4
  config.manifold.encoder_hidden = (16, 16, 8)
  config.manifold.prior_hidden = (16, 16, 8)
  config.manifold.threshold = 0.0
  config.manifold.num_samples = 1
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fast_cpu_compiles):
  config = _tiny_manifold(spirograph_config.get_config("manifoldclr"))
  config.batch_size = 16
  config.num_train_steps = 2
  config.data.num_train = 64
  config.data.num_test = 32
  config.eval.feature_average_copies = 2
  config.eval_every_steps = 0
  path = str(tmp_path_factory.mktemp("spiro"))
  loop.train_and_evaluate(config, path)
  return path


@pytest.fixture(scope="module")
def model(workdir):
  return checkpoint.restore_model(workdir)


def _assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.std() > 0, f"{path} is blank"


def test_run_suite_writes_figures_and_probe(model, tmp_path):
  results = suite.run_suite(model, ["probe", "figures"], jax.random.key(0), str(tmp_path))
  assert set(results["figures"]) == {"feature_spectra", "operator_orbits", "coefficient_usage",
                                     "operator_spectra"}
  for path in results["figures"].values():
    _assert_png(path)
  # The regression probe of a 2-step model: finite MSE per content target.
  for name in model.config.data.content:
    assert np.isfinite(results["probe"][f"mse/{name}"])
  json.dumps(results)  # serialisable as it stands



def test_cli_writes_eval_json_and_metrics(workdir):
  evaluate_cli.main(["prog", f"--workdir={workdir}", "--suite=probe,knn,figures"])
  with open(f"{workdir}/eval.json") as f:
    written = json.load(f)
  assert written["step"] == 2
  assert {"probe", "knn", "figures"} <= set(written["results"])
  assert "skipped" in written["results"]["knn"]  # Spirograph has no class labels
  with open(f"{workdir}/metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  last = records[-1]
  assert last["kind"] == "eval" and last["step"] == 2
  assert last["probe/mse_mean"] == pytest.approx(written["results"]["probe"]["mse_mean"])
  for path in written["results"]["figures"].values():
    _assert_png(path)


def test_transport_augment_with_zero_psi_is_identity(model):
  params = dict(model.params, psi=jnp.zeros_like(model.psi))
  augment = suite.transport_augment_fn(dataclasses.replace(model, params=params))
  z = jax.random.normal(jax.random.key(1), (6, model.psi.shape[1] * model.psi.shape[2]))
  np.testing.assert_allclose(augment(jax.random.key(2), z), z, rtol=0, atol=1e-6)


def test_transport_augment_matches_hand_applied_transport(model):
  z = jax.random.normal(jax.random.key(1), (6, model.psi.shape[1] * model.psi.shape[2]))
  key = jax.random.key(3)
  mu, log_scale = model.prior(z)
  coeffs = manifold.sample_coefficients(key, mu, log_scale, 0.0)
  expected = manifold.transport(model.psi, coeffs, z, method="pade")
  got = suite.transport_augment_fn(model)(key, z)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  clipped = suite.transport_augment_fn(model, clip=1.0)(key, z)
  np.testing.assert_allclose(
      clipped, manifold.transport(model.psi, jnp.clip(coeffs, -1, 1), z, method="pade"),
      rtol=1e-4, atol=1e-5)


def test_operator_eigenvalues_of_stable_init_are_r_plus_minus_i_omega():
  psi = np.asarray(manifold.init_operators(jax.random.key(0), 4, 32, 8), np.float64)
  got = suite.operator_eigenvalues(psi)
  assert got.shape == (4, 32)
  # Each 2x2 rotation block [[r, -ω], [ω, r]] has eigenvalues r ± iω (docs/method.md §2 stable init).
  for m in range(4):
    r, omega = psi[m, :, 0::2, 0::2].diagonal(axis1=1, axis2=2), psi[m, :, 1::2, 0::2].diagonal(
        axis1=1, axis2=2)
    expected = np.concatenate([(r + 1j * omega).ravel(), (r - 1j * omega).ravel()])
    np.testing.assert_allclose(np.sort_complex(got[m]), np.sort_complex(expected), atol=1e-9)
  assert np.max(np.abs(got.real)) <= 1e-4 and np.max(np.abs(got.imag)) > 0.1


def test_operator_orbits_start_at_the_pca_projection_of_the_point(model):
  z = np.asarray(jax.random.normal(jax.random.key(4), (20, model.psi.shape[1] * model.psi.shape[2])))
  orbits = suite.operator_orbits(model, z, ts=np.linspace(0, 1, 5))
  assert orbits.shape == (model.psi.shape[0], 5, 2)
  mean, components = suite.pca_basis(z)
  for m in range(orbits.shape[0]):  # t = 0 is the identity for every operator
    np.testing.assert_allclose(orbits[m, 0], (z[0] - mean) @ components.T, atol=1e-5)


def test_semi_supervised_on_injected_images(tmp_path):
  config = _tiny_manifold(cifar10_config.get_config("proj"))
  model = runner.random_model(config)
  rng = np.random.default_rng(0)
  train_y = np.repeat(np.arange(2), 12)
  test_y = np.repeat(np.arange(2), 4)
  images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  data = (images(24), train_y, images(8), test_y)
  options = suite.SuiteOptions(semi_supervised_trials=2, semi_supervised_steps=20,
                               semi_supervised_hidden=16)
  results = suite.run_suite(model, ["semi_supervised"], jax.random.key(0), str(tmp_path),
                            data=data, options=options)["semi_supervised"]
  assert set(results) == {"transport", "mixup", "none", "supervised", "figure"}
  for method in ("transport", "mixup", "none", "supervised"):
    assert 0.0 <= results[method]["mean"] <= 1.0 and results[method]["std"] >= 0.0
  _assert_png(results["figure"])
