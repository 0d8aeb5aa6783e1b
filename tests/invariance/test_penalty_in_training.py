"""The gradient penalty as training computes it (docs/method.md §11), against brute force.

A tiny float64 encoder (convolution → BatchNorm in training mode → tanh → dense) on rendered
Spirograph views (per-row max normalisation, docs/method.md §10.3) stands in for the ResNet: it has
every ingredient the penalty differentiates through. References are independent of the
implementation: Jacobians by central finite differences, the single-probe estimator's exact mean
and variance in closed form, the parameter gradient by finite differences, the views rendered from
the objective's keys with `spirograph.render`.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import spirograph as spirograph_config
from mclr_jax import losses
from mclr_jax.data import spirograph
from mclr_jax.invariance import penalty as gp
from mclr_jax.train import objective
from mclr_jax.train import step as step_lib
from mclr_jax.train.state import TrainState

B, L, D = 3, 5, 6  # batch, α′ draws per example, feature width
NUM_PROBES = 2000

pytestmark = pytest.mark.usefixtures("fast_cpu_compiles", "float64")


class TinyEncoder(nn.Module):
  """(B, 32, 32, 3) -> (B, D); BatchNorm couples the samples in training mode."""
  dtype = jnp.float64

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), strides=(4, 4), dtype=self.dtype, param_dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     param_dtype=self.dtype)(x)
    x = jnp.tanh(x).reshape(x.shape[0], -1)
    return nn.Dense(D, dtype=self.dtype, param_dtype=self.dtype)(x)


class TinyProjector(nn.Module):
  @nn.compact
  def __call__(self, h, train: bool):
    del train
    return nn.Dense(4, dtype=jnp.float64, param_dtype=jnp.float64)(h)


def _config(weight=0.5):
  config = spirograph_config.get_config("gp")
  config.invariance.weight = weight
  config.invariance.num_alpha_samples = L
  config.invariance.clip = 1e12  # compare the unclipped estimator
  return config


def _setup(seed=0):
  networks = objective.Networks(TinyEncoder(), TinyProjector(), None, None)
  x = jnp.zeros((B, 32, 32, 3))
  k_bb, k_proj, k_theta = jax.random.split(jax.random.key(seed), 3)
  bb = networks.backbone.init(k_bb, x, train=False)
  params = {"backbone": bb["params"],
            "projector": networks.projector.init(k_proj, jnp.zeros((B, D)), train=False)["params"]}
  batch_stats = {"backbone": bb["batch_stats"], "projector": {}}
  theta, _ = spirograph.split_params(spirograph.sample_params(k_theta, B).astype(jnp.float64))
  return networks, params, batch_stats, theta


def _uniform_nuisance(key, shape):
  """α ~ p(α) from the §10.1 table, built here rather than with sample_nuisance (whose range
  bounds are float32 constants, hence the rounding)."""
  names = spirograph.nuisance_names()
  lo = np.float32([spirograph.DEFAULT_RANGES[n][0] for n in names]).astype(np.float64)
  hi = np.float32([spirograph.DEFAULT_RANGES[n][1] for n in names]).astype(np.float64)
  return jax.random.uniform(key, tuple(shape) + (len(names),), jnp.float64, lo, hi)


def _features_fn(networks, params, batch_stats, theta):
  """α (B, 6) -> (backbone features of render(θ, α) in training mode, new BN statistics)."""
  def fn(alpha):
    images = spirograph.render(spirograph.merge_params(theta, alpha))
    variables = {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}
    return networks.backbone.apply(variables, images, train=True, mutable=["batch_stats"])
  return fn


def _fd_jacobian(fn, alpha, step=1e-6):
  """Full cross-sample Jacobian J[j, :, i, :] = ∂r_j/∂α_i (B, D, B, p) by central differences."""
  p = alpha.shape[-1]
  basis = jnp.eye(B * p).reshape(B * p, B, p)
  plus, minus = jax.jit(jax.vmap(lambda e: (fn(alpha + step * e), fn(alpha - step * e))))(basis)
  jac = (np.asarray(plus) - np.asarray(minus)) / (2 * step)  # (B·p, B, D)
  return jac.reshape(B, p, B, D).transpose(2, 3, 0, 1)


def _normalized(features_fn):
  return lambda a: (lambda h: h / jnp.linalg.norm(h, axis=-1, keepdims=True))(features_fn(a)[0])


def _probe_matrix(jac, displacement):
  """M with P̂ = εᵀ M ε for ε the flattened (B, D) probe (see `_estimator_moments`)."""
  w = np.einsum("jdip,lip->lijd", jac, displacement).reshape(L * B, B * D)
  return w.T @ w / (L * B)


def _estimator_moments(jac, displacement):
  """Exact mean and variance over ε of P̂ = (1/LB) Σ_{l,i} (g_iᵀ Δ_{l,i})², g_i = Σ_j J_jiᵀ ε_j.

  g_iᵀΔ = εᵀ w_{l,i} with w_{l,i}[j] = J_ji Δ_{l,i}, so P̂ = εᵀ M ε, M = (1/LB) Σ w wᵀ: for
  Rademacher ε the mean is tr M and the variance 2(‖M‖_F² − Σ_k M_kk²).
  """
  m = _probe_matrix(jac, displacement)
  return np.trace(m), 2 * (np.sum(m ** 2) - np.sum(np.diag(m) ** 2))


@pytest.mark.slow  # 2000 probes: one large compile and run
def test_penalty_mean_matches_brute_force_jacobian_through_batchnorm_and_renderer():
  """Over many probes, P̂ averages to mean_{l,i} Σ_j ‖J_ji Δ_{l,i}‖² from explicit Jacobians."""
  networks, params, batch_stats, theta = _setup()
  features_fn = _features_fn(networks, params, batch_stats, theta)
  alpha = _uniform_nuisance(jax.random.key(1), (B,))
  alpha_prime = _uniform_nuisance(jax.random.key(2), (L, B))
  jac = _fd_jacobian(_normalized(features_fn), alpha)
  displacement = np.asarray(alpha_prime - alpha)
  mean, variance = _estimator_moments(jac, displacement)

  keys = jax.random.split(jax.random.key(3), NUM_PROBES)
  samples = np.asarray(jax.jit(jax.vmap(lambda k: gp.gradient_penalty(
      features_fn, alpha, alpha_prime, k, clip=jnp.inf)[0]))(keys))
  standard_error = np.sqrt(variance / NUM_PROBES)
  # 5 standard errors of the closed-form variance: a false alarm has probability < 1e-6 (CLT).
  assert abs(samples.mean() - mean) < 5 * standard_error, (samples.mean(), mean, standard_error)
  # The spread is that of Rademacher probes: Gaussian ones would add 2 Σ_k M_kk² to the variance.
  sample_var = samples.var(ddof=1)
  var_se = np.sqrt(np.mean((samples - samples.mean()) ** 4) - sample_var ** 2) / np.sqrt(
      NUM_PROBES)
  assert abs(sample_var - variance) < 5 * var_se, (sample_var, variance, var_se)
  # Gaussian probes (the same mean) would have variance 2‖M‖_F²: the check tells them apart.
  m_diag_sq = 2 * np.sum(np.diag(_probe_matrix(jac, displacement)) ** 2)
  assert m_diag_sq > 10 * var_se


def test_penalty_for_a_fixed_probe_matches_brute_force_including_batchnorm_coupling(monkeypatch):
  """With ε fixed, P̂ = εᵀ M ε exactly; BatchNorm's cross-sample terms J_ji (j ≠ i) are in it."""
  networks, params, batch_stats, theta = _setup(seed=11)
  features_fn = _features_fn(networks, params, batch_stats, theta)
  alpha = _uniform_nuisance(jax.random.key(12), (B,))
  alpha_prime = _uniform_nuisance(jax.random.key(13), (L, B))
  jac = _fd_jacobian(_normalized(features_fn), alpha)
  displacement = np.asarray(alpha_prime - alpha)
  m = _probe_matrix(jac, displacement)
  diagonal_jac = np.zeros_like(jac)
  for i in range(B):
    diagonal_jac[i, :, i, :] = jac[i, :, i, :]
  m_per_sample = _probe_matrix(diagonal_jac, displacement)
  probes = np.where(np.random.default_rng(0).random((3, B, D)) < 0.5, -1.0, 1.0)

  def with_probe(eps):
    # The probe is the traced argument: one compile for all three.
    monkeypatch.setattr(gp, "sample_rademacher", lambda key, shape, dtype: eps.astype(dtype))
    return gp.gradient_penalty(features_fn, alpha, alpha_prime, jax.random.key(0), clip=jnp.inf)[0]

  penalties = np.asarray(jax.jit(jax.vmap(with_probe))(jnp.asarray(probes)))
  for eps, got in zip(probes, penalties):
    flat = eps.ravel()
    np.testing.assert_allclose(got, flat @ m @ flat, rtol=1e-6)  # finite differences: ~1e-9
    # Dropping the coupling (per-sample Jacobians only) would be caught.
    assert abs(flat @ m_per_sample @ flat - got) > 1e-4 * got


