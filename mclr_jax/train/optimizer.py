"""The optimisers: AdamW with one learning rate, weight decay, schedule and clip per group, or the
invariance paper's SGD + LARS for the backbone and projector.

docs/method.md §5. Parameters live in a dict keyed by group-owning module:
  {"backbone", "projector"}         lr = optim.lr,       wd = optim.weight_decay, no clipping
  {"psi"}                           lr = optim.psi_lr,   wd = optim.psi_weight_decay, clip psi_clip
  {"coeff_encoder", "prior"}        lr = optim.coeff_lr, wd = optim.coeff_weight_decay, clip coeff_clip
The label of a leaf is the first key of its path (`optax.multi_transform`), so adding a parameter to a
module never needs a hand-kept list. Decay is decoupled (lr·wd·w per step) and hits every parameter,
BatchNorm and biases included, as torch's AdamW did in the reference (docs/method.md §15.14).

`optim.name = "lars"` (docs/method.md §18.1) replaces the backbone's and projector's AdamW by
`optax.lars` (SGD with momentum, weight decay and the layer-wise trust ratio); Ψ and the
coefficient networks, when present, keep their AdamW. `optim.schedule` picks the learning-rate
curve: "warmup_cosine" (per iteration, §5) or "epoch_ramp_cosine" (constant within an epoch, §18.1).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adamw", "lars")
SCHEDULES = ("warmup_cosine", "epoch_ramp_cosine")
# The groups `optim.name` applies to; the others (Ψ, coefficient networks) always use AdamW.
MAIN_GROUPS = ("backbone", "projector")

# Group name -> the top-level parameter keys it owns.
GROUPS = {
    "backbone": ("backbone",),
    "projector": ("projector",),
    "psi": ("psi",),
    "coefficients": ("coeff_encoder", "prior"),
}


def warmup_cosine_schedule(peak_lr: float, warmup_steps: int, total_steps: int,
                           end_lr: float) -> optax.Schedule:
  """Linear warm-up from 0, then cosine to `end_lr` at `total_steps` (docs/method.md §5, §15.13).

  lr_t = t·peak/(w−1) for t < w (so lr_0 = 0 and lr_{w−1} = peak), then
  end + ½(peak − end)(1 + cos(π (t − w)/(T − w))) for w ≤ t ≤ T, the per-iteration
  LinearWarmupCosineAnnealingLR of the reference.
  """
  if warmup_steps <= 1:
    return optax.cosine_decay_schedule(peak_lr, max(total_steps, 1), alpha=end_lr / peak_lr)
  warmup = optax.linear_schedule(0.0, peak_lr, transition_steps=warmup_steps - 1)
  cosine = optax.cosine_decay_schedule(peak_lr, max(total_steps - warmup_steps, 1),
                                       alpha=end_lr / peak_lr)
  return optax.join_schedules([warmup, cosine], boundaries=[warmup_steps])


def epoch_ramp_cosine_schedule(peak_lr: float, steps_per_epoch: int, num_epochs: float,
                               ramp_epochs: float, end_lr: float = 0.0) -> optax.Schedule:
  """The invariance paper's per-epoch curve (docs/method.md §18.1), constant within an epoch.

  With e = ⌊t / steps_per_epoch⌋, R = ramp_epochs and E = num_epochs:
    lr(e) = min(peak·(e + 1)/R,  end + ½(peak − end)(1 + cos(π e / E))),
  a linear ramp from peak/R over the first R epochs that meets a cosine running over the whole
  run (its value at e = E is `end`, 0 in the paper).
  """
  ramp_epochs = max(float(ramp_epochs), 1.0)  # R ≤ 1: the ramp starts at the peak
  # linear_schedule clamps at `peak` after R − 1 epochs; the unclamped ramp would only exceed the
  # cosine there anyway, so the minimum is the same. (A fractional R − 1 is fine: the schedule
  # only divides by it.)
  ramp = optax.linear_schedule(peak_lr / ramp_epochs, peak_lr,
                               transition_steps=ramp_epochs - 1.0)
  cosine = optax.cosine_decay_schedule(peak_lr, max(float(num_epochs), 1e-9),
                                       alpha=end_lr / peak_lr)

  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    return jnp.minimum(ramp(epoch), cosine(epoch))

  return schedule


def group_hyperparameters(optim: ml_collections.ConfigDict) -> dict[str, dict]:
  """Per group: peak lr, end lr, weight decay and gradient clip (0 = none), from `config.optim`."""
  return {
      "backbone": dict(lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay, clip=0.0),
      "projector": dict(lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay, clip=0.0),
      "psi": dict(lr=optim.psi_lr, min_lr=optim.psi_min_lr, weight_decay=optim.psi_weight_decay,
                  clip=optim.psi_clip),
      "coefficients": dict(lr=optim.coeff_lr, min_lr=optim.coeff_min_lr,
                           weight_decay=optim.coeff_weight_decay, clip=optim.coeff_clip),
  }


def make_schedules(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                   total_steps: int) -> dict[str, optax.Schedule]:
  """The learning-rate schedule of every group: `optim.schedule` for the backbone and projector,
  the per-iteration warm-up + cosine for Ψ and the coefficient networks."""
  warmup_steps = int(round(optim.warmup_epochs * steps_per_epoch))
  kind = optim.get("schedule", "warmup_cosine")
  schedules = {}
  for name, h in group_hyperparameters(optim).items():
    if kind == "epoch_ramp_cosine" and name in MAIN_GROUPS:
      schedules[name] = epoch_ramp_cosine_schedule(
          h["lr"], steps_per_epoch, total_steps / steps_per_epoch, optim.warmup_epochs, h["min_lr"])
    else:
      schedules[name] = warmup_cosine_schedule(h["lr"], warmup_steps, total_steps, h["min_lr"])
  return schedules


def param_labels(params) -> dict:
  """Labels every leaf with the group that owns its top-level key."""
  owner = {key: group for group, keys in GROUPS.items() for key in keys}
  unknown = [k for k in params if k not in owner]
  if unknown:
    raise ValueError(f"Parameters {unknown} belong to no optimiser group; add them to "
                     f"mclr_jax.train.optimizer.GROUPS.")
  return {k: _label_tree(v, owner[k]) for k, v in params.items()}


def _label_tree(tree, label):
  import jax  # local: keeps this module's import light for config tooling
  return jax.tree.map(lambda _: label, tree)


def make_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
                   ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
  """AdamW (or LARS for the backbone and projector) per group, with optional global-norm clipping
  inside the group, by parameter path.

  Returns the transformation and the schedules (for logging learning rates).
  Groups absent from the parameters (e.g. Ψ in SimCLR) are simply never used.
  """
  schedules = make_schedules(optim, steps_per_epoch, total_steps)
  use_lars = optim.get("name", "adamw") == "lars"
  transforms: dict[str, optax.GradientTransformation] = {}
  for name, h in group_hyperparameters(optim).items():
    if use_lars and name in MAIN_GROUPS:
      transforms[name] = _lars(optim, schedules[name], h["weight_decay"])
      continue
    adamw = optax.adamw(schedules[name], b1=optim.b1, b2=optim.b2, eps=optim.eps,
                        weight_decay=h["weight_decay"])
    # torch's clip_grad_norm_ on the group's parameters jointly, before the Adam moments.
    transforms[name] = (optax.chain(optax.clip_by_global_norm(h["clip"]), adamw)
                        if h["clip"] > 0 else adamw)
  return optax.multi_transform(transforms, param_labels), schedules


def _lars(optim, schedule, weight_decay) -> optax.GradientTransformation:
  """optax's LARS, set up as the invariance paper's torch SGD wrapped in torchlars (§18.1).

  Decay, trust ratio and momentum act on every leaf, BatchNorm and biases included, as the
  wrapper did (`optim.lars_exclude_bias_and_norm` exempts the 1-D leaves, the usual choice
  elsewhere). optax accumulates lr-scaled updates in the momentum, torch scales the accumulated
  gradient by the current lr: the two agree while the lr is constant, i.e. within every epoch of the
  per-epoch schedule.
  """
  mask = True
  if optim.get("lars_exclude_bias_and_norm", False):
    mask = _ndim_mask
  return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=mask,
                    trust_coefficient=optim.trust_coefficient, eps=optim.lars_eps,
                    trust_ratio_mask=mask, momentum=optim.momentum)


def _ndim_mask(params):
  """True for the kernels (ndim > 1), False for biases and BatchNorm scales and offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rates(schedules: dict[str, Callable], step: int, groups) -> dict[str, float]:
  """The learning rate of each present group at `step`, for the log."""
  return {f"lr/{name}": float(schedules[name](step)) for name in groups}
