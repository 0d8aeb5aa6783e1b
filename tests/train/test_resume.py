"""Kill-and-resume: a run stopped by SIGTERM and rerun ends bit-for-bit where an uninterrupted run
ends (same params, same second-half metrics), and a changed model config is refused on resume."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from configs import spirograph
from mclr_jax.train import checkpoint
from mclr_jax.train import loop
from mclr_jax.train import metrics as metrics_lib

# Keys of metrics.jsonl that depend on wall time, not on the computation.
TIMING_KEYS = ("steps_per_sec", "images_per_sec", "eta_sec")


def tiny_spirograph_config(method="simclr", num_train_steps=4):
  """Spirograph (no TensorFlow) with a width-4 ResNet-18 and tiny heads: seconds per step on CPU."""
  config = spirograph.get_config("manifoldclr" if method == "manifoldclr" else "cpu")
  config.model.width = 4
  config.model.proj_hidden_dim = 16
  config.model.proj_output_dim = 8
  config.batch_size = 16
  config.data.num_train = 64
  config.data.num_test = 16
  config.data.prefetch = 1
  config.num_train_steps = num_train_steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = 100
  config.eval_every_steps = 0
  config.manifold.block_dim = 8
  config.manifold.dictionary_size = 4
  config.manifold.encoder_hidden = (16, 16, 8)
  config.manifold.prior_hidden = (16, 16, 8)
  return config


@pytest.fixture(scope="module")
def fast_compiles(tmp_path_factory, fast_cpu_compiles):
  """Unoptimised CPU compiles (conftest's `fast_cpu_compiles`), a session-wide persistent
  compilation cache (repeated runs of one config compile once), and no TensorBoard writer (it would
  import TensorFlow)."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: jax.config.values[n] for n in names}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.getbasetemp() / "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(metrics_lib, "TensorBoardWriter", _NoTensorBoard)
    yield
  for n, v in old.items():
    jax.config.update(n, v)


class _NoTensorBoard:

  def __init__(self, logdir):
    del logdir

  def write(self, step, scalars):
    del step, scalars

  def flush(self):
    pass


def read_metrics(workdir, kind="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if r["kind"] == kind]


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
