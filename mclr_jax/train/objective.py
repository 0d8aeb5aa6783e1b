"""The training objectives as one pure function of (params, batch_stats, batch, rng, step).

SimCLR: NT-Xent(ĝ(z0), ĝ(z1)) with the projector run on concat[z0; z1] (docs/method.md §4).
ManifoldCLR (docs/method.md §1):
  z0, z1 = f(x0), f(x1)                            backbone run per view (own BN statistics, §15.8)
  (μ_q, b_q) = q(sg z0, sg z1); (μ_p, b_p) = p(sg z0, step)
  c ~ q (soft threshold + straight-through; best-of-J from `best_of_j_start`)
  ẑ1 = T(c) z0;  z0_aug = T(c0) z0 with c0 ~ p     z0 is not detached (the backbone learns from both)
  loss = contrastive(g(z0_aug), g(z1)) + w_TO·MSE(ẑ1, sg z1) + w_KL(t)·KL(q‖p) + w_L2·‖μ_q‖²
Either method can add λ·P, the gradient-penalty regulariser on view 0 (docs/method.md §11).
Variants and baselines (docs/method.md §17): ManifoldDirectCLR (`manifold.direct`: Ψ and the
coefficient networks on the first b feature dimensions), nearest-neighbour positives from a support
queue (`loss.nn_queue_size`, NNCLR), and SimCLR with a feature-space view (`loss.feature_aug`:
mixup or Gaussian noise in place of the transport).
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mclr_jax import losses
from mclr_jax import manifold
from mclr_jax.data.datasets import get_dataset_info
from mclr_jax.invariance import penalty as invariance_penalty
from mclr_jax.models import ProjectionHead
from mclr_jax.models import resnet
from mclr_jax.train import feature_views
from mclr_jax.train import support_queue
from mclr_jax.train import views as views_lib

# The aux entry of `compute_loss`'s metrics holding the (B, d) embeddings the step pushes into the
# support queue (docs/method.md §17.3); the step removes it before the metrics are accumulated.
ENQUEUE = "_enqueue"


@dataclasses.dataclass(frozen=True)
class Networks:
  """The module definitions (no parameters): backbone f, projector g, posterior q and prior p."""
  backbone: nn.Module
  projector: nn.Module
  coeff_encoder: Optional[nn.Module]
  prior: Optional[nn.Module]


ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def compute_dtype(config):
  """The backbone's and projector's compute dtype (parameters, optimiser state, losses, expm and
  KL are float32 regardless): bfloat16 if `config.half_precision` is True, float32 if False, and
  when it is None ("auto", the default) bfloat16 on GPU/TPU and float32 on CPU, where bf16 gains
  nothing. experiments/precision_curves.py is the evidence that bf16 trains as well."""
  half = config.half_precision
  if half is None:
    half = jax.default_backend() in ACCELERATOR_BACKENDS
  return jnp.bfloat16 if half else jnp.float32


def arch(config) -> str:
  """config.model.arch; configs written before the key existed meant ResNet-18."""
  return config.model.get("arch", "resnet18")


def feature_dim(config) -> int:
  """Backbone output width, as the architecture defines it: 8 × the ResNet base width for
  ResNet-18 (512 at full size), 32 × for ResNet-50 (2048)."""
  return resnet.backbone(arch(config), width=config.model.width).feature_dim


def transported_dim(config) -> int:
  """Width of the features Ψ acts on: all of them, or the first b for ManifoldDirectCLR (§2.5)."""
  if config.manifold.get("direct", False):
    return config.manifold.block_dim
  return feature_dim(config)


def embedding_dim(networks: "Networks", config) -> int:
  """Width d of the contrastive embedding, the projector's output (computes nothing)."""
  z = jax.ShapeDtypeStruct((2, feature_dim(config)), jnp.float32)
  out, _ = jax.eval_shape(
      lambda z: networks.projector.init_with_output(jax.random.key(0), z, train=False), z)
  return out.shape[-1]


def uses_queue(config) -> bool:
  """Nearest-neighbour positives from a support queue (docs/method.md §17.3)."""
  return config.loss.get("nn_queue_size", 0) > 0


def image_size(config) -> int:
  return 32 if config.data.name == "spirograph" else get_dataset_info(config.data.name).image_size


def build_networks(config: ml_collections.ConfigDict) -> Networks:
  dtype = compute_dtype(config)
  backbone = resnet.backbone(arch(config), width=config.model.width, stem=config.model.stem,
                             dtype=dtype)
  projector = ProjectionHead(kind=config.model.projection, hidden_dim=config.model.proj_hidden_dim,
                             output_dim=config.model.proj_output_dim, dtype=dtype)
  if config.method != "manifoldclr":
    return Networks(backbone, projector, None, None)
  m = config.manifold
  # ManifoldDirectCLR: the networks read only the transported dimensions (§2.5).
  input_dim = m.block_dim if m.get("direct", False) else None
  # The coefficient networks stay in float32: their outputs parameterise the expm (§2.2).
  encoder = manifold.CoefficientEncoder(num_operators=m.dictionary_size,
                                        hidden_dims=tuple(m.encoder_hidden),
                                        scale_prior=m.scale_prior, shift_prior=m.shift_prior,
                                        input_dim=input_dim)
  prior = manifold.CoefficientPrior(num_operators=m.dictionary_size, hidden_dims=tuple(m.prior_hidden),
                                    scale_prior=m.scale_prior, shift_prior=m.shift_prior,
                                    warmup_steps=m.prior_warmup_steps, input_dim=input_dim)
  return Networks(backbone, projector, encoder, prior)


