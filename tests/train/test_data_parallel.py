"""Data parallelism: the step on a 4-device "data" mesh equals the step on one device (global
BatchNorm statistics and the global contrastive loss included)."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mclr_jax.train import create
from mclr_jax.train import data as data_lib
from mclr_jax.train.step import make_train_step
from tests.train.test_resume import fast_compiles, tiny_spirograph_config  # noqa: F401


def _run_step(devices, networks, tx, config, state, batch, rng):
  mesh = Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = jax.jit(make_train_step(networks, config, tx), in_shardings=(replicated, sharded, replicated),
                 out_shardings=(replicated, replicated))
  new_state, metrics = step(jax.device_put(state, replicated), jax.device_put(batch, sharded),
                            jax.device_put(rng, replicated))
  return jax.device_get(new_state), jax.device_get(metrics)


def test_four_devices_match_one_device(fast_compiles):
  if jax.device_count() < 4:
    pytest.skip("needs 4 (simulated) devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
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

  one_state, one_metrics = _run_step(jax.devices()[:1], networks, tx, config, state, batch, rng)
  four_state, four_metrics = _run_step(jax.devices()[:4], networks, tx, config, state, batch, rng)

  assert set(one_metrics) == set(four_metrics)
  for k in one_metrics:
    np.testing.assert_allclose(four_metrics[k], one_metrics[k], rtol=1e-5, atol=1e-5, err_msg=k)
  assert not any(v for k, v in one_metrics.items() if k.startswith("nonfinite/"))
  for tree, atol in (("params", 1e-6), ("batch_stats", 1e-5)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol),
                 getattr(four_state, tree), getattr(one_state, tree))
  # The step did change the params and BatchNorm statistics.
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), jax.device_get(state.params),
                       one_state.params)
  assert any(jax.tree.leaves(moved))
