"""Multi-host for real, on one machine: two processes joined by `jax.distributed.initialize` on
localhost (CPU collectives over gloo), against one process with two devices.

- 2 processes × 1 device train to the same parameters as 1 process × 2 devices;
- each process reads a disjoint slice of every global batch, and the slices make up the batch;
- SIGTERM to one process of the pair stops both cleanly (exit 143, one checkpoint), and that
  checkpoint resumes on a single process; a single process's checkpoint resumes on the pair.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.reliability import harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TWO_DEVICES = "--xla_force_host_platform_device_count=2"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _pair(command, cache_dir):
  """Starts process 0 and 1 of `command(process_id, port)`; returns the two Popen objects."""
  port = _free_port()
  return [subprocess.Popen(command(i, port), cwd=harness.REPO_ROOT, env=harness.cli_env(cache_dir),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in (0, 1)]


def _wait_all(processes, timeout=1500):
  outs = [p.communicate(timeout=timeout) for p in processes]
  return [(p.returncode, err) for p, (_, err) in zip(processes, outs)]


def _worker(workdir, out, *extra):
  return [sys.executable, "-m", "tests.reliability.multihost_worker", str(workdir), str(out),
          *extra]


def _distributed_cli(workdir):
  return lambda i, port: harness.cli_args(
      workdir, "--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2",
      f"--process_id={i}")


def _params(npz):
  return {k: v for k, v in npz.items() if k.startswith("params/")}


def test_two_processes_match_one_process_with_two_devices(tmp_path, cache_dir):
  pair = _pair(lambda i, port: _worker(tmp_path / "pair", tmp_path / f"pair{i}.npz",
                                       f"--process_id={i}", "--num_processes=2", f"--port={port}"),
               cache_dir)
  for rc, err in _wait_all(pair):
    assert rc == 0, err[-4000:]
  single = subprocess.run(_worker(tmp_path / "single", tmp_path / "single.npz"),
                          cwd=harness.REPO_ROOT,
                          env=harness.cli_env(cache_dir, XLA_FLAGS=TWO_DEVICES),
                          capture_output=True, text=True, timeout=1500)
  assert single.returncode == 0, single.stderr[-4000:]
  p0, p1 = np.load(tmp_path / "pair0.npz"), np.load(tmp_path / "pair1.npz")
  one = np.load(tmp_path / "single.npz")

  # Each process read half of every global batch; the halves are disjoint and, in order, are
  # exactly the batch the single process read.
  assert p0["batches"].shape == p1["batches"].shape == (
      one["batches"].shape[0], one["batches"].shape[1] // 2, one["batches"].shape[2])
  for step in range(one["batches"].shape[0]):
    a, b = p0["batches"][step], p1["batches"][step]
    assert not {tuple(r) for r in a} & {tuple(r) for r in b}, step
    np.testing.assert_array_equal(np.concatenate([a, b]), one["batches"][step])
  # The same global computation: the same parameters, to float32 reduction-order noise.
  assert _params(p0).keys() == _params(one).keys()
  for k, v in _params(one).items():
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # replicated: identical on both
    np.testing.assert_allclose(p0[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.fixture(scope="module")
def two_device_reference(tmp_path_factory, cache_dir):
  """An uninterrupted one-process, two-device run: the pair computes what it computes (the test
  above), where a one-device run differs by float32 reduction order amplified by Adam."""
  workdir = str(tmp_path_factory.mktemp("two_devices"))
  done = harness.run_cli(workdir, cache_dir=cache_dir,
                         env=harness.cli_env(cache_dir, XLA_FLAGS=TWO_DEVICES))
  assert done.returncode == 0, done.stderr[-4000:]
  return {"workdir": workdir, "state": harness.latest_state(workdir),
          "rows": harness.train_rows(workdir)}


def test_sigterm_to_one_process_stops_both_and_checkpoints_cross_over(tmp_path, cache_dir,
                                                                      two_device_reference):
  reference = two_device_reference
  workdir = str(tmp_path / "pair")
  pair = _pair(_distributed_cli(workdir), cache_dir)
  harness.wait_for(lambda: harness.train_rows(workdir), process=pair[0])
  sent = time.monotonic()
  pair[1].send_signal(signal.SIGTERM)  # only process 1 is told
  results = _wait_all(pair)
  print(f"pair stopped {time.monotonic() - sent:.2f} s after SIGTERM to process 1: "
        f"{[rc for rc, _ in results]}")
  for rc, err in results:
    assert rc == 143, err[-4000:]
    assert harness.the_one_line(err).startswith("preempted: SIGTERM: saved a checkpoint at step ")
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  step = int(harness.latest_state(workdir).step)
  assert 0 < step < harness.TOTAL_STEPS

  # The pair's checkpoint resumes on one process (two local devices) and finishes.
  done = harness.run_cli(workdir, cache_dir=cache_dir,
                         env=harness.cli_env(cache_dir, XLA_FLAGS=TWO_DEVICES))
  assert done.returncode == 0, done.stderr[-4000:]
  _assert_close_to_reference(workdir, reference)

  # And a single process's checkpoint (the two-device run's step-4 one) resumes on the pair.
  workdir = str(tmp_path / "from_single")
  shutil.copytree(reference["workdir"], workdir)
  for later in (8, 12):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(later)))
  for rc, err in _wait_all(_pair(_distributed_cli(workdir), cache_dir)):
    assert rc == 0, err[-4000:]
  _assert_close_to_reference(workdir, reference)
  steps = [r["step"] for r in harness.train_rows(workdir)]
  assert steps == [r["step"] for r in reference["rows"]]  # each step once


def _assert_close_to_reference(workdir, reference):
  import jax  # pylint: disable=g-import-not-at-top
  state = harness.latest_state(workdir)
  assert int(state.step) == harness.TOTAL_STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               state.params, reference["state"].params)
