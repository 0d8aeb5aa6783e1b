"""Evaluate any checkpoint: `python -m mclr_jax.evaluate --workdir=DIR [--suite=...] [--step=N]`.

Restores WORKDIR's latest (or --step) checkpoint with the config it was trained with (or
--config=FILE, e.g. to change config.eval values), runs the chosen suites (see suite.py), merges the
results into WORKDIR/eval.json, appends a {"kind": "eval", "step": ...} record to
WORKDIR/metrics.jsonl and writes figures to WORKDIR/figures/.

  python -m mclr_jax.evaluate --workdir=runs/cifar10 --suite=probe,knn,cluster,semi_supervised
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mclr_jax.evaluate import suite as suite_lib
from mclr_jax.train import checkpoint
from mclr_jax.train import metrics as metrics_lib

# A private flag registry: the training CLI (mclr_jax.main) defines --workdir/--config on the global
# one, and both modules may be imported in one process (tests).
FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.",
                    flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).",
                     flag_values=FLAGS)
flags.DEFINE_string("suite", ",".join(suite_lib.DEFAULT_SUITES),
                    f"Comma list from {','.join(suite_lib.SUITES)} (semi_supervised is opt-in: "
                    "it trains many classifiers).", flag_values=FLAGS)
flags.DEFINE_integer("semi_supervised_trials", None,
                     "Trials (default config.eval.semi_supervised_trials).", flag_values=FLAGS)
flags.DEFINE_integer("semi_supervised_steps", None,
                     "Steps per trial (default config.eval.semi_supervised_steps).",
                     flag_values=FLAGS)
flags.DEFINE_integer("linear_epochs", None, "Linear-probe epochs (default config.eval.linear_epochs).",
                     flag_values=FLAGS)
flags.DEFINE_integer("feature_average_copies", None,
                     "M for feature_average (default config.eval.feature_average_copies).",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the evaluation randomness.", flag_values=FLAGS)
config_flags.DEFINE_config_file("config", None, "Optional config file replacing the workdir's "
                                "config.json (its model must match the checkpoint).",
                                flag_values=FLAGS, lock_config=True)
flags.mark_flag_as_required("workdir", flag_values=FLAGS)


def evaluate_workdir(workdir: str, suites, step=None, config=None, options=None, seed: int = 0
                     ) -> dict:
  """Restores `workdir`, runs `suites`, writes eval.json / metrics.jsonl / figures; returns results."""
  model = checkpoint.restore_model(workdir, step=step, config=config)
  results = suite_lib.run_suite(model, suites, jax.random.key(seed), workdir, options=options)
  path = os.path.join(workdir, "eval.json")
  merged = {}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    # Merge only results of the same checkpoint; another step's numbers would be mislabelled.
    if previous.get("step") == model.step:
      merged = dict(previous.get("results", {}))
  merged.update(results)
  with open(path + ".tmp", "w") as f:
    json.dump({"step": model.step, "results": merged}, f, indent=2)
  os.replace(path + ".tmp", path)
  metrics_lib.JsonlWriter(os.path.join(workdir, "metrics.jsonl")).write(
      model.step, suite_lib.flatten_scalars(results), kind="eval")
  logging.info("Wrote %s", path)
  return results


def main(argv):
  """Parses the evaluation flags from argv (["prog", "--workdir=...", ...]) and runs them."""
  rest = FLAGS(argv)
  if len(rest) > 1:
    raise app.UsageError(f"Unexpected arguments: {rest[1:]}")
  options = suite_lib.SuiteOptions(linear_epochs=FLAGS.linear_epochs,
                                   semi_supervised_trials=FLAGS.semi_supervised_trials,
                                   semi_supervised_steps=FLAGS.semi_supervised_steps,
                                   feature_average_copies=FLAGS.feature_average_copies)
  results = evaluate_workdir(FLAGS.workdir, suite_lib.parse_suites(FLAGS.suite), step=FLAGS.step,
                             config=FLAGS.config, options=options, seed=FLAGS.seed)
  scalars = suite_lib.flatten_scalars(results)
  print("\n".join(f"{k:<40}{v:.4f}" for k, v in scalars.items()), flush=True)
  print(f"Results in {os.path.join(FLAGS.workdir, 'eval.json')}", flush=True)
  return results


if __name__ == "__main__":
  # absl's own flags (logging) live on the global registry; ours are parsed inside main.
  flags.FLAGS.mark_as_parsed()
  app.run(main, argv=sys.argv, flags_parser=lambda argv: argv)
