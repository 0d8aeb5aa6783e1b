"""The training state: one plain pytree, replicated over the mesh."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """step: () int32; params: {"backbone", "projector", ["psi", "coeff_encoder", "prior"]};
  batch_stats: {"backbone", "projector"} BatchNorm running statistics; opt_state: optax state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
