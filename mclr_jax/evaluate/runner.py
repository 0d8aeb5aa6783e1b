"""The evaluation the training program runs, periodically and once at the end, through the same
`suite.run_suite` as `python -m mclr_jax.evaluate` (docs/method.md §8, §13).

`make_periodic_eval(config, workdir)` gives the training loop its `eval_fn(state, step) -> dict`
(the PERIODIC_SUITES, flattened to "suite/metric" scalars). `final_report(config, workdir, state)`
prints a table and writes WORKDIR/eval.json (images: probe, kNN, clustering) or
WORKDIR/results.json (Spirograph: trained vs random encoder, single view vs feature averaging).

Multi-host: every process runs every evaluation, each on its own first device with its own copy of
the replicated parameters and the same keys, so they compute the same numbers; only process 0
writes. Were process 0 to evaluate alone, the others would go on into the next train step's
collectives (or, after the final report, into `jax.distributed`'s shutdown barrier) and wait there
for as long as the evaluation takes, which can exceed those timeouts. A barrier after a chief-only
evaluation would wait just as long, so it would not help.
"""

import logging
import os

import jax

from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import report
from mclr_jax.evaluate import suite as suite_lib

PERIODIC_SUITES = ("probe", "knn", "cluster")  # the labelled ones are skipped on Spirograph


def make_periodic_eval(config, workdir: str):
  """`eval_fn(state, step) -> {"probe/linear_top1": ..., ...}` for `loop.train_and_evaluate`."""

  def eval_fn(state, step):
    model = model_lib.model_from_state(config, state)
    key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
    return report.flatten_scalars(suite_lib.run_suite(model, PERIODIC_SUITES, key, workdir))

  return eval_fn


def spirograph_table(config, state, workdir: str) -> dict:
  """Trained vs random encoder (docs/method.md §13.1), single view and, when
  config.eval.feature_average_copies = M > 1, feature averaging over M views (§12):
  {"trained/single": probe results, "trained/faM": ..., "random/single": ..., ...}.

  Both encoders see the same α draws (the same key), so their rows differ only by the encoder.
  """
  copies = int(config.eval.feature_average_copies)
  suites = ("probe", "feature_average") if copies > 1 else ("probe",)
  key = jax.random.key(config.seed + 3)
  table = {}
  for name, model in (("trained", model_lib.model_from_state(config, state)),
                      ("random", model_lib.random_model(config))):
    results = suite_lib.run_suite(model, suites, key, workdir)
    table[f"{name}/single"] = results["probe"]
    if copies > 1:
      table[f"{name}/fa{copies}"] = {k: v for k, v in results["feature_average"].items()
                                     if k != "copies"}
  return table


def final_report(config, workdir: str, state) -> dict:
  """Runs the end-of-training evaluation; process 0 prints a table and writes it as JSON."""
  step = int(jax.device_get(state.step))
  if config.data.name == "spirograph":
    table = spirograph_table(config, state, workdir)
    text = report.format_spirograph_table(table, tuple(config.data.content))
    path = os.path.join(workdir, "results.json")
  else:
    model = model_lib.model_from_state(config, state)
    table = suite_lib.run_suite(model, PERIODIC_SUITES, jax.random.key(config.seed), workdir)
    text = report.format_results(table)
    path = os.path.join(workdir, "eval.json")
  if jax.process_index() == 0:
    report.write_json(path, {"step": step, "results": table})
    print(f"\nDownstream evaluation at step {step} ({config.data.name}, {config.method}):\n"
          f"{text}\nWritten to {path}", flush=True)
    logging.info("Wrote %s", path)
  return table
