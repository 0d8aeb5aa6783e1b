"""The variants and baselines of docs/method.md §17 as pure functions: their configs against the
authors' published values, the one-line config errors, the feature-space views (one coefficient
per sample, as described), the baselines' and ManifoldDirectCLR's losses against float64
references, and the support queue inside the train step."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from configs import base
from configs import cifar10, stl10, tinyimagenet
from configs import spirograph as spirograph_config
from mclr_jax import manifold
from mclr_jax.errors import Preempted
from mclr_jax.train import checkpoint
from mclr_jax.train import create
from mclr_jax.train import loop
from mclr_jax.train import feature_views
from mclr_jax.train import objective
from mclr_jax.train import step as step_lib
from mclr_jax.train import support_queue
from mclr_jax.train import views as views_lib
from mclr_jax.train.validate import ConfigError, validate_config
from tests.tiny import fake_committed_checkpoint, read_metrics, sigterm_at
from tests.tiny import spirograph_objective_inputs, tiny_spirograph_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BATCH = 8

# CPU compile time dominates these tests; unoptimised compiles check the same properties.
pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


# ------------------------------------------------------------------------------------------------
# Configs: the authors' values (their public configs; docs/method.md §5, §17)
# ------------------------------------------------------------------------------------------------

def test_nn_variant_is_the_authors_tinyimagenet_nn_config():
  """`transop_vi_nn_proj_tin`: M = 128, λ = 0, J = 1, w_KL 1e-5, w_TO 10, w_L2 off, Ψ weight
  decay 1e-4, prior warm-up 10000, MLP head with NT-Xent, a support queue of 65,536."""
  c = tinyimagenet.get_config("nn")
  assert (c.method, c.model.projection, c.loss.contrastive) == ("manifoldclr", "mlp", "cosine")
  assert (c.manifold.dictionary_size, c.manifold.threshold, c.manifold.num_samples) == (128, 0, 1)
  assert (c.loss.kl_weight, c.loss.transport_weight, c.loss.location_l2_weight) == (1e-5, 10, 0)
  assert (c.optim.psi_weight_decay, c.manifold.prior_warmup_steps) == (1e-4, 10000)
  assert c.loss.nn_queue_size == 65536 and c.optim.lr == 2e-3


@pytest.mark.parametrize("module", [cifar10, stl10, tinyimagenet])
def test_baseline_variants_are_the_authors_configs(module):
  nnclr = module.get_config("nnclr")  # `nnclr_tinyimagenet`: SimCLR + the 65,536-row queue
  assert (nnclr.method, nnclr.model.projection, nnclr.loss.contrastive) == ("simclr", "mlp",
                                                                           "cosine")
  assert nnclr.loss.nn_queue_size == 65536 and nnclr.loss.feature_aug == "none"
  for variant, kind in (("mixup", "mixup"), ("gaussaug", "gaussian")):
    c = module.get_config(variant)  # `simclr_*_mixup` / `simclr_*_gaussaug`
    assert (c.method, c.model.projection, c.loss.contrastive) == ("simclr", "none", "mse")
    assert c.loss.z0_negatives and c.loss.temperature == 0.5 and c.loss.nn_queue_size == 0
    assert (c.loss.feature_aug, c.loss.feature_aug_strength) == (kind, 1.0)
  direct = module.get_config("direct")  # `transop_vi_*` with the direct transport
  noproj = module.get_config("noproj")
  assert direct.manifold.direct and not noproj.manifold.direct
  assert (direct.model.projection, direct.manifold.block_dim) == ("direct", 64)
  for key in ("contrastive", "z0_negatives", "transport_weight", "kl_weight", "kl_warmup",
              "location_l2_weight"):
    assert direct.loss[key] == noproj.loss[key], key
  assert direct.manifold.dictionary_size == noproj.manifold.dictionary_size
  assert direct.manifold.prior_warmup_steps == 5000
  for variant in base.VARIANTS:
    validate_config(module.get_config(variant))


@pytest.mark.parametrize("change,key", [
    (dict(contrastive="mse"), "config.loss.nn_queue_size=65536"),
    (dict(nn_queue_size=100), "config.loss.nn_queue_size=100"),
    (dict(nn_queue_size=-1), "config.loss.nn_queue_size=-1"),
])
def test_nn_queue_config_errors_name_the_key(change, key):
  config = tinyimagenet.get_config("nn")
  config.loss.update(change)
  with pytest.raises(ConfigError) as info:
    validate_config(config)
  assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_feature_view_and_direct_config_errors_name_the_key():
  config = cifar10.get_config("proj")
  config.loss.feature_aug = "mixup"  # a SimCLR baseline on ManifoldCLR
  with pytest.raises(ConfigError, match=r"^config.loss.feature_aug='mixup'.*--config.method"):
    validate_config(config)
  config = cifar10.get_config("mixup")
  config.loss.feature_aug_strength = float("nan")
  with pytest.raises(ConfigError, match=r"^config.loss.feature_aug_strength=nan"):
    validate_config(config)
  config = cifar10.get_config("direct")
  config.manifold.block_dim = 32
  with pytest.raises(ConfigError, match=r"^config.manifold.block_dim=32 must equal the 64"):
    validate_config(config)
  config = cifar10.get_config("direct")
  config.model.width = 4  # 32-d features
  with pytest.raises(ConfigError, match=r"^config.model.projection='direct'.*model.width=4"):
    validate_config(config)


# ------------------------------------------------------------------------------------------------
# Feature-space views (docs/method.md §17.4)
# ------------------------------------------------------------------------------------------------

def test_mixup_moves_each_row_towards_its_positive_by_one_coefficient():
  """z0_aug − z0 = λ_i (z1 − z0) with one λ_i ∈ [0, s] per row (the authors' broadcast would mix
  every dimension by its own λ, §15.10), and the λ_i are ~ U(0, s)."""
  rng = np.random.default_rng(0)
  z0, z1 = rng.standard_normal((2, 4000, 16)).astype(np.float32)
  s = 0.6
  out = np.asarray(feature_views.mixup(jax.random.key(0), z0, z1, s), np.float64)
  d = (z1 - z0).astype(np.float64)
  lam = np.sum((out - z0) * d, axis=1) / np.sum(d * d, axis=1)  # least squares per row
  np.testing.assert_allclose(out, z0 + lam[:, None] * d, atol=1e-5)
  assert lam.min() >= -1e-6 and lam.max() <= s + 1e-6
  # U(0, s): mean s/2, variance s²/12 (Monte Carlo over 4000 rows, 5 standard errors).
  assert abs(lam.mean() - s / 2) < 5 * s / np.sqrt(12 * 4000)
  assert abs(lam.var() - s * s / 12) < 0.1 * s * s / 12


def test_gaussian_noise_is_per_sample_isotropic_with_variance_the_distance():
  """(z0_aug − z0) / sqrt(‖z0 − z1‖) is i.i.d. N(0, s²) over rows and dimensions: the rows do not
  share one noise vector (the authors' broadcast, §15.10), and no gradient reaches the scale."""
  rng = np.random.default_rng(1)
  z0, z1 = rng.standard_normal((2, 2000, 32)).astype(np.float32)
  s = 1.5
  out = feature_views.gaussian(jax.random.key(1), z0, z1, s)
  scale = np.sqrt(np.linalg.norm(z0.astype(np.float64) - z1, axis=1, keepdims=True))
  e = (np.asarray(out, np.float64) - z0) / scale
  assert abs(e.mean()) < 5 * s / np.sqrt(e.size)
  assert abs(e.var() / s ** 2 - 1) < 0.05
  corr = np.corrcoef(e[:2])[0, 1]  # two rows: independent draws
  assert abs(corr) < 0.8
  # The noise does not depend on z0 or z1 through the distance: d out / d z1 = 0, d out / d z0 = I.
  g0, g1 = jax.grad(lambda a, b: jnp.sum(feature_views.gaussian(jax.random.key(1), a, b, s)),
                    argnums=(0, 1))(jnp.asarray(z0[:4]), jnp.asarray(z1[:4]))
  np.testing.assert_array_equal(np.asarray(g1), 0.0)
  np.testing.assert_allclose(np.asarray(g0), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Losses against float64 references, through compute_loss
# ------------------------------------------------------------------------------------------------

def _mse_info_nce_float64(a, b, negatives, tau):
  """§4.1 MSE InfoNCE: s(u, v) = −mean_d (u − v)², rows [a; b], candidates [a; b; negatives],
  the self term kept in the denominator."""
  a, b, negatives = (np.asarray(x, np.float64) for x in (a, b, negatives))
  rows = np.concatenate([a, b])
  candidates = np.concatenate([a, b, negatives])
  sim = -np.mean((rows[:, None, :] - candidates[None, :, :]) ** 2, axis=-1) / tau
  positive = -np.mean((a - b) ** 2, axis=-1) / tau
  positive = np.concatenate([positive, positive])
  log_den = np.log(np.sum(np.exp(sim - sim.max(1, keepdims=True)), 1)) + sim.max(1)
  return np.mean(log_den - positive)


def _tiny(variant, width=4, block_dim=8):
  config = spirograph_config.get_config("manifoldclr")
  base.apply_variant(config, variant, dataset="spirograph")
  config.model.width = width
  config.model.proj_hidden_dim, config.model.proj_output_dim = 16, 8
  config.batch_size = BATCH
  m = config.manifold
  m.block_dim, m.dictionary_size = block_dim, 4
  m.encoder_hidden, m.prior_hidden = (16, 16, 8), (16, 16, 8)
  return config


def _features(networks, params, batch_stats, batch, rng, config):
  """z0, z1 as compute_loss makes them: its view key (the first of six) and per-view BN."""
  views = views_lib.make_views(jax.random.split(rng, 6)[0], batch, config)
  apply = lambda x: networks.backbone.apply(
      {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}, x, train=True,
      mutable=["batch_stats"])[0]
  return apply(views.view0_fn(views.alpha0)), apply(views.x1)


@pytest.mark.parametrize("variant", ["mixup", "gaussaug"])
def test_feature_view_baseline_loss_against_float64_reference(variant):
  """§17.4: MSE InfoNCE(z0_aug, z1) with z0 as extra negatives, on raw backbone features; z0_aug
  drawn with the objective's own key (the fifth of six)."""
  config = _tiny(variant)
  config.method = "simclr"
  config.loss.feature_aug_strength = 0.7
  networks, params, batch_stats, batch = spirograph_objective_inputs(config, BATCH)
  rng = jax.random.key(4)
  # Eager: at width 4 dispatching the ops is cheaper than compiling them.
  loss, (metrics, _) = objective.compute_loss(params, batch_stats, batch, rng, jnp.asarray(0),
                                              networks=networks, config=config)
  z0, z1 = _features(networks, params, batch_stats, batch, rng, config)
  z0_aug = feature_views.augment(config.loss.feature_aug, jax.random.split(rng, 6)[4], z0, z1, 0.7)
  want = _mse_info_nce_float64(z0_aug, z1, z0, config.loss.temperature)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5)
  np.testing.assert_allclose(float(metrics["contrastive"]), want, rtol=2e-5)


@pytest.fixture(scope="module")
def direct_setup(fast_cpu_compiles):
  config = _tiny("direct", width=16, block_dim=64)  # 128-d features: Ψ covers the first 64
  config.method = "manifoldclr"
  validate_config(config)
  return (config,) + spirograph_objective_inputs(config, BATCH)


def test_direct_variant_transports_and_reads_only_the_first_block(fast_cpu_compiles):
  """§2.5: Ψ is (M, 1, 64, 64); the posterior and prior read only z[:64]; the transport moves the
  first 64 dims and passes the rest through."""
  config = _tiny("direct", width=16, block_dim=64)
  config.method = "manifoldclr"
  networks = objective.build_networks(config)
  shapes = jax.eval_shape(lambda k: objective.init_variables(networks, config, k)[0],
                          jax.random.key(0))
  chex.assert_shape(shapes["psi"], (4, 1, 64, 64))
  # Only Ψ and the coefficient networks are needed below: no backbone to initialise.
  m, z64 = config.manifold, jnp.zeros((1, 64))
  params = {"psi": manifold.init_operators(jax.random.key(1), 4, 64, 64, kind=m.init,
                                           real_range=m.real_range, imag_range=m.imag_range),
            "prior": networks.prior.init(jax.random.key(2), jnp.zeros((1, 128)), 0)["params"],
            "coeff_encoder": networks.coeff_encoder.init(jax.random.key(3), z64, z64)["params"]}
  chex.assert_trees_all_equal_shapes(
      {k: shapes[k] for k in params}, params)  # the networks' inputs are 64 wide
  z = jax.random.normal(jax.random.key(0), (BATCH, 128))
  z_other = z.at[:, 64:].set(jax.random.normal(jax.random.key(1), (BATCH, 64)))
  prior = lambda x: networks.prior.apply({"params": params["prior"]}, x, 20000)
  post = lambda x: networks.coeff_encoder.apply({"params": params["coeff_encoder"]}, x, x)
  chex.assert_trees_all_equal(prior(z), prior(z_other))
  chex.assert_trees_all_equal(post(z), post(z_other))
  coeffs = 0.1 * jax.random.normal(jax.random.key(2), (BATCH, 4))
  moved = np.asarray(manifold.transport(params["psi"], coeffs, z), np.float64)
  psi, c, z64 = (np.asarray(x, np.float64) for x in (params["psi"], coeffs, z))
  want = np.stack([scipy.linalg.expm(np.einsum("m,mij->ij", c[i], psi[:, 0])) @ z64[i, :64]
                   for i in range(BATCH)])
  np.testing.assert_allclose(moved[:, :64], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(moved[:, 64:], z64[:, 64:])


@pytest.mark.slow  # a width-16 backbone, eager: ~20 s on 2 busy cores
def test_direct_variant_losses_against_float64_reference(direct_setup):
  """§17.2: contrastive = MSE InfoNCE(T(c0) z0[:64], z1[:64]) with z0[:64] as negatives; transport
  = mean over B × 64 of (T(c) z0[:64] − z1[:64])², the exponentials by scipy in float64; c and c0
  drawn with the objective's own keys."""
  config, networks, params, batch_stats, batch = direct_setup
  rng, step = jax.random.key(5), jnp.asarray(config.manifold.prior_warmup_steps)
  _, (metrics, _) = objective.compute_loss(params, batch_stats, batch, rng, step,
                                          networks=networks, config=config)
  z0, z1 = _features(networks, params, batch_stats, batch, rng, config)
  _, _, _, k_q, k_p, _ = jax.random.split(rng, 6)
  mu_q, log_q = networks.coeff_encoder.apply({"params": params["coeff_encoder"]}, z0, z1)
  mu_p, log_p = networks.prior.apply({"params": params["prior"]}, z0, step)
  u = jax.random.uniform(k_q, (1,) + mu_q.shape, minval=-0.5, maxval=0.5)[0]
  c = np.asarray(manifold.laplace_sample(u, mu_q, log_q, config.manifold.threshold), np.float64)
  c0 = np.asarray(manifold.sample_coefficients(k_p, mu_p, log_p, config.manifold.threshold),
                  np.float64)
  psi = np.asarray(params["psi"], np.float64)[:, 0]
  z0, z1 = np.asarray(z0, np.float64)[:, :64], np.asarray(z1, np.float64)[:, :64]
  move = lambda coeffs: np.stack([scipy.linalg.expm(np.einsum("m,mij->ij", coeffs[i], psi)) @ z0[i]
                                  for i in range(BATCH)])
  np.testing.assert_allclose(float(metrics["transport"]), np.mean((move(c) - z1) ** 2), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["contrastive"]),
                             _mse_info_nce_float64(move(c0), z1, z0, config.loss.temperature),
                             rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# The support queue in the train step (docs/method.md §17.3)
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow  # two train states and a train-step compile: ~25 s on 2 cores
def test_train_step_looks_up_then_pushes_and_keeps_the_queue_out_of_the_optimiser():
  """Each step's loss uses the queue as it was before the step, then pushes that step's
  normalised view-1 embeddings; the optimiser state is the one SimCLR has (the queue is state,
  not a parameter); a non-finite queue is refused like any other part of the state."""
  config = _tiny("nnclr")
  config.loss.nn_queue_size = 20  # 8 rows per step: wraps around on step 3
  networks, state, tx, _ = create.create_train_state(config, jax.random.key(0), 10)
  chex.assert_shape(state.queue.embeddings, (20, 8))
  plain = _tiny("simclr")
  _, plain_state, _, _ = create.create_train_state(plain, jax.random.key(0), 10)
  assert plain_state.queue is None
  assert (jax.tree.structure(state.opt_state) == jax.tree.structure(plain_state.opt_state))

  train_step = jax.jit(step_lib.make_train_step(networks, config, tx))
  loss_fn = jax.jit(lambda s, b, r: objective.compute_loss(
      s.params, s.batch_stats, b, r, s.step, networks=networks, config=config, queue=s.queue))
  rng = jax.random.key(9)
  for i in range(4):
    batch = spirograph_objective_inputs(config, BATCH, seed=10 + i)[3]
    loss, (metrics, _) = loss_fn(state, batch, jax.random.fold_in(rng, state.step))
    new, step_metrics = train_step(state, batch, rng)
    np.testing.assert_allclose(float(step_metrics["loss"]), float(loss), rtol=1e-6)
    assert objective.ENQUEUE not in step_metrics
    pushed = metrics[objective.ENQUEUE]
    np.testing.assert_allclose(np.linalg.norm(pushed, axis=1), 1.0, rtol=1e-6)
    chex.assert_trees_all_close(new.queue, support_queue.push(state.queue, pushed), atol=1e-7)
    state = new
  assert (int(state.queue.size), int(state.queue.head)) == (20, 12)

  # Row 0 is not overwritten by the next push (rows 12–19 are).
  poisoned = state.replace(queue=state.queue.replace(
      embeddings=state.queue.embeddings.at[0].set(jnp.nan)))
  kept, step_metrics = train_step(poisoned, batch, rng)
  assert float(step_metrics["nonfinite/queue"]) == 1.0
  assert int(kept.step) == int(poisoned.step)  # the update was refused


# ------------------------------------------------------------------------------------------------
# Exact resume with the queue, and every variant from the command line
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow  # two tiny training runs and a resumed one
@pytest.mark.parametrize("method", ["simclr", "manifoldclr"])
def test_sigterm_then_rerun_restores_the_queue_bit_for_bit(tmp_path, monkeypatch, fast_compiles,
                                                           method):
  """`nnclr` (SimCLR) and `nn` (ManifoldCLR) with a 24-row queue and batches of 16 (it wraps on
  step 2): stopped after step 3 of 6 and rerun, the final params, optimiser state and queue are
  bit-identical to an uninterrupted run's, and the queue is full and has moved."""
  stop, total = 3, 6
  config = tiny_spirograph_config(method, num_train_steps=total)
  config.loss.nn_queue_size = 24
  if method == "manifoldclr":
    config.loss.location_l2_weight = 0.0  # the `nn` variant's loss
  whole = loop.train_and_evaluate(config, str(tmp_path / "whole"))
  split_dir = str(tmp_path / "split")
  with monkeypatch.context() as patch:
    sigterm_at(patch, stop)
    with pytest.raises(Preempted):
      loop.train_and_evaluate(config, split_dir)
  manager = checkpoint.make_manager(split_dir, keep=3)
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), whole)
  halfway = checkpoint.restore_latest(manager, template, stop)
  assert (int(halfway.queue.size), int(halfway.queue.head)) == (24, (16 * stop) % 24)
  resumed = loop.train_and_evaluate(config, split_dir)
  assert int(resumed.step) == total
  chex.assert_trees_all_equal(jax.device_get((resumed.params, resumed.opt_state, resumed.queue)),
                              jax.device_get((whole.params, whole.opt_state, whole.queue)))
  assert (int(whole.queue.size), int(whole.queue.head)) == (24, (16 * total) % 24)
  assert not np.array_equal(np.asarray(whole.queue.embeddings),
                            np.asarray(halfway.queue.embeddings))


