"""What the gradient penalty measures on Spirograph, and why it can hurt (docs/method.md §11.6).

  python experiments/spirograph_gp_diagnostics.py                     # encoder at initialisation
  python experiments/spirograph_gp_diagnostics.py --noinit \
      --workdirs=runs/spirograph_gp_sweep/cpu/lam0_seed0,runs/spirograph_gp_sweep/cpu/lam0.01_seed0

For a randomly initialised encoder (configs/spirograph.py; `--noinit` skips it) and for each
trained workdir (its newest checkpoint, read as a plain tree; the workdir is not written), on N test
draws with BatchNorm in training mode (what the penalty sees), it prints:
  * the renderer alone: ‖∂x/∂h‖², ‖∂x/∂m‖² in pixel space and cos²(∂x/∂h, ∂x/∂m), the share of
    the image's change under m that lies along its change under h;
  * per parameter k of all 10: the first-order variance E‖J_k‖²·2Var(k) of r = h/‖h‖ (for the
    nuisance this is its part of the penalty P; for the content, the encoder's sensitivity);
  * the first-order penalty E‖J_α(α′ − α)‖² against the actual E‖r(α′) − r(α)‖² it stands for,
    for α′ − α in all of α, in h only and in the colours only; at initialisation also with
    per-image instead of per-row normalisation.
Writes the numbers as JSON to --out. About 2 minutes per encoder on a shared 2-core CPU, mostly
compilation.
"""

import json
import os
import sys

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

# `python experiments/...` puts experiments/ on sys.path, not the repository root with `configs`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import spirograph as spirograph_config  # noqa: E402
from mclr_jax import cli  # noqa: E402
from mclr_jax.data import spirograph  # noqa: E402
from mclr_jax.invariance import penalty as gp  # noqa: E402
from mclr_jax.train import checkpoint  # noqa: E402
from mclr_jax.train import objective  # noqa: E402
from mclr_jax.train.data import spirograph_split  # noqa: E402
from mclr_jax.errors import UserFacingError  # noqa: E402

flags.DEFINE_list("workdirs", [], "Trained Spirograph workdirs to diagnose (final checkpoints).")
flags.DEFINE_integer("num_examples", 256, "Test draws N (one BatchNorm batch).")
flags.DEFINE_integer("num_alpha_samples", 8, "α′ draws per example.")
flags.DEFINE_bool("init", True, "Also diagnose the encoder at initialisation (both "
                  "normalisations).")
flags.DEFINE_string("out", "runs/spirograph_gp_diagnostics.json", "JSON output.")
FLAGS = flags.FLAGS


def _encoder(networks, params, batch_stats, normalization):
  """params10 (N, 10) -> r (N, d) = h/‖h‖, BatchNorm in training mode over the N rows."""
  def r(params10):
    x = spirograph.render(params10, normalization=normalization)
    variables = {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}
    h, _ = networks.backbone.apply(variables, x, train=True, mutable=["batch_stats"])
    return h * jax.lax.rsqrt(jnp.sum(h * h, -1, keepdims=True))
  return r


def diagnose(networks, params, batch_stats, test10, alpha_prime, content, normalization="row"):
  """The numbers of the module docstring for one encoder; test10 (N, 10), alpha_prime (L, N, p)."""
  r = _encoder(networks, params, batch_stats, normalization)
  theta, alpha = spirograph.split_params(test10, content)
  nuisance = spirograph.nuisance_names(content)
  h_mask = jnp.array([name == "h" for name in nuisance], jnp.float32)
  variances = {k: (hi - lo) ** 2 / 12 for k, (lo, hi) in spirograph.DEFAULT_RANGES.items()}

  @jax.jit
  def measure(test10, alpha, alpha_prime):
    out = {}
    # Random signs per example: an all-ones tangent would move the batch mean, which training-mode
    # BatchNorm subtracts, and so hide a global change such as a background colour.
    signs = jax.random.rademacher(jax.random.key(1), (len(test10),), test10.dtype)
    for k, name in enumerate(spirograph.PARAM_NAMES):
      tangent = jnp.zeros_like(test10).at[:, k].set(signs)
      _, jk = jax.jvp(r, (test10,), (tangent,))
      out[f"first_order/{name}"] = jnp.mean(jnp.sum(jk ** 2, -1)) * 2 * variances[name]
    features_fn = lambda a: (r(spirograph.merge_params(theta, a, content)), None)
    r0 = features_fn(alpha)[0]
    for part, mask in (("all", jnp.ones_like(h_mask)), ("h", h_mask), ("colours", 1 - h_mask)):
      moved = alpha + (alpha_prime - alpha) * mask
      # r is already unit-norm; normalize=False keeps exact_penalty from normalising it again.
      out[f"penalty_first_order/{part}"] = gp.exact_penalty(features_fn, alpha, moved,
                                                            normalize=False)
      out[f"actual/{part}"] = jnp.mean(jax.lax.map(
          lambda a: jnp.sum((features_fn(a)[0] - r0) ** 2, -1), moved))
    return out

  result = {k: float(v) for k, v in measure(test10, alpha, alpha_prime).items()}
  result["first_over_actual"] = result["penalty_first_order/all"] / result["actual/all"]
  return result


