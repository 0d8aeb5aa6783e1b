"""One command per published table or figure of the three papers mclr_jax implements.

  python experiments/reproduce.py --list
  python experiments/reproduce.py --table=spirograph [--seeds=0,1,2] [--workdir=runs/reproduce]
  python experiments/reproduce.py --table=spirograph --dry_run   # the plan: runs, cost, datasets
  python experiments/reproduce.py --table=spirograph --tiny      # the whole pipeline at toy size

For the chosen table it prints the plan (every training run: config, variant, seed, steps and its
estimated time on one GPU; the datasets needed), trains each run into WORKDIR/<run> and evaluates
it, then prints our numbers beside the published ones, each published number with its source
(paper and table, or "not found in our sources" where we hold none). Rerunning the same command
resumes: a run whose evaluation for this table is stored (WORKDIR/<run>/reproduce/<table>.json) is
skipped, an unfinished one resumes from its latest checkpoint, and a run shared by two tables
(the ManifoldCLR checkpoints of the linear-probe and semi-supervised tables) trains once.

--tiny swaps every run for a toy one (width 2–4 networks, batch 16, 4 steps, mocked TFDS images or
a small Spirograph split, few evaluation copies and trials) that finishes on a CPU; its numbers
mean nothing, it checks the pipeline. The image tables' --tiny needs tensorflow-datasets (its
mock data); the Spirograph and geometry tables need no TensorFlow. The full-size tables need a GPU
(docs/method.md §18.6 lists them with their estimated cost). JAX and the training code are
imported by the functions that train, so --list and --dry_run answer at once.
"""

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import pathlib
import sys
import time
from typing import Optional

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ as a package

from mclr_jax import cli  # noqa: E402
from mclr_jax.errors import UserFacingError  # noqa: E402

# --------------------------------------------------------------------------------------------
# Cost model: milliseconds per step on one H100 at batch 512, bf16 (the GPU default). Three steps
# were measured by experiments/gpu_report.py (docs/performance.md); the others are derived from
# those measurements and the parts of the `thresh` step timed alone there:
#   measured   SimCLR, CIFAR stem, 32 px                           16.05
#   measured   ManifoldCLR `proj`, CIFAR stem, 32 px, M = 16       26.09
#   measured   ManifoldCLR `thresh`, 64 px stem, M = 128, J = 20   50.35
#   derived    SimCLR, 64 px stem: the backbone's forward + backward alone (19.10) + 1 for the
#              loss and augmentation
#   derived    `proj`, 64 px stem: the `thresh` step less its best-of-J selection (18.38)
#   derived    `thresh`, CIFAR stem: the CIFAR SimCLR step + what ManifoldCLR adds at 64 px
#              (50.35 − 20.1)
#   derived    Spirograph: the CIFAR SimCLR step (32 px, CIFAR stem), rendering not included
#   derived    ResNet-50: × 2.55, its train-step FLOPs over ResNet-18's on 32 px (XLA's count)
#   derived    gradient penalty: × 2.5 (docs/method.md §11.5: 2–3×)
# Replace the derived figures as gpu_report.py measures them.
# --------------------------------------------------------------------------------------------
STEP_MS = {  # (method kind, stem) -> ms
    ("simclr", "cifar"): 16.05,
    ("proj", "cifar"): 26.09,
    ("thresh", "imagenet64"): 50.35,
    ("simclr", "imagenet64"): 19.10 + 1.0,
    ("proj", "imagenet64"): 50.35 - 18.38,
    ("thresh", "cifar"): 16.05 + (50.35 - 20.1),
}
MEASURED = {("simclr", "cifar"), ("proj", "cifar"), ("thresh", "imagenet64")}
RESNET50_COST = 2.55
PENALTY_COST = 2.5

# Self-supervised training examples (docs/method.md §7; Spirograph: config.data.num_train).
NUM_TRAIN = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 105_000, "tinyimagenet": 100_000}