def test_resume_with_another_queue_size_is_refused_naming_the_key(tmp_path):
  """The queue's shape is in the checkpoint: a rerun with another size is a one-line error."""
  workdir = str(tmp_path)
  config = tiny_spirograph_config()
  config.loss.nn_queue_size = 24
  checkpoint.write_config(workdir, config)
  fake_committed_checkpoint(workdir)
  config.loss.nn_queue_size = 32
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"config.loss.nn_queue_size: 24 in the run, 32 given"):
    loop.train_and_evaluate(config, workdir)


# Runs `python -m mclr_jax.main` inside TFDS's mock data (random images of the real shapes).
_MOCK_CLI = ("import runpy\nimport tensorflow_datasets as tfds\n"
             "with tfds.testing.mock_data(num_examples=32):\n"
             "  runpy.run_module('mclr_jax.main', run_name='__main__')\n")
_TINY_FLAGS = ("--config.model.width=4", "--config.model.proj_hidden_dim=16",
               "--config.model.proj_output_dim=8", "--config.batch_size=16",
               "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
               "--config.eval_every_steps=0", "--config.data.prefetch=1",
               "--config.optim.warmup_epochs=0", "--config.eval.linear_epochs=2",
               "--config.manifold.dictionary_size=4", "--config.manifold.encoder_hidden=(16,16,8)",
               "--config.manifold.prior_hidden=(16,16,8)")
