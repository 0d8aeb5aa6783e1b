"""Training-step and matrix-exponential benchmark: where the time of a step goes.

  python experiments/benchmark.py --case=all --out=bench.json                 # full size, fp32
  python experiments/benchmark.py --case=all --precision=both --out=bench.json # + bf16 rows
  python experiments/benchmark.py --case=expm --out=expm.json                  # expm micro-benchmark
  python experiments/benchmark.py --case=all --tiny --out=/tmp/bench.json      # CPU smoke run

Each training case builds the real step (`create_train_state` + `make_train_step`, jitted with
`donate_argnums=(0,)` on a 1-D "data" mesh over the devices, batch sharded) and feeds it random
uint8 images already on the device, so the on-device SimCLR augmentation is inside the timed step.
One JSON row per (case, precision): median / p10 / p90 step time, images/s (both views, 2·B), lower
and compile time, peak device memory, an MFU estimate, the input-pipeline/step time ratio, the
host's dispatch time per step against the step's time when steps run back to back and, for
ManifoldCLR, the time of each part of the step measured as separate jitted functions. docs/
performance.md explains every number and gives the reference figures.
"""

import argparse
import ast
import dataclasses
import importlib
import json
import math
import os
import pathlib
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Running as `python experiments/benchmark.py` puts experiments/ on sys.path, not the repo root
# where the `configs` package lives.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(_REPO_ROOT))

from mclr_jax import cli  # noqa: E402
from mclr_jax import manifold  # noqa: E402
from mclr_jax.data.datasets import get_dataset_info  # noqa: E402
from mclr_jax.data.tfds_input import TrainIterator  # noqa: E402  (no TensorFlow needed)
from mclr_jax.train import create  # noqa: E402
from mclr_jax.train import objective  # noqa: E402
from mclr_jax.train.step import make_train_step  # noqa: E402
from mclr_jax.errors import UserFacingError  # noqa: E402


class BenchmarkError(UserFacingError, ValueError):
  """A request the benchmark cannot serve; the message names the flag and what to pass."""


@dataclasses.dataclass(frozen=True)
class Case:
  """A named training configuration: `configs/<dataset>.py:<variant>`, optionally with J set."""
  dataset: str
  variant: str
  num_samples: Optional[int] = None  # J of best-of-J (None: the config's value)


CASES = {
    "simclr_c10": Case("cifar10", "simclr"),
    "manifoldclr_c10": Case("cifar10", "proj"),  # M = 16
    "simclr_stl": Case("stl10", "simclr"),
    "manifoldclr_stl": Case("stl10", "proj"),  # M = 64
    "thresh_stl_j20": Case("stl10", "thresh", num_samples=20),  # M = 128
    "thresh_stl_j100": Case("stl10", "thresh", num_samples=100),
}

# Peak dense FLOP/s per device for the MFU estimate, keyed by a substring of `device.device_kind`.
# Assumptions (NVIDIA data sheets, dense, no sparsity): bf16 tensor-core peak for half-precision
# runs and the TF32 tensor-core peak for float32 runs. Our float32 step is not all TF32 (the expm
# asks for Precision.HIGHEST), so the fp32 MFU is an optimistic-denominator, i.e. low, estimate.
PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp32": 494e12},
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
}

# --tiny: the sizes that make every case compile and run on 2 CPU cores in seconds.
TINY = dict(width=4, batch_size=16, block_dim=8, dictionary_size=4, hidden=(16, 16, 8),
            proj_hidden_dim=16, proj_output_dim=8, num_samples=3)


def load_config(case: Case, *, tiny: bool, half_precision: bool, batch_size: int):
  """The case's ConfigDict with the benchmark's overrides (batch, precision, best-of-J on)."""
  module = importlib.import_module(f"configs.{case.dataset}")
  config = module.get_config(case.variant)
  config.batch_size = batch_size
  config.half_precision = half_precision
  config.num_train_steps = 10_000  # only fixes the learning-rate schedules' length
  if case.num_samples is not None:
    config.manifold.num_samples = case.num_samples
    # Best-of-J must be active in the timed step (step 0 >= best_of_j_start).
    config.manifold.best_of_j_start = 0
  if tiny:
    config.batch_size = TINY["batch_size"]
    config.model.width = TINY["width"]
    config.model.proj_hidden_dim = TINY["proj_hidden_dim"]
    config.model.proj_output_dim = TINY["proj_output_dim"]
    config.manifold.block_dim = TINY["block_dim"]
    config.manifold.dictionary_size = TINY["dictionary_size"]
    config.manifold.encoder_hidden = TINY["hidden"]
    config.manifold.prior_hidden = TINY["hidden"]
    if case.num_samples is not None:
      config.manifold.num_samples = TINY["num_samples"]
  return config


