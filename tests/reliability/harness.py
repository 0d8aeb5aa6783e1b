"""Running the real command line on the tiny Spirograph config, and reading what it left behind.

Every run of the reliability suite uses the same config file (tiny_config.py, 12 steps), so the
persistent compilation cache shared by the suite serves every run after the first.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "tests/reliability/tiny_config.py"
TOTAL_STEPS = 12
TIMING_KEYS = ("steps_per_sec", "images_per_sec", "eta_sec", "step_ms", "dispatch_ms")

# absl's and the XLA/TF runtime's log lines: "I1126 12:00:00.123456 1234 file.py:12] ...".
_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^ ]+:\d+\] ")
_RUNTIME_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"


def cli_env(cache_dir, **extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def cli_args(workdir, *overrides, config=CONFIG, module="mclr_jax.main"):
  return [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}", *overrides]


def run_cli(workdir, *overrides, cache_dir, timeout=900, env=None, **kwargs):
  return subprocess.run(cli_args(workdir, *overrides, **kwargs), cwd=REPO_ROOT,
                        env=env or cli_env(cache_dir), capture_output=True, text=True,
                        timeout=timeout)


def start_cli(workdir, *overrides, cache_dir, env=None, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(cli_args(workdir, *overrides, **kwargs), cwd=REPO_ROOT,
                          env=env or cli_env(cache_dir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def message_lines(stderr: str) -> list[str]:
  """The lines of stderr that are not log records: what the program itself printed."""
  return [line for line in stderr.splitlines()
          if line.strip() and not _LOG_LINE.match(line) and not line.startswith(_RUNTIME_NOTICE)]


def the_one_line(stderr: str) -> str:
  """Asserts that a failed run printed exactly one line besides its log records; returns it."""
  lines = message_lines(stderr)
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-4000:]
  return lines[0]


def wait_for(predicate, timeout=600.0, interval=0.05, process=None):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if process is not None and process.poll() is not None:
      return predicate()
    time.sleep(interval)
  raise TimeoutError("condition not reached")


def train_rows(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["kind"] == "train"]


def without_timing(rows):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def kill(process: subprocess.Popen, sig=signal.SIGKILL):
  if process.poll() is None:
    os.kill(process.pid, sig)
  return process.communicate(timeout=600)


def latest_state(workdir, step=None):
  """The TrainState of WORKDIR's latest (or given) committed checkpoint, on the host."""
  from mclr_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from mclr_jax.train import create  # pylint: disable=g-import-not-at-top
  config = checkpoint.read_config(workdir)
  _, abstract = create.abstract_train_state(config, steps_per_epoch=4)
  # Restored onto this process's device, whatever devices wrote it (a pair of processes, say).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  manager = checkpoint.make_manager(workdir, keep=10, async_save=False)
  try:
    return jax.device_get(checkpoint.restore_latest(manager, abstract, step))
  finally:
    manager.close()


def all_checkpoints_finite(workdir) -> dict:
  """{step: every float in that committed checkpoint is finite}."""
  from mclr_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint.make_manager(workdir, keep=10, async_save=False)
  steps = checkpoint.committed_steps(manager)
  manager.close()
  out = {}
  for step in steps:
    leaves = jax.tree.leaves(latest_state(workdir, step))
    out[step] = all(np.all(np.isfinite(x)) for x in leaves
                    if np.issubdtype(np.asarray(x).dtype, np.inexact))
  return out


def assert_same_state(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)
