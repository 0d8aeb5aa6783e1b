"""Identity preservation (docs/method.md §17.1): strength 0 moves nothing and scores the clean
accuracy exactly; features that carry no label give chance accuracy under every augmentation;
the norm-matched isotropic perturbation moves each row exactly as far as the prior's transport;
and the suite runs on a ManifoldCLR model with its figure."""

import json
import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax import manifold
from mclr_jax.evaluate import __main__ as evaluate_cli
from mclr_jax.evaluate import identity
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import suite
from mclr_jax.train import objective
from tests.evaluate.workdirs import save_untrained
from tests.tiny import assert_png, coloured_images, tiny_image_config

pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


@pytest.fixture(scope="module")
def operator_model():
  """A ManifoldCLR EvalModel holding only what the protocol reads on given features (Ψ and the
  coefficient networks at initialisation, 32-d features): no backbone to initialise."""
  config = tiny_image_config("cifar10", "manifoldclr")
  networks = objective.build_networks(config)
  dim, m = objective.feature_dim(config), config.manifold
  z = jnp.zeros((1, dim))
  k_psi, k_enc, k_prior = jax.random.split(jax.random.key(0), 3)
  params = {"psi": manifold.init_operators(k_psi, m.dictionary_size, dim, m.block_dim, kind=m.init,
                                           real_range=m.real_range, imag_range=m.imag_range),
            "coeff_encoder": networks.coeff_encoder.init(k_enc, z, z)["params"],
            "prior": networks.prior.init(k_prior, z, 0)["params"]}
  return model_lib.EvalModel(config=config, step=0, params=params, batch_stats={},
                             networks=networks)


def test_isotropic_perturbation_matches_the_transported_distance_per_row():
  """‖z_iso − z‖ = ‖z_moved − z‖ row by row (float64 reference), and the directions are
  isotropic: their mean over many rows is ~0 and each coordinate has variance 1/D."""
  rng = np.random.default_rng(0)
  n, d = 4000, 8
  z = rng.standard_normal((n, d)).astype(np.float32)
  moved = z + rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0, 2, (n, 1))
  out = np.asarray(identity.isotropic_like(jax.random.key(0), jnp.asarray(z), jnp.asarray(moved)),
                   np.float64)
  want = np.linalg.norm(moved.astype(np.float64) - z, axis=1)
  np.testing.assert_allclose(np.linalg.norm(out - z, axis=1), want, rtol=1e-5, atol=1e-6)
  u = (out - z) / want[:, None]
  assert np.all(np.abs(u.mean(0)) < 5 / np.sqrt(d * n))
  np.testing.assert_allclose(u.var(0), 1 / d, rtol=0.15)


def test_augmentations_follow_their_coefficients_and_are_the_identity_at_strength_zero():
  """prior / hyperprior / posterior are T(s·c) z with c from p(c|z), Laplace(0, b_h) and
  q(c|z, z′) drawn with the documented keys; at s = 0 all four return z exactly."""
  num_ops, dim, n = 3, 8, 5
  psi = 0.3 * jax.random.normal(jax.random.key(1), (num_ops, 2, 4, 4))
  z = jax.random.normal(jax.random.key(2), (n, dim))
  z_pair = z + 0.1
  mu_p, log_p = jnp.full((n, num_ops), 0.2), jnp.full((n, num_ops), np.log(0.05))
  mu_q, log_q = jnp.full((n, num_ops), -0.1), jnp.full((n, num_ops), np.log(0.02))
  kwargs = dict(psi=psi, prior_fn=lambda x: (mu_p, log_p),
                posterior_fn=lambda x, xp: (mu_q, log_q), hyperprior_scale=0.01, threshold=0.0)
  key, s = jax.random.key(3), 1.5
  out = identity.augment(key, z, z_pair, s, **kwargs)
  k_prior, k_hyper, _, k_post = jax.random.split(key, 4)
  for name, k, mu, log in (("prior", k_prior, mu_p, log_p), ("posterior", k_post, mu_q, log_q),
                           ("hyperprior", k_hyper, 0 * mu_p, jnp.full_like(log_p, np.log(0.01)))):
    c = manifold.sample_coefficients(k, mu, log, 0.0)
    np.testing.assert_allclose(out[name], manifold.transport(psi, s * c, z), rtol=1e-5,
                               atol=1e-6, err_msg=name)
  still = identity.augment(key, z, z_pair, 0.0, **kwargs)
  for name in identity.AUGMENTATIONS:
    np.testing.assert_array_equal(np.asarray(still[name]), np.asarray(z), err_msg=name)