NOT_FOUND = "not found in our sources"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: `configs/<config>.py:<variant>` with `seed` and config `overrides`."""
  config: str
  variant: str
  seed: int = 0
  overrides: tuple = ()  # ((dotted key, value), ...)
  tag: str = ""  # distinguishes runs whose overrides differ

  @property
  def name(self) -> str:
    return f"{self.config}_{self.variant}{self.tag}_s{self.seed}"

  def build(self):
    config = importlib.import_module(f"configs.{self.config}").get_config(self.variant)
    config.seed = self.seed
    for key, value in self.overrides:
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
    return config


@dataclasses.dataclass(frozen=True)
class Published:
  value: Optional[float]
  source: str = NOT_FOUND


@dataclasses.dataclass(frozen=True)
class Cell:
  """One number of a table: the mean ± std over `runs` (the seeds) of `metric`, a path into the
  run's evaluation results, times `scale`."""
  row: str
  column: str
  runs: tuple  # of Run
  metric: tuple
  scale: float = 1.0
  published: Published = Published(None)


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  source: str  # the paper and the table or figure
  suites: tuple  # the evaluation suites every run gets
  cells: tuple  # of Cell
  unit: str
  gpu_note: str

  @property
  def runs(self) -> tuple:
    seen = {}
    for cell in self.cells:
      for run in cell.runs:
        seen.setdefault(run.name, run)
    return tuple(seen.values())

  @property
  def datasets(self) -> tuple:
    return tuple(sorted({run.build().data.name for run in self.runs}))


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------

MANIFOLDCLR = "Fallah et al., Manifold Contrastive Learning with Variational Lie Group Operators"
INVARIANCE = ("Foster et al., Improving Transformation Invariance in Contrastive Representation "
              "Learning")
GEOMETRY = ("Cosentino et al., Toward a Geometrical Understanding of Self-supervised Contrastive "
            "Learning")
# docs/method.md §16: linear probe on the authors' released 1000-epoch checkpoints.
NOTEBOOK = "authors' identity-preservation notebook (docs/method.md §16), not the paper's table"
INVCLR_README = ("authors' code README (ae-foster/invclr, 'Feature averaging': best of 3 runs, "
                 "M = 100, all training labels where this row uses half), not the paper's table")

IMAGE_SETS = ("cifar10", "stl10", "tinyimagenet")
# The paper's reported ManifoldCLR-with-head variant per dataset (docs/method.md §5).
HEAD_VARIANT = {"cifar10": "thresh", "stl10": "proj", "tinyimagenet": "proj"}
NOTEBOOK_PROBE = {"cifar10": 90.04, "stl10": 87.29, "tinyimagenet": 42.47}


def _seeds(seeds, default):
  return tuple(seeds) if seeds else default


def manifoldclr_linear(seeds=None) -> Table:
  seeds = _seeds(seeds, (0,))
  rows = (("SimCLR, projection head", "simclr"), ("SimCLR, no head", "simclr_noproj"),
          ("ManifoldCLR, projection head", None), ("ManifoldCLR, no head", "noproj"))
  cells = []
  for label, variant in rows:
    for d in IMAGE_SETS:
      v = variant or HEAD_VARIANT[d]
      published = (Published(NOTEBOOK_PROBE[d], NOTEBOOK) if variant is None
                   else Published(None))
      cells.append(Cell(label, d, tuple(Run(d, v, s) for s in seeds), ("probe", "linear_top1"),
                        100.0, published))
  return Table("manifoldclr_linear", "Linear probe top-1 (%) on frozen backbone features",
               f"{MANIFOLDCLR} (TMLR 2024), linear-evaluation table", ("probe",), tuple(cells),
               "%", "needs a GPU: 12 runs of 97k–205k steps")


