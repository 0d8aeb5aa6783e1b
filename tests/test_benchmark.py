"""experiments/benchmark.py at tiny sizes on CPU: the JSON it writes is complete and its numbers are
sane. Nothing here asserts a speed (CPU timings on shared cores mean nothing)."""

import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "benchmark.py"
_spec = importlib.util.spec_from_file_location("benchmark", _PATH)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

ROW_FIELDS = ("case", "device_kind", "jax_version", "batch", "precision", "median_ms",
              "images_per_sec", "compile_s", "peak_bytes", "mfu", "input_bound_ratio")


def _positive_finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_expm_case_writes_one_row_per_method_and_dtype(tmp_path):
  out = tmp_path / "expm.json"
  benchmark.main(["--case=expm", "--tiny", "--expm_shapes=2x4x3", "--steps=2", "--warmup=1",
                  f"--out={out}"])
  rows = json.loads(out.read_text())
  assert {(r["case"], r["precision"]) for r in rows} == {
      ("expm/jax_scipy_expm", "fp32"), ("expm/taylor_expm", "fp32"), ("expm/expm_action", "fp32"),
      ("expm/expm_action", "bf16")}
  for row in rows:
    assert set(ROW_FIELDS) <= set(row)
    assert row["shape"] == [2, 4, 3, benchmark.TINY["block_dim"], benchmark.TINY["block_dim"]]
    assert row["jax_version"] == jax.__version__
    for key in ("median_ms", "p10_ms", "p90_ms", "compile_s"):
      assert _positive_finite(row[key]), (key, row)
    assert row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]


def test_compiled_flops_matches_matmul_closed_form():
  # XLA's cost model for an (n, n) @ (n, n) product is 2n³ FLOPs: the MFU numerator is this count.
  n = 32
  x = jnp.ones((n, n))
  compiled = jax.jit(lambda a, b: a @ b).lower(x, x).compile()
  assert benchmark.compiled_flops(compiled) == pytest.approx(2 * n**3, rel=0.05)


def test_peak_flops_uses_override_then_table_then_none():
  assert benchmark.peak_flops_per_second("cpu", "fp32", 0.0) is None
  assert benchmark.peak_flops_per_second("NVIDIA H100 80GB HBM3", "bf16", 0.0) == 989e12
  assert benchmark.peak_flops_per_second("NVIDIA H100 80GB HBM3", "fp32", 0.0) == 494e12
  assert benchmark.peak_flops_per_second("cpu", "fp32", 2.5) == 2.5e12


def test_parse_shapes_rejects_malformed_entries():
  assert benchmark.parse_shapes("20x512x8,3x4x5") == [(20, 512, 8), (3, 4, 5)]
  with pytest.raises(ValueError, match="JxBxK"):
    benchmark.parse_shapes("20x512")


def test_tiny_configs_are_the_named_cases():
  # thresh cases must run best-of-J in the timed step (step 0 >= best_of_j_start).
  config = benchmark.load_config(benchmark.CASES["thresh_stl_j100"], tiny=False,
                                 half_precision=True, batch_size=512)
  assert (config.manifold.num_samples, config.manifold.best_of_j_start) == (100, 0)
  assert (config.manifold.dictionary_size, config.data.name, config.half_precision) == (
      128, "stl10", True)
  tiny = benchmark.load_config(benchmark.CASES["manifoldclr_c10"], tiny=True,
                               half_precision=False, batch_size=512)
  assert (tiny.batch_size, tiny.model.width, tiny.manifold.block_dim) == (16, 4, 8)


@pytest.mark.slow
def test_train_step_case_writes_complete_row(tmp_path):
  # One tiny case end to end (the real step and every breakdown part): about a minute on 2 cores.
  out = tmp_path / "bench.json"
  benchmark.main(["--case=thresh_stl_j20", "--tiny", "--steps=2", "--warmup=1", f"--out={out}"])
  (row,) = json.loads(out.read_text())
  assert set(ROW_FIELDS) <= set(row)
  assert (row["case"], row["batch"], row["precision"]) == ("thresh_stl_j20", 16, "fp32")
  for key in ("median_ms", "images_per_sec", "compile_s", "input_bound_ratio", "flops"):
    assert _positive_finite(row[key]), (key, row)
  # Images/s counts both views: 2·B per step.
  assert row["images_per_sec"] == pytest.approx(2 * 16 / (row["median_ms"] / 1e3))
  assert row["mfu"] is None and row["peak_bytes"] is None  # CPU: no peak FLOP/s, no memory stats
  assert set(row["breakdown_ms"]) == {
      "backbone_fwd_bwd", "coeff_nets_fwd_bwd", "transport_fwd_bwd_taylor",
      "transport_fwd_bwd_pade", "best_of_j_action", "best_of_j_action_bf16", "best_of_j_taylor"}
  assert all(_positive_finite(ms) for ms in row["breakdown_ms"].values())


def test_set_overrides_typed_values_and_rejects_unknown_keys():
  config = benchmark.load_config(benchmark.CASES["thresh_stl_j20"], tiny=True,
                                 half_precision=False, batch_size=512)
  benchmark.apply_overrides(config, ["manifold.best_of_j_dtype=bfloat16", "manifold.num_samples=7",
                                     "loss.kl_weight=2e-5"])
  assert (config.manifold.best_of_j_dtype, config.manifold.num_samples) == ("bfloat16", 7)
  assert config.loss.kl_weight == 2e-5
  with pytest.raises(ValueError, match="no key"):
    benchmark.apply_overrides(config, ["manifold.best_of_j_dtpye=bfloat16"])
  with pytest.raises(ValueError, match="KEY=VALUE"):
    benchmark.apply_overrides(config, ["manifold.num_samples"])