_VARIANT_FLAGS = {
    "direct": ("--config.model.width=16",),  # 128-d features: Ψ on the first 64
    "nn": ("--config.manifold.block_dim=8", "--config.loss.nn_queue_size=32"),
    "nnclr": ("--config.loss.nn_queue_size=32",),
    "mixup": (), "gaussaug": ()}


@pytest.mark.slow  # one process per variant and run: minutes
@pytest.mark.parametrize("variant", sorted(_VARIANT_FLAGS))
def test_each_variant_trains_and_resumes_from_the_command_line(tmp_path, variant):
  """`--config=configs/cifar10.py:<variant>` at tiny size: 2 steps, then the same command with
  4 steps resumes from the step-2 checkpoint; both exit 0 and the log has steps 1–4 once each."""
  tfds = pytest.importorskip("tensorflow_datasets", reason="the CLI reads (mock) TFDS splits")
  del tfds
  # CIFAR-10's file (TinyImageNet has no TFDS builder to mock); `:nn` is the same variant there.
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             TF_CPP_MIN_LOG_LEVEL="2")
  args = (f"--config=configs/cifar10.py:{variant}", f"--workdir={tmp_path}") + _TINY_FLAGS + (
      _VARIANT_FLAGS[variant])
  for steps in (2, 4):
    done = subprocess.run([sys.executable, "-c", _MOCK_CLI, *args,
                           f"--config.num_train_steps={steps}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4]
