"""Config validation, once, before anything is built or compiled: one-line errors naming the key."""

import ml_collections

from mclr_jax.errors import UserFacingError

DATASETS = ("cifar10", "stl10", "tinyimagenet", "spirograph")
METHODS = ("simclr", "manifoldclr")
PROJECTIONS = ("mlp", "linear", "none", "direct")
STEMS = ("cifar", "imagenet64")
EXPM_METHODS = ("taylor", "pade")
BEST_OF_J_METHODS = ("action", "taylor", "pade")
BEST_OF_J_DTYPES = ("float32", "bfloat16")
CONTRASTIVE = ("cosine", "mse")
KL_WARMUPS = ("none", "exponential")
OPERATOR_INITS = ("stable", "gaussian")


class ConfigError(UserFacingError, ValueError):
  """A config value is invalid; the message names the key, the value and the fix."""


def _choice(key, value, options):
  if value not in options:
    raise ConfigError(f"config.{key}={value!r} is not one of {options}; "
                      f"set e.g. --config.{key}={options[0]}")


def _positive(key, value, allow_zero=False):
  if not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"config.{key}={value!r} must be a number {bound}")


def validate_config(config: ml_collections.ConfigDict, num_devices: int = 1,
                    num_processes: int = 1):
  """Raises ConfigError for the first invalid value found; returns None when the config is usable."""
  _choice("data.name", config.data.name, DATASETS)
  _choice("method", config.method, METHODS)
  _choice("model.projection", config.model.projection, PROJECTIONS)
  _choice("model.stem", config.model.stem, STEMS)
  _choice("loss.contrastive", config.loss.contrastive, CONTRASTIVE)
  _choice("loss.kl_warmup", config.loss.kl_warmup, KL_WARMUPS)

  _positive("batch_size", config.batch_size)
  if not isinstance(config.batch_size, int):
    raise ConfigError(f"config.batch_size={config.batch_size!r} must be an integer")
  if config.batch_size % num_devices:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{num_devices} devices; use a multiple of {num_devices}")
  if config.batch_size % num_processes:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{num_processes} processes")
  if config.num_train_steps <= 0:
    _positive("num_epochs", config.num_epochs)
  _positive("model.width", config.model.width)
  _positive("loss.temperature", config.loss.temperature)
  for key in ("lr", "psi_lr", "coeff_lr"):
    _positive(f"optim.{key}", config.optim[key])
  for key in ("min_lr", "psi_min_lr", "coeff_min_lr", "weight_decay", "psi_weight_decay",
              "coeff_weight_decay", "warmup_epochs", "psi_clip", "coeff_clip"):
    _positive(f"optim.{key}", config.optim[key], allow_zero=True)
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _positive(key, config[key])
  _positive("invariance.weight", config.invariance.weight, allow_zero=True)
  if config.invariance.weight > 0:
    _positive("invariance.clip", config.invariance.clip)
    _positive("invariance.num_alpha_samples", config.invariance.num_alpha_samples)

  if config.method == "manifoldclr":
    m = config.manifold
    dim = 8 * config.model.width
    _choice("manifold.expm", m.expm, EXPM_METHODS)
    _choice("manifold.best_of_j_method", m.best_of_j_method, BEST_OF_J_METHODS)
    _choice("manifold.best_of_j_dtype", m.best_of_j_dtype, BEST_OF_J_DTYPES)
    if m.best_of_j_dtype == "bfloat16" and m.best_of_j_method != "action":
      raise ConfigError(f"config.manifold.best_of_j_dtype='bfloat16' needs "
                        f"config.manifold.best_of_j_method='action' (got "
                        f"{m.best_of_j_method!r}); set --config.manifold.best_of_j_method=action "
                        f"or --config.manifold.best_of_j_dtype=float32")
    _choice("manifold.init", m.init, OPERATOR_INITS)
    _positive("manifold.dictionary_size", m.dictionary_size)
    _positive("manifold.block_dim", m.block_dim)
    if dim % m.block_dim:
      raise ConfigError(f"config.manifold.block_dim={m.block_dim} does not divide the feature "
                        f"dimension {dim} (= 8 × model.width={config.model.width}); choose a "
                        f"divisor of {dim}")
    if m.init == "stable" and m.block_dim % 2:
      raise ConfigError(f"config.manifold.block_dim={m.block_dim} must be even for "
                        f"manifold.init='stable' (2×2 rotation blocks)")
    _positive("manifold.num_samples", m.num_samples)
    _positive("manifold.threshold", m.threshold, allow_zero=True)
    _positive("manifold.scale_prior", m.scale_prior)
    _positive("manifold.prior_warmup_steps", m.prior_warmup_steps, allow_zero=True)
    if config.loss.kl_warmup == "exponential":
      _positive("loss.kl_warmup_steps", config.loss.kl_warmup_steps)

  if config.data.name == "spirograph":
    d = config.data
    _positive("data.num_train", d.num_train)
    _positive("data.num_test", d.num_test)
    if d.num_train < config.batch_size:
      raise ConfigError(f"config.data.num_train={d.num_train} is smaller than "
                        f"config.batch_size={config.batch_size}")
    from mclr_jax.data import spirograph  # pure JAX, no TensorFlow
    unknown = [n for n in d.content if n not in spirograph.PARAM_NAMES]
    if unknown:
      raise ConfigError(f"config.data.content has unknown names {unknown}; valid names are "
                        f"{spirograph.PARAM_NAMES}")
