"""Training metrics: accumulated on the device, and writers for the console, JSONL and TensorBoard.

`StepMetrics` is what the jitted step carries between two log boundaries: clu averages of every
scalar metric and the record of the first non-finite step. The host reads it only at a log or
checkpoint boundary, so between them the training loop never waits for the device.

`metrics.jsonl` (one JSON object per logged step or evaluation, always with "step") is always
written; on resume, rows after the restored step are dropped (`JsonlWriter.truncate_after`), so
every step appears once. TensorBoard summaries are written through `clu.metric_writers` when
TensorFlow is installed, and their event files get the same truncation on resume; clu's writers
import TensorFlow, so they are imported lazily here and never by the training core.
"""

import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from mclr_jax import errors
from mclr_jax.train import event_files

NONFINITE_PREFIX = "nonfinite/"


def make_collection(names):
  """A clu Collection class averaging each named scalar over the steps it is merged across."""
  return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


@flax.struct.dataclass
class StepMetrics:
  """The metrics of the steps since the last log boundary, kept on the device.

  averages: a clu Collection averaging every scalar metric over the window's steps.
  first_nonfinite: () int32, the index (0-based) of the window's first step whose update was
    refused as non-finite, or -1. (clu has no "first event" metric, hence this field.)
  nonfinite: {check: () bool} the checks that failed at that step.
  checks: the check names in the order a stop reports them (static: step.CHECKS's order).
  """
  averages: Any
  first_nonfinite: jax.Array
  nonfinite: dict
  checks: tuple = flax.struct.field(pytree_node=False, default=())

  @classmethod
  def empty(cls, metrics: Mapping[str, Any], check_order=()) -> "StepMetrics":
    """An empty window for the step's metrics `metrics` (arrays or their shapes); its checks are
    reported in `check_order` (jax returns a step's metric dict sorted by name)."""
    names = [k for k in metrics if not k.startswith(NONFINITE_PREFIX)]
    checks = [k[len(NONFINITE_PREFIX):] for k in metrics if k.startswith(NONFINITE_PREFIX)]
    rank = {c: i for i, c in enumerate(check_order)}
    checks.sort(key=lambda c: rank.get(c, len(rank)))
    return cls(averages=make_collection(names).empty(),
               first_nonfinite=jnp.asarray(-1, jnp.int32),
               nonfinite={c: jnp.asarray(False) for c in checks}, checks=tuple(checks))

  @property
  def clean(self) -> jax.Array:
    """() bool: no step of the window was refused."""
    return self.first_nonfinite < 0

  def add(self, metrics: Mapping[str, jax.Array], step: jax.Array) -> "StepMetrics":
    """The window with one more step's `metrics` (train_step's output) at index `step`; jittable."""
    flags = {c: metrics[NONFINITE_PREFIX + c] > 0 for c in self.nonfinite}
    bad = functools.reduce(jnp.logical_or, flags.values(), jnp.asarray(False))
    first = self.clean & bad
    averages = self.averages.merge(type(self.averages).single_from_model_output(**metrics))
    return self.replace(averages=averages,
                        first_nonfinite=jnp.where(first, step, self.first_nonfinite),
                        nonfinite={c: jnp.where(first, flags[c], v)
                                   for c, v in self.nonfinite.items()})

  def failed_checks(self) -> tuple[Optional[int], list[str]]:
    """On the host: (the first refused step or None, the names of its failed checks in order)."""
    first, flags = jax.device_get((self.first_nonfinite, self.nonfinite))
    if first < 0:
      return None, []
    return int(first), [c for c in self.checks if flags[c]]

  def means(self) -> dict:
    """On the host: {name: mean over the window} as Python floats."""
    return device_get_scalars(self.averages.compute())


