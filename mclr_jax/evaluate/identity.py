"""Identity preservation of feature-space augmentations (docs/method.md §17.1).

ManifoldCLR claims that its learned prior p(c | z) samples transformations that keep a point's
class. The test: fit the linear probe (docs/method.md §8.1) on clean train features, then score
it on test features z moved by each of

  prior       T(s·c) z,  c ~ p(c | z), the learned prior, fully warmed up (§3.2);
  hyperprior  T(s·c) z,  c ~ Laplace(0, b_h), the fixed hyper-prior the prior starts from (§3.2:
              the prior at step 0, b_h = config.manifold.scale_prior);
  isotropic   z + ‖T(s·c) z − z‖ · u, u uniform on the unit sphere: a random direction moved as
              far as the prior's transport moved that row;
  posterior   T(s·c) z,  c ~ q(c | z, z′), z′ the features of one random training view of the
              same input: the transport the posterior infers towards another view,

each coefficient soft-thresholded with the trained λ (§3.4) and multiplied by the strength s.
At s = 0 every augmentation is the identity, so every accuracy is the clean one; a sweep over s
gives accuracy against the mean relative distance moved, ‖z_aug − z‖ / ‖z‖, one curve per
augmentation. An augmentation that preserves identity keeps the accuracy while moving as far as
one that does not. Each (s, augmentation) is averaged over `repeats` draws (the authors' notebook:
20); the reference point is the probe's accuracy on the view features z′ themselves.

Every draw runs in one compiled function per chunk shape whose networks are static and whose
parameters and strength are arguments (`_score_chunk`), so the sweep compiles once.
"""

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax import manifold
from mclr_jax.evaluate import figures
from mclr_jax.evaluate import linear_probe
from mclr_jax.evaluate.model import EvaluationError, map_chunks, warmed_prior
from mclr_jax.evaluate.operators import require_operators
from mclr_jax.models.linear import Linear

AUGMENTATIONS = ("prior", "hyperprior", "isotropic", "posterior")
DEFAULT_STRENGTHS = (0.0, 0.5, 1.0, 2.0, 4.0)
DEFAULT_REPEATS = 20


def relative_distance(z_aug, z):
  """‖z_aug − z‖ / ‖z‖ per row: (..., D) -> (...,); 0 where z = 0."""
  norm = jnp.linalg.norm(z, axis=-1)
  return jnp.linalg.norm(z_aug - z, axis=-1) / jnp.where(norm > 0, norm, 1.0)


def isotropic_like(key, z, z_moved):
  """z + ‖z_moved − z‖ · u, u uniform on the unit sphere per row: (n, D) -> (n, D)."""
  u = jax.random.normal(key, z.shape, z.dtype)
  u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
  return z + jnp.linalg.norm(z_moved - z, axis=-1, keepdims=True) * u


def augment(key, z, z_pair, strength, *, psi, prior_fn, posterior_fn, hyperprior_scale: float,
            threshold: float, expm: str = "taylor") -> dict:
  """The four augmentations of the module docstring at strength s: {name: (n, D)}.

  Args:
    key: PRNG key.
    z: (n, D) clean features; z_pair: (n, D) features of another view (posterior input).
    strength: s ≥ 0 (a traced scalar is fine).
    psi: (M, K, b, b); prior_fn: z -> (μ_p, log b_p); posterior_fn: (z, z′) -> (μ_q, log b_q).
    hyperprior_scale: b_h; threshold: λ; expm: the exponential's method.
  """
  k_prior, k_hyper, k_iso, k_post = jax.random.split(key, 4)
  move = lambda c: manifold.transport(psi, strength * c, z, method=expm)
  mu_p, log_p = prior_fn(z)
  prior = move(manifold.sample_coefficients(k_prior, mu_p, log_p, threshold))
  hyper = move(manifold.sample_coefficients(k_hyper, jnp.zeros_like(mu_p),
                                            jnp.full_like(log_p, math.log(hyperprior_scale)),
                                            threshold))
  mu_q, log_q = posterior_fn(z, z_pair)
  posterior = move(manifold.sample_coefficients(k_post, mu_q, log_q, threshold))
  return {"prior": prior, "hyperprior": hyper, "isotropic": isotropic_like(k_iso, z, prior),
          "posterior": posterior}


@functools.partial(jax.jit, static_argnames=("prior", "encoder", "probe", "hyperprior_scale",
                                             "threshold", "expm"))
