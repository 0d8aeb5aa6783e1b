"""The support queue of nearest-neighbour positives (docs/method.md §17.3) against numpy: a FIFO
ring of the last Q embeddings, a cosine nearest neighbour over the written rows only, and the
symmetrised NNCLR loss against a float64 reference."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import spirograph as spirograph_config
from mclr_jax import losses
from mclr_jax.train import objective
from mclr_jax.train import support_queue
from tests.tiny import nt_xent_float64


def _unit(rng, shape):
  x = rng.standard_normal(shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class _RingReference:
  """The queue as a Python FIFO: the last `capacity` rows pushed, each at position (its push
  index mod capacity)."""

  def __init__(self, capacity, dim):
    self.capacity, self.dim, self.count = capacity, dim, 0
    self.rows = collections.deque(maxlen=capacity)  # (position, row), oldest first

  def push(self, x):
    for row in np.asarray(x, np.float64):
      self.rows.append((self.count % self.capacity, row))
      self.count += 1

  def embeddings(self):
    out = np.zeros((self.capacity, self.dim))
    for position, row in self.rows:
      out[position] = row
    return out

  def nearest(self, x):
    """float64 brute force: the stored row of largest cosine similarity; x where none is stored."""
    if not self.rows:
      return np.asarray(x, np.float64)
    stored = np.stack([r for _, r in self.rows])
    x = np.asarray(x, np.float64)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        stored / np.linalg.norm(stored, axis=1, keepdims=True)).T
    return stored[np.argmax(cos, axis=1)]


@pytest.mark.parametrize("capacity,batch", [(10, 4), (12, 4), (5, 5)])
def test_push_is_a_fifo_of_the_last_capacity_rows(capacity, batch):
  """Pushes past several wrap-arounds (Q not a multiple of B included): the queue holds exactly
  the last Q rows at their ring positions, `size` saturates at Q and `head` is the count mod Q."""
  rng = np.random.default_rng(0)
  queue, reference = support_queue.empty(capacity, 3), _RingReference(capacity, 3)
  push = jax.jit(support_queue.push)
  for _ in range(7):
    x = rng.standard_normal((batch, 3)).astype(np.float32)
    queue, _ = push(queue, x), reference.push(x)
    np.testing.assert_array_equal(np.asarray(queue.embeddings), reference.embeddings())
    assert int(queue.size) == min(reference.count, capacity)
    assert int(queue.head) == reference.count % capacity


def test_nearest_neighbour_against_float64_brute_force():
  rng = np.random.default_rng(1)
  queue, reference = support_queue.empty(64, 8), _RingReference(64, 8)
  for _ in range(3):  # 48 of 64 rows written
    x = _unit(rng, (16, 8))
    queue, _ = support_queue.push(queue, x), reference.push(x)
  queries = _unit(rng, (32, 8))
  got = jax.jit(support_queue.nearest)(queue, queries)
  np.testing.assert_allclose(np.asarray(got), reference.nearest(queries), rtol=0, atol=1e-7)


def test_rows_not_yet_written_are_never_neighbours():
  """The unwritten rows are zeros, whose similarity 0 beats every written row for a query
  pointing away from all of them: they must still never be chosen."""
  queue = support_queue.push(support_queue.empty(8, 2), jnp.array([[1.0, 0.0], [0.0, 1.0]]))
  query = jnp.array([[-0.6, -0.8]])  # cosine −0.6 with row 0, −0.8 with row 1
  np.testing.assert_array_equal(np.asarray(support_queue.nearest_indices(queue, query)), [0])
  np.testing.assert_array_equal(np.asarray(support_queue.nearest(queue, query)), [[1.0, 0.0]])


def test_empty_queue_gives_each_row_itself_and_no_gradient_flows():
  x = jnp.asarray(_unit(np.random.default_rng(2), (4, 6)))
  empty = support_queue.empty(16, 6)
  np.testing.assert_array_equal(np.asarray(support_queue.nearest(empty, x)), np.asarray(x))
  full = support_queue.push(empty, x)
  grad = jax.grad(lambda v: jnp.sum(support_queue.nearest(full, v) ** 2))(x)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)
  grad = jax.grad(lambda v: jnp.sum(support_queue.push(empty, v).embeddings))(x)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_a_batch_larger_than_the_queue_is_refused():
  with pytest.raises(ValueError, match="nn_queue_size"):
    support_queue.push(support_queue.empty(4, 2), jnp.zeros((5, 2)))


def test_nnclr_loss_against_float64_reference():
  """§17.3: ½[NT-Xent(NN(â), b̂) + NT-Xent(NN(b̂), â)] with the nearest neighbours looked up in
  float64 by brute force; the raw embeddings need not be normalised."""
  config = spirograph_config.get_config("cpu")
  rng = np.random.default_rng(3)
  queue, reference = support_queue.empty(40, 5), _RingReference(40, 5)
  x = _unit(rng, (30, 5))
  queue, _ = support_queue.push(queue, x), reference.push(x)
  a, b = 3.0 * rng.standard_normal((2, 6, 5)).astype(np.float32)
  got = objective._contrastive(jnp.asarray(a), jnp.asarray(b), None, config, queue)
  tau = config.loss.temperature
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  want = 0.5 * (nt_xent_float64(reference.nearest(unit(a)), b, tau)
                + nt_xent_float64(reference.nearest(unit(b)), a, tau))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Without a queue the same call is plain NT-Xent.
  plain = objective._contrastive(jnp.asarray(a), jnp.asarray(b), None, config)
  np.testing.assert_allclose(float(plain), nt_xent_float64(a, b, tau), rtol=1e-5)
  unit_a, unit_b = losses.l2_normalize(jnp.asarray(a)), losses.l2_normalize(jnp.asarray(b))
  chex.assert_trees_all_close(plain, losses.nt_xent(unit_a, unit_b, tau))
