"""How long one evaluation takes: probe + kNN + clustering of a mock CIFAR-10 (docs/method.md §8).

  python experiments/evaluation_time.py [--num_train=5000 --num_test=1000 --width=8 --repeats=1]
                                        [--json=FILE]

Injects random uint8 32×32 images with 10 balanced labels (no dataset download) into
`run_suite(model, ["probe", "knn", "cluster"], ...)` of a randomly initialised CIFAR-10 model of
the given ResNet width, and prints, per call, the wall time and the number and duration of XLA
compilations (the first call compiles, a repeat should not), then the time of the train split's
backbone features alone (compiled), as a table (and as JSON rows with --json). Measured on a
shared 2-core CPU (load average 8–10), width 8: first call 21–23 s with 17 compilations, a repeat
11–14 s with none, the 5 000 train features 7–8 s. For comparison, the same measurement of the
earlier evaluation layer, which built a new jitted closure per call and per 500-image chunk: first
call 34–38 s with 28 compilations, a repeat 27–32 s with 14.
"""

import argparse
import json
import tempfile
import time

import jax
import numpy as np

from mclr_jax import cli
from mclr_jax.evaluate import model as model_lib
from mclr_jax.evaluate import suite as suite_lib

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def mock_cifar10(num_train: int, num_test: int, seed: int = 0):
  """(train_x, train_y, test_x, test_y): uint8 (N, 32, 32, 3) images, int32 labels in [0, 10)."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = lambda n: np.arange(n, dtype=np.int32) % 10
  return images(num_train), labels(num_train), images(num_test), labels(num_test)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_train", type=int, default=5000)
  parser.add_argument("--num_test", type=int, default=1000)
  parser.add_argument("--width", type=int, default=8, help="ResNet-18 base width")
  parser.add_argument("--repeats", type=int, default=1, help="calls after the first")
  parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
  args = parser.parse_args(argv)
  from configs import cifar10  # pylint: disable=g-import-not-at-top  (run from the repository root)
  config = cifar10.get_config("simclr")
  config.model.width = args.width
  data = mock_cifar10(args.num_train, args.num_test)
  model = model_lib.random_model(config)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(duration) if event == _COMPILE_EVENT else None)
  rows = []
  print(f"{'call':>4}  {'seconds':>8}  {'compilations':>12}  {'compile s':>9}  linear top-1",
        flush=True)
  with tempfile.TemporaryDirectory() as scratch:  # the suites' workdir; these write no figures
    for call in range(1 + args.repeats):
      compiles.clear()
      start = time.perf_counter()
      results = suite_lib.run_suite(model, ["probe", "knn", "cluster"], jax.random.key(0),
                                    scratch, data=data)
      row = {"call": call, "seconds": round(time.perf_counter() - start, 2),
             "compilations": len(compiles), "compile_seconds": round(sum(compiles), 2),
             "linear_top1": results["probe"]["linear_top1"]}
      rows.append(row)
      print(f"{call:>4}  {row['seconds']:>8.2f}  {row['compilations']:>12}  "
            f"{row['compile_seconds']:>9.2f}  {row['linear_top1']:.4f}", flush=True)
  start = time.perf_counter()
  np.asarray(model.features(data[0]))
  features_seconds = round(time.perf_counter() - start, 2)
  print(f"train split's backbone features ({args.num_train} images): {features_seconds:.2f} s",
        flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"calls": rows, "train_features_seconds": features_seconds}, f, indent=1)
  return None

if __name__ == "__main__":
  cli.run_script(main)