def test_penalty_parameter_gradient_matches_finite_differences():
  """∇_θ λP as training takes it (second order through BN in training mode and the renderer)."""
  config = _config(weight=0.5)
  networks, params, batch_stats, theta = _setup(seed=4)
  rng, step = jax.random.key(5), jnp.asarray(0)

  def weighted_penalty(p):
    metrics = objective.compute_loss(p, batch_stats, {"theta": theta}, rng, step,
                                     networks=networks, config=config)[1][0]
    return config.invariance.weight * metrics["penalty"]

  grad = jax.jit(jax.grad(weighted_penalty))(params)
  leaves, treedef = jax.tree.flatten(params)
  direction = jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape, x.dtype)
      for k, x in zip(jax.random.split(jax.random.key(6), len(leaves)), leaves)])
  shifted = jax.jit(lambda s: weighted_penalty(
      jax.tree.map(lambda w, d: w + s * d, params, direction)))
  eps = 1e-5
  fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
  analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
  assert abs(float(fd)) > 1e-6  # the penalty depends on the parameters along this direction
  np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6)
  # Only the backbone sees the penalty.
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grad["projector"]))


class _RecordingBackbone:
  """Passes `apply` through to the encoder and records every input batch it is called on."""

  def __init__(self, module):
    self.module, self.inputs = module, []

  def apply(self, variables, x, **kwargs):
    jax.debug.callback(lambda v: self.inputs.append(np.asarray(v)), x)
    return self.module.apply(variables, x, **kwargs)


