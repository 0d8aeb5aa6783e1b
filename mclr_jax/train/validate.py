"""Config validation, once, before anything is built or compiled: one-line errors naming the key.

Every value is checked against its real domain: choices against their options, integers as
integers, and every number finite and inside its range (a NaN passes `x < 0`, so each check is
written as "inside", never as "not outside"). The first bad value raises a `ConfigError` whose
message names the key, the value, the allowed range and the flag that fixes it.
"""

import math

import ml_collections

from mclr_jax.data.datasets import DATASETS as IMAGE_DATASETS
from mclr_jax.errors import UserFacingError
from mclr_jax.models.heads import DIRECT_DIM
from mclr_jax.models.heads import HEAD_KINDS as PROJECTIONS
from mclr_jax.models.resnet import ARCHITECTURES
from mclr_jax.train.feature_views import FEATURE_AUGMENTATIONS
from mclr_jax.train.optimizer import OPTIMIZERS, SCHEDULES

DATASETS = tuple(IMAGE_DATASETS) + ("spirograph",)
METHODS = ("simclr", "manifoldclr")
STEMS = ("cifar", "imagenet64")
EXPM_METHODS = ("taylor", "pade")
BEST_OF_J_METHODS = ("action", "taylor", "pade")
BEST_OF_J_DTYPES = ("float32", "bfloat16")
CONTRASTIVE = ("cosine", "mse")
KL_WARMUPS = ("none", "exponential")
OPERATOR_INITS = ("stable", "gaussian")
NORMALIZATIONS = ("row", "image")

INF = math.inf


class ConfigError(UserFacingError, ValueError):
  """A config value is invalid; the message names the key, the value and the fix."""


def _choice(key, value, options):
  if value not in options:
    raise ConfigError(f"config.{key}={value!r} is not one of {options}; "
                      f"set e.g. --config.{key}={options[0]}")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(key, value, lo=-INF, hi=INF, *, lo_open=False, hi_open=False, integer=False):
  """Requires a finite number (an int if `integer`) in the interval lo..hi (open ends as given)."""
  kind = "an integer" if integer else "a finite number"
  interval = (f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
              .replace("inf]", "inf)").replace("[-inf", "(-inf"))
  ok = (_is_number(value) and math.isfinite(value) and (not integer or isinstance(value, int))
        and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi))
  if not ok:
    raise ConfigError(f"config.{key}={value!r} must be {kind} in {interval}; set "
                      f"--config.{key}=<value in {interval}>")


def _positive(key, value, allow_zero=False, integer=False):
  _number(key, value, 0, lo_open=not allow_zero, integer=integer)


def _probability(key, value):
  _number(key, value, 0, 1)


def _bool(key, value, allow_none=False):
  if not (isinstance(value, bool) or (allow_none and value is None)):
    raise ConfigError(f"config.{key}={value!r} must be True or False"
                      f"{' or None (auto)' if allow_none else ''}; set --config.{key}=False")


def _pair(key, value, lo=0.0, hi=INF, lo_open=False):
  """A (low, high) pair of finite numbers with low <= high, both in [lo, hi]."""
  if not (isinstance(value, (tuple, list)) and len(value) == 2):
    raise ConfigError(f"config.{key}={value!r} must be a (low, high) pair; "
                      f"set e.g. --config.{key}='(0.2, 1.0)'")
  for i, v in enumerate(value):
    _number(f"{key}[{i}]", v, lo, hi, lo_open=lo_open)
  if value[0] > value[1]:
    raise ConfigError(f"config.{key}={tuple(value)} has low > high; swap them")


def _hidden(key, value):
  if not (isinstance(value, (tuple, list)) and value):
    raise ConfigError(f"config.{key}={value!r} must be a non-empty tuple of layer widths")
  for i, v in enumerate(value):
    _positive(f"{key}[{i}]", v, integer=True)