def apply_overrides(config, overrides) -> None:
  """Applies ["key.path=value", ...] to `config` in place; values are Python literals or strings."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise BenchmarkError(f"--set expects KEY=VALUE, e.g. "
                           f"--set=manifold.best_of_j_dtype=bfloat16; got {item!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node.get(part) if hasattr(node, "get") else None
    if node is None or not hasattr(node, "keys") or last not in node:
      raise BenchmarkError(f"--set {item!r}: the config has no key {key!r}; see configs/base.py "
                           "for the keys.")
    node[last] = value


def source_size(config, tiny: bool) -> int:
  """Side of the stored images the augmentation crops from (STL-10: 96 px source, 64 px crop).
  --tiny stores images at the crop size (32 px CIFAR, 64 px STL: the crop is fixed by the dataset)."""
  info = get_dataset_info(config.data.name)
  return info.image_size if tiny else info.source_size


def data_mesh(num_devices: int) -> Mesh:
  """1-D "data" mesh over the first `num_devices` devices, automatic axis types (as the loop)."""
  devices = np.array(jax.devices()[:num_devices])
  return Mesh(devices, ("data",), axis_types=(AxisType.Auto,))


def _percentiles_ms(seconds: list) -> dict:
  ms = np.asarray(seconds) * 1e3
  return dict(median_ms=float(np.median(ms)), p10_ms=float(np.percentile(ms, 10)),
              p90_ms=float(np.percentile(ms, 90)))


def _time_calls(call: Callable[[], object], warmup: int, steps: int) -> list:
  """Wall times (s) of `steps` calls after `warmup`, each waited for with block_until_ready."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return times


def time_dispatch(call: Callable[[], object], steps: int) -> tuple:
  """(median s for one `call()` to return, wall s per call) over `steps` back-to-back calls that
  are waited for once, at the end, as the training loop runs them.

  JAX dispatches asynchronously: a call returns once its work is queued. While the return time
  stays below the per-call wall time, the host keeps ahead and the device never waits for it; the
  ratio of the two is the host's share of a step.
  """
  jax.block_until_ready(call())  # nothing of an earlier call still queued
  returns = []
  start = time.perf_counter()
  for _ in range(steps):
    before = time.perf_counter()
    out = call()
    returns.append(time.perf_counter() - before)
  jax.block_until_ready(out)
  return float(np.median(returns)), (time.perf_counter() - start) / steps


def _compile(jitted, *args) -> tuple:
  """(compiled, lower_s, compile_s, lowered): lowering and XLA compilation timed separately."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at, lowered


def compiled_flops(compiled) -> Optional[float]:
  """FLOPs XLA's cost model assigns to one call, or None if unavailable.

  Pass the `Lowered` stage where there is one: its cost analysis runs on the program as written,
  before XLA rewrites it. On a GPU the compiled program's convolutions become cuDNN custom calls,
  which the compiled cost analysis counts as zero FLOPs: measured on an H100, the compiled count
  of the bf16 SimCLR step gave an MFU of 0.002 at 64k images/s. Loops (the expm squarings, the
  best-of-J action steps) are counted once either way, so this undercounts them.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def peak_bytes(device) -> Optional[int]:
  """The device's high-water mark of allocated bytes since the process started (None on CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])


def peak_flops_per_second(device_kind: str, precision: str, override_tflops: float
                          ) -> Optional[float]:
  """Per-device peak FLOP/s: --peak_tflops if > 0, else the PEAK_FLOPS table, else None (CPU)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  for name, peaks in PEAK_FLOPS.items():
    if name in device_kind:
      return peaks[precision]
  return None


def _random_images(key, batch_size: int, size: int, sharding) -> jax.Array:
  images = jax.random.randint(key, (batch_size, size, size, 3), 0, 256, jnp.int32)
  return jax.device_put(images.astype(jnp.uint8), sharding)


