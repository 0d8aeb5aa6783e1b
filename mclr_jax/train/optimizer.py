"""The paper's optimiser: AdamW with one learning rate, weight decay, schedule and clip per group.

docs/method.md §5. Parameters live in a dict keyed by group-owning module:
  {"backbone", "projector"}         lr = optim.lr,       wd = optim.weight_decay, no clipping
  {"psi"}                           lr = optim.psi_lr,   wd = optim.psi_weight_decay, clip psi_clip
  {"coeff_encoder", "prior"}        lr = optim.coeff_lr, wd = optim.coeff_weight_decay, clip coeff_clip
The label of a leaf is the first key of its path (`optax.multi_transform`), so adding a parameter to a
module never needs a hand-kept list. Decay is decoupled (lr·wd·w per step) and hits every parameter,
BatchNorm and biases included, as torch's AdamW did in the reference (docs/method.md §15.14).
"""

from typing import Callable

import ml_collections
import optax

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
  """The learning-rate schedule of every group, stepped per iteration."""
  warmup_steps = int(round(optim.warmup_epochs * steps_per_epoch))
  return {name: warmup_cosine_schedule(h["lr"], warmup_steps, total_steps, h["min_lr"])
          for name, h in group_hyperparameters(optim).items()}


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
  """AdamW per group (with optional global-norm clipping inside the group), by parameter path.

  Returns the transformation and the schedules (for logging learning rates).
  Groups absent from the parameters (e.g. Ψ in SimCLR) are simply never used.
  """
  schedules = make_schedules(optim, steps_per_epoch, total_steps)
  transforms: dict[str, optax.GradientTransformation] = {}
  for name, h in group_hyperparameters(optim).items():
    adamw = optax.adamw(schedules[name], b1=optim.b1, b2=optim.b2, eps=optim.eps,
                        weight_decay=h["weight_decay"])
    # torch's clip_grad_norm_ on the group's parameters jointly, before the Adam moments.
    transforms[name] = (optax.chain(optax.clip_by_global_norm(h["clip"]), adamw)
                        if h["clip"] > 0 else adamw)
  return optax.multi_transform(transforms, param_labels), schedules


def learning_rates(schedules: dict[str, Callable], step: int, groups) -> dict[str, float]:
  """The learning rate of each present group at `step`, for the log."""
  return {f"lr/{name}": float(schedules[name](step)) for name in groups}
