"""Training metrics: clu.metrics averages on device, and writers for the console, JSONL and TensorBoard.

`metrics.jsonl` (one JSON object per logged step or evaluation, always with "step") is always
written. TensorBoard summaries are written through `clu.metric_writers` when TensorFlow is installed;
clu's writers import TensorFlow, so they are imported lazily here and never by the training core.
"""

import json
import logging
import math
import os
import time
from typing import Mapping, Optional

import jax
import numpy as np
from clu import metrics as clu_metrics


def make_collection(names):
  """A clu Collection class averaging each named scalar over the steps it is merged across."""
  return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


class JsonlWriter:
  """Appends one JSON object per call to WORKDIR/metrics.jsonl (flushed, so a crash loses nothing)."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

  def write(self, step: int, scalars: Mapping[str, float], kind: str = "train"):
    record = {"step": int(step), "kind": kind}
    record.update({k: _to_json_number(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _to_json_number(v):
  v = float(np.asarray(v))
  return v if math.isfinite(v) else str(v)


class TensorBoardWriter:
  """clu's SummaryWriter if TensorFlow/TensorBoard are importable, else a no-op with one notice."""

  def __init__(self, logdir: str):
    self._writer = None
    try:
      from clu import metric_writers  # imports TensorFlow
      self._writer = metric_writers.SummaryWriter(logdir)
    except ImportError as e:  # the core must run without TensorFlow
      logging.info("TensorBoard summaries off (%s); metrics.jsonl is still written. "
                   "Install them with: pip install -e '.[tf]'", e)

  def write(self, step: int, scalars: Mapping[str, float]):
    if self._writer is not None:
      self._writer.write_scalars(int(step), {k: float(v) for k, v in scalars.items()})

  def flush(self):
    if self._writer is not None:
      self._writer.flush()


class Progress:
  """Throughput and ETA for the console line (images/s counts both views)."""

  def __init__(self, start_step: int, total_steps: int, images_per_step: int):
    self.total_steps, self.images_per_step = total_steps, images_per_step
    self._last_step, self._last_time = start_step, time.perf_counter()
    self._start_step, self._start_time = start_step, self._last_time

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    rate = steps / max(now - self._last_time, 1e-9)
    overall = (step - self._start_step) / max(now - self._start_time, 1e-9)
    self._last_step, self._last_time = step, now
    remaining = (self.total_steps - step) / max(overall, 1e-9)
    return {"steps_per_sec": rate, "images_per_sec": rate * self.images_per_step,
            "eta_sec": remaining}


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


def console_line(step: int, total: int, scalars: Mapping[str, float], speed: Optional[dict]) -> str:
  """`[  120/ 1000] loss 5.123 contrastive 5.0 ... | 812 img/s | ETA 0:03:12`."""
  speed_keys = ("steps_per_sec", "images_per_sec", "eta_sec")
  keys = [k for k in scalars if not k.startswith(("nonfinite/", "lr/")) and k not in speed_keys]
  body = " ".join(f"{k} {float(scalars[k]):.4g}" for k in keys)
  lrs = " ".join(f"{k[3:]} {float(v):.2e}" for k, v in scalars.items() if k.startswith("lr/"))
  width = len(str(total))
  line = f"[{step:>{width}d}/{total}] {body}"
  if lrs:
    line += f" | lr {lrs}"
  if speed:
    line += (f" | {speed['images_per_sec']:.0f} img/s | ETA {format_duration(speed['eta_sec'])}")
  return line


def device_get_scalars(tree) -> dict:
  return {k: float(v) for k, v in jax.device_get(tree).items()}