def _score_chunk(params, z, z_pair, labels, key, strength, *, prior, encoder, probe,
                 hyperprior_scale, threshold, expm):
  """{name: (correct (n,) bool, relative distance (n,))} for one chunk of test rows."""
  prior_fn = warmed_prior(prior, params["prior"])
  posterior_fn = lambda x, xp: encoder.apply({"params": params["coeff_encoder"]}, x, xp)
  moved = augment(key, z, z_pair, strength, psi=params["psi"], prior_fn=prior_fn,
                  posterior_fn=posterior_fn, hyperprior_scale=hyperprior_scale,
                  threshold=threshold, expm=expm)
  correct = lambda x: jnp.argmax(probe.apply(params["probe"], x), axis=-1) == labels
  return {name: (correct(x), relative_distance(x, z)) for name, x in moved.items()}


def strength_label(strength: float) -> str:
  return f"s{strength:g}"


def protocol(model, train, test, test_pair, num_classes: int, key, *,
             strengths: Sequence[float] = DEFAULT_STRENGTHS, repeats: int = DEFAULT_REPEATS,
             probe_epochs: int = 500, figure_path: Optional[str] = None) -> dict:
  """Runs the identity-preservation evaluation of a ManifoldCLR `EvalModel`.

  Args:
    model: the EvalModel (needs operators).
    train: (clean train features (N, D), labels (N,)); test: (clean test features (T, D),
      labels (T,)); test_pair: (T, D) features of one random training view of each test input.
    num_classes: C.
    key: PRNG key (probe fit and augmentation draws).
    strengths: the multipliers s of the sweep; repeats: draws per strength.
    probe_epochs: linear-probe epochs (docs/method.md §8.1: 500).
    figure_path: where to draw accuracy against distance moved (None: no figure).

  Returns:
    {"clean_top1", "view_top1", "view_distance", "repeats", "strengths",
     name: {"s<strength>": {"top1", "top1_std", "distance"}} for each augmentation,
     ["figure"]}: accuracies in [0, 1], std over the repeats, distance the mean ‖z_aug − z‖/‖z‖.
  """
  require_operators(model)
  if repeats < 1:
    raise EvaluationError(f"The identity suite needs at least one draw per strength, got "
                          f"repeats={repeats}: pass --identity_repeats=1 or more.")
  (train_x, train_y), (test_x, test_y) = train, test
  probe_key, draw_key = jax.random.split(key)
  fit = linear_probe.fit_linear_probe(probe_key, train_x, train_y, test_x, test_y, num_classes,
                                      num_epochs=probe_epochs,
                                      batch_size=min(1000, len(train_y)))
  probe = Linear(num_classes)
  params = {"psi": jnp.asarray(model.psi), "prior": model.params["prior"],
            "coeff_encoder": model.params["coeff_encoder"], "probe": fit["params"]}
  test_y = np.asarray(test_y, np.int32)
  view_logits = probe.apply(fit["params"], jnp.asarray(test_pair, jnp.float32))
  results = {
      "clean_top1": fit["top1"],
      "view_top1": float(jnp.mean(jnp.argmax(view_logits, axis=-1) == test_y)),
      "view_distance": float(jnp.mean(relative_distance(jnp.asarray(test_pair),
                                                        jnp.asarray(test_x)))),
      "repeats": int(repeats), "strengths": [float(s) for s in strengths]}
  static = dict(prior=model.networks.prior, encoder=model.networks.coeff_encoder, probe=probe,
                hyperprior_scale=float(model.config.manifold.scale_prior),
                threshold=float(model.config.manifold.threshold), expm=model.config.manifold.expm)
  curves = {name: {} for name in AUGMENTATIONS}
  for i, strength in enumerate(strengths):
    draws = []
    for r in range(repeats):
      draw = jax.random.fold_in(jax.random.fold_in(draw_key, i), r)
      chunk = lambda c, z, zp, y: _score_chunk(params, z, zp, y, jax.random.fold_in(draw, c),
                                              jnp.float32(strength), **static)
      draws.append(map_chunks(chunk, [np.asarray(test_x), np.asarray(test_pair), test_y]))
    for name in AUGMENTATIONS:
      top1 = np.array([float(jnp.mean(d[name][0])) for d in draws])
      distance = np.array([float(jnp.mean(d[name][1])) for d in draws])
      curves[name][strength_label(strength)] = {"top1": float(top1.mean()),
                                                "top1_std": float(top1.std()),
                                                "distance": float(distance.mean())}
  results.update(curves)
  if figure_path is not None:
    results["figure"] = figures.plot_identity_preservation(
        figure_path,
        {name: ([curves[name][strength_label(s)]["distance"] for s in strengths],
                [curves[name][strength_label(s)]["top1"] for s in strengths],
                [curves[name][strength_label(s)]["top1_std"] for s in strengths])
         for name in AUGMENTATIONS},
        clean=results["clean_top1"], view=(results["view_distance"], results["view_top1"]))
  return results