def test_penalised_alpha_is_the_nuisance_of_the_contrastive_view():
  """P differentiates at the α₀ that rendered the view 0 which the contrastive loss uses."""
  config = _config(weight=0.5)
  networks, params, batch_stats, theta = _setup(seed=7)
  spy = _RecordingBackbone(networks.backbone)
  spied = objective.Networks(spy, networks.projector, None, None)
  rng, step = jax.random.key(8), jnp.asarray(0)
  loss, (metrics, _) = objective.compute_loss(params, batch_stats, {"theta": theta}, rng, step,
                                              networks=spied, config=config)
  jax.effects_barrier()

  # The objective's keys (objective.compute_loss, views.make_views): view k of the batch renders
  # α_k drawn from the k-th half of the views key; α′ and the probe have keys of their own.
  k_views, k_pen, k_alpha = jax.random.split(rng, 6)[:3]
  k0, k1 = jax.random.split(k_views)
  alpha0, alpha1 = _uniform_nuisance(k0, (B,)), _uniform_nuisance(k1, (B,))
  x0 = spirograph.render(spirograph.merge_params(theta, alpha0))
  x1 = spirograph.render(spirograph.merge_params(theta, alpha1))
  assert len(spy.inputs) == 2
  np.testing.assert_array_equal(spy.inputs[0], x0)
  np.testing.assert_array_equal(spy.inputs[1], x1)

  # The contrastive loss is NT-Xent of the projected features of exactly these two views.
  run = lambda name, x, stats: getattr(networks, name).apply(
      {"params": params[name], "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
  z0, stats0 = run("backbone", x0, batch_stats["backbone"])
  z1, _ = run("backbone", x1, stats0["batch_stats"])
  proj = run("projector", jnp.concatenate([z0, z1]), {})[0]
  expected = losses.nt_xent(losses.l2_normalize(proj[:B]), losses.l2_normalize(proj[B:]),
                            config.loss.temperature)
  np.testing.assert_allclose(float(metrics["contrastive"]), float(expected), rtol=1e-6)

  # The penalty is the estimator at α₀, not at the other view's α₁.
  features_fn = _features_fn(networks, params, batch_stats, theta)
  alpha_prime = _uniform_nuisance(k_alpha, (L, B))
  at = lambda a: float(gp.gradient_penalty(features_fn, a, alpha_prime, k_pen, clip=jnp.inf)[0])
  np.testing.assert_allclose(float(metrics["penalty"]), at(alpha0), rtol=1e-10)
  assert abs(at(alpha1) - at(alpha0)) > 1e-3 * at(alpha0)
  np.testing.assert_allclose(float(loss), float(expected) + 0.5 * at(alpha0), rtol=1e-6)


def _step_outputs(config, networks, params, batch_stats, theta, shapes_only=False):
  tx = optax.sgd(1.0, momentum=0.9)
  state = TrainState(step=jnp.asarray(0), params=params, batch_stats=batch_stats,
                     opt_state=tx.init(params))
  fn = step_lib.make_train_step(networks, config, tx)
  args = (state, {"theta": theta}, jax.random.key(9))
  return jax.eval_shape(fn, *args) if shapes_only else jax.jit(fn)(*args)


@pytest.mark.slow  # two train steps and two second-order gradients compiled
def test_penalty_gradient_share_metric():
  """docs/method.md §11.6: share = ‖∇λP‖ / (‖∇(loss − λP)‖ + ‖∇λP‖), and logging it leaves the
  update unchanged."""
  networks, params, batch_stats, theta = _setup(seed=10)
  config = _config(weight=0.5)
  plain_state, plain = _step_outputs(config, networks, params, batch_stats, theta)
  assert "penalty_grad_share" not in plain
  config.invariance.log_grad_share = True
  state, metrics = _step_outputs(config, networks, params, batch_stats, theta)
  chex.assert_trees_all_close(state.params, plain_state.params, rtol=1e-5, atol=1e-6)
  # NT-Xent runs in float32, hence the tolerance.

  # Reference: the two gradients taken separately through compute_loss, with the step's key.
  rng, step = jax.random.fold_in(jax.random.key(9), 0), jnp.asarray(0)

  def terms(p):
    loss, (m, _) = objective.compute_loss(p, batch_stats, {"theta": theta}, rng, step,
                                          networks=networks, config=config)
    return loss, config.invariance.weight * m["penalty"]

  g_loss, g_pen = jax.jit(lambda p: (jax.grad(lambda q: terms(q)[0])(p),
                                      jax.grad(lambda q: terms(q)[1])(p)))(params)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  g_rest = flat(g_loss) - flat(g_pen)
  g_pen = flat(g_pen)
  norm_rest, norm_pen = np.linalg.norm(g_rest), np.linalg.norm(g_pen)
  np.testing.assert_allclose(float(metrics["penalty_grad_share"]),
                             norm_pen / (norm_rest + norm_pen), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["penalty_grad_cosine"]),
                             g_rest @ g_pen / (norm_rest * norm_pen), rtol=1e-5, atol=1e-7)
  assert 0.0 < float(metrics["penalty_grad_share"]) < 1.0
  # Without the penalty there is nothing to share (shapes only: nothing is compiled).
  config.invariance.weight = 0.0
  assert "penalty_grad_share" not in _step_outputs(config, networks, params, batch_stats, theta,
                                                   shapes_only=True)[1]