def manifoldclr_semi(seeds=None) -> Table:
  seeds = _seeds(seeds, (0,))
  cells = []
  for label, key in (("transport (learned prior)", "transport"), ("mixup", "mixup"),
                     ("FeatMatch (learned feature augmentation)", "featmatch"),
                     ("pseudo-labels, no augmentation", "none"), ("supervised only", "supervised")):
    for d in IMAGE_SETS:
      cells.append(Cell(label, d, tuple(Run(d, HEAD_VARIANT[d], s) for s in seeds),
                        ("semi_supervised", key, "mean"), 100.0))
  return Table("manifoldclr_semi", "Few-label task, 5 labels per class: test accuracy (%)",
               f"{MANIFOLDCLR} (TMLR 2024), semi-supervised table", ("semi_supervised",),
               tuple(cells), "%", "needs a GPU: the three ManifoldCLR runs of manifoldclr_linear")


def spirograph_table(seeds=None) -> Table:
  seeds = _seeds(seeds, (0, 1, 2))
  base = tuple(Run("spirograph", "paper", s) for s in seeds)
  gp = tuple(Run("spirograph", "paper_gp", s) for s in seeds)
  single, fa = ("probe", "mse_mean"), ("feature_average", "mse_mean")
  cells = (Cell("baseline (λ = 0)", "test MSE", base, single),
           Cell("gradient penalty (λ = 0.01)", "test MSE", gp, single),
           Cell("baseline + feature averaging (M = 30)", "test MSE", base, fa),
           Cell("gradient penalty + feature averaging (M = 30)", "test MSE", gp, fa))
  return Table("spirograph", "Spirograph: linear-regression test MSE of the content θ, mean over "
               "(m, b, σ, f_r)", f"{INVARIANCE} (ICLR 2021), Spirograph results",
               ("probe", "feature_average"), cells, "MSE", "needs a GPU: 2 × 3 runs of 9,750 steps")


def invariance_cifar(seeds=None) -> Table:
  seeds = _seeds(seeds, (0,))
  cells = []
  published = {("λ = 0.1", "feature_averaging", "cifar10"): Published(94.9, INVCLR_README),
               ("λ = 0.1", "feature_averaging", "cifar100"): Published(75.1, INVCLR_README)}
  for penalty, label in (("nogp", "λ = 0"), ("gp", "λ = 0.1")):
    for mode, mode_label in (("untransformed", "untransformed"), ("transformed", "one view"),
                             ("feature_averaging", "feature averaging, M = 100")):
      for d in ("cifar10", "cifar100"):
        cells.append(Cell(f"{label}, {mode_label}", d,
                          tuple(Run("invariance_cifar", f"{d}_{penalty}", s) for s in seeds),
                          ("invariance_probe", mode, "accuracy"), 100.0,
                          published.get((label, mode, d), Published(None))))
  return Table("invariance_cifar", "CIFAR: L-BFGS linear classifier on half the labels, test "
               "accuracy (%)", f"{INVARIANCE} (ICLR 2021), CIFAR-10/100 results",
               ("invariance_probe",), tuple(cells), "%",
               "needs a GPU: 4 runs of 97,000 ResNet-50 steps (the authors used 8 GPUs)")


GEOMETRY_STRENGTHS = (0.25, 0.5, 1.0, 1.5)


def _strength_run(strength, seed):
  from mclr_jax.data import spirograph  # pylint: disable=g-import-not-at-top
  ranges = spirograph.scaled_nuisance_ranges(strength, base=dict(spirograph.DEFAULT_RANGES))
  return Run("spirograph", "paper", seed,
             overrides=(("data.ranges", {k: tuple(v) for k, v in ranges.items()}),),
             tag=f"_strength{strength:g}")


def geometry_table(seeds=None) -> Table:
  seeds = _seeds(seeds, (0,))
  cells = []
  metrics = (("retention of augmentation directions", ("geometry", "retention", "aug")),
             ("retention of data directions", ("geometry", "retention", "data")),
             ("invariance ratio, encoder h", ("geometry", "invariance_ratio", "encoder")),
             ("invariance ratio, projector z", ("geometry", "invariance_ratio", "projector")))
  for strength in GEOMETRY_STRENGTHS:
    runs = tuple(_strength_run(strength, s) for s in seeds)
    for label, metric in metrics:
      cells.append(Cell(f"strength s = {strength:g}", label, runs, metric))
  return Table("geometry", "Encoder vs projector on Spirograph, by augmentation strength "
               "(docs/method.md §14)", f"{GEOMETRY} (2022), encoder-vs-projector figure",
               ("geometry",), tuple(cells), "ratio",
               "needs a GPU: 4 runs of 9,750 steps")