def input_pipeline_seconds(batch_size: int, size: int, sharding, reps: int = 3) -> float:
  """Median time of the host side of one batch: TrainIterator gather + device_put (blocking)."""
  rng = np.random.default_rng(0)
  num_examples = 2 * batch_size
  images = rng.integers(0, 256, (num_examples, size, size, 3), dtype=np.uint8)
  iterator = TrainIterator(images, np.zeros(num_examples, np.int32), batch_size, seed=0)
  fetch = lambda: jax.device_put({"image": next(iterator)["image"]}, sharding)
  return float(np.median(_time_calls(fetch, warmup=1, steps=reps)))


def benchmark_train_step(name: str, config, *, tiny: bool, num_devices: int, warmup: int,
                         steps: int, peak_tflops: float, breakdown: bool,
                         trace_dir: Optional[str] = None,
                         emit: Callable[[dict], None] = lambda row: None) -> dict:
  """One row: the real jitted train step of `config` timed on a `num_devices` data mesh.
  `emit(row)` receives the row before the (slow) breakdown is added, so a caller that saves it
  keeps the step's figures if the breakdown is cut short."""
  mesh = data_mesh(num_devices)
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  key_init, key_data, key_step = jax.random.split(jax.random.key(0), 3)
  networks, state, tx, _ = create.create_train_state(config, key_init, steps_per_epoch=100)
  state = jax.device_put(state, replicated)
  size = source_size(config, tiny)
  batch = {"image": _random_images(key_data, config.batch_size, size, batch_sharding)}
  step_fn = jax.jit(make_train_step(networks, config, tx),
                    in_shardings=(replicated, batch_sharding, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=(0,))
  compiled, lower_s, compile_s, lowered = _compile(step_fn, state, batch, key_step)

  def call():
    nonlocal state
    state, _ = compiled(state, batch, key_step)
    return state

  timing = _percentiles_ms(_time_calls(call, warmup, steps))
  step_s = timing["median_ms"] / 1e3
  dispatch_s, pipelined_s = time_dispatch(call, steps)
  if trace_dir:
    with jax.profiler.trace(trace_dir):
      time_dispatch(call, min(steps, 5))
  device = jax.devices()[0]
  precision = "bf16" if config.half_precision else "fp32"
  flops = compiled_flops(lowered)
  peak = peak_flops_per_second(device.device_kind, precision, peak_tflops)
  images_per_sec = 2 * config.batch_size / step_s
  input_s = input_pipeline_seconds(config.batch_size, size, batch_sharding)
  row = dict(
      case=name, device_kind=device.device_kind, platform=device.platform,
      num_devices=num_devices, jax_version=jax.__version__, batch=config.batch_size,
      image_size=objective.image_size(config), source_size=size, precision=precision,
      **timing, images_per_sec=images_per_sec, images_per_sec_per_device=images_per_sec / num_devices,
      lower_s=lower_s, compile_s=compile_s, peak_bytes=peak_bytes(device),
      compiled_temp_bytes=_temp_bytes(compiled), flops=flops,
      mfu=(flops / step_s / peak) if flops and peak else None,
      input_ms=input_s * 1e3, input_bound_ratio=input_s / step_s,
      dispatch_ms=dispatch_s * 1e3, pipelined_ms=pipelined_s * 1e3,
      host_overhead_ratio=dispatch_s / pipelined_s, breakdown_ms=None)
  emit(row)
  if breakdown and config.method == "manifoldclr":
    row["breakdown_ms"] = manifold_breakdown(networks, state.params, state.batch_stats, config,
                                             mesh, warmup, steps)
  return row


def _temp_bytes(compiled) -> Optional[int]:
  """Scratch memory XLA planned for one call of `compiled` (per device), when reported."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  return int(analysis.temp_size_in_bytes) if analysis is not None else None


def _median_ms(fn, args, warmup: int, steps: int) -> float:
  compiled, _, _, _ = _compile(jax.jit(fn), *args)
  return _percentiles_ms(_time_calls(lambda: compiled(*args), warmup, steps))["median_ms"]


def manifold_breakdown(networks, params, batch_stats, config, mesh, warmup: int, steps: int
                       ) -> dict:
  """ms per part of the ManifoldCLR step, each jitted alone at the case's shapes (batch sharded).

  backbone_fwd_bwd: ResNet on both views (per-view BatchNorm, as in the step), forward + backward.
  coeff_nets_fwd_bwd: posterior encoder q(z0, z1) + prior p(z0), forward + backward.
  transport_fwd_bwd_{taylor,pade}: one T(c) z at (B, K, b, b), forward + backward in Ψ, c and z
    (the step runs two: ẑ1 and the augmentation z0_aug).
  best_of_j_{action,action_bf16,taylor}: the best-of-J selection at (J, B, K, b, b) (None when
    J = 1); action_bf16 reads the generators in bf16 (config.manifold.best_of_j_dtype).
  """
  batch = NamedSharding(mesh, P("data"))
  m = config.manifold
  size, dim = objective.image_size(config), objective.feature_dim(config)
  keys = jax.random.split(jax.random.key(1), 6)
  x0, x1 = (jax.device_put(jax.random.normal(k, (config.batch_size, size, size, 3)), batch)
            for k in keys[:2])
  z0, z1 = (jax.device_put(jax.random.normal(k, (config.batch_size, dim)), batch)
            for k in keys[2:4])
  # Coefficients of the size the posterior produces early in training (scale_prior-sized).
  coeffs = jax.device_put(m.scale_prior * 5 * jax.random.normal(keys[4], (config.batch_size,
                                                                          m.dictionary_size)), batch)
  out = {}

  def backbone_loss(bb_params, x0, x1):
    total = 0.0
    for x in (x0, x1):
      z, _ = networks.backbone.apply({"params": bb_params, "batch_stats": batch_stats["backbone"]},
                                     x, train=True, mutable=["batch_stats"])
      total = total + jnp.sum(jnp.square(z.astype(jnp.float32)))
    return total

  out["backbone_fwd_bwd"] = _median_ms(jax.grad(backbone_loss), (params["backbone"], x0, x1),
                                       warmup, steps)

  def coeff_loss(enc_params, prior_params, z0, z1):
    mu_q, log_q = networks.coeff_encoder.apply({"params": enc_params}, z0, z1)
    mu_p, log_p = networks.prior.apply({"params": prior_params}, z0, jnp.zeros((), jnp.int32))
    return jnp.sum(manifold.laplace_kl(mu_q, log_q, mu_p, log_p)) + jnp.sum(jnp.square(mu_q))

  out["coeff_nets_fwd_bwd"] = _median_ms(jax.grad(coeff_loss, argnums=(0, 1)),
                                         (params["coeff_encoder"], params["prior"], z0, z1),
                                         warmup, steps)
  for method in ("taylor", "pade"):
    def transport_loss(psi, c, z, method=method):
      return jnp.sum(jnp.square(manifold.transport(psi, c, z, method=method)))
    out[f"transport_fwd_bwd_{method}"] = _median_ms(
        jax.grad(transport_loss, argnums=(0, 1, 2)), (params["psi"], coeffs, z0), warmup, steps)

  for name, method, dtype in (("action", "action", None), ("action_bf16", "action", jnp.bfloat16),
                              ("taylor", "taylor", None)):
    if m.num_samples <= 1:
      out[f"best_of_j_{name}"] = None
      continue
    noise = jax.random.uniform(keys[5], (m.num_samples,) + coeffs.shape, minval=-0.5, maxval=0.5)
    log_scale = jnp.full_like(coeffs, math.log(m.scale_prior))

    def select(psi, u, mu, log_b, z0, z1, method=method, dtype=dtype):
      return manifold.select_best_of_j(psi, u, mu, log_b, z0, z1, m.threshold,
                                       l1_penalty=m.l1_penalty, method=method, compute_dtype=dtype)

    out[f"best_of_j_{name}"] = _median_ms(select, (params["psi"], noise, coeffs, log_scale, z0,
                                                   z1), warmup, steps)
  return out


EXPM_METHODS = ("jax_scipy_expm", "taylor_expm", "expm_action")


def benchmark_expm(shapes: list, block_dim: int, warmup: int, steps: int,
                   methods=EXPM_METHODS, emit: Callable[[list], None] = lambda rows: None) -> list:
  """Rows for exp(A) on (J, B, K, n, n) generators: jax.scipy (Padé), our Taylor, and exp(A) v by
  `expm_action` with A in float32 and in bfloat16 (v: (B, K, n) float32, broadcast over J as in
  best-of-J; the action keeps vectors and sums in float32 either way). `methods` picks a subset;
  `emit(rows)` receives the rows so far after each one."""
  device = jax.devices()[0]
  rows = []
  for j, b, k in shapes:
    key_psi, key_c, key_v = jax.random.split(jax.random.key(2), 3)
    psi = manifold.init_operators(key_psi, 16, k * block_dim, block_dim)  # rotation generators
    coeffs = 0.05 * jax.random.normal(key_c, (j, b, 16))
    a = jax.block_until_ready(manifold.generator(psi, coeffs))  # (J, B, K, n, n), realistic norms
    v = jax.random.normal(key_v, (b, k, block_dim))
    variants = [
        ("jax_scipy_expm", "fp32", jax.scipy.linalg.expm, (a,)),
        ("taylor_expm", "fp32", lambda x: manifold.expm(x, method="taylor"), (a,)),
        ("expm_action", "fp32", manifold.expm_action, (a, v)),
        ("expm_action", "bf16", manifold.expm_action,
         (a.astype(jnp.bfloat16), v)),
    ]
    for method, precision, fn, args in variants:
      if method not in methods:
        continue
      compiled, lower_s, compile_s, lowered = _compile(jax.jit(fn), *args)
      timing = _percentiles_ms(_time_calls(lambda: compiled(*args), warmup, steps))
      rows.append(dict(case=f"expm/{method}", shape=[j, b, k, block_dim, block_dim],
                       device_kind=device.device_kind, platform=device.platform, num_devices=1,
                       jax_version=jax.__version__, batch=b, precision=precision, **timing,
                       images_per_sec=None, lower_s=lower_s, compile_s=compile_s,
                       peak_bytes=peak_bytes(device), flops=compiled_flops(lowered), mfu=None,
                       input_bound_ratio=None))
      emit(rows)
    del a
  return rows


def parse_shapes(text: str) -> list:
  """"20x512x8,100x512x8" -> [(20, 512, 8), (100, 512, 8)] (J×B×K)."""
  shapes = []
  for part in text.split(","):
    try:
      dims = tuple(int(d) for d in part.lower().split("x"))
    except ValueError:
      dims = ()
    if len(dims) != 3 or min(dims) < 1:
      raise BenchmarkError(f"--expm_shapes entry {part!r} must be JxBxK with positive ints, e.g. "
                       "20x512x8.")
    shapes.append(dims)
  return shapes


def format_table(rows: list) -> str:
  """A fixed-width text table of the rows (what the benchmark prints)."""
  header = ("case", "dev", "prec", "batch", "median_ms", "p10_ms", "p90_ms", "img/s", "compile_s",
            "peak_GiB", "mfu", "input/step", "dispatch_ms")
  lines = ["  ".join(f"{h:>10}" if i else f"{h:<30}" for i, h in enumerate(header))]
  for r in rows:
    name = r["case"] + ("/" + "x".join(map(str, r["shape"][:3])) if "shape" in r else "")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    cells = (name, str(r["num_devices"]), r["precision"], str(r["batch"]),
             fmt(r["median_ms"], ".2f"), fmt(r["p10_ms"], ".2f"), fmt(r["p90_ms"], ".2f"),
             fmt(r["images_per_sec"], ".0f"), fmt(r["compile_s"], ".2f"),
             fmt(None if r["peak_bytes"] is None else r["peak_bytes"] / 2**30, ".2f"),
             fmt(r["mfu"], ".3f"), fmt(r["input_bound_ratio"], ".3f"),
             fmt(r.get("dispatch_ms"), ".3f"))
    lines.append("  ".join(f"{c:>10}" if i else f"{c:<30}" for i, c in enumerate(cells)))
    for part, ms in (r.get("breakdown_ms") or {}).items():
      lines.append(f"    {part:<28}{fmt(ms, '10.2f'):>10} ms")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--case", default="all",
                      help=f"'all', 'expm', or comma-separated names from {sorted(CASES)}")
  parser.add_argument("--out", default="bench.json", help="JSON file for the list of rows")
  parser.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke run")
  parser.add_argument("--batch_size", type=int, default=512)
  parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="fp32",
                      help="bf16 sets config.half_precision=True")
  parser.add_argument("--steps", type=int, default=20, help="timed steps (--tiny: 3)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="per-device peak for MFU; 0: the PEAK_FLOPS table (None on CPU)")
  parser.add_argument("--no_breakdown", action="store_true",
                      help="skip the per-part timing of ManifoldCLR steps")
  parser.add_argument("--devices", action="store_true",
                      help="also time each case on 1 device, to report per-device scaling")
  parser.add_argument("--expm_shapes", default=None,
                      help="JxBxK list for --case=expm (default 20x512x8,100x512x8; --tiny 3x16x4)")
  parser.add_argument("--expm_block", type=int, default=None, help="n of the n×n blocks (64)")
  parser.add_argument("--expm_methods", default=",".join(EXPM_METHODS),
                      help="comma-separated subset of the --case=expm methods")
  parser.add_argument("--trace_dir", default=None,
                      help="write a jax.profiler trace of 5 back-to-back steps of each training "
                           "case here (open with TensorBoard's or XProf's profile plugin)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for every training case, repeatable, e.g. "
                           "--set=manifold.best_of_j_dtype=bfloat16")
  parser.add_argument("--fast_compile", action=argparse.BooleanOptionalAction, default=None,
                      help="jax_disable_most_optimizations (default: on with --tiny only); "
                           "timings then do not reflect optimised code")
  args = parser.parse_args(argv)
  if args.tiny and args.steps == parser.get_default("steps"):
    args.steps = 3
  if args.fast_compile is None:
    args.fast_compile = args.tiny
  return args


def run(args) -> list:
  """All requested rows, in order."""
  if args.case == "expm":
    shapes = parse_shapes(args.expm_shapes or ("3x16x4" if args.tiny else "20x512x8,100x512x8"))
    block = args.expm_block or (TINY["block_dim"] if args.tiny else 64)
    methods = args.expm_methods.split(",")
    unknown = [m for m in methods if m not in EXPM_METHODS]
    if unknown:
      raise BenchmarkError(f"--expm_methods has unknown names {unknown}; choose from {EXPM_METHODS}.")
    return benchmark_expm(shapes, block, args.warmup, args.steps, methods,
                          emit=lambda rows: write_rows(args.out, rows))
  names = list(CASES) if args.case == "all" else args.case.split(",")
  unknown = [n for n in names if n not in CASES]
  if unknown:
    raise BenchmarkError(f"--case has unknown names {unknown}; choose from {sorted(CASES)}, 'all' or "
                     "'expm'.")
  precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
  device_counts = [jax.device_count()]
  if args.devices and jax.device_count() > 1:
    device_counts.insert(0, 1)
  rows = []
  for name in names:
    for precision in precisions:
      config = load_config(CASES[name], tiny=args.tiny, half_precision=precision == "bf16",
                           batch_size=args.batch_size)
      apply_overrides(config, args.set)
      for num_devices in device_counts:
        rows.append(benchmark_train_step(
            name, config, tiny=args.tiny, num_devices=num_devices, warmup=args.warmup,
            steps=args.steps, peak_tflops=args.peak_tflops,
            breakdown=not args.no_breakdown and num_devices == device_counts[-1],
            trace_dir=args.trace_dir and f"{args.trace_dir}/{name}_{precision}_{num_devices}dev",
            emit=lambda row: write_rows(args.out, rows + [row])))
        print(format_table(rows[-1:]).split("\n", 1)[1], flush=True)
  return rows


def write_rows(path: str, rows: list) -> None:
  """The JSON file of rows, rewritten as rows complete (a killed run keeps the finished ones)."""
  pathlib.Path(path).write_text(json.dumps(rows, indent=1))


def check_out(path: str) -> None:
  """Fails at once, not after the timing work, when the JSON file cannot be written."""
  parent = pathlib.Path(path).resolve().parent
  if not parent.is_dir():
    raise BenchmarkError(f"--out={path}: the folder {parent} does not exist; create it or choose "
                         "another path.")
  if not os.access(parent, os.W_OK) or (pathlib.Path(path).exists()
                                        and not os.access(path, os.W_OK)):
    raise BenchmarkError(f"--out={path}: not writable; choose a path you can write.")


def main(argv=None) -> list:
  args = parse_args(argv)
  check_out(args.out)
  # XLA's optimisation passes dominate CPU compile time of the tiny step (~100 s per case on two
  # shared cores); the smoke run checks the plumbing, not the speed of optimised code.
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", args.fast_compile)
  try:
    rows = run(args)
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)
  write_rows(args.out, rows)
  print(format_table(rows))
  print(f"Wrote {len(rows)} rows to {args.out}")
  return rows


if __name__ == "__main__":
  cli.run_script(main)
