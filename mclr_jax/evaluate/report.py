"""Evaluation results as JSON, as metric records, and as short tables for the console.

`run_suite` returns nested dicts {suite: {metric: value}}; every program that shows or stores them
(the training report, `python -m mclr_jax.evaluate`, the experiments) goes through here.
"""

import json
import os

import jax
import numpy as np


def jsonable(x):
  """Nested dicts of numpy/JAX values -> plain Python (floats, ints, lists, str)."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  return x


def flatten_scalars(results: dict, prefix: str = "") -> dict:
  """{"probe": {"linear_top1": 0.5}} -> {"probe/linear_top1": 0.5}; numbers only (metrics.jsonl)."""
  flat = {}
  for k, v in results.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      flat.update(flatten_scalars(v, name + "/"))
    elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
      flat[name] = int(v)
    elif isinstance(v, (float, np.floating)):
      flat[name] = float(v)
  return flat


def _format_value(v) -> str:
  if isinstance(v, float):
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.3e}"
  return str(v)


def format_results(results: dict) -> str:
  """A two-column table of every scalar, suite by suite; skipped suites say why, and written
  files (figures) are counted rather than listed."""
  pad = max([len(name) for name in results] + [14]) + 2
  lines = []
  for name, values in results.items():
    if not isinstance(values, dict):
      continue
    if "skipped" in values:
      lines.append(f"{name:<{pad}}skipped: {values['skipped']}")
      continue
    scalars = flatten_scalars(values)
    files = [v for v in jax.tree.leaves(values) if isinstance(v, str) and v.endswith(".png")]
    width = max([len(k) for k in scalars] + [24])
    for i, (metric, value) in enumerate(scalars.items()):
      lines.append(f"{name if i == 0 else '':<{pad}}{metric:<{width}}  {_format_value(value):>10}")
    if files:
      where = os.path.dirname(files[0])
      lines.append(f"{name if not scalars else '':<{pad}}{len(files)} figure(s) in {where}")
  return "\n".join(lines)


def format_spirograph_table(table: dict, names) -> str:
  """{"trained/single": probe results, "random/fa5": ...} -> encoder × features rows of the test
  MSE and R² (means over the content targets) and the MSE of each target."""
  header = f"{'encoder':<10}{'features':<13}{'MSE mean':>10}{'R2 mean':>9}" + "".join(
      f"{'MSE ' + n:>12}" for n in names)
  lines = [header, "-" * len(header)]
  for label, r in table.items():
    encoder, features = label.split("/")
    features = "single view" if features == "single" else f"FA, M={features[2:]}"
    lines.append(f"{encoder:<10}{features:<13}{r['mse_mean']:>10.4f}{r['r2_mean']:>9.3f}" +
                 "".join(f"{r['mse/' + n]:>12.4f}" for n in names))
  return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
  """Writes `payload` atomically (a temporary file renamed over `path`)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(jsonable(payload), f, indent=2)
  os.replace(path + ".tmp", path)


def read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)