TABLES = {"manifoldclr_linear": manifoldclr_linear, "manifoldclr_semi": manifoldclr_semi,
          "spirograph": spirograph_table, "invariance_cifar": invariance_cifar,
          "geometry": geometry_table}


# --------------------------------------------------------------------------------------------
# Cost, toy size, running
# --------------------------------------------------------------------------------------------

def full_steps(config) -> int:
  """The run's training steps (the loop's own count: epochs × ⌊examples / batch⌋)."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  examples = (config.data.num_train if config.data.name == "spirograph"
              else NUM_TRAIN[config.data.name])
  return int(config.num_epochs * (examples // config.batch_size))


def _cost_key(config) -> tuple[str, str]:
  if config.method == "manifoldclr":
    kind = "thresh" if config.manifold.num_samples > 1 else "proj"
  else:
    kind = "simclr"
  stem = config.model.get("stem", "cifar")
  return kind, ("imagenet64" if stem != "cifar" else "cifar")


def step_ms(config) -> float:
  """Estimated ms per step on one H100 in bf16 (see STEP_MS: measured or derived from it)."""
  ms = STEP_MS[_cost_key(config)]
  if config.model.get("arch", "resnet18") == "resnet50":
    ms *= RESNET50_COST
  return ms * (PENALTY_COST if config.invariance.weight > 0 else 1.0)


def step_ms_measured(config) -> bool:
  """Whether `step_ms` is an H100 measurement of this very kind of step (not derived)."""
  return (_cost_key(config) in MEASURED and config.invariance.weight == 0
          and config.model.get("arch", "resnet18") == "resnet18"
          and config.data.name != "spirograph")  # Spirograph adds its on-device rendering


def _duration(hours: float) -> str:
  return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def tiny_config(config):
  """The same pipeline at toy size: seconds per run on a CPU."""
  config.model.width = 2 if config.model.get("arch", "resnet18") == "resnet50" else 4
  config.model.proj_hidden_dim, config.model.proj_output_dim = 16, 8
  config.batch_size = 16
  config.num_train_steps = 4
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 0
  config.data.prefetch = 1
  if config.data.name == "spirograph":
    config.data.num_train, config.data.num_test = 64, 32
  m = config.manifold
  m.block_dim, m.dictionary_size = 8, 4
  m.encoder_hidden, m.prior_hidden = (16, 16, 8), (16, 16, 8)
  m.best_of_j_start = min(m.best_of_j_start, 2)
  config.invariance.num_alpha_samples = 4
  ev = config.eval
  ev.feature_average_copies = min(ev.feature_average_copies, 2) or 2
  ev.max_train_examples, ev.max_test_examples = -1, -1
  ev.linear_epochs, ev.lbfgs_steps = 5, 20
  return config


# Mocked examples per TFDS split: at least 400, and ~15 per class so that the few-label task finds
# labelled and unlabelled rows of every class among TFDS's random labels.
def tiny_images(config) -> int:
  from mclr_jax.data.datasets import get_dataset_info  # pylint: disable=g-import-not-at-top
  return max(400, 15 * get_dataset_info(config.data.name).num_classes)


def suite_options(tiny: bool):
  from mclr_jax.evaluate import suite as suite_lib  # pylint: disable=g-import-not-at-top
  if not tiny:
    return suite_lib.SuiteOptions()
  return suite_lib.SuiteOptions(semi_supervised_trials=2, semi_supervised_steps=5,
                                semi_supervised_hidden=16, labels_per_class=1,
                                geometry_points=16, geometry_views=4)


def _data_context(config, tiny: bool):
  if tiny and config.data.name != "spirograph":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if config.data.name == "tinyimagenet":
      from mclr_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top,unused-import
    return tfds.testing.mock_data(num_examples=tiny_images(config))
  return contextlib.nullcontext()


def result_path(workdir: str, run: Run, table: Table) -> str:
  return os.path.join(workdir, run.name, "reproduce", f"{table.name}.json")


def run_one(run: Run, table: Table, workdir: str, tiny: bool) -> dict:
  """Trains (or resumes) one run and evaluates it with the table's suites; returns the results.
  A stored evaluation for this table is returned as is."""
  path = result_path(workdir, run, table)
  if os.path.exists(path):
    print(f"  {run.name}: done (results in {path})", flush=True)
    with open(path) as f:
      return json.load(f)["results"]
  import jax  # pylint: disable=g-import-not-at-top
  from mclr_jax.evaluate import model as model_lib  # pylint: disable=g-import-not-at-top
  from mclr_jax.evaluate import report  # pylint: disable=g-import-not-at-top
  from mclr_jax.evaluate import suite as suite_lib  # pylint: disable=g-import-not-at-top
  from mclr_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = run.build()
  if tiny:
    tiny_config(config)
  run_dir = os.path.join(workdir, run.name)
  start = time.time()
  with _data_context(config, tiny):
    model = _finished_model(config, run_dir)
    if model is None:
      print(f"  {run.name}: training (resumes from {run_dir}/checkpoints if any)", flush=True)
      state = loop.train_and_evaluate(config, run_dir)
      model = model_lib.model_from_state(config, state)
    else:  # trained for another table (the ManifoldCLR checkpoints serve two)
      print(f"  {run.name}: trained, step {model.step}; evaluating", flush=True)
    results = suite_lib.run_suite(model, table.suites, jax.random.key(config.seed + 3), run_dir,
                                  options=suite_options(tiny))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  report.write_json(path, {"step": model.step, "results": results})
  print(f"  {run.name}: step {model.step}, {time.time() - start:.0f} s", flush=True)
  return results


def _finished_model(config, run_dir: str):
  """The EvalModel of RUN_DIR's final checkpoint, or None while training is unfinished."""
  from mclr_jax.evaluate import model as model_lib  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    return None
  try:
    model = model_lib.restore_model(run_dir, config=config)
  except model_lib.EvaluationError:  # no checkpoint yet
    return None
  return model if model.step >= full_steps(config) else None


