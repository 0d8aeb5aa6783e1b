"""Building the networks, optimiser and initial TrainState from a config."""

import jax
import jax.numpy as jnp
import ml_collections

from mclr_jax.train import objective
from mclr_jax.train import optimizer as optimizer_lib
from mclr_jax.train import support_queue
from mclr_jax.train.state import TrainState


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`num_train_steps` when > 0, else `num_epochs` × steps per epoch."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * steps_per_epoch)


def create_train_state(config, key, steps_per_epoch: int, sharding=None):
  """Returns (networks, state, tx, schedules) with freshly initialised parameters, placed with
  `sharding` if given (with several processes, a state can only be made in place: an array of one
  process's device cannot be put on a sharding that spans the others')."""
  networks = objective.build_networks(config)
  tx, schedules = optimizer_lib.make_optimizer(config.optim, steps_per_epoch,
                                               total_train_steps(config, steps_per_epoch))

  def init(key):
    params, batch_stats = objective.init_variables(networks, config, key)
    queue = None
    if objective.uses_queue(config):  # docs/method.md §17.3: empty, nothing written yet
      queue = support_queue.empty(config.loss.nn_queue_size,
                                  objective.embedding_dim(networks, config))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), queue=queue)

  # Jitted: eager initialisation of a ResNet dispatches hundreds of small ops (~10 s on CPU). The
  # key is a constant of the program, so no input has to be placed first.
  state = jax.jit(lambda: init(key), out_shardings=sharding)()
  return networks, state, tx, schedules


def abstract_train_state(config, steps_per_epoch: int):
  """(networks, the TrainState's shapes and dtypes) without computing anything."""
  holder = {}

  def build(key):
    networks, state, _, _ = create_train_state(config, key, steps_per_epoch)
    holder["networks"] = networks
    return state

  abstract = jax.eval_shape(build, jax.random.key(0))
  return holder["networks"], abstract
