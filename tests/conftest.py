"""Test-suite setup: the `slow` and `gpu` tiers and the fixtures shared by the training tests.

Tiers: the default run (`python -m pytest -n 2 -q tests`) skips tests marked `slow` (training to a
result, multi-device and multi-process runs, benchmark plumbing); `--runslow` adds them. Tests
marked `gpu` need an accelerator and are skipped on a CPU-only JAX; `pytest -m gpu tests/gpu` on
a GPU machine runs exactly them (`MCLR_GPU_TESTS_ON_CPU=1` runs them on the CPU instead). Devices
are simulated only by the tests that need several, each in a subprocess of its own, so every other
test runs on the one CPU device.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="also run the tests marked slow")


def _accelerator_backend() -> bool:
  # MCLR_GPU_TESTS_ON_CPU=1 runs the gpu tier on the CPU, to check its logic where no GPU is.
  if os.environ.get("MCLR_GPU_TESTS_ON_CPU") == "1":
    return True
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend() != "cpu"


def pytest_collection_modifyitems(config, items):
  skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
  skip_gpu = pytest.mark.skip(reason="gpu: needs an accelerator backend (JAX found only the CPU)")
  runslow = config.getoption("--runslow")
  has_accelerator = None
  for item in items:
    if "slow" in item.keywords and not runslow:
      item.add_marker(skip_slow)
    if "gpu" in item.keywords:
      if has_accelerator is None:
        has_accelerator = _accelerator_backend()
      if not has_accelerator:
        item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def fast_cpu_compiles():
  """XLA's optimisations off for one test module: CPU compiles of the ResNet train step dominate the
  training tests, and unoptimised programs compute the same values to float tolerance."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def float64():
  """x64 on for one test (float64 references built with jnp); restored afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    yield


class _NoTensorBoard:
  """Stands in for the TensorBoard writer, which would import TensorFlow."""

  dropped = 0

  def __init__(self, logdir, resume_step=None):
    del logdir, resume_step

  def write(self, step, scalars):
    del step, scalars

  def close(self):
    pass


@pytest.fixture(scope="module")
def fast_compiles(tmp_path_factory, fast_cpu_compiles):
  """For tests that run the training loop: unoptimised CPU compiles, a persistent compilation cache
  shared by the module (repeated runs of one config compile once), and no TensorBoard writer."""
  import jax  # pylint: disable=g-import-not-at-top
  from mclr_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  del fast_cpu_compiles
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
