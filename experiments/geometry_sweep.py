"""Encoder vs projector geometry across trained runs (docs/method.md §14): one row per workdir.

  python experiments/geometry_sweep.py --workdirs=runs/s0.25,runs/s0.5,runs/s1 \
      --strengths=0.25,0.5,1 --output_dir=runs/geometry [--num_points=2000 --num_views=32]

For each workdir it restores the latest checkpoint and runs the evaluation suite's "geometry" part
(`mclr_jax/evaluate/geometry_probe.py`, the same function as `python -m mclr_jax.evaluate
--suite=geometry`) on the first `num_points` test inputs: retention through the projector of
augmentation, data and random directions (Spirograph: exact Jacobian tangents; images: sample and
local PCA), invariance ratios of h, z and z/‖z‖, and the spectra of each. With --strengths, run i is
probed under augmentation strength s_i (Spirograph: nuisance ranges scaled about their midpoints,
`spirograph.scaled_nuisance_ranges`; images: colour-jitter strengths times s); without, each run
under its own training augmentation. Writes OUTPUT_DIR/geometry_<i>.json (the full report) and
OUTPUT_DIR/geometry_table.txt, and prints the table. Cost: V·N forward passes and N projector
Jacobians per run; about a minute per run on a CPU for a width-8 Spirograph model at N = 2000.
"""

import argparse
import dataclasses
import json
import os
from typing import Optional

import jax
import ml_collections

from mclr_jax import cli
from mclr_jax.data import spirograph
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import suite as suite_lib
from mclr_jax.evaluate.model import EvaluationError
from mclr_jax.train.views import spirograph_ranges


def with_strength(config: ml_collections.ConfigDict, strength: float) -> ml_collections.ConfigDict:
  """A copy of `config` whose augmentation has strength s (docs/method.md §10.5, §14.7)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.data.name == "spirograph":
    ranges = spirograph.scaled_nuisance_ranges(strength, base=spirograph_ranges(config.data))
    config.data.ranges = ml_collections.ConfigDict({k: tuple(v) for k, v in ranges.items()})
  else:
    config.data.jitter_strength = tuple(strength * v for v in config.data.jitter_strength)
  return config


def probe_run(model, key, num_points: int, num_views: int, strength: Optional[float] = None,
              out_dir: str = ".", data=None) -> dict:
  """The geometry report of one model (optionally under augmentation strength s)."""
  if strength is not None:
    model = dataclasses.replace(model, config=with_strength(model.config, strength))
  options = suite_lib.SuiteOptions(geometry_points=num_points, geometry_views=num_views)
  return suite_lib.run_suite(model, ["geometry"], key, out_dir, data=data,
                             options=options)["geometry"]


def flatten_report(label, report: dict) -> dict:
  """One table row: the scalars of a geometry report."""
  row = dict(run=label)
  for name in ("encoder", "projector"):
    spectrum = report["spectra"][name]
    row[f"{name}_effective_rank"] = spectrum["effective_rank"]
    row[f"{name}_participation_ratio"] = spectrum["participation_ratio"]
    row[f"{name}_rank@0.001"] = spectrum["rank@0.001"]
  for name, value in report.get("retention", {}).items():
    row[f"retention_{name}"] = value
  for name, value in report.get("invariance_ratio", {}).items():
    row[f"ir_{name}"] = value
  return row


def _format(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def tabulate(rows: list[dict]) -> str:
  """Aligned text table; columns in order of first appearance, '-' for a missing value."""
  columns = []
  for row in rows:
    columns += [c for c in row if c not in columns]
  cells = [[_format(row.get(c)) for c in columns] for row in rows]
  widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
  line = lambda items: "  ".join(item.rjust(w) for item, w in zip(items, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdirs", required=True, help="comma-separated trained runs")
  parser.add_argument("--strengths", default="",
                      help="comma-separated augmentation strengths, one per workdir (default: "
                      "each run's own augmentation)")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--num_points", type=int, default=2000, help="held-out inputs N")
  parser.add_argument("--num_views", type=int, default=32, help="augmented views per input V")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  workdirs = [w for w in args.workdirs.split(",") if w]
  strengths = [float(s) for s in args.strengths.split(",") if s] or [None] * len(workdirs)
  if len(workdirs) != len(strengths):
    raise EvaluationError(f"--workdirs has {len(workdirs)} entries but --strengths "
                          f"{len(strengths)}; give one strength per workdir, or none.")
  os.makedirs(args.output_dir, exist_ok=True)
  rows = []
  for i, (workdir, strength) in enumerate(zip(workdirs, strengths)):
    model = model_lib.restore_model(workdir)
    report = probe_run(model, jax.random.key(args.seed), args.num_points, args.num_views,
                       strength, out_dir=args.output_dir)
    with open(os.path.join(args.output_dir, f"geometry_{i}.json"), "w") as f:
      json.dump(dict(workdir=workdir, strength=strength, step=model.step, **report), f, indent=1)
    label = os.path.basename(workdir.rstrip("/")) + ("" if strength is None else f"@{strength:g}")
    rows.append(flatten_report(label, report))
  table = tabulate(rows)
  with open(os.path.join(args.output_dir, "geometry_table.txt"), "w") as f:
    f.write(table + "\n")
  print(table)
  print(f"Written to {args.output_dir}/geometry_*.json and geometry_table.txt")


if __name__ == "__main__":
  cli.run_script(main)
