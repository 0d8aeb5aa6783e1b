"""One command for a GPU's first minutes: versions and a smoke step, the accelerator numerics, the
step benchmark at full size, and the comparison with the reference figures and goals.

  python experiments/gpu_report.py --out=DIR             # one NVIDIA GPU: < 8 min on an H100
  python experiments/gpu_report.py --out=DIR --dry-run   # every part at tiny size, on the CPU

Parts run in this order, each in child processes with a time cap of its own, so that a hang, a
crash or an out-of-memory in one cannot take the others or the report down:

  smoke     versions of Python, JAX, flax, optax, orbax, chex, clu, ml_collections; the devices;
            one tiny training step (`create_train_state` + `make_train_step`) and a two-step run of
            `train_and_evaluate` (checkpoint and metrics writers). If no step runs, the report
            stops here with the reason.
  numerics  `pytest -m gpu tests/gpu`: expm (Taylor, Padé), expm_action, the transport and its
            gradient and the best-of-J choice against float64 host references; a float32 and a
            bf16 ManifoldCLR step against the CPU's; whether the default dot precision (TF32)
            changes the transport. Every measured error is kept with its tolerance.
  bench     `experiments/benchmark.py`, one case per process (peak memory is the process's), in
            order of importance: bf16 rows of the goal cases, the expm micro-benchmark, then the
            float32 rows while time is left. A case that cannot finish inside the time left is
            not started.
  compare   the goal table: measured beside the reference figures and goals, with ratios; MFU of
            the bf16 SimCLR step; and what the figures say about the open design choices.

DIR gets report.md (for a person), report.json (everything) and one log per part; both reports
are rewritten as each part ends, so a part that runs out of time loses nothing before it.
`--parts` and `--cases` rerun a subset (e.g. `--parts=bench --cases=thresh_stl_j20:bf16`), and
`--profile=CASE:PREC` adds a jax.profiler trace of that case as DIR/trace.tar.gz.
docs/performance.md gives the steps on the GPU machine and what each figure decides.

This parent process uses the standard library only: it never initialises a device itself.
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from typing import Optional

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARK = REPO_ROOT / "experiments" / "benchmark.py"
PARTS = ("smoke", "numerics", "bench", "compare")

# The authors' PyTorch code on one H100 80 GB, batch 512, two views (ms per step), and the goals.
# j100 does not fit their one-GPU setup; its goal is to fit and beat their J = 20 step.
REFERENCE = {
    "simclr_c10": dict(title="SimCLR, 32 px", fp32=57.0, bf16=49.0, goal=19.0),
    "manifoldclr_c10": dict(title="ManifoldCLR proj, 32 px, M = 16", fp32=91.0, bf16=83.0,
                            goal=30.0),
    "thresh_stl_j20": dict(title="thresh, 64 px, M = 128, J = 20", fp32=152.0, bf16=141.0,
                           goal=50.0, fp32_gib=22.0),
    "thresh_stl_j100": dict(title="thresh, J = 100", fp32=None, bf16=None, goal=152.0),
}
# A plain Flax ResNet-18 SimCLR step on the same H100 (ms); the MFU goal of our bf16 SimCLR step.
PLAIN_FLAX_RESNET18 = dict(fp32=29.0, bf16=15.0)
MFU_GOAL = 0.35
# Matrix exponential at (J, B, K, n, n) = (J, 512, 8, 64, 64), ms: the reference measurements.
EXPM_REFERENCE = {
    (20, "expm/jax_scipy_expm", "fp32"): 94.0,
    (20, "torch.linalg.matrix_exp", "fp32"): 42.0,
    (20, "expm/expm_action", "fp32"): 32.0,
    (20, "expm/expm_action", "bf16"): 17.0,
    (100, "expm/expm_action", "fp32"): 155.0,
    (100, "expm/expm_action", "bf16"): 80.0,
}


@dataclasses.dataclass(frozen=True)
class BenchCase:
  """One benchmark process: `label` names it in --cases and in the report."""
  label: str
  args: tuple
  cap_s: float
  variant: str = ""  # a config change beyond the case's own (its rows carry it; see VARIANTS)


# Config variants timed as whole steps beside the plain case: {variant: (--set items, description)}.
# The goal table takes the best of a case's rows, variants included, and names the variant.
VARIANTS = {
    "bf16_generators": (("manifold.best_of_j_dtype=bfloat16",),
                        "best-of-J generators read in bf16 (config.manifold.best_of_j_dtype)"),
}


def bench_plan(dry_run: bool) -> list:
  """The benchmark processes in the order they run: what the goals need first."""
  if dry_run:  # every code path once at tiny size: a train case with its breakdown, and expm
    return [BenchCase("thresh_stl_j20:bf16", ("--case=thresh_stl_j20", "--precision=bf16",
                                              "--tiny", "--steps=2", "--warmup=1"), 400),
            BenchCase("expm_j20", ("--case=expm", "--tiny", "--steps=2", "--warmup=1"), 120)]

  def train(case, precision, cap_s, breakdown=False, variant=""):
    args = (f"--case={case}", f"--precision={precision}", "--steps=20", "--warmup=3")
    args += tuple(f"--set={item}" for item in (VARIANTS[variant][0] if variant else ()))
    return BenchCase(f"{case}:{precision}" + (f":{variant}" if variant else ""),
                     args + (() if breakdown else ("--no_breakdown",)), cap_s, variant)

  return [
      train("simclr_c10", "bf16", 100),
      train("manifoldclr_c10", "bf16", 110),
      # The parts of the step (expm share, Taylor vs Padé, bf16 selection) at the paper's sizes.
      train("thresh_stl_j20", "bf16", 130, breakdown=True),
      train("thresh_stl_j100", "bf16", 120),
      # The selection's share suggests bf16 generators take the J = 20 step under its goal.
      train("thresh_stl_j20", "bf16", 100, variant="bf16_generators"),
      BenchCase("expm_j20", ("--case=expm", "--expm_shapes=20x512x8"), 70),
      BenchCase("expm_j100", ("--case=expm", "--expm_shapes=100x512x8",
                              "--expm_methods=expm_action"), 60),
      train("simclr_c10", "fp32", 100),
      train("thresh_stl_j20", "fp32", 110),
      train("manifoldclr_c10", "fp32", 110),
      train("thresh_stl_j100", "fp32", 120),
  ]


# ----------------------------------------------------------------------------------------------
# Children: the code that runs in the child processes (these import JAX).


def smoke_child(result_path: str, dry_run: bool) -> int:
  """Versions, devices, one tiny step and a two-step training run; writes a JSON result."""
  result = dict(stage="import", versions={}, devices=[], step_ok=False, loop_ok=False)

  def save():
    pathlib.Path(result_path).write_text(json.dumps(result, indent=1))

  from importlib import metadata  # pylint: disable=g-import-not-at-top
  result["versions"]["python"] = platform.python_version()
  for dist in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
               "orbax-checkpoint", "chex", "clu", "ml_collections", "numpy", "scipy"):
    try:
      result["versions"][dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      result["versions"][dist] = None
  save()
  try:
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    import benchmark  # pylint: disable=g-import-not-at-top
    from configs import spirograph  # pylint: disable=g-import-not-at-top
    from mclr_jax.train import create, loop, step as step_lib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    result["error"] = (f"{type(e).__name__}: {e}. On the GPU machine, install the carried wheels "
                       f"first (docs/performance.md, 'Run there').")
    save()
    return 1

  result["stage"] = "device"
  result["default_backend"] = jax.default_backend()
  for d in jax.devices():
    stats = (d.memory_stats() if hasattr(d, "memory_stats") else None) or {}
    result["devices"].append(dict(kind=d.device_kind, platform=d.platform, id=d.id,
                                  bytes_limit=stats.get("bytes_limit")))
  result["nvidia_smi"] = _nvidia_smi()
  save()
  if not dry_run and jax.default_backend() == "cpu":
    result["error"] = ("JAX sees no GPU (default backend 'cpu'): the machine's JAX has no CUDA "
                       "plugin, or the driver is not visible. Check `python3 -c 'import jax; "
                       "print(jax.devices())'`, or run with --dry-run on a CPU.")
    save()
    return 1

  result["stage"] = "step"
  save()
  if dry_run:  # CPU: XLA's optimisations dominate the compile and change no value (conftest.py)
    jax.config.update("jax_disable_most_optimizations", True)
  try:
    config = benchmark.load_config(benchmark.CASES["manifoldclr_c10"], tiny=True,
                                   half_precision=None, batch_size=16)  # "auto": bf16 on GPUs
    start = time.perf_counter()
    networks, state, tx, _ = create.create_train_state(config, jax.random.key(0), 10)
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), np.uint8)
    step_fn = jax.jit(step_lib.make_train_step(networks, config, tx))
    state, metrics = step_fn(state, {"image": images}, jax.random.key(1))[:2]
    loss = float(jax.device_get(metrics["loss"]))
    result.update(step_seconds=time.perf_counter() - start, step_loss=loss,
                  step_device=str(next(iter(state.params["psi"].devices()))),
                  step_ok=bool(np.isfinite(loss)))
    if not result["step_ok"]:
      result["error"] = f"the tiny ManifoldCLR step gave a non-finite loss ({loss})"
  except Exception as e:  # pylint: disable=broad-except
    result["error"] = f"tiny step failed: {type(e).__name__}: {e}"
  save()
  if not result["step_ok"]:
    return 1

  result["stage"] = "loop"
  save()
  try:
    config = spirograph.get_config("manifoldclr")
    for key, value in dict(batch_size=16, num_train_steps=2, log_every_steps=1,
                           checkpoint_every_steps=2, eval_every_steps=0).items():
      config[key] = value
    config.data.update(num_train=64, num_test=16, prefetch=1)
    config.model.update(width=4, proj_hidden_dim=16, proj_output_dim=8)
    config.manifold.update(block_dim=8, dictionary_size=4, encoder_hidden=(16, 16, 8),
                           prior_hidden=(16, 16, 8))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
      final = loop.train_and_evaluate(config, workdir)
      checkpoints = sorted(p.name for p in pathlib.Path(workdir).iterdir())
    result.update(loop_seconds=time.perf_counter() - start, loop_ok=int(final.step) == 2,
                  loop_workdir=checkpoints)
  except Exception as e:  # pylint: disable=broad-except
    result["error"] = f"train_and_evaluate failed: {type(e).__name__}: {e}"
  result["stage"] = "done"
  save()
  return 0 if result["loop_ok"] else 1


def _nvidia_smi() -> Optional[str]:
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                          "clocks.max.sm,power.limit", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() or None


# ----------------------------------------------------------------------------------------------
# The parent: parts, time caps, the report.


class Report:
  """report.json and report.md under --out, rewritten after every part."""

  def __init__(self, out: pathlib.Path, args):
    self.out = out
    self.data = dict(command=" ".join(["python"] + [shlex.quote(a) for a in sys.argv]),
                     dry_run=args.dry_run,
                     started=datetime.datetime.now().isoformat(timespec="seconds"),
                     host=platform.node(), budget_s=args.budget_s, parts={})

  def set(self, part: str, result: dict):
    self.data["parts"][part] = result
    self.write()

  def write(self):
    (self.out / "report.json").write_text(json.dumps(self.data, indent=1))
    (self.out / "report.md").write_text(render_markdown(self.data))


def run_child(cmd: list, timeout_s: float, log: pathlib.Path, env: dict) -> dict:
  """Runs `cmd`, appending its output to `log`; {status, seconds, returncode} whatever happens."""
  start = time.perf_counter()
  with open(log, "a") as f:
    f.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}   (cap {timeout_s:.0f} s)\n")
    f.flush()
    try:
      proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout_s, 1),
                            env=env, cwd=REPO_ROOT, check=False)
      status = "ok" if proc.returncode == 0 else "failed"
      returncode = proc.returncode
    except subprocess.TimeoutExpired:
      status, returncode = "timeout", None
    seconds = time.perf_counter() - start
    f.write(f"# {status} after {seconds:.1f} s\n")
  return dict(status=status, seconds=round(seconds, 1), returncode=returncode,
              cap_s=round(timeout_s))


def _tail(log: pathlib.Path, lines: int = 3) -> str:
  text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
  useful = [t for t in text if t.strip() and not t.startswith(("$ ", "# "))]
  return " | ".join(useful[-lines:])[-600:]


def child_env(extra: Optional[dict] = None) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONUNBUFFERED"] = "1"
  env.update(extra or {})
  return env


def part_smoke(args, out: pathlib.Path, cap_s: float, tmp: pathlib.Path) -> dict:
  result_path = tmp / "smoke.json"
  cmd = [sys.executable, __file__, "--child=smoke", f"--child_out={result_path}"]
  cmd += ["--dry-run"] if args.dry_run else []
  run = run_child(cmd, cap_s, out / "smoke.log", child_env())
  result = json.loads(result_path.read_text()) if result_path.exists() else {}
  run.update(result)
  if run["status"] != "ok" and "error" not in run:
    stage = result.get("stage", "start")
    run["error"] = f"{run['status']} at stage {stage}: {_tail(out / 'smoke.log')}"
  return run


def part_numerics(args, out: pathlib.Path, cap_s: float, tmp: pathlib.Path) -> dict:
  records, junit = tmp / "numerics.jsonl", tmp / "numerics.xml"
  cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rA",
         f"--junitxml={junit}", "tests/gpu"]
  extra = dict(MCLR_NUMERICS_LOG=str(records), XLA_PYTHON_CLIENT_PREALLOCATE="false")
  if args.dry_run:
    extra["MCLR_GPU_TESTS_ON_CPU"] = "1"
  run = run_child(cmd, cap_s, out / "numerics.log", child_env(extra))
  run["tests"] = _junit_outcomes(junit)
  run["errors"] = ([json.loads(line) for line in records.read_text().splitlines() if line.strip()]
                   if records.exists() else [])
  counts = {}
  for t in run["tests"]:
    counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
  run["counts"] = counts
  if run["status"] == "failed" and not counts:
    run["error"] = _tail(out / "numerics.log")
  return run


def _junit_outcomes(path: pathlib.Path) -> list:
  if not path.exists():
    return []
  tests = []
  for case in ElementTree.parse(path).getroot().iter("testcase"):
    outcome, message = "passed", ""
    for child in case:
      if child.tag in ("failure", "error", "skipped"):
        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
        message = (child.get("message") or "")[:300]
    tests.append(dict(name=f"{case.get('classname', '')}::{case.get('name')}", outcome=outcome,
                      seconds=float(case.get("time", 0)), message=message))
  return tests


def part_bench(args, out: pathlib.Path, deadline: float, tmp: pathlib.Path) -> dict:
  plan = bench_plan(args.dry_run)
  if args.cases:
    plan = [c for c in plan if c.label in args.cases.split(",")]
  cases, rows = [], []
  for case in plan:
    left = deadline - time.time()
    if left < min(case.cap_s, args.min_case_s):
      cases.append(dict(label=case.label, status="not run", reason=f"{left:.0f} s left"))
      continue
    json_path = tmp / f"bench_{case.label.replace(':', '_')}.json"
    cmd = [sys.executable, str(BENCHMARK), *case.args, f"--out={json_path}"]
    # JAX takes 75 % of the GPU's memory by default; the J = 100 case may need more.
    env = child_env(dict(XLA_PYTHON_CLIENT_MEM_FRACTION="0.92"))
    run = run_child(cmd, min(case.cap_s, left), out / "bench.log", env)
    run["label"] = case.label
    if json_path.exists():
      case_rows = json.loads(json_path.read_text())
      for row in case_rows:
        row["label"], row["variant"] = case.label, case.variant
      rows.extend(case_rows)
    elif run["status"] != "ok":
      run["error"] = _tail(out / "bench.log")
    cases.append(run)
    # Partial results survive a later timeout: the report is rewritten after every case.
    yield dict(cases=cases, rows=rows, status="running")
  # Cases left out for want of time are expected (float32 rows "where the cap allows"); a case
  # that started and did not finish is not.
  ran = [c for c in cases if c["status"] != "not run"]
  yield dict(cases=cases, rows=rows,
             status="ok" if ran and all(c["status"] == "ok" for c in ran) else "failed")


def part_profile(args, out: pathlib.Path, cap_s: float, tmp: pathlib.Path) -> dict:
  case, _, precision = args.profile.partition(":")
  trace_dir = tmp / "trace"
  cmd = [sys.executable, str(BENCHMARK), f"--case={case}", f"--precision={precision or 'bf16'}",
         "--steps=10", "--warmup=2", "--no_breakdown", f"--trace_dir={trace_dir}",
         f"--out={tmp / 'profile.json'}"] + (["--tiny"] if args.dry_run else [])
  run = run_child(cmd, cap_s, out / "bench.log", child_env())
  if trace_dir.exists():
    with tarfile.open(out / "trace.tar.gz", "w:gz") as tar:
      tar.add(trace_dir, arcname="trace")
    run["trace"] = "trace.tar.gz"
  return run


def compare(parts: dict) -> dict:
  """The goal table, the expm table and the MFU check from the benchmark rows (pure arithmetic)."""
  rows = parts.get("bench", {}).get("rows", [])
  steps = [r for r in rows if "shape" not in r]
  by = {(r["case"], r["precision"]): r for r in steps if not r.get("variant")}
  goals = []
  for case, ref in REFERENCE.items():
    bf16, fp32 = by.get((case, "bf16")), by.get((case, "fp32"))
    ms = {p: (r["median_ms"] if r else None) for p, r in (("bf16", bf16), ("fp32", fp32))}
    variants = {f"{r['precision']} + {r['variant']}": r["median_ms"] for r in steps
                if r["case"] == case and r.get("variant")}
    timed = {k: v for k, v in {**ms, **variants}.items() if v is not None}
    best_of = min(timed, key=timed.get) if timed else None
    best = timed.get(best_of)
    plain = [v for v in ms.values() if v is not None]
    peak = max((r["peak_bytes"] for r in steps if r["case"] == case and r.get("peak_bytes")),
               default=None)
    goals.append(dict(
        case=case, title=ref["title"], bf16_ms=ms["bf16"], fp32_ms=ms["fp32"],
        variants_ms=variants, best_of=best_of,
        ref_fp32_ms=ref["fp32"], ref_bf16_ms=ref["bf16"], goal_ms=ref["goal"], best_ms=best,
        best_over_goal=None if best is None else best / ref["goal"],
        speedup_vs_ref_fp32=_ratio(ref["fp32"], ms["fp32"]),
        speedup_vs_ref_bf16=_ratio(ref["bf16"], ms["bf16"]),
        peak_gib=None if peak is None else peak / 2**30, ref_fp32_gib=ref.get("fp32_gib"),
        goal_met=None if best is None else _meets(case, best),
        # The default configuration alone (a variant is off by default until measured).
        goal_met_default=_meets(case, min(plain)) if plain else None))
  simclr_bf16 = by.get(("simclr_c10", "bf16"))
  mfu = dict(measured=simclr_bf16 and simclr_bf16.get("mfu"), goal=MFU_GOAL,
             plain_flax_resnet18_ms=PLAIN_FLAX_RESNET18,
             simclr_bf16_ms=simclr_bf16 and simclr_bf16["median_ms"],
             simclr_fp32_ms=by.get(("simclr_c10", "fp32"), {}).get("median_ms"))
  mfu["goal_met"] = None if mfu["measured"] is None else mfu["measured"] >= MFU_GOAL
  expm = []
  for (j, method, precision), ref_ms in EXPM_REFERENCE.items():
    row = next((r for r in rows if "shape" in r and r["shape"][0] == j and r["case"] == method
                and r["precision"] == precision), None)
    ours = row["median_ms"] if row else None
    expm.append(dict(J=j, method=method, precision=precision, ref_ms=ref_ms, ms=ours,
                     speedup=_ratio(ref_ms, ours)))
  platforms = sorted({r.get("platform", "?") for r in rows})
  return dict(goals=goals, mfu=mfu, expm=expm, platforms=platforms,
              decisions=decision_figures(by, parts.get("numerics", {}),
                                         [r for r in steps if r.get("variant")]))


def _meets(case: str, ms: float) -> bool:
  """Whether `ms` meets the case's goal: at most the goal, or below it for J = 100 ("< 152")."""
  goal = REFERENCE[case]["goal"]
  return bool(ms < goal if case == "thresh_stl_j100" else ms <= goal)


