"""`train_step(state, batch, rng) -> (state, metrics)`: one optimiser update, pure and jitted once.

The batch is global (sharded over the mesh's "data" axis by the caller); the code is written as if
on one device and XLA inserts the collectives, so BatchNorm statistics and the contrastive loss see
the global batch. A non-finite input batch, loss term or gradient, or an update that would make any
parameter, optimiser moment or BatchNorm statistic non-finite, leaves the state unchanged and is
reported in `metrics["nonfinite/<check>"]`; the loop stops with a message naming the step and the
check, and no checkpoint can hold a non-finite value.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from mclr_jax.train import objective
from mclr_jax.train import support_queue
from mclr_jax.train.state import TrainState

# Loss terms whose finiteness is checked, in the order they are reported.
CHECKED_TERMS = ("contrastive", "transport", "kl", "location_l2", "penalty")
# Everything the step checks, in the order a stop reports it: the input batch first (a NaN batch
# need not give a NaN loss, see _nonfinite_flags), then the loss terms, the gradient, and every part
# of the state the update would write.
CHECKS = ("data",) + CHECKED_TERMS + ("gradient", "params", "opt_state", "batch_stats", "queue")


def make_train_step(networks: objective.Networks, config, tx: optax.GradientTransformation):
  """Returns the (unjitted) pure step function for `networks`, `config` and optimiser `tx`."""
  loss_fn = functools.partial(objective.compute_loss, networks=networks, config=config)
  log_grad_share = config.invariance.weight > 0 and config.invariance.log_grad_share

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    # One key per step, independent of how the run was split into restarts (bit-for-bit resume).
    rng = jax.random.fold_in(rng, state.step)
    args = (state.batch_stats, batch, rng, state.step)
    step_loss_fn = functools.partial(loss_fn, queue=state.queue)
    if log_grad_share:
      grads, metrics, batch_stats = _gradients_with_penalty_share(step_loss_fn, state.params, args,
                                                                  config.invariance.weight)
    else:
      grad_fn = jax.value_and_grad(step_loss_fn, has_aux=True)
      (_, (metrics, batch_stats)), grads = grad_fn(state.params, *args)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The support queue (docs/method.md §17.3) takes this batch's embeddings after the lookup.
    metrics = dict(metrics)
    enqueue = metrics.pop(objective.ENQUEUE, None)
    queue = state.queue if enqueue is None else support_queue.push(state.queue, enqueue)

    grad_norm = optax.tree.norm(grads)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state, queue=queue)
    flags = _nonfinite_flags(batch, metrics, grad_norm, new_state)
    ok = ~functools.reduce(jnp.logical_or, flags.values())
    # Keep the last good state: the loop stops on the flag, and no checkpoint sees a bad update.
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    metrics = dict(metrics, grad_norm=grad_norm,
                   **{f"nonfinite/{k}": v.astype(jnp.float32) for k, v in flags.items()})
    return new_state, metrics

  return train_step


def _all_finite(tree) -> jax.Array:
  """() bool: every floating-point entry of `tree` is finite (integer leaves always are)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:  # e.g. a uint8 image batch
    return jnp.asarray(True)
  # One reduction over all leaves at once: a separate isfinite-and-all per leaf (hundreds of them
  # for a ResNet's parameters and Adam moments) quadrupled the step's compile time (measured on
  # the CPU: 26 s against 6 s for a width-4 ResNet-18), and XLA fuses the concatenation into the
  # reduction.
  return jnp.all(jnp.isfinite(jnp.concatenate([x.ravel().astype(jnp.float32) for x in leaves])))


def _nonfinite_flags(batch, metrics, grad_norm, new_state: TrainState) -> dict:
  """{check: () bool, True where non-finite} for every name of CHECKS that applies.

  The batch is checked itself because a loss computed from NaN inputs can be finite: on the CPU,
  XLA fuses the ResNet's last ReLU into the global-average-pool reduction with a maximum that maps
  NaN to 0, so an all-NaN batch gives zero features and the loss log(2B − 1) of identical
  embeddings; only its gradient would show the NaN, under another name.
  """
  flags = {"data": ~_all_finite(batch)}
  flags.update({t: ~jnp.isfinite(metrics[t]) for t in CHECKED_TERMS if t in metrics})
  flags["gradient"] = ~jnp.isfinite(grad_norm)
  for part in ("params", "opt_state", "batch_stats", "queue"):
    flags[part] = ~_all_finite(getattr(new_state, part))
  return flags


def _gradients_with_penalty_share(loss_fn, params, args, weight):
  """The loss gradient, and how much of it the penalty λ·P contributes (docs/method.md §11.6).

  One forward pass and one `jax.vjp` of the two terms (loss − λP, λP), pulled back with both basis
  cotangents under `vmap` (a second backward pass); their sum is the gradient the update uses.
  Adds `penalty_grad_share` = ‖∇λP‖ / (‖∇(loss − λP)‖ + ‖∇λP‖) ∈ [0, 1] and
  `penalty_grad_cosine`, the cosine between the two gradients, to the metrics.
  """
  def terms(p):
    loss, (metrics, batch_stats) = loss_fn(p, *args)
    penalty = weight * metrics["penalty"]
    return jnp.stack([loss - penalty, penalty]), (metrics, batch_stats)

  values, pullback, (metrics, batch_stats) = jax.vjp(terms, params, has_aux=True)
  (per_term,) = jax.vmap(pullback)(jnp.eye(2, dtype=values.dtype))
  rest = jax.tree.map(lambda g: g[0], per_term)
  pen = jax.tree.map(lambda g: g[1], per_term)
  grads = jax.tree.map(jnp.add, rest, pen)
  rest_norm, pen_norm = optax.tree.norm(rest), optax.tree.norm(pen)
  metrics = dict(metrics,
                 penalty_grad_share=pen_norm / jnp.maximum(rest_norm + pen_norm, 1e-30),
                 penalty_grad_cosine=optax.tree.vdot(rest, pen)
                 / jnp.maximum(rest_norm * pen_norm, 1e-30))
  return grads, metrics, batch_stats
