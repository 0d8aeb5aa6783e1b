"""experiments/gpu_report.py: the time caps hold, the comparison's arithmetic is right, and the dry
run goes through every part on the CPU (slow tier)."""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys
import time

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "gpu_report.py"
_spec = importlib.util.spec_from_file_location("gpu_report", _PATH)
gpu_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_report)


def _row(case, precision, median_ms, **extra):
  return dict(case=case, precision=precision, median_ms=median_ms, platform="gpu", num_devices=1,
              peak_bytes=extra.pop("peak_gib", 1) * 2**30, **extra)


def test_compare_against_hand_computed_ratios():
  rows = [_row("simclr_c10", "bf16", 38.0, mfu=0.2), _row("simclr_c10", "fp32", 57.0),
          _row("thresh_stl_j100", "bf16", 150.0, peak_gib=60),
          _row("thresh_stl_j20", "bf16", 76.0, breakdown_ms={
              "transport_fwd_bwd_taylor": 1.5, "transport_fwd_bwd_pade": 4.5,
              "best_of_j_action": 19.0, "best_of_j_action_bf16": 9.5}),
          dict(_row("expm/expm_action", "bf16", 8.5), shape=[20, 512, 8, 64, 64])]
  result = gpu_report.compare({"bench": {"rows": rows}})
  goals = {g["case"]: g for g in result["goals"]}
  simclr = goals["simclr_c10"]
  assert simclr["best_ms"] == 38.0 and simclr["best_over_goal"] == pytest.approx(38 / 19)
  assert simclr["speedup_vs_ref_fp32"] == pytest.approx(1.0)  # 57 ms, theirs 57 ms
  assert simclr["speedup_vs_ref_bf16"] == pytest.approx(49 / 38)
  assert simclr["goal_met"] is False
  # J = 100: no reference of theirs; the goal is to fit and beat 152 ms.
  assert goals["thresh_stl_j100"]["goal_met"] is True
  assert goals["thresh_stl_j100"]["speedup_vs_ref_fp32"] is None
  assert goals["thresh_stl_j100"]["peak_gib"] == pytest.approx(60)
  assert goals["manifoldclr_c10"]["goal_met"] is None  # not measured is not "missed"
  assert result["mfu"]["measured"] == 0.2 and result["mfu"]["goal_met"] is False
  expm = {(e["J"], e["method"], e["precision"]): e for e in result["expm"]}
  assert expm[20, "expm/expm_action", "bf16"]["speedup"] == pytest.approx(17 / 8.5)
  assert expm[100, "expm/expm_action", "bf16"]["ms"] is None
  decisions = result["decisions"]
  assert decisions["pallas"]["action_share"] == pytest.approx(19 / 76)
  assert decisions["bf16_default"]["fp32_over_bf16_time"]["simclr_c10"] == pytest.approx(57 / 38)
  json.dumps(result)  # the report stores it as JSON
  markdown = gpu_report.render_markdown(dict(
      command="c", dry_run=False, started="s", host="h", budget_s=1,
      parts={"bench": {"rows": rows, "cases": []}, "compare": result}))
  assert "| SimCLR, 32 px | 38.0 | 57.0 | 57 | 49 | ≤ 19 | 2.00 |" in markdown


def test_a_config_variant_is_timed_beside_its_case_and_can_be_the_best():
  plain = _row("thresh_stl_j20", "bf16", 50.35)
  variant = dict(_row("thresh_stl_j20", "bf16", 41.0), variant="bf16_generators")
  result = gpu_report.compare({"bench": {"rows": [plain, variant]}})
  j20 = {g["case"]: g for g in result["goals"]}["thresh_stl_j20"]
  assert j20["bf16_ms"] == 50.35  # the plain row stays the bf16 column
  assert j20["variants_ms"] == {"bf16 + bf16_generators": 41.0}
  assert j20["best_of"] == "bf16 + bf16_generators" and j20["best_ms"] == 41.0
  assert j20["best_over_goal"] == pytest.approx(41 / 50) and j20["goal_met"] is True
  assert j20["speedup_vs_ref_bf16"] == pytest.approx(141 / 50.35)  # plain against plain
  selection = result["decisions"]["bf16_selection"]
  assert (selection["step_ms"], selection["step_bf16_generators_ms"]) == (50.35, 41.0)
  markdown = gpu_report.render_markdown(dict(
      command="c", dry_run=False, started="s", host="h", budget_s=1,
      parts={"bench": {"rows": [plain, variant], "cases": []}, "compare": result}))
  assert "| 0.82 (bf16 + bf16_generators) |" in markdown
  assert j20["goal_met_default"] is False  # met only with the variant, and the table says so
  assert "| yes (with bf16 + bf16_generators only) |" in markdown
  assert j20["peak_gib"] == pytest.approx(1)  # the variant's rows count for the peak too
  # Without the variant's row, the plain step decides, and misses.
  alone = {g["case"]: g for g in gpu_report.compare({"bench": {"rows": [plain]}})["goals"]}
  assert alone["thresh_stl_j20"]["goal_met"] is False
  assert alone["thresh_stl_j20"]["best_of"] == "bf16"