def _ratio(num, den):
  return None if num is None or not den else num / den


def decision_figures(by: dict, numerics: dict, variant_rows: list = ()) -> dict:
  """The figures behind each open choice (docs/performance.md, 'Decisions by measurement').

  by: the plain step rows by (case, precision); variant_rows: the step rows of config variants."""
  errors = {e["check"]: e["measured"] for e in numerics.get("errors", [])}

  def variant_ms(case, precision, variant):
    return next((r["median_ms"] for r in variant_rows
                 if (r["case"], r["precision"], r["variant"]) == (case, precision, variant)), None)

  j20 = by.get(("thresh_stl_j20", "bf16")) or by.get(("thresh_stl_j20", "fp32")) or {}
  parts = j20.get("breakdown_ms") or {}
  step = j20.get("median_ms")
  share = lambda ms: None if ms is None or not step else ms / step
  bf16_vs_fp32 = {case: _ratio((by.get((case, "fp32")) or {}).get("median_ms"),
                               (by.get((case, "bf16")) or {}).get("median_ms"))
                  for case in REFERENCE}
  return dict(
      transport=dict(taylor_ms=parts.get("transport_fwd_bwd_taylor"),
                     pade_ms=parts.get("transport_fwd_bwd_pade"),
                     taylor_err=errors.get("transport_taylor_rel_err_default_precision"),
                     pade_err=errors.get("transport_pade_rel_err_default_precision")),
      bf16_selection=dict(float32_ms=parts.get("best_of_j_action"),
                          bf16_ms=parts.get("best_of_j_action_bf16"),
                          step_ms=(by.get(("thresh_stl_j20", "bf16")) or {}).get("median_ms"),
                          step_bf16_generators_ms=variant_ms("thresh_stl_j20", "bf16",
                                                             "bf16_generators"),
                          disagreement=errors.get("best_of_j_action_bfloat16_disagreement")),
      bf16_default=dict(fp32_over_bf16_time=bf16_vs_fp32,
                        step_grad_errors={k: v for k, v in errors.items()
                                          if k.startswith("step_bfloat16_grad")}),
      pallas=dict(step_ms=step, action_ms=parts.get("best_of_j_action"),
                  action_share=share(parts.get("best_of_j_action"))),
      host={f"{case}:{prec}": row.get("host_overhead_ratio") for (case, prec), row in by.items()})


