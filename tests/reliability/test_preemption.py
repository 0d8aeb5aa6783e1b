"""Preemption and kills of the real command line: SIGTERM saves, skips evaluation and exits 143
quickly; kill -9 at random moments (during training, during an async checkpoint write, during the
final evaluation) loses nothing; every rerun resumes bit-for-bit, and metrics.jsonl ends with each
step once and the same rows as an uninterrupted run, and so do the TensorBoard event files."""

import os
import random
import signal
import time

import pytest

from mclr_jax.train import checkpoint
from tests.reliability import harness
from tests.tiny import tensorboard_scalars

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_sigterm_saves_skips_evaluation_and_exits_143_then_resumes(tmp_path, cache_dir,
                                                                     reference):
  workdir = str(tmp_path)
  process = harness.start_cli(workdir, cache_dir=cache_dir)
  harness.wait_for(lambda: harness.train_rows(workdir), process=process)
  sent = time.monotonic()
  _, stderr = harness.kill(process, signal.SIGTERM)
  seconds = time.monotonic() - sent
  print(f"SIGTERM to exit: {seconds:.2f} s")
  assert process.returncode == 143, stderr[-4000:]
  line = harness.the_one_line(stderr)
  assert line.startswith("preempted: SIGTERM: saved a checkpoint at step "), line
  step = int(line.split("at step ")[1].split()[0])
  assert 0 < step < harness.TOTAL_STEPS
  assert not os.path.exists(os.path.join(workdir, "results.json"))  # no evaluation ran
  assert int(harness.latest_state(workdir).step) == step
  # Within one step plus the save: a tiny step is ~0.1 s, its save well under a few seconds.
  assert seconds < 15, seconds

  done = harness.run_cli(workdir, cache_dir=cache_dir)
  assert done.returncode == 0, done.stderr[-4000:]
  assert os.path.exists(os.path.join(workdir, "results.json"))
  harness.assert_same_state(harness.latest_state(workdir), reference["state"])
  assert harness.without_timing(harness.train_rows(workdir)) == harness.without_timing(
      reference["rows"])


def test_kill9_at_random_moments_resumes_exactly(tmp_path, cache_dir, reference):
  """Three kills: after a random logged row plus a random delay (so some land inside an async
  checkpoint write), after a later random row, and during the final evaluation (once the last
  checkpoint is committed); then a run to the end."""
  workdir = str(tmp_path)
  rng = random.Random(14)
  rows = len(reference["rows"])  # 6: one every 2 of the 12 steps
  first = rng.randint(1, rows // 2)
  kills = []
  for target in (first, rng.randint(first + 1, rows - 1)):
    process = harness.start_cli(workdir, cache_dir=cache_dir)
    harness.wait_for(lambda: len(harness.train_rows(workdir)) >= target, process=process)
    time.sleep(rng.uniform(0.0, 0.4))
    harness.kill(process)
    kills.append((f"after row {target}", process.returncode))
  process = harness.start_cli(workdir, cache_dir=cache_dir)
  last = os.path.join(workdir, "checkpoints", str(harness.TOTAL_STEPS))
  harness.wait_for(lambda: checkpoint.is_committed(last), process=process)
  time.sleep(0.5)
  harness.kill(process)
  kills.append(("during the final evaluation", process.returncode))
  print("kills:", kills)
  assert all(rc == -signal.SIGKILL for _, rc in kills), kills
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  done = harness.run_cli(workdir, cache_dir=cache_dir)
  assert done.returncode == 0, done.stderr[-4000:]
  harness.assert_same_state(harness.latest_state(workdir), reference["state"])
  rows = harness.train_rows(workdir)
  steps = [r["step"] for r in rows]
  assert steps == sorted(set(steps)) == [r["step"] for r in reference["rows"]]
  assert harness.without_timing(rows) == harness.without_timing(reference["rows"])
  tensorboard = tensorboard_scalars(workdir)
  if tensorboard is not None:  # the event files were truncated on each resume too
    # A row's event is flushed before its step's checkpoint starts, so every row is there, once.
    losses = [(step, value) for tag, step, value in tensorboard if tag == "loss"]
    assert [s for s, _ in losses] == steps, losses
    for (step, value), row in zip(losses, rows):
      assert value == pytest.approx(row["loss"], rel=1e-6), (step, value, row["loss"])