def _lookup(results: dict, metric: tuple):
  value = results
  for key in metric:
    if not isinstance(value, dict) or key not in value:
      return None
    value = value[key]
  return value if isinstance(value, (int, float)) else None


def summarise(table: Table, results: dict) -> list:
  """One row per cell: (row, column, mean, std, n, published) with our values scaled."""
  rows = []
  for cell in table.cells:
    values = [_lookup(results[r.name], cell.metric) for r in cell.runs if r.name in results]
    values = [v * cell.scale for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(values)) if values else None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    rows.append((cell.row, cell.column, mean, std, len(values), cell.published))
  return rows


def format_comparison(table: Table, rows: list) -> str:
  """The published-vs-ours table."""
  def ours(mean, std, n):
    if mean is None:
      return "-"
    spread = f" ± {std:.3g}" if std is not None else ""
    return f"{mean:.4g}{spread} (n={n})"

  cells = [(r, c, ours(m, s, n), "-" if p.value is None else f"{p.value:g}", p.source)
           for r, c, m, s, n, p in rows]
  header = ("row", "column", f"ours ({table.unit})", "published", "source")
  widths = [max(len(x[i]) for x in cells + [header]) for i in range(4)]
  lines = [f"{table.title}\nPublished: {table.source}",
           "  ".join(h.ljust(w) for h, w in zip(header[:4], widths)) + "  " + header[4]]
  lines.append("-" * len(lines[-1]))
  lines += ["  ".join(v.ljust(w) for v, w in zip(x[:4], widths)) + "  " + x[4] for x in cells]
  return "\n".join(lines)


