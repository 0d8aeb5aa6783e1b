"""NaN injection: whatever goes non-finite (Adam with eps = 0, a NaN learning rate, a NaN gradient
injected at one step) stops the run naming the step and the check, and no checkpoint on disk ever
holds a non-finite value. The config validation rejects eps = 0 and lr = nan up front, so these
runs switch it off to reach the step's own check."""

import jax
import jax.numpy as jnp
import pytest

from mclr_jax.train import loop
from mclr_jax.train import objective
from tests.reliability import harness
from tests.tiny import tiny_spirograph_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _config(**optim):
  config = tiny_spirograph_config(num_train_steps=6)
  config.checkpoint_every_steps = 1  # a save after every accepted step: the most chances to leak
  config.log_every_steps = 3
  config.optim.warmup_epochs = 0
  config.optim.update(optim)
  return config


@jax.custom_vjp
def _nan_gradient(x, poison):
  return x


def _nan_gradient_fwd(x, poison):
  return x, poison


def _nan_gradient_bwd(poison, g):
  return g * jnp.where(poison, jnp.nan, 1.0), None


_nan_gradient.defvjp(_nan_gradient_fwd, _nan_gradient_bwd)


@pytest.mark.parametrize("case", ["eps=0", "lr=nan", "nan gradient at step 3"])
def test_nonfinite_updates_stop_the_run_and_never_reach_a_checkpoint(case, tmp_path, monkeypatch,
                                                                     fast_compiles):
  monkeypatch.setattr(loop, "validate_config", lambda *a, **k: None)
  if case == "eps=0":
    # Adam's first update is m/√v = 0/0 wherever a gradient is exactly 0: here the stem weights
    # of the green channel, which a Spirograph drawn without green never lights.
    config, expected = _config(eps=0.0), r"Non-finite params .*at step 0\b"
    config.data.ranges.g_fore = config.data.ranges.g_back = (0.0, 0.0)
  elif case == "lr=nan":
    config, expected = _config(lr=float("nan")), r"Non-finite params .*at step 0\b"
  else:
    config, expected = _config(), r"Non-finite gradient .*at step 3\b"
    compute_loss = objective.compute_loss

    def poisoned(params, batch_stats, batch, rng, step, **kwargs):
      loss, aux = compute_loss(params, batch_stats, batch, rng, step, **kwargs)
      return _nan_gradient(loss, step == 3), aux

    monkeypatch.setattr(objective, "compute_loss", poisoned)
  workdir = str(tmp_path)
  with pytest.raises(loop.NonFiniteError, match=expected) as info:
    loop.train_and_evaluate(config, workdir)
  print(f"{case}: {info.value}")
  finite = harness.all_checkpoints_finite(workdir)
  assert all(finite.values()), finite
  if case == "nan gradient at step 3":
    assert sorted(finite) == [1, 2, 3]  # every accepted step saved, the refused one not
