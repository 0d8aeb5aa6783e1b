"""Spirograph robustness to shifted nuisance distributions (docs/method.md §13.2).

  python experiments/spirograph_robustness.py --workdir=runs/spirograph --workdir=runs/spirograph_gp \
      --out=robustness.json [--num_train=2048 --num_test=1024 --fa_copies=10 --seed=0]

For every trained workdir (frozen encoder) and every shift, the regression probe is fitted and tested
on features rendered under the shifted nuisance ranges (fresh seeded draws of α, the same θ for all
models), with single-view features and with feature averaging over `fa_copies` draws (§12).
Shifts: background widened to U(−v, 0.6 + v) for v ∈ {0, …, 0.4}; h widened to (0.5 − v, 2.5 + v)
for v ∈ {0.25, 0.5}; h mean moved by +0.25 and +0.5. Writes OUT (JSON), prints a table (rows: shift,
columns: workdir × {single, FA}) and writes OUT with a .png suffix: MSE against background width.
Costs one probe fit per (workdir, shift, single/FA); minutes on a CPU at the defaults.
"""

import argparse
import dataclasses
import json
import os
from typing import Sequence

import jax
import ml_collections

from mclr_jax import cli
from mclr_jax.data import spirograph
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import suite as suite_lib
from mclr_jax.evaluate.model import EvaluationError
from mclr_jax.train.views import spirograph_ranges

BACKGROUND_WIDTHS = (0.0, 0.1, 0.2, 0.3, 0.4)


def default_shifts(base_ranges) -> list[tuple[str, dict]]:
  """(name, ranges) for each shifted nuisance distribution of docs/method.md §13."""
  shifts = [(f"background+{v:g}", spirograph.widen_ranges(base_ranges, v))
            for v in BACKGROUND_WIDTHS]
  shifts += [(f"h_wide+{v:g}", spirograph.widen_ranges(base_ranges, v, names=("h",)))
             for v in (0.25, 0.5)]
  shifts += [(f"h_mean+{v:g}", spirograph.shift_range(base_ranges, "h", v)) for v in (0.25, 0.5)]
  return shifts


def shifted_config(config, ranges, num_train: int, num_test: int) -> ml_collections.ConfigDict:
  """A copy of `config` rendering α from `ranges`, its probe fitted on the first num_train
  training θ and tested on the first num_test test θ."""
  shifted = ml_collections.ConfigDict(config.to_dict())
  shifted.data.ranges = ml_collections.ConfigDict({k: tuple(v) for k, v in ranges.items()})
  shifted.eval.max_train_examples = num_train
  shifted.eval.max_test_examples = num_test
  return shifted


def robustness_sweep(model, shifts: Sequence[tuple[str, dict]], key, num_train: int,
                     num_test: int, fa_copies: int) -> list[dict]:
  """Probe test MSE under each shifted nuisance distribution (docs/method.md §13.2).

  model: a Spirograph EvalModel (its config gives the content names, normalisation, probe L2 and
    the seeded θ draws).
  shifts: [(name, ranges)] with ranges a full {parameter: (lo, hi)} mapping.
  key: seeds the α draws; the same key is used for every shift, so shifts differ only by ranges.
  num_train / num_test: probe-train θ (the first of the training draws) and test θ.
  fa_copies: M of feature averaging (docs/method.md §12); <= 1 reports single-view features only.
  Returns one dict per shift: {"shift", "ranges", "single": probe results, "fa": ... or None};
  probe results are the evaluation suite's "probe" ("mse_mean", "r2_mean", per target).
  """
  data = model.config.data
  if num_train > data.num_train or num_test > data.num_test:
    raise EvaluationError(f"num_train={num_train} / num_test={num_test} exceed the run's "
                          f"data.num_train={data.num_train} / data.num_test={data.num_test}; "
                          f"lower them.")
  suites = ("probe", "feature_average") if fa_copies > 1 else ("probe",)
  options = suite_lib.SuiteOptions(feature_average_copies=max(fa_copies, 1))
  rows = []
  for name, ranges in shifts:
    shifted = dataclasses.replace(model, config=shifted_config(model.config, ranges, num_train,
                                                               num_test))
    results = suite_lib.run_suite(shifted, suites, key, ".", options=options)
    rows.append({"shift": name, "ranges": {k: list(map(float, v)) for k, v in ranges.items()},
                 "single": results["probe"], "fa": results.get("feature_average")})
  return rows


def format_table(results: dict) -> str:
  """results: {workdir: sweep rows} -> text table of mse_mean (rows: shift)."""
  names = list(results)
  columns = [(w, kind) for w in names for kind in ("single", "fa")]
  header = f"{'shift':<16}" + "".join(f"{os.path.basename(w.rstrip('/'))[:14] + '/' + k:>22}"
                                      for w, k in columns)
  lines = [header, "-" * len(header)]
  for i, row in enumerate(results[names[0]]):
    cells = []
    for w, k in columns:
      r = results[w][i][k]
      cells.append(f"{r['mse_mean']:>22.4f}" if r is not None else f"{'-':>22}")
    lines.append(f"{row['shift']:<16}" + "".join(cells))
  return "\n".join(lines)


def plot(results: dict, path: str) -> None:
  """MSE against the background widening v, one line per (workdir, single/FA)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (host-only)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for workdir, rows in results.items():
    bg = [r for r in rows if r["shift"].startswith("background+")]
    v = [float(r["shift"].split("+")[1]) for r in bg]
    label = os.path.basename(workdir.rstrip("/"))
    ax.plot(v, [r["single"]["mse_mean"] for r in bg], "o-", label=f"{label} single")
    if bg and bg[0]["fa"] is not None:
      ax.plot(v, [r["fa"]["mse_mean"] for r in bg], "s--", label=f"{label} FA")
  ax.set_xlabel("background range widened by v: U(−v, 0.6 + v)")
  ax.set_ylabel("test MSE (mean over θ)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", action="append", required=True, help="trained run (repeatable)")
  parser.add_argument("--out", required=True, help="JSON output path; the plot goes next to it")
  parser.add_argument("--num_train", type=int, default=2048)
  parser.add_argument("--num_test", type=int, default=1024)
  parser.add_argument("--fa_copies", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  results = {}
  for workdir in args.workdir:
    model = model_lib.restore_model(workdir)
    if not model.is_spirograph:
      raise EvaluationError(f"{workdir} is a {model.config.data.name} run; this sweep shifts "
                            f"Spirograph nuisance ranges.")
    shifts = default_shifts(spirograph_ranges(model.config.data))
    results[workdir] = robustness_sweep(model, shifts, jax.random.key(args.seed), args.num_train,
                                        args.num_test, args.fa_copies)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  png = os.path.splitext(args.out)[0] + ".png"
  plot(results, png)
  print(format_table(results))
  print(f"Written to {args.out} and {png}")


if __name__ == "__main__":
  cli.run_script(main)
