"""Data parallelism: one ManifoldCLR step on 1, 2, 4 and 8 devices gives the same numbers (global
BatchNorm statistics, the global contrastive loss and the replicated update included), and two steps
with the nearest-neighbour support queue give the same numbers, queue included, on 1 and 4.

The comparison runs in a subprocess with eight simulated CPU devices, so the rest of the suite keeps
its own device count; `python -m tests.train.test_data_parallel OUT.npz` runs that half alone.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

DEVICE_COUNTS = (1, 2, 4, 8)
QUEUE_DEVICE_COUNTS = (1, 4)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flat(prefix, tree):
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {f"{prefix}{jax.tree_util.keystr(path)}": np.asarray(leaf) for path, leaf in leaves}


def run_steps(out_path):
  """Runs one step on a mesh of each size in DEVICE_COUNTS; saves metrics and the new state."""
  import jax
  from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

  from mclr_jax.train import create
  from mclr_jax.train import data as data_lib
  from mclr_jax.train.step import make_train_step
  from tests.tiny import tiny_spirograph_config

  if jax.device_count() < max(DEVICE_COUNTS):
    raise SystemExit(f"needs {max(DEVICE_COUNTS)} devices, has {jax.device_count()}: set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={max(DEVICE_COUNTS)}")
  jax.config.update("jax_disable_most_optimizations", True)  # CPU compile time; same values
  config = tiny_spirograph_config("manifoldclr")
  config.optim.warmup_epochs = 0  # a non-zero learning rate at step 0, so the update is visible
  # Adam's first step is lr·g/(|g|+eps): with the default eps a near-zero gradient entry gets a
  # ±lr update whose sign is reduction-order noise. eps = 1 makes the update smooth in g, so the
  # comparison tests the gradients themselves.
  config.optim.eps = 1.0
  train_data = data_lib.make_train_data(config)
  networks, state, tx, _ = create.create_train_state(config, jax.random.key(0),
                                                     train_data.steps_per_epoch)
  batch = next(train_data.make_iterator(0))
  rng = jax.random.key(1)
  arrays = _flat("init/", {"params": state.params, "batch_stats": state.batch_stats})

  def on_mesh(n, networks, tx):
    """(the train step jitted over a mesh of the first n devices, replicated, sharded)."""
    mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",), axis_types=(AxisType.Auto,))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(make_train_step(networks, config, tx),
                   in_shardings=(replicated, sharded, replicated),
                   out_shardings=(replicated, replicated))
    return step, replicated, sharded

  for n in DEVICE_COUNTS:
    step, replicated, sharded = on_mesh(n, networks, tx)
    new_state, metrics = step(jax.device_put(state, replicated), jax.device_put(batch, sharded),
                              jax.device_put(rng, replicated))
    arrays.update(_flat(f"{n}/metrics", metrics))
    arrays.update(_flat(f"{n}/state", {"params": new_state.params,
                                       "batch_stats": new_state.batch_stats}))

  # Nearest-neighbour positives (docs/method.md §17.3): the support queue is replicated state.
  # Two steps, so the second looks its positives up in rows the first pushed from every shard.
  config.loss.nn_queue_size = 2 * config.batch_size
  networks, state, tx, _ = create.create_train_state(config, jax.random.key(0),
                                                     train_data.steps_per_epoch)
  batches = train_data.make_iterator(0)
  two = [next(batches), next(batches)]
  for n in QUEUE_DEVICE_COUNTS:
    step, replicated, sharded = on_mesh(n, networks, tx)
    current = jax.device_put(state, replicated)
    for i, b in enumerate(two):
      current, metrics = step(current, jax.device_put(b, sharded),
                              jax.device_put(jax.random.fold_in(rng, i), replicated))
    arrays.update(_flat(f"queue{n}/metrics", metrics))
    arrays.update(_flat(f"queue{n}/state", {"params": current.params, "queue": current.queue}))
  np.savez(out_path, **arrays)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_one_two_four_eight_devices_agree(tmp_path):
  out = tmp_path / "steps.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={max(DEVICE_COUNTS)}")
  done = subprocess.run([sys.executable, "-m", "tests.train.test_data_parallel", str(out)],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  arrays = dict(np.load(out))

  def group(prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

  # With the support queue: the same two steps on 4 devices as on 1, the queue included.
  one_q, four_q = group("queue1/"), group("queue4/")
  assert one_q and set(one_q) == set(four_q)
  queue_rows = [k for k in one_q if k.startswith("state['queue']")]
  assert queue_rows, sorted(one_q)
  for k, v in one_q.items():
    atol = 1e-6 if k.startswith("state['params']") else 1e-5
    np.testing.assert_allclose(four_q[k], v, rtol=1e-5, atol=atol, err_msg=f"queue, 4 devices: {k}")

  one = group("1/")
  assert one and not any(v for k, v in one.items() if "nonfinite/" in k)
  for n in DEVICE_COUNTS[1:]:
    other = group(f"{n}/")
    assert set(other) == set(one)
    for k, v in one.items():
      atol = 1e-6 if k.startswith("state['params']") else 1e-5
      np.testing.assert_allclose(other[k], v, rtol=1e-5, atol=atol, err_msg=f"{n} devices: {k}")
  # The step did change the parameters and the BatchNorm statistics: the comparison is not vacuous.
  init = group("init/")
  for tree in ("params", "batch_stats"):
    moved = [not np.allclose(one[f"state{k}"], v) for k, v in init.items() if k.startswith(f"['{tree}']")]
    assert moved and any(moved), tree


if __name__ == "__main__":
  run_steps(sys.argv[1])