def validate_config(config: ml_collections.ConfigDict, num_devices: int = 1,
                    num_processes: int = 1):
  """Raises ConfigError for the first invalid value found; returns None when the config is usable."""
  _choice("data.name", config.data.name, DATASETS)
  _choice("method", config.method, METHODS)
  _choice("model.arch", config.model.get("arch", "resnet18"), tuple(ARCHITECTURES))
  _choice("model.projection", config.model.projection, PROJECTIONS)
  _choice("model.stem", config.model.stem, STEMS)
  _choice("optim.name", config.optim.get("name", "adamw"), OPTIMIZERS)
  _choice("optim.schedule", config.optim.get("schedule", "warmup_cosine"), SCHEDULES)
  _choice("loss.contrastive", config.loss.contrastive, CONTRASTIVE)
  _choice("loss.kl_warmup", config.loss.kl_warmup, KL_WARMUPS)

  _validate_run(config, num_devices, num_processes)
  _validate_data(config)
  _validate_model_and_loss(config)
  _validate_optim(config.optim)
  _validate_invariance(config.invariance)
  _validate_eval(config.eval)
  if config.method == "manifoldclr":
    _validate_manifold(config)


def _validate_run(config, num_devices, num_processes):
  _number("seed", config.seed, 0, integer=True)
  _positive("batch_size", config.batch_size, integer=True)
  if config.batch_size % num_devices:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{num_devices} devices; use a multiple of {num_devices}")
  if config.batch_size % num_processes:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{num_processes} processes; use a multiple of {num_processes}")
  _number("num_train_steps", config.num_train_steps, integer=True)
  if config.num_train_steps <= 0:
    _positive("num_epochs", config.num_epochs)
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _positive(key, config[key], integer=True)
  _number("eval_every_steps", config.eval_every_steps, -1, integer=True)
  _bool("half_precision", config.half_precision, allow_none=True)
  _bool("strict_checkpoints", config.get("strict_checkpoints", False))


def _validate_data(config):
  d = config.data
  _positive("data.prefetch", d.prefetch, integer=True)
  if d.data_dir is not None and not isinstance(d.data_dir, str):
    raise ConfigError(f"config.data.data_dir={d.data_dir!r} must be a path or None")
  if d.name == "spirograph":
    _number("data.seed", d.seed, 0, integer=True)
    _positive("data.num_train", d.num_train, integer=True)
    _positive("data.num_test", d.num_test, integer=True)
    if d.num_train < config.batch_size:
      raise ConfigError(f"config.data.num_train={d.num_train} is smaller than "
                        f"config.batch_size={config.batch_size}; raise it or lower the batch size")
    _choice("data.normalization", d.normalization, NORMALIZATIONS)
    from mclr_jax.data import spirograph  # pure JAX, no TensorFlow
    unknown = [n for n in d.content if n not in spirograph.PARAM_NAMES]
    if unknown:
      raise ConfigError(f"config.data.content has unknown names {unknown}; valid names are "
                        f"{spirograph.PARAM_NAMES}")
    if not d.content or len(set(d.content)) != len(d.content):
      raise ConfigError(f"config.data.content={tuple(d.content)} must list distinct names, at "
                        f"least one, from {spirograph.PARAM_NAMES}")
    for name, value in dict(d.get("ranges", {}) or {}).items():
      if name not in spirograph.PARAM_NAMES:
        raise ConfigError(f"config.data.ranges.{name} is not a Spirograph parameter; valid names "
                          f"are {spirograph.PARAM_NAMES}")
      _pair(f"data.ranges.{name}", value, lo=-INF)
    return
  # The SimCLR augmentations of the image datasets (docs/method.md §7).
  strength = tuple(d.jitter_strength)
  if len(strength) != 4:
    raise ConfigError(f"config.data.jitter_strength={strength} must be 4 numbers (brightness, "
                      f"contrast, saturation, hue)")
  for i, name in enumerate(("brightness", "contrast", "saturation")):
    # Factors are drawn from U(1 - s, 1 + s): s > 1 would allow negative factors.
    _number(f"data.jitter_strength[{i}] ({name})", strength[i], 0, 1)
  _number("data.jitter_strength[3] (hue)", strength[3], 0, 0.5)
  for key in ("jitter_prob", "grayscale_prob", "flip_prob"):
    _probability(f"data.{key}", d[key])
  _pair("data.crop_scale", d.crop_scale, lo=0.0, hi=1.0, lo_open=True)
  _pair("data.crop_ratio", d.crop_ratio, lo=0.0, lo_open=True)


