"""Spirograph: downstream content MSE against the gradient-penalty weight λ (docs/method.md §11.6).

  python experiments/spirograph_gp_sweep.py                                  # the default grid
  python experiments/spirograph_gp_sweep.py --settings=long --weights=0,0.001,0.01 --seeds=0,1
  python experiments/spirograph_gp_sweep.py --report_only                    # tables + plot only
  python experiments/spirograph_gp_sweep.py --define='lars=lars:num_epochs=5' --settings=lars

Trains one `python -m mclr_jax.main` run per (setting, λ, seed) under ROOT/<setting>/lam<λ>_seed<s>,
the README's Spirograph command with `--config.invariance.weight=λ` (the clip U and the rest come
from the setting's config), and skips runs whose results.json exists (an interrupted run resumes
from its checkpoint). Runs are ordered baselines first. Then, over every run found under ROOT, it
writes a markdown table (OUT_MD) and a plot (OUT_PNG) of the probe's content MSE, single view and
with feature averaging, against λ, mean ± standard deviation over seeds, one panel per setting.
Each run records the commit it was trained with (both, joined by "+", for a run resumed under
another); the table lists it per run and flags a setting whose runs come from more than one.

A setting is a config variant of configs/spirograph.py plus overrides; `--define` adds one, so a new
recipe (e.g. another optimiser preset) is one more row. Cost on a shared 2-core CPU: about 5 min per
baseline and 8 min per penalty run at the `cpu` setting, 4× that at `long`; at `wide`, 12 min and
30 min (with the gradient share logged).
"""

import dataclasses
import json
import os
import subprocess
import sys
from typing import Optional

from absl import flags
import numpy as np

from mclr_jax import cli
from mclr_jax.errors import UserFacingError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Setting:
  variant: str  # configs/spirograph.py:<variant>
  overrides: tuple[tuple[str, str], ...]  # (config key, value) pairs, as on the command line
  description: str


SETTINGS = {
    "cpu": Setting("cpu", (), "the README default: width 8, 8k draws, 5 epochs (320 steps), AdamW"),
    "long": Setting("cpu", (("num_epochs", "20"),), "width 8, 20 epochs (1280 steps), AdamW"),
    "wide": Setting("cpu", (("model.width", "16"), ("num_epochs", "10")),
                    "width 16, 10 epochs (640 steps), AdamW"),
    # The clip U near where P has fallen to after ~50 steps (docs/method.md §11.6): the min(U, P)
    # passes no gradient while P > U, so the penalty only acts once the encoder has left the
    # early high-P regime.
    "cpu_clip50": Setting("cpu", (("invariance.clip", "50"),),
                          "width 8, 320 steps, AdamW, clip U = 50 instead of 1000 "
                          "(no λ = 0 runs: there the clip plays no part, see `cpu`)"),
    # The invariance paper's optimiser and projector (docs/method.md §11.4) at the `cpu` size:
    # lr = 1.5 · batch / 256, a 1-epoch ramp (10 of their 50 epochs) then cosine to 0 per epoch.
    "cpu_lars": Setting("cpu", (("optim.name", "lars"), ("optim.schedule", "epoch_ramp_cosine"),
                                ("optim.lr", "0.75"), ("optim.min_lr", "0.0"),
                                ("optim.warmup_epochs", "1"), ("optim.weight_decay", "1e-6"),
                                ("optim.momentum", "0.9"), ("optim.trust_coefficient", "1e-3"),
                                ("model.projection", "invclr"), ("model.proj_output_dim", "128")),
                        "width 8, 320 steps, the authors' LARS-SGD recipe and projector"),
}

flags.DEFINE_string("root", "runs/spirograph_gp_sweep", "Directory holding one workdir per run.")
flags.DEFINE_list("settings", ["cpu"], f"Settings to train (built in: {', '.join(SETTINGS)}).")
flags.DEFINE_list("weights", ["0", "0.0001", "0.001", "0.01"], "Penalty weights λ to train.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed) to train.")
flags.DEFINE_list("grad_share_seeds", ["0"],
                  "Seeds whose penalty runs also log penalty_grad_share (a second backward pass).")
