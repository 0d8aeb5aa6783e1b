"""`train_step(state, batch, rng) -> (state, metrics)`: one optimiser update, pure and jitted once.

The batch is global (sharded over the mesh's "data" axis by the caller); the code is written as if
on one device and XLA inserts the collectives, so BatchNorm statistics and the contrastive loss see
the global batch. A non-finite loss term, gradient or Ψ leaves the state unchanged and is reported
in `metrics["nonfinite/<term>"]`; the loop stops with a message naming the step and the term.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from mclr_jax.train import objective
from mclr_jax.train.state import TrainState

# Loss terms whose finiteness is checked, in the order they are reported.
CHECKED_TERMS = ("contrastive", "transport", "kl", "location_l2", "penalty")


def make_train_step(networks: objective.Networks, config, tx: optax.GradientTransformation):
  """Returns the (unjitted) pure step function for `networks`, `config` and optimiser `tx`."""
  loss_fn = functools.partial(objective.compute_loss, networks=networks, config=config)

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    # One key per step, independent of how the run was split into restarts (bit-for-bit resume).
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, rng,
                                                 state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    grad_norm = optax.tree.norm(grads)
    finite = {f"nonfinite/{t}": ~jnp.isfinite(metrics[t]) for t in CHECKED_TERMS if t in metrics}
    finite["nonfinite/gradient"] = ~jnp.isfinite(grad_norm)
    if "psi" in params:
      finite["nonfinite/psi"] = ~jnp.all(jnp.isfinite(params["psi"]))
    ok = ~functools.reduce(jnp.logical_or, finite.values())

    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state)
    # Keep the last good state: the loop stops on the flag, and no checkpoint sees a bad update.
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    metrics = dict(metrics, grad_norm=grad_norm, **{k: v.astype(jnp.float32)
                                                    for k, v in finite.items()})
    return new_state, metrics

  return train_step