def renderer_alignment(test10):
  """Pixel-space ‖∂x/∂h‖², ‖∂x/∂m‖² and cos²(∂x/∂h, ∂x/∂m), means over the draws."""
  index = {name: i for i, name in enumerate(spirograph.PARAM_NAMES)}

  @jax.jit
  def measure(test10):
    def d(name):
      tangent = jnp.zeros_like(test10).at[:, index[name]].set(1.0)
      return jax.jvp(spirograph.render, (test10,), (tangent,))[1].reshape(len(test10), -1)
    dh, dm = d("h"), d("m")
    cos = jnp.sum(dh * dm, -1) / jnp.sqrt(jnp.sum(dh ** 2, -1) * jnp.sum(dm ** 2, -1))
    return {"pixel/dx_dh_sq": jnp.mean(jnp.sum(dh ** 2, -1)),
            "pixel/dx_dm_sq": jnp.mean(jnp.sum(dm ** 2, -1)),
            "pixel/cos_h_m": jnp.mean(cos), "pixel/cos2_h_m": jnp.mean(cos ** 2)}

  return {k: float(v) for k, v in measure(test10).items()}


def _run_config(workdir):
  """WORKDIR/config.json over today's spirograph defaults, so a run saved before a config key
  existed (e.g. model.arch) still restores with that key's default."""
  config = spirograph_config.get_config("cpu")

  def flat(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from flat(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value

  config.update_from_flattened_dict(dict(flat(checkpoint.read_config(workdir))))
  return config


def _restore_final(workdir):
  """(params, batch_stats) of WORKDIR's newest committed checkpoint, read as a plain tree
  (read-only), so checkpoints of the layout before `state`/`window` items (one `default` item)
  restore too. A step folder orbax did not finish writing (a killed save) is passed over."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  steps = sorted(int(name) for name in (os.listdir(directory) if os.path.isdir(directory) else [])
                 if name.isdigit() and checkpoint.is_committed(os.path.join(directory, name)))
  if not steps:
    raise UserFacingError(f"{workdir}: no committed checkpoint under {directory}; pass the workdir "
                          "of a run that saved at least one step.")
  path = os.path.join(directory, str(steps[-1]))
  item = "state" if os.path.isdir(os.path.join(path, "state")) else "default"
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(os.path.join(path, item))
  return tree["params"], tree["batch_stats"]


def _print(title, result):
  print(f"\n{title}")
  for key, value in result.items():
    print(f"  {key:<32}{value:12.4g}")


def main(argv):
  del argv
  config = spirograph_config.get_config("gp")
  content = tuple(config.data.content)
  n = FLAGS.num_examples
  test10 = jnp.asarray(spirograph_split(config.data, "test")[:n])
  alpha_prime = spirograph.sample_nuisance(jax.random.key(0), (FLAGS.num_alpha_samples, n),
                                           content=content)
  results = {"renderer": renderer_alignment(test10)}
  _print("renderer (pixel space)", results["renderer"])
  networks = objective.build_networks(config)
  params, batch_stats = objective.init_variables(networks, config, jax.random.key(config.seed))
  for normalization in ("row", "image") if FLAGS.init else ():
    name = f"init/{normalization}"
    results[name] = diagnose(networks, params, batch_stats, test10, alpha_prime, content,
                             normalization)
    _print(f"encoder at initialisation, {normalization} normalisation", results[name])
  for workdir in FLAGS.workdirs:
    run_config = _run_config(workdir)
    params, batch_stats = _restore_final(workdir)
    results[workdir] = diagnose(objective.build_networks(run_config), params, batch_stats, test10,
                                alpha_prime, content, run_config.data.normalization)
    results[workdir]["weight"] = float(run_config.invariance.weight)
    _print(f"{workdir} (λ = {run_config.invariance.weight:g})", results[workdir])
  with open(FLAGS.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"\nWrote {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
