"""Does bf16 train as well as float32? Loss curves and probe scores of both, over several seeds.

  python experiments/precision_curves.py --config=configs/spirograph.py:cpu --seeds=0,1,2 \
      --out=runs/precision [--steps=320 --log_every=8]

For each precision (float32; bf16 compute with float32 parameters, i.e. config.half_precision=True)
and each seed, trains the config in OUT/<precision>_seed<s> (rerunning resumes or skips finished
runs), then fits the downstream probe on the frozen encoder (Spirograph: the linear-regression probe
on single-view features, test MSE averaged over the content targets). The seed changes the
initialisation and the augmentations; the data are the same for every run.

Writes OUT/precision.json and OUT/precision.png (mean ± std loss curve per precision) and prints a
table. The verdict compares the gap between the two precisions' means (final-window loss, probe MSE)
with the seed-to-seed noise: "within noise" when |gap| ≤ 2 standard errors of the difference.
"""

import argparse
import importlib
import json
import math
import os
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ as a package

from mclr_jax import cli  # noqa: E402
from mclr_jax.evaluate import model as model_lib  # noqa: E402
from mclr_jax.evaluate import suite as suite_lib  # noqa: E402
from mclr_jax.train import loop  # noqa: E402

PRECISIONS = {"float32": False, "bfloat16": True}


def load_config(spec: str):
  """'configs/spirograph.py:cpu' -> that module's get_config('cpu')."""
  path, _, variant = spec.partition(":")
  module = importlib.import_module(pathlib.Path(path).with_suffix("").as_posix().replace("/", "."))
  return module.get_config(variant) if variant else module.get_config()


def read_losses(workdir: str, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the logged training loss in WORKDIR/metrics.jsonl (a resumed run's repeated
  steps keep their latest value)."""
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record.get("kind") == "train" and key in record:
        by_step[record["step"]] = float(record[key])
  steps = np.array(sorted(by_step))
  return steps, np.array([by_step[s] for s in steps])


def train_one(config, workdir: str) -> dict:
  """Trains (or resumes) one run; returns its probe results (Spirograph) or {}."""
  done_path = os.path.join(workdir, "probe.json")
  if os.path.exists(done_path):
    with open(done_path) as f:
      return json.load(f)
  state = loop.train_and_evaluate(config, workdir)
  probe = {}
  if config.data.name == "spirograph":
    model = model_lib.model_from_state(config, state)
    probe = suite_lib.run_suite(model, ["probe"], jax.random.key(config.seed + 3),
                                workdir)["probe"]
  with open(done_path, "w") as f:
    json.dump(probe, f, indent=2)
  return probe


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def compare(per_precision: dict) -> dict:
  """per_precision: {precision: [run, ...]} with run = {"final_loss", "probe_mse"?}. Returns the
  mean, std and n per precision and metric, the float32 − bf16 gap, its standard error and the
  within-noise verdict (|gap| ≤ 2 standard errors)."""
  names = list(per_precision)
  metrics = [m for m in ("final_loss", "probe_mse")
             if all(m in r for runs in per_precision.values() for r in runs)]
  out = {}
  for metric in metrics:
    stats = {p: _mean_std([r[metric] for r in per_precision[p]]) + (len(per_precision[p]),)
             for p in names}
    (m_a, s_a, n_a), (m_b, s_b, n_b) = stats[names[0]], stats[names[1]]
    stderr = math.sqrt(s_a ** 2 / n_a + s_b ** 2 / n_b)
    gap = m_b - m_a
    out[metric] = {"per_precision": {p: {"mean": m, "std": s, "n": n}
                                     for p, (m, s, n) in stats.items()},
                   "gap": gap, "stderr": stderr,
                   "within_noise": bool(abs(gap) <= 2 * stderr) if math.isfinite(stderr) else None}
  return out


def plot(curves: dict, path: str, title: str) -> None:
  """curves: {precision: (steps, (seeds, T) losses)} -> mean ± std band per precision."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (host-only)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for precision, (steps, losses) in curves.items():
    mean, std = losses.mean(0), losses.std(0)
    ax.plot(steps, mean, label=f"{precision} (n = {len(losses)})")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_title(title, fontsize=9)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/spirograph.py:cpu", help="path[:variant]")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=-1, help="> 0 overrides the config's length")
  parser.add_argument("--log_every", type=int, default=8)
  parser.add_argument("--final_fraction", type=float, default=0.25,
                      help="final-window loss: mean over this last fraction of the logged steps")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.out, exist_ok=True)

  runs, curves = {}, {}
  for precision, half in PRECISIONS.items():
    runs[precision], losses, steps = [], [], None
    for seed in seeds:
      config = load_config(args.config)
      config.seed = seed
      config.half_precision = half
      config.log_every_steps = args.log_every
      config.eval_every_steps = 0
      if args.steps > 0:
        config.num_train_steps = args.steps
      workdir = os.path.join(args.out, f"{precision}_seed{seed}")
      print(f"== {precision}, seed {seed}: {workdir}", flush=True)
      probe = train_one(config, workdir)
      steps, loss = read_losses(workdir)
      tail = max(1, int(round(args.final_fraction * len(loss))))
      run = {"seed": seed, "final_loss": float(loss[-tail:].mean())}
      if probe:
        run["probe_mse"] = float(probe["mse_mean"])
      runs[precision].append(run)
      losses.append(loss)
    curves[precision] = (steps, np.stack(losses))

  summary = compare(runs)
  result = {"config": args.config, "seeds": seeds, "runs": runs, "summary": summary,
            "curves": {p: {"steps": s.tolist(), "loss": l.tolist()} for p, (s, l) in curves.items()}}
  with open(os.path.join(args.out, "precision.json"), "w") as f:
    json.dump(result, f, indent=2)
  plot(curves, os.path.join(args.out, "precision.png"), f"{args.config}, seeds {args.seeds}")

  print(f"\n{'metric':<12}" + "".join(f"{p + ' mean ± std':>26}" for p in PRECISIONS)
        + f"{'gap':>10}{'2·stderr':>10}  verdict")
  for metric, s in summary.items():
    cells = "".join(f"{v['mean']:>16.4f} ± {v['std']:<7.4f}" for v in s["per_precision"].values())
    verdict = {True: "within noise", False: "DIFFERENT", None: "n/a (one seed)"}[s["within_noise"]]
    print(f"{metric:<12}{cells}{s['gap']:>10.4f}{2 * s['stderr']:>10.4f}  {verdict}")
  print(f"Written to {args.out}/precision.json and precision.png")


if __name__ == "__main__":
  cli.run_script(main)
