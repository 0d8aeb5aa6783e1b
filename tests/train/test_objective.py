"""Gradient routing of the training objectives (docs/method.md §1, §11).

Each term's gradient is taken through `objective.compute_loss` itself by differentiating the term
it reports in its metrics, so the stop-gradients checked are the ones training uses. References:
NT-Xent written in float64 numpy, and `gradient_penalty` called by hand with the same keys.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import spirograph as spirograph_config
from mclr_jax import losses
from mclr_jax import manifold
from mclr_jax.invariance import penalty as invariance_penalty
from mclr_jax.train import objective
from mclr_jax.train import views as views_lib
from tests.tiny import nt_xent_float64, spirograph_objective_inputs

BATCH = 8


# CPU compile time dominates these tests; unoptimised compiles check the same properties.
pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


def _tiny_config(variant):
  config = spirograph_config.get_config(variant)
  config.model.width = 4  # 32-d features
  config.model.proj_hidden_dim = 16
  config.model.proj_output_dim = 8
  config.batch_size = BATCH
  m = config.manifold
  m.block_dim, m.dictionary_size = 8, 4
  m.encoder_hidden, m.prior_hidden = (16, 16, 8), (16, 16, 8)
  # Large enough that the KL term has a visible gradient in float32.
  config.loss.kl_weight = 1.0
  return config


def _term_gradients(config, names):
  """{term: d term / d params} for the terms compute_loss reports, in one jitted jacrev."""
  networks, params, batch_stats, batch = spirograph_objective_inputs(config, BATCH)
  rng = jax.random.key(7)
  # After the prior's warm-up (docs/method.md §3.2: before it p is the fixed Laplace prior and
  # has no gradient at all), so that a zero gradient into p means a stop-gradient.
  step = jnp.asarray(config.manifold.prior_warmup_steps)

  def terms(p):
    metrics = objective.compute_loss(p, batch_stats, batch, rng, step,
                                     networks=networks, config=config)[1][0]
    return {name: metrics[name] for name in names}

  return jax.jit(jax.jacrev(terms))(params)


def _is_zero(tree):
  return all(bool(jnp.all(leaf == 0)) for leaf in jax.tree.leaves(tree))


def _is_nonzero(tree):
  return any(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def manifold_grads():
  return _term_gradients(_tiny_config("manifoldclr"), ("transport", "kl", "contrastive"))


def test_transport_loss_detaches_target_but_not_source():
  """§1 steps 4 and 7: MSE(T(c) z0, sg z1) sends gradient to z0, Ψ and c but none to z1."""
  kz0, kz1, kpsi, kc = jax.random.split(jax.random.key(0), 4)
  z0 = jax.random.normal(kz0, (BATCH, 32))
  z1 = jax.random.normal(kz1, (BATCH, 32))
  psi = manifold.init_operators(kpsi, 4, 32, 8, kind="gaussian")
  coeffs = jax.random.normal(kc, (BATCH, 4))
  term = lambda z0, z1, psi: losses.transport_mse(manifold.transport(psi, coeffs, z0), z1)
  g_z0, g_z1, g_psi = jax.grad(term, argnums=(0, 1, 2))(z0, z1, psi)
  np.testing.assert_array_equal(np.asarray(g_z1), 0.0)
  assert np.all(np.isfinite(g_z0)) and np.abs(g_z0).max() > 0
  assert np.abs(g_psi).max() > 0
  # The z0 gradient is the one of the undetached MSE taken with z1 held constant (closed form:
  # ∂/∂z0 mean (T z0 − z1)² = Tᵀ · 2(T z0 − z1)/(B D)).
  _, vjp = jax.vjp(lambda z: manifold.transport(psi, coeffs, z), z0)
  residual = manifold.transport(psi, coeffs, z0) - z1
  (expected,) = vjp(2.0 * residual / residual.size)
  np.testing.assert_allclose(np.asarray(g_z0), np.asarray(expected), rtol=1e-4, atol=1e-7)


def test_transport_term_reaches_backbone_psi_and_posterior_but_not_prior(manifold_grads):
  g = manifold_grads["transport"]
  assert _is_nonzero(g["backbone"]), "§1 step 4: z0 is not detached in the transport term"
  assert _is_nonzero(g["psi"])
  assert _is_nonzero(g["coeff_encoder"]), "c ~ q is reparameterised (docs/method.md §1 step 3)"
  assert _is_zero(g["prior"])
  assert _is_zero(g["projector"])


def test_kl_term_trains_only_the_coefficient_networks(manifold_grads):
  """§1 step 2: q and p read sg z0 (and sg z1), so the KL never reaches the backbone or Ψ."""
  g = manifold_grads["kl"]
  assert _is_zero(g["backbone"])
  assert _is_zero(g["psi"])
  assert _is_zero(g["projector"])
  assert _is_nonzero(g["coeff_encoder"])
  assert _is_nonzero(g["prior"])


def test_contrastive_term_trains_prior_through_augmentation(manifold_grads):
  """§1 step 5: z0_aug = T(c0) z0 with c0 ~ p carries gradient to Ψ, the prior and the backbone;
  the posterior q does not enter the contrastive loss."""
  g = manifold_grads["contrastive"]
  assert _is_nonzero(g["backbone"]) and _is_nonzero(g["psi"]) and _is_nonzero(g["prior"])
  assert _is_nonzero(g["projector"])
  assert _is_zero(g["coeff_encoder"])


def test_simclr_loss_is_nt_xent_of_projected_views():
  """§4.2: SimCLR = NT-Xent(ĝ(f(x0)), ĝ(f(x1))), views rebuilt with the objective's own key."""
  config = _tiny_config("cpu")
  networks, params, batch_stats, batch = spirograph_objective_inputs(config, BATCH)
  rng = jax.random.key(3)
  loss, (metrics, _) = objective.compute_loss(params, batch_stats, batch, rng, jnp.asarray(0),
                                              networks=networks, config=config)
  k_views = jax.random.split(rng, 6)[0]
  views = views_lib.make_views(k_views, batch, config)

  def apply(name, x):
    variables = {"params": params[name], "batch_stats": batch_stats[name]}
    return getattr(networks, name).apply(variables, x, train=True, mutable=["batch_stats"])[0]

  z0 = apply("backbone", views.view0_fn(views.alpha0))
  z1 = apply("backbone", views.x1)
  p = np.asarray(apply("projector", jnp.concatenate([z0, z1])))
  expected = nt_xent_float64(p[:BATCH], p[BATCH:], config.loss.temperature)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["contrastive"]), expected, rtol=1e-5)


