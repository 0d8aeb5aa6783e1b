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


def test_expm_methods_selects_a_subset(tmp_path):
  # The J = 100 shape runs the action alone: the dense exponentials would not fit beside it.
  out = tmp_path / "expm.json"
  benchmark.main(["--case=expm", "--tiny", "--expm_shapes=2x4x3", "--expm_methods=expm_action",
                  "--steps=1", "--warmup=0", f"--out={out}"])
  assert {(r["case"], r["precision"]) for r in json.loads(out.read_text())} == {
      ("expm/expm_action", "fp32"), ("expm/expm_action", "bf16")}
  with pytest.raises(ValueError, match="expm_methods"):
    benchmark.main(["--case=expm", "--tiny", "--expm_methods=eig", f"--out={out}"])


def test_compiled_flops_matches_matmul_closed_form():
  # XLA's cost model for an (n, n) @ (n, n) product is 2n³ FLOPs: the MFU numerator is this count,
  # taken from the lowered program (what the benchmark passes) or the compiled one.
  n = 32
  x = jnp.ones((n, n))
  lowered = jax.jit(lambda a, b: a @ b).lower(x, x)
  assert benchmark.compiled_flops(lowered) == pytest.approx(2 * n**3, rel=0.05)
  assert benchmark.compiled_flops(lowered.compile()) == pytest.approx(2 * n**3, rel=0.05)


def test_lowered_flops_count_convolutions():
  # A 3×3 convolution, (1, 8, 8, 4) -> (1, 8, 8, 5) with SAME padding: 2·H·W·kh·kw·Cin·Cout FLOPs
  # (interior pixels; the border does fewer MACs, so the count lies between 0.5 and 1 of this).
  x = jnp.ones((1, 8, 8, 4))
  w = jnp.ones((3, 3, 4, 5))
  conv = lambda a, k: jax.lax.conv_general_dilated(a, k, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  flops = benchmark.compiled_flops(jax.jit(conv).lower(x, w))
  full = 2 * 8 * 8 * 3 * 3 * 4 * 5
  assert 0.5 * full <= flops <= 1.05 * full


def test_peak_flops_table_matches_the_data_sheet_ratios():
  # Dense tensor-core peaks: bf16 is twice TF32 on Ampere and Hopper, and the H200 is the H100's
  # chip (same peaks). A typo in the table would show as a broken ratio.
  h100, h200, a100 = (benchmark.PEAK_FLOPS[k] for k in ("H100", "H200", "A100"))
  for peaks in (h100, a100):
    assert peaks["bf16"] == pytest.approx(2 * peaks["fp32"], rel=0.01)
  assert h200 == h100
  # Device kinds as JAX reports them select their row; an unknown device (the CPU) has no peak,
  # so MFU is left out rather than made up.
  assert benchmark.peak_flops_per_second("NVIDIA H100 80GB HBM3", "bf16", 0.0) == h100["bf16"]
  assert benchmark.peak_flops_per_second("NVIDIA A100-SXM4-40GB", "fp32", 0.0) == a100["fp32"]
  assert benchmark.peak_flops_per_second("cpu", "fp32", 0.0) is None


def test_time_dispatch_does_not_wait_for_the_device():
  # A step-sized computation (~0.1-1 s of matrix products on a CPU): with asynchronous dispatch the
  # call returns long before the work is done, so the return time must be a small part of the
  # per-call wall time. A timer that waited for each call would report them equal.
  x = jnp.ones((512, 512)) / 512

  @jax.jit
  def work(x):
    return jax.lax.fori_loop(0, 30, lambda _, y: jnp.tanh(y @ x), x)

  jax.block_until_ready(work(x))
  dispatch_s, per_call_s = benchmark.time_dispatch(lambda: work(x), steps=3)
  assert 0 < dispatch_s < 0.2 * per_call_s, (dispatch_s, per_call_s)


def test_parse_shapes_rejects_malformed_entries():
  assert benchmark.parse_shapes("20x512x8,3x4x5") == [(20, 512, 8), (3, 4, 5)]
  for bad in ("20x512", "20xabcx8", "0x512x8"):
    with pytest.raises(benchmark.BenchmarkError, match="JxBxK"):
      benchmark.parse_shapes(bad)


def test_bad_requests_fail_before_any_timing_work(tmp_path, monkeypatch):
  def no_work(*args, **kwargs):
    raise AssertionError("timing work started")
  monkeypatch.setattr(benchmark, "benchmark_expm", no_work)
  monkeypatch.setattr(benchmark, "benchmark_train_step", no_work)
  with pytest.raises(benchmark.BenchmarkError, match="does not exist"):
    benchmark.main(["--case=expm", "--tiny", f"--out={tmp_path}/missing/rows.json"])
  with pytest.raises(benchmark.BenchmarkError, match="unknown names"):
    benchmark.main(["--case=simclr_c10,bogus", "--tiny", f"--out={tmp_path}/rows.json"])


def test_thresh_cases_run_best_of_j_in_the_timed_step():
  # The goal cases time best-of-J, which the configs switch on only from step 5000.
  for name, j in (("thresh_stl_j20", 20), ("thresh_stl_j100", 100)):
    config = benchmark.load_config(benchmark.CASES[name], tiny=False, half_precision=True,
                                   batch_size=512)
    assert config.manifold.num_samples == j
    assert config.manifold.best_of_j_start <= 0  # step 0 of the benchmark already selects
    assert (config.batch_size, config.half_precision) == (512, True)


@pytest.mark.parametrize("name", sorted(benchmark.CASES))
def test_tiny_case_takes_the_same_code_paths_as_the_full_one(name):
  # --tiny may shrink sizes, never change what the step does: same method, losses, projection,
  # expm and selection methods, best-of-J on or off alike, same dataset and image size.
  full, tiny = (benchmark.load_config(benchmark.CASES[name], tiny=t, half_precision=False,
                                      batch_size=512) for t in (False, True))
  sizes = {"batch_size", "model.width", "model.proj_hidden_dim", "model.proj_output_dim",
           "manifold.block_dim", "manifold.dictionary_size", "manifold.encoder_hidden",
           "manifold.prior_hidden", "manifold.num_samples"}

  def flat(config, prefix=""):
    out = {}
    for key, value in config.items():
      if hasattr(value, "items"):
        out.update(flat(value, f"{prefix}{key}."))
      else:
        out[f"{prefix}{key}"] = value
    return out

  full_items, tiny_items = flat(full), flat(tiny)
  changed = {k for k in full_items if full_items[k] != tiny_items[k]}
  assert changed <= sizes, changed - sizes
  assert (full.manifold.num_samples > 1) == (tiny.manifold.num_samples > 1)
  assert tiny.batch_size < full.batch_size and tiny.model.width < full.model.width


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
  # The host's side: time for the step call to return, against back-to-back steps.
  for key in ("dispatch_ms", "pipelined_ms", "host_overhead_ratio"):
    assert _positive_finite(row[key]), (key, row)
  assert row["host_overhead_ratio"] == pytest.approx(row["dispatch_ms"] / row["pipelined_ms"])
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
  with pytest.raises(benchmark.BenchmarkError, match="no key"):
    benchmark.apply_overrides(config, ["manifold.best_of_j_dtpye=bfloat16"])
  with pytest.raises(benchmark.BenchmarkError, match="no key"):
    benchmark.apply_overrides(config, ["no_section.num_samples=3"])
  with pytest.raises(ValueError, match="KEY=VALUE"):
    benchmark.apply_overrides(config, ["manifold.num_samples"])
