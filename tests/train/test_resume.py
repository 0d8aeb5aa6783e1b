"""Kill-and-resume: a run stopped by SIGTERM and rerun ends bit-for-bit where an uninterrupted run
ends (same params, same second-half metrics), and a changed model config is refused on resume."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from mclr_jax.train import checkpoint
from mclr_jax.train import loop
from tests.tiny import read_metrics, tiny_spirograph_config

# Keys of metrics.jsonl that depend on wall time, not on the computation.
TIMING_KEYS = ("steps_per_sec", "images_per_sec", "eta_sec")


def _sigterm_after(monkeypatch, stop_step):
  """Sends this process SIGTERM when the loop checks the metrics of 0-based step `stop_step - 1`
  (i.e. after `stop_step` updates), as a cluster scheduler's preemption would."""
  check = loop._raise_if_nonfinite

  def check_then_signal(step, metrics):
    check(step, metrics)
    if step == stop_step - 1:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(loop, "_raise_if_nonfinite", check_then_signal)


def test_sigterm_then_rerun_matches_uninterrupted_run(tmp_path, monkeypatch, fast_compiles):
  k = 2
  config = tiny_spirograph_config(num_train_steps=2 * k)
  whole = loop.train_and_evaluate(config, str(tmp_path / "whole"))

  split_dir = str(tmp_path / "split")
  with monkeypatch.context() as patch:
    _sigterm_after(patch, k)
    first = loop.train_and_evaluate(config, split_dir)
  assert int(first.step) == k
  assert checkpoint.make_manager(split_dir, keep=3).latest_step() == k
  resumed = loop.train_and_evaluate(config, split_dir)

  assert int(resumed.step) == int(whole.step) == 2 * k
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               jax.device_get(resumed.params), jax.device_get(whole.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               jax.device_get(resumed.batch_stats), jax.device_get(whole.batch_stats))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               jax.device_get(resumed.opt_state), jax.device_get(whole.opt_state))
  # The second half moved the params, so the equality above is not that of two idle runs.
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), jax.device_get(first.params),
                       jax.device_get(whole.params))
  assert any(jax.tree.leaves(moved))

  whole_log = {r["step"]: r for r in read_metrics(str(tmp_path / "whole"))}
  split_log = {r["step"]: r for r in read_metrics(split_dir)}
  assert sorted(split_log) == sorted(whole_log) == list(range(1, 2 * k + 1))
  for step in range(k + 1, 2 * k + 1):
    for key, value in whole_log[step].items():
      if key not in TIMING_KEYS + ("kind",):
        np.testing.assert_allclose(split_log[step][key], value, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{key} at step {step}")


def test_resume_with_changed_model_config_is_refused(tmp_path):
  workdir = str(tmp_path)
  config = tiny_spirograph_config()
  checkpoint.write_config(workdir, config)
  changed = tiny_spirograph_config()
  changed.model.width = 8
  with pytest.raises(checkpoint.CheckpointError, match=workdir):
    loop.train_and_evaluate(changed, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["width"] == 4  # the run's record is untouched