def test_penalty_loss_is_baseline_plus_weighted_hand_penalty():
  """docs/method.md §11: loss = SimCLR + λ·P, P = gradient_penalty(view 0) with the same keys."""
  config = _tiny_config("gp")
  config.invariance.num_alpha_samples = 4
  networks, params, batch_stats, batch = spirograph_objective_inputs(config, BATCH)
  rng, step = jax.random.key(5), jnp.asarray(0)

  def loss_fn(p, cfg):
    return objective.compute_loss(p, batch_stats, batch, rng, step, networks=networks, config=cfg)

  (loss, (metrics, _)), grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, config),
                                                           has_aux=True))(params)
  baseline = _tiny_config("cpu")
  base_loss = loss_fn(params, baseline)[0]

  k_views, k_pen, k_alpha = jax.random.split(rng, 6)[:3]
  views = views_lib.make_views(k_views, batch, config, differentiable=True)

  def features_fn(alpha):
    variables = {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}
    return networks.backbone.apply(variables, views.view0_fn(alpha), train=True,
                                   mutable=["batch_stats"])
  alpha_prime = views.sample_alpha(k_alpha, (4, BATCH))
  pen = invariance_penalty.gradient_penalty(features_fn, views.alpha0, alpha_prime, k_pen,
                                            clip=config.invariance.clip)[0]

  assert 0.0 <= float(pen) <= config.invariance.clip
  np.testing.assert_allclose(float(metrics["penalty"]), float(pen), rtol=1e-4)
  np.testing.assert_allclose(float(loss), float(base_loss) + config.invariance.weight * float(pen),
                             rtol=1e-5)
  chex.assert_tree_all_finite(grads)