def _validate_model_and_loss(config):
  m, lc = config.model, config.loss
  _positive("model.width", m.width, integer=True)
  _positive("model.proj_hidden_dim", m.proj_hidden_dim, integer=True)
  _positive("model.proj_output_dim", m.proj_output_dim, integer=True)
  _positive("loss.temperature", lc.temperature)
  _bool("loss.z0_negatives", lc.z0_negatives)
  for key in ("transport_weight", "kl_weight", "location_l2_weight"):
    _positive(f"loss.{key}", lc[key], allow_zero=True)
  if lc.kl_warmup == "exponential":
    _positive("loss.kl_warmup_steps", lc.kl_warmup_steps, integer=True)
  if m.projection == "direct":
    from mclr_jax.train.objective import feature_dim  # pylint: disable=g-import-not-at-top
    if feature_dim(config) < DIRECT_DIM:
      raise ConfigError(f"config.model.projection='direct' keeps the first {DIRECT_DIM} feature "
                        f"dimensions but model.width={m.width} gives {feature_dim(config)}; "
                        f"raise --config.model.width")
  _validate_variants(config)


def _validate_variants(config):
  """The keys of docs/method.md §17: nearest-neighbour positives and feature-space views."""
  lc = config.loss
  queue_size = lc.get("nn_queue_size", 0)
  _number("loss.nn_queue_size", queue_size, 0, integer=True)
  if queue_size > 0:
    if lc.contrastive != "cosine":
      raise ConfigError(f"config.loss.nn_queue_size={queue_size} (nearest-neighbour positives) "
                        f"needs config.loss.contrastive='cosine', got {lc.contrastive!r}; set "
                        f"--config.loss.nn_queue_size=0 or --config.loss.contrastive=cosine")
    if queue_size < config.batch_size:
      raise ConfigError(f"config.loss.nn_queue_size={queue_size} must hold at least one batch "
                        f"(config.batch_size={config.batch_size}); set "
                        f"--config.loss.nn_queue_size={config.batch_size} or more")
  feature_aug = lc.get("feature_aug", "none")
  _choice("loss.feature_aug", feature_aug, FEATURE_AUGMENTATIONS)
  if feature_aug != "none":
    if config.method != "simclr":
      raise ConfigError(f"config.loss.feature_aug={feature_aug!r} is a SimCLR baseline; with "
                        f"method={config.method!r} the transport is the feature view: set "
                        f"--config.loss.feature_aug=none or --config.method=simclr")
    _positive("loss.feature_aug_strength", lc.feature_aug_strength, allow_zero=True)


def _validate_optim(o):
  for lr, min_lr in (("lr", "min_lr"), ("psi_lr", "psi_min_lr"), ("coeff_lr", "coeff_min_lr")):
    # The cosine schedule's end value is a fraction min_lr / lr of its peak (optimizer.py).
    _positive(f"optim.{lr}", o[lr])
    _number(f"optim.{min_lr}", o[min_lr], 0, o[lr])
  for key in ("weight_decay", "psi_weight_decay", "coeff_weight_decay", "warmup_epochs",
              "psi_clip", "coeff_clip"):
    _positive(f"optim.{key}", o[key], allow_zero=True)
  # Adam's moment decays: 1 would never forget, > 1 diverges.
  _number("optim.b1", o.b1, 0, 1, hi_open=True)
  _number("optim.b2", o.b2, 0, 1, hi_open=True)
  # eps = 0 divides by sqrt(v) = 0 for a parameter whose gradient is 0 (NaN updates).
  _positive("optim.eps", o.eps)
  if o.get("name", "adamw") == "lars":
    _number("optim.momentum", o.momentum, 0, 1, hi_open=True)
    _positive("optim.trust_coefficient", o.trust_coefficient)
    _positive("optim.lars_eps", o.lars_eps, allow_zero=True)
    _bool("optim.lars_exclude_bias_and_norm", o.lars_exclude_bias_and_norm)


def _validate_invariance(inv):
  _positive("invariance.weight", inv.weight, allow_zero=True)
  _bool("invariance.normalize", inv.normalize)
  if "log_grad_share" in inv:
    _bool("invariance.log_grad_share", inv.log_grad_share)
  if inv.weight > 0:
    _positive("invariance.clip", inv.clip)
    _positive("invariance.num_alpha_samples", inv.num_alpha_samples, integer=True)