def init_variables(networks: Networks, config, key) -> tuple[dict, dict]:
  """Initial (params, batch_stats) for a (2, S, S, 3) dummy input."""
  k_bb, k_proj, k_psi, k_enc, k_prior = jax.random.split(key, 5)
  size = image_size(config)
  x = jnp.zeros((2, size, size, 3), jnp.float32)
  bb = networks.backbone.init(k_bb, x, train=False)
  z = jnp.zeros((2, feature_dim(config)), jnp.float32)
  proj = networks.projector.init(k_proj, z, train=False)
  params = {"backbone": bb["params"], "projector": proj.get("params", {})}
  batch_stats = {"backbone": bb["batch_stats"], "projector": proj.get("batch_stats", {})}
  if networks.coeff_encoder is not None:
    m = config.manifold
    params["psi"] = manifold.init_operators(k_psi, m.dictionary_size, transported_dim(config),
                                            m.block_dim, kind=m.init, real_range=m.real_range,
                                            imag_range=m.imag_range)
    params["coeff_encoder"] = networks.coeff_encoder.init(k_enc, z, z)["params"]
    params["prior"] = networks.prior.init(k_prior, z, jnp.zeros((), jnp.int32))["params"]
  return params, batch_stats


def kl_weight(loss_config, step):
  """w_KL(t): constant, or w·(5e-3)^(1 − min(t, T)/T) with the "exponential" warm-up (§4.3)."""
  if loss_config.kl_warmup == "exponential":
    frac = jnp.minimum(step, loss_config.kl_warmup_steps) / loss_config.kl_warmup_steps
    return loss_config.kl_weight * jnp.power(5e-3, 1.0 - frac)
  return loss_config.kl_weight


class _BatchNormThread:
  """Applies BN-carrying modules in sequence, threading the running statistics through each call
  (the reference updates them once per forward: per view, and twice in the projector, §15.7)."""

  def __init__(self, networks: Networks, params, batch_stats):
    self.networks, self.params, self.stats = networks, params, dict(batch_stats)

  def __call__(self, name: str, x):
    module = getattr(self.networks, name)
    out, updates = module.apply({"params": self.params[name], "batch_stats": self.stats[name]},
                                x, train=True, mutable=["batch_stats"])
    self.stats[name] = updates.get("batch_stats", self.stats[name])
    return out