def test_image_colour_jitter_penalty_is_a_hutchinson_estimate_of_its_definition():
  """docs/method.md §11.2–11.3 on images: α = the four colour-jitter factors of view 0. Against the
  definition built independently from the full Jacobian ∂r/∂α (`jax.jacfwd`, itself checked
  against central differences of the rendered view): the jitter acts per sample (J has no
  cross-sample blocks), and the single-probe penalty averaged over many Rademacher probes converges
  to mean_{l,i} ‖J_i (α′_{l,i} − α_i)‖² within its Monte-Carlo error."""
  config = _tiny_config("cpu")
  config.data.name = "cifar10"
  batch, draws, probes, step = 4, 8, 300, 1e-3
  images = jax.random.randint(jax.random.key(0), (batch, 32, 32, 3), 0, 256).astype(jnp.uint8)
  weights = jax.random.normal(jax.random.key(2), (3, 6))

  @jax.jit  # one compile instead of hundreds of eager dispatches
  def compute(images, weights):
    views = views_lib.make_views(jax.random.key(1), {"image": images}, config,
                                 differentiable=True)
    alpha_prime = views.sample_alpha(jax.random.key(3), (draws, batch))

    def features_fn(a, w=weights):
      # A tiny differentiable "encoder": per-channel means through a linear map and a tanh.
      return jnp.tanh(jnp.mean(views.view0_fn(a), axis=(1, 2)) @ w), None

    def representation(a):
      h = features_fn(a)[0]
      return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

    def penalty(w, key, clip):
      return invariance_penalty.gradient_penalty(lambda a: features_fn(a, w), views.alpha0,
                                                 alpha_prime, key, clip=clip)[0]

    direction = jax.random.normal(jax.random.key(4), views.alpha0.shape) * 0.1
    _, tangent = jax.jvp(views.view0_fn, (views.alpha0,), (direction,))
    central = (views.view0_fn(views.alpha0 + step * direction)
               - views.view0_fn(views.alpha0 - step * direction)) / (2 * step)
    single = jax.vmap(lambda k: penalty(weights, k, 1e9))(
        jax.random.split(jax.random.key(5), probes))
    value, grad = jax.value_and_grad(penalty)(weights, jax.random.key(6), 1000.0)
    return dict(alpha0=views.alpha0, x1=views.x1, alpha_prime=alpha_prime, tangent=tangent,
                central=central, jacobian=jax.jacfwd(representation)(views.alpha0),
                single=single, value=value, grad=grad)

  out = jax.tree.map(np.asarray, compute(images, weights))
  chex.assert_shape(out["alpha0"], (batch, 4))
  chex.assert_shape(out["x1"], (batch, 32, 32, 3))

  # The view's own derivative along a random direction against a central difference (float32,
  # step 1e-3: agreement to ~1e-2 of the change's scale).
  scale = np.abs(out["central"]).max()
  assert scale > 0
  np.testing.assert_allclose(out["tangent"], out["central"], atol=2e-2 * scale)

  jacobian = out["jacobian"].astype(np.float64)  # (B, d, B, p)
  blocks = np.stack([jacobian[i, :, i, :] for i in range(batch)])  # (B, d, p)
  off_diagonal = jacobian.copy()
  for i in range(batch):
    off_diagonal[i, :, i, :] = 0.0
  np.testing.assert_array_equal(off_diagonal, 0.0)
  displacement = (out["alpha_prime"] - out["alpha0"]).astype(np.float64)  # (L, B, p)
  definition = np.mean(np.sum(np.einsum("bdp,lbp->lbd", blocks, displacement) ** 2, axis=-1))
  assert definition > 0

  single = out["single"].astype(np.float64)
  standard_error = single.std() / np.sqrt(probes)
  assert abs(single.mean() - definition) < 5 * standard_error + 1e-4 * definition, (
      single.mean(), definition, standard_error)

  assert 0.0 < float(out["value"]) <= 1000.0
  chex.assert_tree_all_finite(out["grad"])
  assert np.abs(out["grad"]).max() > 0


def test_half_precision_auto_is_bf16_on_accelerators_only(monkeypatch):
  config = spirograph_config.get_config("cpu")
  assert config.half_precision is None  # the default is "auto"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert objective.compute_dtype(config) == jnp.float32
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert objective.compute_dtype(config) == jnp.bfloat16
  config.half_precision = False  # an explicit choice wins on any backend
  assert objective.compute_dtype(config) == jnp.float32
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  config.half_precision = True
  assert objective.compute_dtype(config) == jnp.bfloat16
  # bf16 reaches the backbone's convolutions, not its parameters (features come out float32).
  networks = objective.build_networks(config)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda k: networks.backbone.init(k, x, train=False), jax.random.key(0))
  jaxpr = str(jax.make_jaxpr(lambda v: networks.backbone.apply(v, x, train=False))(variables))
  convs = [line for line in jaxpr.splitlines() if "= conv_general_dilated[" in line]
  assert len(convs) >= 17 and all(":bf16[" in line.split("=")[0] for line in convs), convs[:3]
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