# ----------------------------------------------------------------------------------------------
# Markdown.


def _fmt(value, spec=".1f", none="–"):
  return none if value is None else format(value, spec)


def _table(header: list, rows: list) -> list:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines + [""]


def _cell(text, limit=300) -> str:
  return (text or "").replace("|", "/").replace("\n", " ")[:limit]


def _ok(flag) -> str:
  return "ok" if flag else "FAILED"


def render_markdown(data: dict) -> str:
  parts = data["parts"]
  smoke = parts.get("smoke", {})
  lines = ["# mclr_jax GPU report", ""]
  if data["dry_run"]:
    lines += ["**Dry run on the CPU at tiny sizes: checks that every part runs; no figure below is "
              "comparable with the references.**", ""]
  devices = smoke.get("devices") or []
  device = devices[0]["kind"] if devices else "?"
  versions = ", ".join(f"{k} {v}" for k, v in (smoke.get("versions") or {}).items() if v)
  lines += [f"- command: `{data['command']}`", f"- started: {data['started']} on {data['host']}",
            f"- device: {device} ({len(devices)} device(s), backend "
            f"{smoke.get('default_backend', '?')}); nvidia-smi: {smoke.get('nvidia_smi') or '–'}",
            f"- versions: {versions}", "", "## Parts", ""]
  lines += _table(["part", "status", "seconds", "cap s", "note"], [
      (name, p.get("status", "?"), _fmt(p.get("seconds")), _fmt(p.get("cap_s"), ".0f"),
       _cell(p.get("error"))) for name, p in parts.items()])
  if smoke:
    lines += ["## Smoke", "",
              f"- tiny ManifoldCLR step, compile included: {_fmt(smoke.get('step_seconds'))} s, "
              f"loss {_fmt(smoke.get('step_loss'), '.4f')}, on {smoke.get('step_device', '?')}: "
              f"{_ok(smoke.get('step_ok'))}",
              f"- two-step train_and_evaluate (checkpoint + metrics): "
              f"{_fmt(smoke.get('loop_seconds'))} s: {_ok(smoke.get('loop_ok'))}", ""]
  if parts.get("numerics"):
    lines += _render_numerics(parts["numerics"])
  if parts.get("bench"):
    lines += _render_bench(parts["bench"])
  if parts.get("compare", {}).get("goals"):
    lines += _render_compare(parts["compare"])
  return "\n".join(lines)


