"""The training state: one plain pytree, replicated over the mesh."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """step: () int32; params: {"backbone", "projector", ["psi", "coeff_encoder", "prior"]};
  batch_stats: {"backbone", "projector"} BatchNorm running statistics; opt_state: optax state;
  queue: the support queue of nearest-neighbour positives (`support_queue.SupportQueue`,
  docs/method.md §17.3), None without them. The queue is state, not a parameter: the optimiser
  never sees it."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  queue: Any = None
