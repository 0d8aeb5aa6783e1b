"""Fixtures of the fault-injection suite (slow tier): one compilation cache and one uninterrupted
reference run of the tiny command-line config, shared by every test of the suite."""

import pytest

from tests.reliability import harness


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="session")
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted run: {"workdir", "state" (final TrainState on the host), "rows"}."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  done = harness.run_cli(workdir, cache_dir=cache_dir)
  assert done.returncode == 0, done.stderr[-4000:]
  return {"workdir": workdir, "state": harness.latest_state(workdir),
          "rows": harness.train_rows(workdir)}