def _render_numerics(numerics: dict) -> list:
  counts = ", ".join(f"{n} {k}" for k, n in numerics.get("counts", {}).items()) or "none"
  lines = ["## Numerics (`pytest -m gpu tests/gpu`)", "", f"Outcomes: {counts}", ""]
  failed = [t for t in numerics.get("tests", []) if t["outcome"] in ("failed", "error")]
  lines += [f"- FAILED `{t['name']}`: {_cell(t['message'])}" for t in failed]
  lines += [""] if failed else []
  within = lambda e: "–" if e["tolerance"] is None else (
      "yes" if e["measured"] <= e["tolerance"] else "NO")
  return lines + _table(["check", "measured", "tolerance", "within"], [
      (e["check"], _fmt(e["measured"], ".3g"), _fmt(e["tolerance"], ".3g"), within(e))
      for e in numerics.get("errors", [])])


def _render_bench(bench: dict) -> list:
  lines = ["## Bench (batch 512 unless a dry run; one process per case)", ""]
  lines += _table(["label", "status", "seconds", "note"], [
      (c["label"], c["status"], _fmt(c.get("seconds")), _cell(c.get("error") or c.get("reason"),
                                                               200))
      for c in bench.get("cases", [])])
  gib = lambda r: None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**30
  name = lambda r: r["case"] + ("/" + "x".join(map(str, r["shape"][:3])) if "shape" in r else "")
  lines += _table(
      ["case", "prec", "median ms", "p10–p90 ms", "img/s", "MFU", "peak GiB", "compile s",
       "dispatch ms", "back-to-back ms", "input/step"],
      [(name(r), r["precision"], _fmt(r["median_ms"], ".2f"),
        f"{_fmt(r.get('p10_ms'), '.2f')}–{_fmt(r.get('p90_ms'), '.2f')}",
        _fmt(r.get("images_per_sec"), ".0f"), _fmt(r.get("mfu"), ".3f"), _fmt(gib(r), ".2f"),
        _fmt(r.get("compile_s")), _fmt(r.get("dispatch_ms"), ".3f"),
        _fmt(r.get("pipelined_ms"), ".2f"), _fmt(r.get("input_bound_ratio"), ".3f"))
       for r in bench.get("rows", [])])
  for r in bench.get("rows", []):
    if r.get("breakdown_ms"):
      parts = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in r["breakdown_ms"].items())
      lines += [f"Parts of `{r['case']}` ({r['precision']}), each jitted alone, ms: {parts}", ""]
  return lines