def compute_loss(params, batch_stats, batch, rng, step, *, networks: Networks, config,
                 queue: Optional[support_queue.SupportQueue] = None
                 ) -> tuple[jax.Array, tuple[dict, Any]]:
  """The total loss and (metrics, new batch_stats) for one global batch; pure and jittable.

  With nearest-neighbour positives (`loss.nn_queue_size` > 0) `queue` is the support queue the
  positives are looked up in, and metrics[ENQUEUE] holds the (B, d) embeddings to push next.
  """
  k_views, k_pen, k_alpha, k_q, k_p, k_j = jax.random.split(rng, 6)
  inv = config.invariance
  use_penalty = inv.weight > 0
  views = views_lib.make_views(k_views, batch, config, differentiable=use_penalty)
  run = _BatchNormThread(networks, params, batch_stats)
  metrics = {}

  if use_penalty:
    def features_fn(alpha):
      thread = _BatchNormThread(networks, params, batch_stats)
      return thread("backbone", views.view0_fn(alpha)), thread.stats["backbone"]
    alpha_prime = views.sample_alpha(k_alpha, (inv.num_alpha_samples,) + views.alpha0.shape[:1])
    pen, z0, stats0 = invariance_penalty.gradient_penalty(
        features_fn, views.alpha0, alpha_prime, k_pen, clip=inv.clip, normalize=inv.normalize)
    run.stats["backbone"] = stats0
    metrics["penalty"] = pen
  else:
    z0 = run("backbone", views.view0_fn(views.alpha0))
  z1 = run("backbone", views.x1)
  batch_size = z0.shape[0]

  if config.method == "simclr":
    z0_aug = None
    if config.loss.get("feature_aug", "none") != "none":  # §17.4; k_p: SimCLR has no prior
      z0_aug = feature_views.augment(config.loss.feature_aug, k_p, z0, z1,
                                     config.loss.feature_aug_strength)
    contrastive, embedding = _contrastive_term(run, z0, z1, z0_aug, config, queue)
    loss = contrastive
  else:
    m = config.manifold
    psi = params["psi"]
    # Ψ acts on the first `width` dims (all but for ManifoldDirectCLR, §2.5); the transport term
    # and best-of-J compare those dims only, and the augmentation passes the others through.
    width = transported_dim(config)
    z0_t, z1_t = z0[:, :width], z1[:, :width]
    mu_q, log_scale_q = networks.coeff_encoder.apply({"params": params["coeff_encoder"]}, z0, z1)
    mu_p, log_scale_p = networks.prior.apply({"params": params["prior"]}, z0, step)
    noise = jax.random.uniform(k_q, (max(m.num_samples, 1),) + mu_q.shape, minval=-0.5, maxval=0.5)
    u = noise[0]
    if m.num_samples > 1:
      best = lambda: manifold.select_best_of_j(psi, noise, mu_q, log_scale_q, z0_t, z1_t,
                                               m.threshold, l1_penalty=m.l1_penalty,
                                               method=m.best_of_j_method,
                                               compute_dtype=jnp.dtype(m.best_of_j_dtype))[0]
      u = jax.lax.cond(step >= m.best_of_j_start, best, lambda: noise[0])
    coeffs = manifold.laplace_sample(u, mu_q, log_scale_q, m.threshold)
    z1_hat = manifold.transport(psi, coeffs, z0_t, method=m.expm)
    coeffs_aug = manifold.sample_coefficients(k_p, mu_p, log_scale_p, m.threshold)
    z0_aug = manifold.transport(psi, coeffs_aug, z0, method=m.expm)

    contrastive, embedding = _contrastive_term(run, z0, z1, z0_aug, config, queue)
    lc = config.loss
    transport_term = losses.transport_mse(z1_hat, z1_t)
    kl_term = jnp.mean(manifold.laplace_kl(mu_q, log_scale_q, mu_p, log_scale_p))
    l2_term = losses.location_l2(mu_q)
    loss = (contrastive + lc.transport_weight * transport_term + kl_weight(lc, step) * kl_term
            + lc.location_l2_weight * l2_term)
    metrics.update(
        transport=transport_term, kl=kl_term, location_l2=l2_term,
        # Diagnostics: relative transport error, sparsity and size of the sampled coefficients.
        transport_rel_error=jnp.sum((z1_hat - z1_t) ** 2) / (jnp.sum(z1_t ** 2) + 1e-12),
        baseline_rel_error=jnp.sum((z0_t - z1_t) ** 2) / (jnp.sum(z1_t ** 2) + 1e-12),
        coeff_abs_mean=jnp.mean(jnp.abs(coeffs)),
        coeff_zero_fraction=jnp.mean(coeffs == 0),
        prior_scale_mean=jnp.mean(jnp.exp(log_scale_p)),
        psi_norm=jnp.sqrt(jnp.sum(psi ** 2)))

  if use_penalty:
    loss = loss + inv.weight * metrics["penalty"]
  metrics.update(loss=loss, contrastive=contrastive,
                 feature_norm=jnp.mean(jnp.linalg.norm(z0, axis=-1)))
  if queue is not None:
    metrics[ENQUEUE] = jax.lax.stop_gradient(losses.l2_normalize(embedding))
  return loss, (metrics, run.stats)


def _contrastive_term(run, z0, z1, z0_aug, config, queue):
  """The contrastive loss of the view-0 side against view 1 (§4.2), and the view-1 embedding.

  The view-0 side is z0_aug (ManifoldCLR's transport, a feature-space baseline's view) or z0.
  Without a projection head a feature view is compared on the raw features with z0 as the extra
  negatives; otherwise the projector runs on concat[z0; z1] (its z0 half is the negatives) and,
  separately, on z0_aug (§15.7).
  """
  batch_size = z0.shape[0]
  if z0_aug is not None and config.model.projection == "none":
    e0, e1, negatives = z0_aug, z1, z0
  else:
    p01 = run("projector", jnp.concatenate([z0, z1]))
    e1, negatives = p01[batch_size:], p01[:batch_size]
    e0 = negatives if z0_aug is None else run("projector", z0_aug)
  return _contrastive(e0, e1, negatives, config, queue), e1


def _contrastive(a, b, negatives, config, queue=None):
  """NT-Xent on L2-normalised embeddings, or the MSE InfoNCE with optional z0 negatives (§4.1).

  With a support queue (NNCLR, §17.3) each side's positive is its nearest neighbour in the queue
  (no gradient), symmetrised: ½[NT-Xent(NN(â), b̂) + NT-Xent(NN(b̂), â)].
  """
  if config.loss.contrastive == "mse":
    extra = negatives if config.loss.z0_negatives else None
    return losses.mse_info_nce(a, b, config.loss.temperature, negatives=extra)
  a, b = losses.l2_normalize(a), losses.l2_normalize(b)
  if queue is None:
    return losses.nt_xent(a, b, config.loss.temperature)
  nn_a, nn_b = support_queue.nearest(queue, a), support_queue.nearest(queue, b)
  return 0.5 * (losses.nt_xent(nn_a, b, config.loss.temperature)
                + losses.nt_xent(nn_b, a, config.loss.temperature))