def _validate_eval(ev):
  _positive("eval.every_epochs", ev.every_epochs)
  _positive("eval.linear_epochs", ev.linear_epochs, integer=True)
  _positive("eval.batch_size", ev.batch_size, integer=True)
  _positive("eval.knn_k", ev.knn_k, integer=True)
  for key in ("max_train_examples", "max_test_examples"):
    _number(f"eval.{key}", ev[key], -1, integer=True)  # -1: all
    if ev[key] == 0:
      raise ConfigError(f"config.eval.{key}=0 would leave no examples; use -1 (all) or a count > 0")
  _positive("eval.feature_average_copies", ev.feature_average_copies, allow_zero=True,
            integer=True)
  _positive("eval.probe_l2", ev.probe_l2, allow_zero=True)
  _positive("eval.semi_supervised_trials", ev.semi_supervised_trials, integer=True)
  _positive("eval.semi_supervised_steps", ev.semi_supervised_steps, integer=True)
  if "label_proportion" in ev:
    _number("eval.label_proportion", ev.label_proportion, 0, 1, lo_open=True)
    _positive("eval.classifier_l2", ev.classifier_l2, allow_zero=True)
    _positive("eval.lbfgs_steps", ev.lbfgs_steps, integer=True)


def _validate_manifold(config):
  from mclr_jax.train.objective import feature_dim  # pylint: disable=g-import-not-at-top
  m = config.manifold
  dim = feature_dim(config)
  _choice("manifold.expm", m.expm, EXPM_METHODS)
  _choice("manifold.best_of_j_method", m.best_of_j_method, BEST_OF_J_METHODS)
  _choice("manifold.best_of_j_dtype", m.best_of_j_dtype, BEST_OF_J_DTYPES)
  if m.best_of_j_dtype == "bfloat16" and m.best_of_j_method != "action":
    raise ConfigError(f"config.manifold.best_of_j_dtype='bfloat16' needs "
                      f"config.manifold.best_of_j_method='action' (got "
                      f"{m.best_of_j_method!r}); set --config.manifold.best_of_j_method=action "
                      f"or --config.manifold.best_of_j_dtype=float32")
  _choice("manifold.init", m.init, OPERATOR_INITS)
  _positive("manifold.dictionary_size", m.dictionary_size, integer=True)
  _positive("manifold.block_dim", m.block_dim, integer=True)
  direct = m.get("direct", False)
  _bool("manifold.direct", direct)
  if direct:  # ManifoldDirectCLR (docs/method.md §2.5): one block on the first block_dim dims
    if m.block_dim > dim:
      raise ConfigError(f"config.manifold.block_dim={m.block_dim} exceeds the feature dimension "
                        f"{dim} (model.width={config.model.width}); ManifoldDirectCLR transports "
                        f"the first block_dim dims: lower it or raise --config.model.width")
    if config.model.projection == "direct" and m.block_dim != DIRECT_DIM:
      raise ConfigError(f"config.manifold.block_dim={m.block_dim} must equal the {DIRECT_DIM} "
                        f"dims of model.projection='direct' with manifold.direct=True (the "
                        f"embedding is the transported block); set "
                        f"--config.manifold.block_dim={DIRECT_DIM}")
  elif dim % m.block_dim:
    raise ConfigError(f"config.manifold.block_dim={m.block_dim} does not divide the feature "
                      f"dimension {dim} ({config.model.get('arch', 'resnet18')}, "
                      f"model.width={config.model.width}); choose a divisor of {dim}")
  if m.init == "stable" and m.block_dim % 2:
    raise ConfigError(f"config.manifold.block_dim={m.block_dim} must be even for "
                      f"manifold.init='stable' (2×2 rotation blocks)")
  for key in ("real_range", "imag_range", "threshold", "l1_penalty"):
    _positive(f"manifold.{key}", m[key], allow_zero=True)
  _number("manifold.shift_prior", m.shift_prior)  # an offset of μ_q: any sign
  _positive("manifold.scale_prior", m.scale_prior)
  _positive("manifold.num_samples", m.num_samples, integer=True)
  _positive("manifold.best_of_j_start", m.best_of_j_start, allow_zero=True, integer=True)
  _positive("manifold.prior_warmup_steps", m.prior_warmup_steps, allow_zero=True, integer=True)
  _hidden("manifold.encoder_hidden", m.encoder_hidden)
  _hidden("manifold.prior_hidden", m.prior_hidden)