def test_pure_noise_features_give_chance_accuracy(operator_model):
  """Features drawn independently of the labels: the clean probe and every augmented score sit
  at chance, 1/C, within five binomial standard errors."""
  rng = np.random.default_rng(0)
  classes, n_train, n_test = 4, 400, 2000
  dim = objective.feature_dim(operator_model.config)
  noise = lambda n: np.abs(rng.standard_normal((n, dim))).astype(np.float32)
  train = (noise(n_train), rng.integers(0, classes, n_train))
  test = (noise(n_test), rng.integers(0, classes, n_test))
  out = identity.protocol(operator_model, train, test, noise(n_test), classes, jax.random.key(0),
                          strengths=(1.0,), repeats=1, probe_epochs=20)
  tol = 5 * np.sqrt(0.25 * 0.75 / n_test)
  assert abs(out["clean_top1"] - 0.25) < tol
  for name in identity.AUGMENTATIONS:
    assert abs(out[name]["s1"]["top1"] - 0.25) < tol, (name, out[name])


def test_strength_zero_scores_exactly_the_clean_accuracy(operator_model):
  """Separable features (class c is a cluster around 10·e_c): every augmentation at s = 0 moves
  nothing (distance 0) and scores exactly the clean accuracy, which is full."""
  rng = np.random.default_rng(1)
  dim = objective.feature_dim(operator_model.config)
  make = lambda y: np.abs(10 * np.eye(dim)[y] + 0.3 * rng.standard_normal((len(y), dim))
                          ).astype(np.float32)
  train_y, test_y = np.arange(120) % 3, np.arange(60) % 3
  test_x = make(test_y)
  out = identity.protocol(operator_model, (make(train_y), train_y), (test_x, test_y),
                          make(test_y), 3, jax.random.key(0), strengths=(0.0, 2.0), repeats=2,
                          probe_epochs=100)
  assert out["clean_top1"] == 1.0
  for name in identity.AUGMENTATIONS:
    assert out[name]["s0"] == {"top1": out["clean_top1"], "top1_std": 0.0, "distance": 0.0}, name
    assert out[name]["s2"]["distance"] > 0, name
  # The isotropic noise moves each row exactly as far as the prior's transport.
  assert out["isotropic"]["s2"]["distance"] == pytest.approx(out["prior"]["s2"]["distance"],
                                                             rel=1e-4)


@pytest.mark.slow  # a ResNet initialisation and feature extraction: ~30 s on 2 cores
def test_suite_scores_the_clean_accuracy_at_strength_zero_and_draws_its_figure(image_model,
                                                                              tmp_path):
  """Images whose class is their colour: the clean probe is perfect, every augmentation at
  s = 0 moves nothing (distance 0) and scores exactly the clean accuracy, with zero spread."""
  rng = np.random.default_rng(0)
  train_y, test_y = np.arange(60) % 3, np.arange(30) % 3
  data = (coloured_images(train_y, rng), train_y, coloured_images(test_y, rng), test_y)
  options = suite.SuiteOptions(linear_epochs=300, identity_strengths=(0.0, 1.0),
                               identity_repeats=2)
  out = suite.run_suite(image_model, ["identity"], jax.random.key(0), str(tmp_path), data=data,
                        options=options)["identity"]
  assert out["clean_top1"] == 1.0 and out["strengths"] == [0.0, 1.0] and out["repeats"] == 2
  for name in identity.AUGMENTATIONS:
    assert out[name]["s0"] == {"top1": out["clean_top1"], "top1_std": 0.0, "distance": 0.0}
    assert out[name]["s1"]["distance"] > 0 and 0.0 <= out[name]["s1"]["top1"] <= 1.0, name
  # The isotropic noise moves each row exactly as far as the prior's transport.
  assert out["isotropic"]["s1"]["distance"] == pytest.approx(out["prior"]["s1"]["distance"],
                                                             rel=1e-4)
  assert_png(out["figure"])


@pytest.mark.slow  # a checkpoint, mock TFDS images and the evaluation program: ~1 min
def test_cli_writes_the_identity_numbers_and_figure(tmp_path):
  """`python -m mclr_jax.evaluate --workdir=DIR --suite=identity` on a ManifoldCLR checkpoint:
  eval.json holds every augmentation at every default strength and the figure is a PNG."""
  tfds = pytest.importorskip("tensorflow_datasets", reason="the image splits come from TFDS")
  config = tiny_image_config("cifar10", "manifoldclr")
  config.eval.linear_epochs = 20
  workdir = str(tmp_path)
  save_untrained(config, workdir)
  flag_values = flags.FlagValues()
  evaluate_cli.define_flags(flag_values)
  argv = flag_values(["prog", f"--workdir={workdir}", "--suite=identity", "--identity_repeats=1"])
  with tfds.testing.mock_data(num_examples=40):
    assert evaluate_cli.main(argv, flag_values) is None
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)["results"]["identity"]
  for name in identity.AUGMENTATIONS:
    assert set(written[name]) == {identity.strength_label(s) for s in identity.DEFAULT_STRENGTHS}
    assert written[name]["s0"]["top1"] == written["clean_top1"]
  assert_png(written["figure"])
