"""Evaluate a checkpoint: python -m mclr_jax.evaluate --workdir=DIR [--suite=...] [--step=N]

Restores WORKDIR's latest (or --step) checkpoint with the config it was trained with (or
--config=FILE, e.g. to change config.eval values), runs the chosen suites, prints a table, merges
the results into WORKDIR/eval.json, appends a {"kind": "eval", "step": ...} record to
WORKDIR/metrics.jsonl and writes figures to WORKDIR/figures/. Exit status 0 on success; an error
about the input prints one line (--verbose: the traceback) and exits non-zero.

  python -m mclr_jax.evaluate --workdir=runs/cifar10 --suite=probe,knn,cluster,semi_supervised

Suites (--suite, comma-separated; default probe,knn,cluster,prior_aug,figures):
"""

import os

from absl import flags
import jax
from ml_collections import config_flags

from mclr_jax import cli
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import report
from mclr_jax.evaluate import suite as suite_lib
from mclr_jax.train import metrics as metrics_lib
from mclr_jax.train.validate import validate_config

__doc__ += suite_lib.describe_suites()  # absl's --help shows the main module's docstring


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defines the flags. Called by the program only (not on import), so that a process may import
  this module beside `mclr_jax.main`, which defines --workdir and --config too."""
  flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.",
                      flag_values=flag_values)
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).",
                       flag_values=flag_values)
  flags.DEFINE_string("suite", ",".join(suite_lib.DEFAULT_SUITES),
                      "Comma list of suites (see the list above; semi_supervised and geometry are "
                      "opt-in: they train many classifiers / differentiate the networks).",
                      flag_values=flag_values)
  flags.DEFINE_integer("semi_supervised_trials", None,
                       "Trials (default config.eval.semi_supervised_trials).",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer("semi_supervised_steps", None,
                       "Steps per trial (default config.eval.semi_supervised_steps).",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer("linear_epochs", None,
                       "Linear-probe epochs (default config.eval.linear_epochs).",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer("feature_average_copies", None,
                       "M for feature_average (default config.eval.feature_average_copies).",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer("identity_repeats", None,
                       "Draws per strength of the identity suite (default 20).",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the evaluation randomness.", flag_values=flag_values)
  config_flags.DEFINE_config_file("config", None, "Optional config file replacing the workdir's "
                                  "config.json (its model must match the checkpoint).",
                                  flag_values=flag_values, lock_config=True)
  flags.mark_flag_as_required("workdir", flag_values=flag_values)


def evaluate_workdir(workdir: str, suites, step=None, config=None, options=None, seed: int = 0
                     ) -> tuple[model_lib.EvalModel, dict]:
  """Restores `workdir`, runs `suites`, writes eval.json / metrics.jsonl / figures.

  Returns (the restored model, the results).
  """
  suites = suite_lib.parse_suites(suites)  # before the restore: a typo fails at once
  model = model_lib.restore_model(workdir, step=step, config=config)
  results = suite_lib.run_suite(model, suites, jax.random.key(seed), workdir, options=options)
  path = os.path.join(workdir, "eval.json")
  merged = {}
  if os.path.exists(path):
    previous = report.read_json(path)
    # Merge only results of the same checkpoint; another step's numbers would be mislabelled.
    if previous.get("step") == model.step:
      merged = dict(previous.get("results", {}))
  merged.update(results)
  report.write_json(path, {"step": model.step, "results": merged})
  metrics_lib.JsonlWriter(os.path.join(workdir, "metrics.jsonl")).write(
      model.step, report.flatten_scalars(results), kind="eval")
  return model, results


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
  """Runs the evaluation the parsed flags ask for and prints its table; returns None."""
  if len(argv) > 1:
    raise model_lib.EvaluationError(f"Unexpected arguments {argv[1:]}; flags are --name=value.")
  fv = flag_values
  options = suite_lib.SuiteOptions(linear_epochs=fv.linear_epochs,
                                   semi_supervised_trials=fv.semi_supervised_trials,
                                   semi_supervised_steps=fv.semi_supervised_steps,
                                   feature_average_copies=fv.feature_average_copies)
  if fv.identity_repeats is not None:
    options.identity_repeats = fv.identity_repeats
  config = None
  if fv["config"].present:
    config = cli.loaded_config(fv["config"])
    validate_config(config)  # a bad value fails here, before the restore
  model, results = evaluate_workdir(fv.workdir, fv.suite, step=fv.step, config=config,
                                    options=options, seed=fv.seed)
  print(f"Evaluation of {fv.workdir} at step {model.step} ({model.config.data.name}, "
        f"{model.config.method}):\n{report.format_results(results)}\n"
        f"Results in {os.path.join(fv.workdir, 'eval.json')}", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