flags.DEFINE_multi_string("define", [], "Extra setting NAME=VARIANT[:key=value,key=value...].")
flags.DEFINE_bool("report_only", False, "Train nothing; rebuild the table and plot from ROOT.")
flags.DEFINE_string("out_md", "docs/spirograph_gp_sweep.md", "Markdown table to write.")
flags.DEFINE_string("out_png", "docs/figures/spirograph_gp_sweep.png", "Plot to write.")

FLAGS = flags.FLAGS


class SweepError(UserFacingError):
  """A bad flag value or a failed training run."""


def parse_define(text: str) -> tuple[str, Setting]:
  """'name=variant:key=value,key=value' -> (name, Setting)."""
  name, sep, rest = text.partition("=")
  variant, _, pairs = rest.partition(":")
  if not sep or not name or not variant:
    raise SweepError(f"--define={text!r} is not NAME=VARIANT[:key=value,...]; e.g. "
                     "--define='lars=lars:num_epochs=5'.")
  overrides = []
  for pair in filter(None, pairs.split(",")):
    key, eq, value = pair.partition("=")
    if not eq:
      raise SweepError(f"--define={text!r}: override {pair!r} is not key=value.")
    overrides.append((key, value))
  return name, Setting(variant, tuple(overrides), f"configs/spirograph.py:{variant} {pairs}")


def _floats(values, flag):
  try:
    return [float(v) for v in values]
  except ValueError as e:
    raise SweepError(f"--{flag}={','.join(values)}: {e}; give comma-separated numbers.") from None