def test_default_plan_puts_the_goal_rows_first_and_fits_eight_minutes():
  plan = gpu_report.bench_plan(dry_run=False)
  labels = [c.label for c in plan]
  goal_cases = list(gpu_report.REFERENCE)
  assert labels[:len(goal_cases)] == [f"{c}:bf16" for c in goal_cases]
  assert {f"{c}:fp32" for c in goal_cases} <= set(labels)
  # The bf16-generator step follows the bf16 goal rows, before the float32 ones.
  variant = labels.index("thresh_stl_j20:bf16:bf16_generators")
  assert len(goal_cases) <= variant < min(labels.index(f"{c}:fp32") for c in goal_cases)
  assert "--set=manifold.best_of_j_dtype=bfloat16" in plan[variant].args
  args = gpu_report.parse_args(["--out=x"])
  # Every part's time is cut at the budget's deadline, so the budget bounds the run: under
  # 8 minutes with room for the start of the processes and the last report. The caps are safety
  # nets against hangs; any one case fits in what smoke and numerics leave at their worst.
  assert args.budget_s <= 480 - 5
  assert all(c.cap_s <= args.budget_s - args.smoke_s - args.numerics_s for c in plan)


def test_bench_starts_no_case_without_time_left(tmp_path):
  args = gpu_report.parse_args([f"--out={tmp_path}"])
  start = time.perf_counter()
  *_, result = gpu_report.part_bench(args, tmp_path, time.time() + 10, tmp_path)
  assert time.perf_counter() - start < 5  # nothing was launched
  assert {c["status"] for c in result["cases"]} == {"not run"}
  assert result["rows"] == [] and not (tmp_path / "bench.log").exists()


def test_a_hanging_child_is_stopped_at_its_cap(tmp_path):
  start = time.perf_counter()
  run = gpu_report.run_child([sys.executable, "-c", "import time; time.sleep(60)"], 1.0,
                             tmp_path / "part.log", gpu_report.child_env())
  assert run["status"] == "timeout" and time.perf_counter() - start < 15
  assert "timeout" in (tmp_path / "part.log").read_text()


def test_unknown_part_or_case_is_refused():
  for argv in (["--out=x", "--parts=smoke,bnech"], ["--out=x", "--cases=simclr_c10:fp16"]):
    with pytest.raises(SystemExit):
      gpu_report.parse_args(argv)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a dry run on 2 busy cores took 6-12 min
def test_dry_run_goes_through_every_part(tmp_path):
  # What CI can check without a GPU: every part runs at tiny size on the CPU (the gpu tests too,
  # via MCLR_GPU_TESTS_ON_CPU), the reports are complete, and what comes back from the GPU
  # machine's output folder fits its limits (at most 8 files, plain names).
  out = tmp_path / "report"
  proc = subprocess.run([sys.executable, str(_PATH), f"--out={out}", "--dry-run"],
                        capture_output=True, text=True, check=False)
  report = json.loads((out / "report.json").read_text())
  parts = report["parts"]
  assert proc.returncode == 0, (proc.stderr[-2000:], {k: p.get("status") for k, p in parts.items()})
  assert list(parts) == ["smoke", "numerics", "bench", "compare"]
  assert parts["smoke"]["step_ok"] and parts["smoke"]["loop_ok"]
  assert parts["numerics"]["counts"].get("passed", 0) >= 12
  assert not {"failed", "error"} & set(parts["numerics"]["counts"])
  assert {e["check"] for e in parts["numerics"]["errors"]} >= {
      "expm_taylor_rel_err", "transport_taylor_grad_rel_err", "step_bfloat16_grad_psi_rel_err"}
  rows = parts["bench"]["rows"]
  (train,) = [r for r in rows if r["case"] == "thresh_stl_j20"]
  assert train["precision"] == "bf16" and train["breakdown_ms"]["best_of_j_action_bf16"] > 0
  assert train["dispatch_ms"] > 0
  assert {r["case"] for r in rows if "shape" in r} >= {"expm/taylor_expm", "expm/expm_action"}
  markdown = (out / "report.md").read_text()
  for heading in ("## Smoke", "## Numerics", "## Bench", "## Compare: goals"):
    assert heading in markdown
  files = [p for p in out.rglob("*") if p.is_file()]
  assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
