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


# --------------------------------------------------------------------------------------------
# The invariance paper's recipe: optax.lars on the backbone and projector, per-epoch schedule
# (docs/method.md §18.1)
# --------------------------------------------------------------------------------------------

LARS_EPOCHS, LARS_RAMP = 40, 10  # 40 epochs of STEPS_PER_EPOCH steps, a 10-epoch ramp


def _lars_optim(**overrides):
  settings = dict(name="lars", schedule="epoch_ramp_cosine", lr=3.0, min_lr=0.0,
                  warmup_epochs=LARS_RAMP, weight_decay=1e-6, momentum=0.9, trust_coefficient=1e-3)
  return _optim(**{**settings, **overrides})


@pytest.mark.parametrize("ramp", [LARS_RAMP, 2.5, 1])
def test_epoch_schedule_is_the_ramp_cosine_minimum_constant_within_each_epoch(ramp):
  optim = _lars_optim(warmup_epochs=ramp)
  total = LARS_EPOCHS * STEPS_PER_EPOCH
  schedules = optimizer_lib.make_schedules(optim, STEPS_PER_EPOCH, total)
  peak = optim.lr
  for epoch in range(LARS_EPOCHS + 1):
    # The torch scheduler stepped once per epoch: min(linear ramp, cosine over the whole run).
    want = min(peak * (epoch + 1) / ramp,
               0.5 * peak * (1 + math.cos(math.pi * epoch / LARS_EPOCHS)))
    for t in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
      for group in ("backbone", "projector"):
        np.testing.assert_allclose(float(schedules[group](t)), want, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{group} at step {t} (epoch {epoch})")
  assert float(schedules["backbone"](0)) == pytest.approx(peak / ramp)
  assert float(schedules["backbone"](total)) == pytest.approx(0.0, abs=1e-7)
  # Ψ and the coefficient networks keep the per-iteration warm-up + cosine of §5.
  assert float(schedules["psi"](0)) == 0.0


def _lars_reference(params, grads_per_step, lr, wd, trust, eps, momentum, adapt=lambda p: True):
  """LARS-SGD as docs/method.md §18.1 defines it, in float64, at a constant lr:
  d = g + wd·w; d ← d · trust·‖w‖/(‖d‖ + eps) per leaf (1 where a norm is 0);
  buf ← momentum·buf + d; w ← w − lr·buf. Returns the parameters after every step. (torchlars,
  which the authors used, divides by ‖g‖ + wd·‖w‖ instead: §18.1 lists that difference.)"""
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in w.items()}
  history = []
  for grads in grads_per_step:
    for k in w:
      g = np.asarray(grads[k], np.float64)
      if adapt(w[k]):
        d = g + wd * w[k]
        w_norm, d_norm = np.linalg.norm(w[k]), np.linalg.norm(d)
        d = d * (trust * w_norm / (d_norm + eps) if w_norm > 0 and d_norm > 0 else 1.0)
      else:
        d = g
      buf[k] = momentum * buf[k] + d
      w[k] = w[k] - lr * buf[k]
    history.append({k: v.copy() for k, v in w.items()})
  return history


@pytest.mark.parametrize("exclude_1d", [False, True])
def test_lars_steps_match_a_float64_torchlars_sgd_reference(exclude_1d):
  """Three steps inside one epoch (constant lr): every backbone and projector leaf follows the
  reference, BatchNorm scales and biases included unless `lars_exclude_bias_and_norm`."""
  optim = _lars_optim(lars_exclude_bias_and_norm=exclude_1d)
  rng = np.random.default_rng(3)
  params = _params(rng)
  steps = 3
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(steps)]
  tx, schedules = optimizer_lib.make_optimizer(optim, STEPS_PER_EPOCH,
                                               LARS_EPOCHS * STEPS_PER_EPOCH)
  state, current = tx.init(params), params
  got = []
  for g in grads:
    updates, state = tx.update(g, state, current)
    current = optax.apply_updates(current, updates)
    got.append(current)
  lr = float(schedules["backbone"](0))
  assert lr == pytest.approx(optim.lr / LARS_RAMP)
  for group in ("backbone", "projector"):
    leaves = {"/".join(map(str, path)): leaf
              for path, leaf in jax.tree_util.tree_leaves_with_path(params[group])}
    per_step = [{"/".join(map(str, path)): leaf
                 for path, leaf in jax.tree_util.tree_leaves_with_path(g[group])} for g in grads]
    adapt = (lambda w: w.ndim > 1) if exclude_1d else (lambda w: True)
    want = _lars_reference(leaves, per_step, lr, optim.weight_decay, optim.trust_coefficient,
                           optim.lars_eps, optim.momentum, adapt)
    for t in range(steps):
      have = {"/".join(map(str, path)): leaf
              for path, leaf in jax.tree_util.tree_leaves_with_path(got[t][group])}
      for name in leaves:
        np.testing.assert_allclose(have[name], want[t][name], rtol=1e-5, atol=1e-7,
                                   err_msg=f"{group}/{name} after step {t + 1}")
  # The layer-wise trust ratio really scales the step: a plain SGD step would move a weight by
  # lr·|g| ~ 0.3, LARS by about lr·trust·‖w‖ ~ 1e-3.
  moved = np.abs(np.asarray(got[0]["backbone"]["conv"]["kernel"])
                 - params["backbone"]["conv"]["kernel"])
  assert moved.max() < 0.01


def test_lars_leaves_psi_and_coefficient_networks_on_adamw():
  optim = _lars_optim(eps=0.5)
  optim.warmup_epochs = WARMUP_EPOCHS  # the per-iteration closed form _expected_lr assumes
  rng = np.random.default_rng(4)
  params = _params(rng)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32) * 0.01, params)
  step = 17
  updates = _one_update(optim, params, grads, step)
  hyper = _hyper(optim)
  for key in ("psi", "coeff_encoder", "prior"):
    h = hyper[_group_of(key)]
    lr = _expected_lr(h["lr"], h["min_lr"], step)
    expected = jax.tree.map(lambda g, w: _reference_update(g, w, lr, h["weight_decay"], optim.eps),
                            grads[key], params[key])
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-4, atol=1e-9),
                 updates[key], expected)
