"""The support queue of nearest-neighbour positives (NNCLR; docs/method.md §17.3), pure functions.

A FIFO of the last Q L2-normalised embeddings, part of the TrainState (replicated like the rest of
it, checkpointed and restored with it). The contrastive loss replaces an embedding by its nearest
neighbour in the queue (cosine similarity, no gradient); the step then pushes the batch's
embeddings. Entries not yet written are never chosen, and while the queue is still empty an
embedding is its own neighbour (the loss is then plain NT-Xent).
"""

import flax
import jax
import jax.numpy as jnp

# Similarity given to entries not yet written: below any cosine similarity (≥ −1), finite.
_UNFILLED = -2.0


@flax.struct.dataclass
class SupportQueue:
  """embeddings: (Q, d) float32, rows [0, size) written; head: () int32, the next row to write;
  size: () int32, the number of written rows (≤ Q)."""
  embeddings: jax.Array
  head: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return self.embeddings.shape[0]


def empty(capacity: int, dim: int) -> SupportQueue:
  """A queue of `capacity` rows of width `dim`, none written (all zeros)."""
  return SupportQueue(embeddings=jnp.zeros((capacity, dim), jnp.float32),
                      head=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def push(queue: SupportQueue, x) -> SupportQueue:
  """Writes the rows of x: (B, d), B ≤ Q, at rows head, head + 1, ... (mod Q), overwriting the
  oldest ones once the queue is full. No gradient flows into the queue."""
  batch, capacity = x.shape[0], queue.capacity
  if batch > capacity:
    raise ValueError(f"Cannot push {batch} rows into a support queue of {capacity}; the queue "
                     f"must hold at least one batch (config.loss.nn_queue_size >= batch_size).")
  rows = (queue.head + jnp.arange(batch)) % capacity
  embeddings = queue.embeddings.at[rows].set(jax.lax.stop_gradient(x).astype(jnp.float32))
  return SupportQueue(embeddings=embeddings, head=(queue.head + batch) % capacity,
                      size=jnp.minimum(queue.size + batch, capacity))


def nearest_indices(queue: SupportQueue, x) -> jax.Array:
  """(B,) int32: for each row of x (B, d), the written queue row of largest ⟨x, q⟩ (for unit
  vectors, of largest cosine similarity); the first such row on ties."""
  sim = jnp.matmul(x.astype(jnp.float32), queue.embeddings.T,
                   precision=jax.lax.Precision.HIGHEST)  # (B, Q)
  written = jnp.arange(queue.capacity) < queue.size
  return jnp.argmax(jnp.where(written[None, :], sim, _UNFILLED), axis=-1)


def nearest(queue: SupportQueue, x) -> jax.Array:
  """NN(x): (B, d) -> (B, d), the nearest written queue row of each row of x, stop-gradient (the
  NNCLR positive, docs/method.md §17.3); x itself while the queue is empty."""
  neighbours = queue.embeddings[nearest_indices(queue, x)]
  return jax.lax.stop_gradient(jnp.where(queue.size > 0, neighbours, x.astype(jnp.float32)))