def format_plan(table: Table, tiny: bool) -> str:
  lines = [f"Table {table.name}: {table.title}", f"  published in: {table.source}",
           f"  datasets: {', '.join(table.datasets)}", f"  runs ({len(table.runs)}):"]
  total_h = 0.0
  for run in table.runs:
    config = run.build()
    steps, ms = full_steps(config), step_ms(config)
    hours = steps * ms / 3.6e6
    total_h += hours
    extra = f", overriding {', '.join(k for k, _ in run.overrides)}" if run.overrides else ""
    how = "measured" if step_ms_measured(config) else "derived"
    lines.append(f"    {run.name}: configs/{run.config}.py:{run.variant} seed {run.seed}{extra}; "
                 f"{steps:,} steps × ~{ms:.0f} ms ({how}) ≈ {_duration(hours)}")
  lines.append(f"  estimated training time on one H100: {_duration(total_h)} (bf16 step times measured "
               f"by gpu_report.py or derived from them, see STEP_MS; evaluation extra); "
               f"{table.gpu_note}")
  if tiny:
    lines.append("  --tiny: every run at toy size on this machine; the numbers check the "
                 "pipeline, not the paper")
  return "\n".join(lines)


def list_tables() -> str:
  lines = []
  for name, make in TABLES.items():
    table = make()
    runs = table.runs
    hours = sum(full_steps(r.build()) * step_ms(r.build()) / 3.6e6 for r in runs)
    lines.append(f"{name:<20}{table.title}\n{'':<20}{table.source}\n{'':<20}{len(runs)} runs, "
                 f"~{_duration(hours)} on one H100 (estimate), {table.gpu_note}; datasets: "
                 f"{', '.join(table.datasets)}")
  return "\n".join(lines)


class ReproduceError(UserFacingError, ValueError):
  """A request reproduce.py cannot serve; the message says what to pass instead."""


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--table", help=f"one of {', '.join(TABLES)}")
  parser.add_argument("--list", action="store_true", help="list the tables and exit")
  parser.add_argument("--tiny", action="store_true", help="toy-size runs that finish on a CPU")
  parser.add_argument("--dry_run", action="store_true", help="print the plan only")
  parser.add_argument("--seeds", default="", help="comma list replacing the table's seeds")
  parser.add_argument("--workdir", default=None,
                      help="runs go to WORKDIR/<run> (default runs/reproduce, or "
                           "runs/reproduce_tiny with --tiny)")
  args = parser.parse_args(argv)
  if args.list:
    print(list_tables())
    return
  if args.table not in TABLES:
    raise ReproduceError(f"--table={args.table!r} is not a table; choose one of "
                         f"{', '.join(TABLES)} (see --list)")
  seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
  table = TABLES[args.table](seeds or None)
  workdir = args.workdir or os.path.join("runs", "reproduce_tiny" if args.tiny else "reproduce")
  print(format_plan(table, args.tiny), flush=True)
  if args.dry_run:
    return
  if args.tiny:
    import jax  # pylint: disable=g-import-not-at-top
    # Toy sizes: compiling dominates, and unoptimised programs compute the same values.
    jax.config.update("jax_disable_most_optimizations", True)
  results = {run.name: run_one(run, table, workdir, args.tiny) for run in table.runs}
  rows = summarise(table, results)
  text = format_comparison(table, rows)
  out = os.path.join(workdir, f"{table.name}.json")
  with open(out, "w") as f:
    json.dump({"table": table.name, "tiny": args.tiny,
               "rows": [dict(row=r, column=c, mean=m, std=s, n=n, published=p.value,
                             source=p.source) for r, c, m, s, n, p in rows]}, f, indent=2)
  print(f"\n{text}\nWritten to {out}", flush=True)


if __name__ == "__main__":
  cli.run_script(main)
