"""Test-suite setup: several simulated CPU devices (for the data-parallel tests) and a slow marker."""

import os

# Must happen before JAX initialises its backends. Four host devices let the sharding tests run
# in-process; every other test runs on the first device as usual.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip_slow)


@pytest.fixture(scope="module")
def fast_cpu_compiles():
  """XLA's optimisations off for one test module: CPU compiles of the ResNet train step dominate the
  training tests, and unoptimised programs compute the same values to float tolerance."""
  import jax  # after XLA_FLAGS is set above
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