class JsonlWriter:
  """Appends one JSON object per call to WORKDIR/metrics.jsonl (flushed, so a crash loses nothing)."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

  def write(self, step: int, scalars: Mapping[str, float], kind: str = "train"):
    record = {"step": int(step), "kind": kind}
    record.update({k: _to_json_number(v) for k, v in scalars.items()})
    with errors.writing_file(self.path), open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def truncate_after(self, step: int) -> int:
    """Drops the rows logged after `step` (a resumed run logs them again) and any line that does
    not parse (the partial last line of a run killed, or stopped by a full disk, while writing).
    Rewrites the file atomically; returns how many lines were dropped."""
    if not os.path.exists(self.path):
      return 0
    with open(self.path) as f:
      lines = f.read().splitlines()
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and int(record.get("step", -1)) <= step:
        kept.append(line)
    if len(kept) < len(lines):
      tmp = self.path + ".tmp"
      with errors.writing_file(self.path, tmp):
        with open(tmp, "w") as f:
          f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)
    return len(lines) - len(kept)


def _to_json_number(v):
  v = float(np.asarray(v))
  return v if math.isfinite(v) else str(v)


class TensorBoardWriter:
  """clu's SummaryWriter if TensorFlow/TensorBoard are importable, else a no-op with one notice.

  `resume_step`: the event files already in `logdir` first lose every event logged after that step
  (`event_files.truncate`), as metrics.jsonl does, so a resumed run shows each step once.
  """

  def __init__(self, logdir: str, resume_step: Optional[int] = None):
    self._writer = None
    self.dropped = 0
    try:
      from clu import metric_writers  # imports TensorFlow
    except ImportError as e:  # the core must run without TensorFlow
      logging.info("TensorBoard summaries off (%s); metrics.jsonl is still written. "
                   "Install them with: pip install -e '.[tf]'", e)
      return
    self._logdir = logdir
    if resume_step is not None:
      self.dropped = event_files.truncate(logdir, resume_step)
    with errors.tensorflow_disk_errors(logdir):
      self._writer = metric_writers.SummaryWriter(logdir)

  def write(self, step: int, scalars: Mapping[str, float]):
    if self._writer is not None:
      with errors.tensorflow_disk_errors(self._logdir):
        self._writer.write_scalars(int(step), {k: float(v) for k, v in scalars.items()})
        self._writer.flush()  # like metrics.jsonl: a killed run keeps every row it logged

  def close(self):
    """Flushes and closes the event file (the end of a run)."""
    if self._writer is not None:
      writer, self._writer = self._writer, None
      with errors.tensorflow_disk_errors(self._logdir):
        writer.close()


class Progress:
  """Throughput, ETA and the host's dispatch time for the console line (images/s counts both views).

  `update(step)` at a log boundary returns the rate since the previous boundary and the ETA from
  the rate since the start; `dispatched(seconds)` adds the host time one step took to dispatch
  (between boundaries, where the loop never waits for the device), reported as `dispatch_ms` per
  step beside `step_ms`, the wall time per step: dispatch_ms well below step_ms means the device,
  not the host, sets the pace.
  """

  def __init__(self, start_step: int, total_steps: int, images_per_step: int,
               clock: Callable[[], float] = time.perf_counter):
    self.total_steps, self.images_per_step, self._clock = total_steps, images_per_step, clock
    self._last_step, self._last_time = start_step, clock()
    self._start_step, self._start_time = start_step, self._last_time
    self._dispatch_seconds, self._dispatch_count = 0.0, 0

  def dispatched(self, seconds: float):
    self._dispatch_seconds += seconds
    self._dispatch_count += 1

  def update(self, step: int) -> dict:
    now = self._clock()
    steps = max(step - self._last_step, 1)
    rate = steps / max(now - self._last_time, 1e-9)
    overall = (step - self._start_step) / max(now - self._start_time, 1e-9)
    self._last_step, self._last_time = step, now
    remaining = (self.total_steps - step) / max(overall, 1e-9)
    speed = {"steps_per_sec": rate, "images_per_sec": rate * self.images_per_step,
             "eta_sec": remaining, "step_ms": 1e3 / rate}
    if self._dispatch_count:
      speed["dispatch_ms"] = 1e3 * self._dispatch_seconds / self._dispatch_count
    self._dispatch_seconds, self._dispatch_count = 0.0, 0
    return speed


def time_dispatch(dispatch: Callable[[], Any], num_steps: int) -> dict:
  """The host's per-step overhead against the step time, for benchmarks.

  `dispatch()` must launch one step (threading its state through a closure) and return an output
  of that step. It is called once and waited for (compilation), then `num_steps` times without
  waiting, then the last output is waited for. Returns {"dispatch_ms": host time per launch,
  "step_ms": wall time per step}; dispatch_ms < step_ms means the host keeps the device busy.
  """
  jax.block_until_ready(dispatch())
  start = time.perf_counter()
  out = None
  for _ in range(num_steps):
    out = dispatch()
  launched = time.perf_counter()
  jax.block_until_ready(out)
  done = time.perf_counter()
  return {"dispatch_ms": 1e3 * (launched - start) / num_steps,
          "step_ms": 1e3 * (done - start) / num_steps}


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


def console_line(step: int, total: int, scalars: Mapping[str, float], speed: Optional[dict]) -> str:
  """`[  120/ 1000] loss 5.123 contrastive 5.0 ... | 812 img/s | ETA 0:03:12`."""
  speed_keys = ("steps_per_sec", "images_per_sec", "eta_sec", "step_ms", "dispatch_ms")
  keys = [k for k in scalars if not k.startswith((NONFINITE_PREFIX, "lr/")) and k not in speed_keys]
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
