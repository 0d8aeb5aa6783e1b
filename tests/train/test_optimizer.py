"""The per-group AdamW of docs/method.md §5: learning rates, decays, clipping, schedule, labels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from mclr_jax.train import optimizer as optimizer_lib

STEPS_PER_EPOCH, WARMUP_EPOCHS, TOTAL_STEPS = 5, 2, 30
WARMUP = STEPS_PER_EPOCH * WARMUP_EPOCHS  # w = 10 iterations


def _optim(**overrides):
  optim = base.get_base_config().optim
  optim.warmup_epochs = WARMUP_EPOCHS
  for k, v in overrides.items():
    optim[k] = v
  return optim


def _params(rng):
  """A tiny parameter dict with every group's top-level keys (nested like flax params)."""
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {"backbone": {"conv": {"kernel": normal(3, 2)}, "bn": {"scale": normal(2)}},
          "projector": {"dense": {"kernel": normal(2, 2), "bias": normal(2)}},
          "psi": normal(2, 1, 2, 2),
          "coeff_encoder": {"dense": {"kernel": normal(4, 3)}},
          "prior": {"dense": {"kernel": normal(2, 3)}}}


def _at_step(opt_state, step):
  """`opt_state` with every schedule counter set to `step` (the Adam moments stay fresh), so that one
  update is AdamW's first step taken at learning rate lr_step."""
  if isinstance(opt_state, optax.ScaleByScheduleState):
    return opt_state._replace(count=jnp.asarray(step, opt_state.count.dtype))
  if isinstance(opt_state, tuple) and hasattr(opt_state, "_fields"):
    return type(opt_state)(*[_at_step(s, step) for s in opt_state])
  if isinstance(opt_state, (tuple, list)):
    return type(opt_state)(_at_step(s, step) for s in opt_state)
  if isinstance(opt_state, dict):
    return {k: _at_step(v, step) for k, v in opt_state.items()}
  return opt_state


def _expected_lr(peak, end, t):
  """Closed form of docs/method.md §5: t·peak/(w−1) in the warm-up, then cosine from peak to end."""
  if t < WARMUP:
    return t * peak / (WARMUP - 1)
  frac = (t - WARMUP) / (TOTAL_STEPS - WARMUP)
  return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * frac))


def _group_of(key):
  return {"backbone": "backbone", "projector": "projector", "psi": "psi",
          "coeff_encoder": "coefficients", "prior": "coefficients"}[key]


def _one_update(optim, params, grads, step):
  tx, _ = optimizer_lib.make_optimizer(optim, STEPS_PER_EPOCH, TOTAL_STEPS)
  state = _at_step(tx.init(params), step)
  updates, _ = tx.update(grads, state, params)
  return updates


def _hyper(optim):
  return {g: h for g, h in optimizer_lib.group_hyperparameters(optim).items()}


def _reference_update(g, w, lr, wd, eps):
  """AdamW's first step in float64: m̂ = g, v̂ = g², update = −lr·(g/(|g|+eps) + wd·w)."""
  g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
  return -lr * (g / (np.abs(g) + eps) + wd * w)


def _assert_reference_updates(optim, params, grads, updates, step):
  """Each group's update equals the float64 AdamW reference with that group's lr and decay."""
  hyper = _hyper(optim)
  for key in params:
    h = hyper[_group_of(key)]
    lr = _expected_lr(h["lr"], h["min_lr"], step)
    expected = jax.tree.map(lambda g, w: _reference_update(g, w, lr, h["weight_decay"], optim.eps),
                            grads[key], params[key])
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-4, atol=1e-9),
                 updates[key], expected)


def test_each_group_gets_its_own_lr_and_weight_decay():
  optim = _optim(eps=0.5)  # a large eps keeps the update sensitive to |g| (not just its sign)
  rng = np.random.default_rng(0)
  params = _params(rng)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32) * 0.01, params)
  step = 17  # mid-cosine, t > w
  updates = _one_update(optim, params, grads, step)
  hyper = _hyper(optim)
  _assert_reference_updates(optim, params, grads, updates, step)
  # The groups really differ (lr 3e-3 / 1e-3 / 1e-4), so the check above is not vacuous.
  assert len({hyper[g]["lr"] for g in ("backbone", "psi", "coefficients")}) == 3


def test_group_clipping_psi_and_coefficients_jointly_not_backbone():
  optim = _optim(eps=1.0)
  rng = np.random.default_rng(1)
  params = _params(rng)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32) * 100.0, params)
  step = WARMUP  # peak learning rate
  updates = _one_update(optim, params, grads, step)

  def clip(tree, max_norm):
    leaves = jax.tree.leaves(tree)
    norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in leaves))
    factor = 1.0 if max_norm == 0 else min(1.0, max_norm / norm)
    return jax.tree.map(lambda x: np.asarray(x, np.float64) * factor, tree)

  # Joint clip over coeff_encoder + prior (one global norm for both), psi alone, none on backbone.
  coeff = clip({"coeff_encoder": grads["coeff_encoder"], "prior": grads["prior"]},
               optim.coeff_clip)
  clipped = {"backbone": grads["backbone"], "projector": grads["projector"],
             "psi": clip(grads["psi"], optim.psi_clip), **coeff}
  assert optim.psi_clip == 0.1 and optim.coeff_clip == 1.0
  _assert_reference_updates(optim, params, clipped, updates, step)


def test_schedule_warmup_and_cosine_closed_form():
  optim = _optim()
  schedules = optimizer_lib.make_schedules(optim, STEPS_PER_EPOCH, TOTAL_STEPS)
  for name, h in _hyper(optim).items():
    sched = schedules[name]
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(WARMUP - 1)), h["lr"], rtol=1e-6)
    np.testing.assert_allclose(float(sched(WARMUP)), h["lr"], rtol=1e-6)
    # Cosine end: lr_T = min_lr (the reference's per-iteration LinearWarmupCosineAnnealingLR).
    np.testing.assert_allclose(float(sched(TOTAL_STEPS)), h["min_lr"], rtol=1e-5)
    for t in (3, WARMUP + 5, (WARMUP + TOTAL_STEPS) // 2, TOTAL_STEPS - 1):
      np.testing.assert_allclose(float(sched(t)), _expected_lr(h["lr"], h["min_lr"], t),
                                 rtol=1e-5, err_msg=f"{name} at step {t}")


def test_unknown_parameter_key_is_named():
  tx, _ = optimizer_lib.make_optimizer(_optim(), STEPS_PER_EPOCH, TOTAL_STEPS)
  params = dict(_params(np.random.default_rng(2)), mystery_head={"w": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match="mystery_head"):
    tx.init(params)