def code_version() -> str:
  """The commit the runs are trained with (abbreviated, "-dirty" with uncommitted changes to
  tracked files), or "unknown" outside a git checkout."""
  def git(*args):
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else None
  try:
    commit = git("rev-parse", "--short", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no")
  except OSError:  # no git
    return "unknown"
  if not commit:
    return "unknown"
  return commit + ("-dirty" if changes else "")


def run_dir(root: str, setting: str, weight: float, seed: int) -> str:
  return os.path.join(root, setting, f"lam{weight:g}_seed{seed}")


def train(setting_name: str, setting: Setting, weight: float, seed: int, grad_share: bool,
          root: str) -> Optional[str]:
  """Runs one training job unless its results exist; returns an error line or None."""
  workdir = run_dir(root, setting_name, weight, seed)
  if os.path.exists(os.path.join(workdir, "results.json")):
    return None
  os.makedirs(workdir, exist_ok=True)
  record = os.path.join(workdir, "sweep_run.json")
  code = code_version()
  if os.path.exists(record):  # an interrupted run, resumed: its first steps ran the earlier code
    with open(record) as f:
      started = json.load(f).get("code") or "not recorded"
    code = started if started == code else f"{started}+{code}"
  with open(record, "w") as f:
    json.dump({"setting": setting_name, "variant": setting.variant,
               "overrides": dict(setting.overrides), "weight": weight, "seed": seed,
               "code": code}, f)
  command = [sys.executable, "-m", "mclr_jax.main",
             f"--config={REPO}/configs/spirograph.py:{setting.variant}",
             f"--workdir={os.path.abspath(workdir)}", f"--config.seed={seed}",
             f"--config.invariance.weight={weight}",
             f"--config.invariance.log_grad_share={grad_share and weight > 0}"]
  command += [f"--config.{key}={value}" for key, value in setting.overrides]
  print(f"[{setting_name}] λ={weight:g} seed={seed}: training in {workdir}", flush=True)
  with open(os.path.join(workdir, "log.txt"), "a") as log:
    code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  if code != 0:
    return f"{workdir} exited with {code}; see {workdir}/log.txt"
  return None


def read_run(workdir: str) -> Optional[dict]:
  """The numbers of one finished run, or None if it has no results.json yet."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)["results"]
    with open(os.path.join(workdir, "sweep_run.json")) as f:
      run = json.load(f)
  except FileNotFoundError:
    return None
  fa = next(k for k in results if k.startswith("trained/fa"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    train_records = [r for r in map(json.loads, f) if r["kind"] == "train"]
  first, last = train_records[0], train_records[-1]
  shares = [r["penalty_grad_share"] for r in train_records if "penalty_grad_share" in r]
  run.setdefault("code", None)  # runs from before the sweep recorded it
  return dict(run, single=results["trained/single"]["mse_mean"], fa=results[fa]["mse_mean"],
              fa_copies=int(fa[len("trained/fa"):]), m_single=results["trained/single"]["mse/m"],
              m_fa=results[fa]["mse/m"], random=results["random/single"]["mse_mean"],
              random_fa=results[fa.replace("trained", "random")]["mse_mean"],
              contrastive=last["contrastive"], penalty_first=first.get("penalty"),
              penalty_last=last.get("penalty"), grad_norm_first=first["grad_norm"],
              share_first=shares[0] if shares else None, share_last=shares[-1] if shares else None,
              steps=last["step"])


def collect(root: str) -> list[dict]:
  runs = []
  for setting in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    for name in sorted(os.listdir(os.path.join(root, setting))):
      run = read_run(os.path.join(root, setting, name))
      if run is not None:
        runs.append(run)
  return runs


def _mean_std(values) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def _fmt(value, spec=".3g"):
  return "–" if value is None else format(value, spec)


def _sweep_command(name: str, group: list[dict]) -> str:
  """The command that trains (or, given the runs, re-reports) exactly this setting's table."""
  weights = ",".join(f"{w:g}" for w in sorted({r["weight"] for r in group}))
  seeds = ",".join(str(s) for s in sorted({r["seed"] for r in group}))
  return (f"python experiments/spirograph_gp_sweep.py --settings={name} --weights={weights} "
          f"--seeds={seeds}")


def markdown(runs: list[dict], settings: dict, plot_path: Optional[str] = None) -> str:
  """Per (setting, λ): mean ± std over seeds; then one row per run.

  `plot_path` (relative to the markdown file) embeds the plot under the introduction.
  """
  lines = ["# Spirograph: content MSE against the gradient-penalty weight λ", "",
           "Generated by `python experiments/spirograph_gp_sweep.py` (docs/method.md §11.6); "
           "each setting below names the command that trains its runs, and "
           "`--report_only` rewrites this page and the plot from every finished run. "
           "Probe test MSE on the content targets (m, b, σ, f_r), mean over targets, mean ± "
           "standard deviation over seeds (a single seed has no spread); FA = test-time feature "
           "averaging (docs/method.md §12). The decompositions quoted in §11.6 come from "
           "`python experiments/spirograph_gp_diagnostics.py` (its docstring has the command for "
           "trained encoders). Each run names the commit it was trained with; \"not recorded\" "
           "marks runs trained before the sweep kept that record.", ""]
  if plot_path:
    lines += [f"![content MSE against λ, one panel per setting]({plot_path})", ""]
  for name in sorted({r["setting"] for r in runs}):
    group = [r for r in runs if r["setting"] == name]
    described = settings[name].description if name in settings else group[0]["variant"]
    lines += [f"## `{name}`: {described}", "", f"`{_sweep_command(name, group)}`", "",
              f"| λ | seeds | single view | FA (M = {group[0]['fa_copies']}) | m, single | "
              "m, FA | random encoder, single | final contrastive |",
              "|---|---|---|---|---|---|---|---|"]
    for weight in sorted({r["weight"] for r in group}):
      rows = [r for r in group if r["weight"] == weight]
      cells = [_mean_std([r[k] for r in rows]) for k in ("single", "fa", "m_single", "m_fa",
                                                          "random", "contrastive")]
      lines.append(f"| {weight:g} | {','.join(str(r['seed']) for r in rows)} | "
                   + " | ".join(cells) + " |")
    versions = sorted({r["code"] or "not recorded" for r in group})
    if len(versions) > 1:
      lines += ["", f"Runs of this setting were trained with {len(versions)} code versions "
                f"({', '.join(versions)}); compare across them only within the seed spread."]
    lines += ["", "Per run (penalty and its gradient share: first → last logged value; code: the "
              "commit trained with):", "",
              "| λ | seed | single | FA | first grad norm | penalty | penalty grad share | code |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(group, key=lambda r: (r["weight"], r["seed"])):
      penalty = (f"{_fmt(r['penalty_first'], '.4g')} → {_fmt(r['penalty_last'], '.4g')}"
                 if r["penalty_first"] is not None else "–")
      share = (f"{_fmt(r['share_first'], '.3f')} → {_fmt(r['share_last'], '.3f')}"
               if r["share_first"] is not None else "–")
      lines.append(f"| {r['weight']:g} | {r['seed']} | {r['single']:.4f} | {r['fa']:.4f} | "
                   f"{r['grad_norm_first']:.3g} | {penalty} | {share} | "
                   f"{r['code'] or 'not recorded'} |")
    lines.append("")
  return "\n".join(lines)


def plot(runs: list[dict], path: str) -> None:
  """One panel per setting: MSE (single view, FA) against λ, error bars = std over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (host-only)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = sorted({r["setting"] for r in runs})
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False,
                           sharey=True)  # one scale: the settings compare at a glance
  for ax, name in zip(axes[0], names):
    group = [r for r in runs if r["setting"] == name]
    weights = sorted({r["weight"] for r in group})
    nonzero = [w for w in weights if w > 0] or [1e-3]
    zero_at = min(nonzero) / 10  # λ = 0 drawn one decade left of the smallest λ > 0
    xs = [w if w > 0 else zero_at for w in weights]
    for key, label in (("single", "single view"), ("fa", "feature averaging")):
      stats = [np.asarray([r[key] for r in group if r["weight"] == w]) for w in weights]
      ax.errorbar(xs, [s.mean() for s in stats],
                  yerr=[s.std(ddof=1) if len(s) > 1 else 0.0 for s in stats],
                  marker="o", capsize=3, label=label)
    ax.axhline(np.mean([r["random"] for r in group]), color="gray", linestyle="--",
               label="random encoder, single view")
    ax.axhline(np.mean([r["random_fa"] for r in group]), color="gray", linestyle=":",
               label="random encoder, FA")
    ax.set_xscale("log")
    ax.set_xticks(xs, ["0" if w == 0 else f"{w:g}" for w in weights])
    ax.minorticks_off()
    ax.set_xlabel("penalty weight λ")
    ax.set_ylabel("content MSE (mean of m, b, σ, f_r)")
    ax.set_title(name)
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  settings = dict(SETTINGS)
  settings.update(parse_define(text) for text in FLAGS.define)
  unknown = [s for s in FLAGS.settings if s not in settings]
  if unknown:
    raise SweepError(f"--settings: unknown {unknown}; choose from {sorted(settings)} or add one "
                     "with --define.")
  weights = _floats(FLAGS.weights, "weights")
  seeds = [int(s) for s in _floats(FLAGS.seeds, "seeds")]
  share_seeds = {int(s) for s in _floats(FLAGS.grad_share_seeds, "grad_share_seeds")}
  if any(w < 0 for w in weights):
    raise SweepError(f"--weights={FLAGS.weights}: λ must be >= 0.")
  if not FLAGS.report_only:
    failures = []
    # Baselines first: they do not depend on the penalty, so they are the first results to trust.
    for weight in sorted(weights):
      for name in FLAGS.settings:
        for seed in seeds:
          error = train(name, settings[name], weight, seed, seed in share_seeds, FLAGS.root)
          if error:
            failures.append(error)
            print(f"error: {error}", file=sys.stderr, flush=True)
    if failures:
      raise SweepError(f"{len(failures)} run(s) failed, first: {failures[0]}")
  runs = collect(FLAGS.root)
  if not runs:
    raise SweepError(f"No finished runs under {FLAGS.root}; run without --report_only first.")
  os.makedirs(os.path.dirname(FLAGS.out_md) or ".", exist_ok=True)
  with open(FLAGS.out_md, "w") as f:
    plot_path = os.path.relpath(FLAGS.out_png, os.path.dirname(os.path.abspath(FLAGS.out_md)))
    f.write(markdown(runs, settings, plot_path))
  plot(runs, FLAGS.out_png)
  print(f"{len(runs)} runs; wrote {FLAGS.out_md} and {FLAGS.out_png}", flush=True)


if __name__ == "__main__":
  cli.run(main)