def _render_compare(cmp: dict) -> list:
  lines = ["## Compare: goals (one H100, batch 512, two views)", ""]
  if cmp["platforms"] != ["gpu"]:
    lines += [f"Measured on {cmp['platforms'] or 'nothing'}: the ratios are not comparable.", ""]
  met = {None: "not measured", True: "yes", False: "NO"}
  lines += _table(
      ["case", "ours bf16 ms", "ours fp32 ms", "ref fp32 ms", "ref bf16 ms", "goal ms",
       "best / goal", "ref fp32 / ours fp32", "ref bf16 / ours bf16", "peak GiB (ref fp32)",
       "goal met"],
      [(g["title"], _fmt(g["bf16_ms"]), _fmt(g["fp32_ms"]),
        _fmt(g["ref_fp32_ms"], ".0f", "does not fit"), _fmt(g["ref_bf16_ms"], ".0f"),
        ("< " if g["case"] == "thresh_stl_j100" else "≤ ") + _fmt(g["goal_ms"], ".0f"),
        _fmt(g["best_over_goal"], ".2f") + (f" ({g['best_of']})" if g["variants_ms"] else ""),
        _fmt(g["speedup_vs_ref_fp32"], ".2f"),
        _fmt(g["speedup_vs_ref_bf16"], ".2f"),
        _fmt(g["peak_gib"]) + (f" ({g['ref_fp32_gib']:.0f})" if g["ref_fp32_gib"] else ""),
        met[g["goal_met"]] + (f" (with {g['best_of']} only)"
                              if g["goal_met"] and not g["goal_met_default"] else ""))
       for g in cmp["goals"]])
  m = cmp["mfu"]
  plain = PLAIN_FLAX_RESNET18
  lines += [f"MFU of the bf16 SimCLR step: {_fmt(m['measured'], '.3f')} (goal ≥ {MFU_GOAL}): "
            f"{met[m['goal_met']]}. SimCLR step {_fmt(m['simclr_bf16_ms'])} ms bf16 / "
            f"{_fmt(m['simclr_fp32_ms'])} ms fp32; a plain Flax ResNet-18 SimCLR step: "
            f"{plain['bf16']:.0f} / {plain['fp32']:.0f} ms.", ""]
  lines += ["### Matrix exponential, (J, 512, 8, 64, 64)", ""]
  lines += _table(["J", "method", "prec", "reference ms", "ours ms", "reference / ours"], [
      (e["J"], e["method"], e["precision"], _fmt(e["ref_ms"], ".0f"), _fmt(e["ms"], ".2f"),
       _fmt(e["speedup"], ".2f")) for e in cmp["expm"]])
  d = cmp["decisions"]
  t, s, p, bf16 = d["transport"], d["bf16_selection"], d["pallas"], d["bf16_default"]
  speed = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in bf16["fp32_over_bf16_time"].items())
  grads = ", ".join(f"{k.rsplit('_grad_', 1)[1].removesuffix('_rel_err')} {_fmt(v, '.2g')}"
                    for k, v in bf16["step_grad_errors"].items()) or "–"
  host = ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in d["host"].items())
  return lines + [
      "### Figures for the open choices (docs/performance.md)", "",
      f"- Taylor vs Padé transport (one T(c)z forward + backward, thresh J = 20): "
      f"{_fmt(t['taylor_ms'], '.2f')} vs {_fmt(t['pade_ms'], '.2f')} ms; relative error at the "
      f"default dot precision {_fmt(t['taylor_err'], '.2g')} vs {_fmt(t['pade_err'], '.2g')}.",
      f"- bf16 best-of-J generators: selection {_fmt(s['float32_ms'], '.2f')} ms float32 vs "
      f"{_fmt(s['bf16_ms'], '.2f')} ms bf16; share of clear-cut choices that differ from "
      f"float64's: {_fmt(s['disagreement'], '.2f')}; the whole thresh J = 20 bf16 step "
      f"{_fmt(s['step_ms'], '.2f')} ms, with bf16 generators "
      f"{_fmt(s['step_bf16_generators_ms'], '.2f')} ms.",
      f"- bf16 as the GPU default: fp32 / bf16 step time: {speed}; bf16 step's gradient errors "
      f"against the CPU's float32 step: {grads}.",
      f"- Pallas kernel for the best-of-J action: the action takes {_fmt(p['action_ms'], '.2f')} "
      f"ms of a {_fmt(p['step_ms'], '.2f')} ms step ({_fmt(p['action_share'], '.1%')}), the "
      f"most a fused kernel could save.",
      f"- Host dispatch / back-to-back step time: {host}.", ""]


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=False, help="output folder (created)")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="every part at tiny size on the CPU (gpu tests via "
                           "MCLR_GPU_TESTS_ON_CPU=1)")
  parser.add_argument("--parts", default=",".join(PARTS), help=f"subset of {PARTS}")
  parser.add_argument("--cases", default="", help="bench labels to run (default: the whole plan)")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="wall-clock budget for all parts: 470 s, so that the default run ends "
                           "inside 8 min (dry run: 1800 s)")
  parser.add_argument("--smoke_s", type=float, default=None,
                      help="smoke's cap (90 s; dry run 600)")
  parser.add_argument("--numerics_s", type=float, default=None,
                      help="numerics' cap (150 s; dry run 400)")
  parser.add_argument("--min_case_s", type=float, default=45.0,
                      help="no bench case starts with less time left than min(this, its cap)")
  parser.add_argument("--profile", default="",
                      help="CASE:PREC to trace with jax.profiler after the other parts "
                           "(DIR/trace.tar.gz), e.g. thresh_stl_j20:bf16")
  parser.add_argument("--profile_s", type=float, default=120.0, help="the profile's cap")
  parser.add_argument("--child", choices=("smoke",), help=argparse.SUPPRESS)
  parser.add_argument("--child_out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child is None and not args.out:
    parser.error("--out is required")
  unknown = [p for p in args.parts.split(",") if p not in PARTS]
  if unknown:
    parser.error(f"--parts has unknown names {unknown}; choose from {PARTS}")
  labels = [c.label for c in bench_plan(args.dry_run)]
  unknown = [c for c in args.cases.split(",") if c and c not in labels]
  if unknown:
    parser.error(f"--cases has unknown labels {unknown}; choose from {labels}")
  # A dry run compiles on the CPU, slowly: more time, the same parts.
  if args.budget_s is None:
    args.budget_s = 1800.0 if args.dry_run else 470.0
  if args.smoke_s is None:
    args.smoke_s = 600.0 if args.dry_run else 90.0
  if args.numerics_s is None:
    args.numerics_s = 400.0 if args.dry_run else 150.0
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child == "smoke":
    return smoke_child(args.child_out, args.dry_run)
  start = time.time()
  deadline = start + args.budget_s
  reserve = 5.0  # for compare and the last report
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for log in ("smoke.log", "numerics.log", "bench.log"):
    (out / log).unlink(missing_ok=True)
  report = Report(out, args)
  report.write()
  wanted = args.parts.split(",")
  left = lambda: deadline - time.time() - reserve

  def out_of_time(part: str) -> bool:
    if left() >= 10:
      return False
    report.set(part, dict(status="not run", error=f"{left():.0f} s left of --budget_s"))
    return True

  with tempfile.TemporaryDirectory(prefix="gpu_report_") as tmp_name:
    tmp = pathlib.Path(tmp_name)
    if "smoke" in wanted and not out_of_time("smoke"):
      smoke = part_smoke(args, out, min(args.smoke_s, left()), tmp)
      report.set("smoke", smoke)
      print(f"smoke: {smoke['status']} ({smoke['seconds']} s)", flush=True)
      if not smoke.get("step_ok"):
        print(f"error: smoke failed, nothing else can run: {smoke.get('error')}", file=sys.stderr)
        return 1
    if "numerics" in wanted and not out_of_time("numerics"):
      numerics = part_numerics(args, out, min(args.numerics_s, left()), tmp)
      report.set("numerics", numerics)
      print(f"numerics: {numerics['status']} {numerics['counts']} ({numerics['seconds']} s)",
            flush=True)
    if "bench" in wanted:
      bench_start = time.perf_counter()
      for bench in part_bench(args, out, deadline - reserve - (args.profile_s if args.profile
                                                               else 0), tmp):
        bench["seconds"] = round(time.perf_counter() - bench_start, 1)
        report.set("bench", bench)
      print(f"bench: {bench['status']}, {len(bench['rows'])} rows ({bench['seconds']} s)",
            flush=True)
    if args.profile and not out_of_time("profile"):
      report.set("profile", part_profile(args, out, min(args.profile_s, left()), tmp))
    if "compare" in wanted or "bench" in wanted:
      start_compare = time.perf_counter()
      try:
        result = dict(compare(report.data["parts"]), status="ok")
      except Exception as e:  # pylint: disable=broad-except  (never lose the report over it)
        result = dict(status="failed", error=f"{type(e).__name__}: {e}")
      result["seconds"] = round(time.perf_counter() - start_compare, 1)
      report.set("compare", result)
  report.data["seconds"] = round(time.time() - start, 1)
  report.write()
  print(f"Wrote {out / 'report.md'} and report.json in {report.data['seconds']} s")
  failed = [n for n, p in report.data["parts"].items() if p.get("status") not in ("ok",)]
  return 1 if failed else 0


if __name__ == "__main__":
  # Self-contained on purpose (no mclr_jax import in this parent process, so a broken install is
  # reported by the smoke part instead of stopping the report): an OS error is one line here.
  try:
    sys.exit(main())
  except OSError as e:
    where = f" ({e.filename})" if e.filename else ""
    print(f"error: {e.strerror or e}{where}; check that --out can be created and that the disk "
          "has space.", file=sys.stderr)
    sys.exit(1)
