"""Fixtures of the accelerator checks (`pytest -m gpu tests/gpu`, run by experiments/gpu_report.py).

Each check computes on the accelerator and compares against a reference computed on the host:
float64 numpy/scipy for the matrix exponential, the transport and best-of-J, and JAX's CPU backend
(`jax.devices("cpu")`, present beside the GPU in every JAX install) for the training step.
`MCLR_GPU_TESTS_ON_CPU=1` runs them on a CPU-only JAX (the accelerator is then the CPU itself), so
their logic is checked where no GPU is. `MCLR_NUMERICS_LOG=FILE` appends every measured error and
its tolerance to FILE as JSON lines, for the report.
"""

import json
import os

import jax
import pytest


@pytest.fixture(scope="session")
def accelerator():
  """The device the checks run on: the default backend's first device."""
  return jax.devices()[0]


@pytest.fixture(scope="session")
def host():
  """The host's CPU device, where the references are computed."""
  return jax.devices("cpu")[0]


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles_on_a_cpu_only_jax():
  """On a CPU-only JAX (the opt-in dry run) compile without XLA's optimisations, as the CPU tests
  do: unoptimised programs compute the same values to float tolerance, and compile much faster.
  On a GPU machine the accelerator's programs are compiled as training compiles them."""
  if jax.default_backend() != "cpu":
    yield
    return
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def record(request, accelerator):
  """record(name, measured, tolerance): logs one measured error for the report (no assertion)."""
  path = os.environ.get("MCLR_NUMERICS_LOG")

  def write(name, measured, tolerance=None):
    if not path:
      return
    entry = dict(test=request.node.nodeid, check=name, measured=float(measured),
                 tolerance=None if tolerance is None else float(tolerance),
                 device=accelerator.device_kind, platform=accelerator.platform)
    with open(path, "a") as f:
      f.write(json.dumps(entry) + "\n")

  return write
