"""The evaluation model: a run's frozen parameters and its feature functions (docs/method.md §8.6).

`EvalModel` holds the parameters, the module definitions and the config of one trained (or
training) model. Its feature functions are module-level `jax.jit`s whose module definitions and
input pipeline are static arguments and whose parameters are ordinary arguments: each compiles once
per (module, chunk shape) and serves every chunk, every call and every model of that architecture
(a training run's periodic evaluations included). Inputs are cut into chunks of `CHUNK_SIZE` rows,
the last one padded to that size; the input preprocessing (the image eval transform, Spirograph
rendering, random views for feature averaging) runs inside the same compiled chunk function; the
features are gathered on the device and returned as one `jax.Array`, and only a probe that needs
them on the host (k-means, the float64 regression) moves them there.

Evaluation imports from `mclr_jax.train` only what describes a run, never the loop or the step:
its config and checkpoints (`checkpoint`), the module definitions and initial variables
(`objective.build_networks` / `init_variables`), the shape of the TrainState a checkpoint holds
(`create.abstract_train_state`: orbax restores into it, optimiser state included), the data splits
(`data`) and the augmentation settings (`views`).
"""

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mclr_jax.data import augment
from mclr_jax.data import spirograph
from mclr_jax.data.datasets import DatasetInfo, get_dataset_info
from mclr_jax.errors import UserFacingError
from mclr_jax.invariance import averaging
from mclr_jax.train import checkpoint
from mclr_jax.train import create
from mclr_jax.train import objective
from mclr_jax.train import views

CHUNK_SIZE = 500  # rows per compiled feature call (the last chunk is padded to it)
# The prior is queried "fully warmed up" (docs/method.md §3.2: inference uses a late step).
LATE_STEP = 10 ** 8


class EvaluationError(UserFacingError, ValueError):
  """An evaluation request that cannot be met; the message names the value and the fix."""


# --------------------------------------------------------------------------------------------
# Input pipelines: pytrees, passed to the compiled chunk functions as arguments. What changes the
# program (image size, augmentation settings, Spirograph content names) is their static part;
# Spirograph's nuisance ranges are arrays, so sweeping them (robustness, geometry strengths) does
# not recompile the network.
# --------------------------------------------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass, data_fields=[],
                   meta_fields=["info", "view_options"])
@dataclasses.dataclass(frozen=True)
class ImageInputs:
  """uint8 images (N, H, W, 3): the probe transform (clean) and SimCLR views (docs/method.md §7)."""
  info: DatasetInfo
  view_options: tuple  # sorted (name, value) pairs: keyword arguments of augment.simclr_augment
  default_copies = 0  # the evaluation input is the clean, deterministic transform

  def clean(self, images):
    """(B, H, W, 3) uint8 -> (B, S, S, 3) float32, normalised."""
    return augment.eval_preprocess(images, self.info)

  def view(self, key, images):
    """One random training view of each image: (B, H, W, 3) uint8 -> (B, S, S, 3) float32."""
    return augment.simclr_augment(key, images, **dict(self.view_options))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["low", "high"],
                   meta_fields=["content", "normalization"])
@dataclasses.dataclass(frozen=True, eq=False)
class SpirographInputs:
  """Content parameters θ (N, n_c): every view is rendered with a fresh nuisance α
  (docs/method.md §10: there is no untransformed input, so evaluation uses one random view).
  α ~ U(low, high) per nuisance parameter, in `spirograph.nuisance_names(content)` order."""
  low: Any  # (n_a,)
  high: Any  # (n_a,)
  content: tuple
  normalization: str
  default_copies = 1

  def render(self, theta, alpha):
    """θ (..., n_c), α (..., n_a) -> images (..., 32, 32, 3)."""
    return spirograph.render(spirograph.merge_params(theta, alpha, self.content),
                             normalization=self.normalization)

  def sample_alpha(self, key, shape):
    """α (*shape, n_a) ~ U(low, high), as `spirograph.sample_nuisance` with these ranges."""
    return jax.random.uniform(key, tuple(shape) + self.low.shape, minval=self.low,
                              maxval=self.high)

  def view(self, key, theta):
    return self.render(theta, self.sample_alpha(key, theta.shape[:-1]))


def inputs_for(config: ml_collections.ConfigDict):
  """The input pipeline of config.data (its augmentation settings included)."""
  data = config.data
  if data.name == "spirograph":
    content = tuple(data.content)
    ranges = views.spirograph_ranges(data)
    bounds = np.array([ranges[n] for n in spirograph.nuisance_names(content)], np.float32)
    for name, (lo, hi) in zip(spirograph.nuisance_names(content), bounds):
      if not lo <= hi:
        raise EvaluationError(f"config.data.ranges[{name!r}] = ({lo}, {hi}) has lo > hi; swap "
                              f"the bounds.")
    return SpirographInputs(bounds[:, 0], bounds[:, 1], content, data.normalization)
  return ImageInputs(get_dataset_info(data.name), tuple(sorted(views.simclr_options(data).items())))


# --------------------------------------------------------------------------------------------
# Compiled chunk functions: static module definitions, parameters as arguments
# --------------------------------------------------------------------------------------------

def _apply_fn(module, variables):
  return lambda x: module.apply(variables, x, train=False).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("backbone", "num_copies"))
def _input_features(variables, inputs, raw, key, chunk_index, *, backbone, num_copies):
  """Backbone features of one chunk of raw inputs: the clean transform (num_copies = 0) or the
  average over num_copies random views (docs/method.md §12) -> (B, D) float32."""
  encode = _apply_fn(backbone, variables)
  if num_copies == 0:
    return encode(inputs.clean(raw))
  return averaging.feature_average(encode, inputs.view, jax.random.fold_in(key, chunk_index), raw,
                                   num_copies)


@functools.partial(jax.jit, static_argnames=("backbone", "num_views"))
def _view_features(variables, inputs, raw, key, chunk_index, *, backbone, num_views):
  """Backbone features of num_views random views of each row of a chunk -> (B, V, D) float32."""
  encode = _apply_fn(backbone, variables)
  keys = jax.random.split(jax.random.fold_in(key, chunk_index), num_views)
  return jnp.swapaxes(jax.lax.map(lambda k: encode(inputs.view(k, raw)), keys), 0, 1)


@functools.partial(jax.jit, static_argnames=("module",))
def _apply(variables, x, *, module):
  return _apply_fn(module, variables)(x)


def warmed_prior(module, params):
  """z (n, D) -> (μ_p, log b_p) of the prior network `module` once fully warmed up (the evaluation
  reads the trained prior, not its warm-up schedule): a pure JAX function."""
  return lambda z: module.apply({"params": params}, z, jnp.asarray(LATE_STEP, jnp.int32))


@functools.partial(jax.jit, static_argnames=("module",))
def _prior(params, z, *, module):
  return warmed_prior(module, params)(z)


@functools.partial(jax.jit, static_argnames=("num_rows",))
def _join(chunks, num_rows):
  return jax.tree.map(lambda *parts: jnp.concatenate(parts)[:num_rows], *chunks)


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads (n, ...) to (size, ...) by repeating the last row (always a valid input)."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


@functools.partial(jax.jit, static_argnames=("size",))
def _device_chunk(x, start, *, size):
  """Rows [start, start + size) of a device array, the last row repeated past its end; `start` is
  traced, so every chunk of one array shares one compiled slice."""
  padded = jnp.concatenate([x, jnp.repeat(x[-1:], size, axis=0)])
  return jax.lax.dynamic_slice_in_dim(padded, start, size)


def map_chunks(fn, arrays, chunk_size: int = CHUNK_SIZE):
  """fn(chunk_index, *chunks) over fixed-size row chunks of arrays (N, ...) -> (N, ...).

  Every chunk has min(chunk_size, N) rows (the last one padded), so `fn`, a jitted function,
  compiles once; its outputs (a pytree of (rows, ...) arrays) stay on the device and are joined
  there, the padding dropped. Host arrays are sent chunk by chunk; device arrays (features
  already computed) are sliced where they are, never copied to the host.
  """
  arrays = [a if isinstance(a, jax.Array) else np.asarray(a) for a in arrays]
  num_rows = len(arrays[0])
  if num_rows == 0:
    raise EvaluationError("No rows to evaluate: the evaluation split is empty (check "
                          "config.eval.max_train_examples / max_test_examples and the dataset).")
  size = min(chunk_size, num_rows)

  def chunk(a, start):
    if isinstance(a, jax.Array):
      return _device_chunk(a, start, size=size)
    return _pad_rows(a[start:start + size], size)

  outs = [fn(i, *[chunk(a, start) for a in arrays])
          for i, start in enumerate(range(0, num_rows, size))]
  return _join(outs, num_rows)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalModel:
  """A trained model for evaluation: frozen parameters, module definitions and its config.

  features(raw) -> (N, D) backbone features of raw inputs (uint8 images or Spirograph θ);
  view_features(raw, key, V) -> (N, V, D); encode(x) -> (N, D) of preprocessed inputs;
  project(h) -> (N, K) projector outputs; prior(z) -> (μ_p, log b_p), each (N, M), fully warmed up;
  psi: (M, K, b, b) or None. All eval-mode BatchNorm, float32 jax.Arrays on this process's first
  device.
  """
  config: ml_collections.ConfigDict
  step: int
  params: Any
  batch_stats: Any
  networks: objective.Networks

  @property
  def psi(self):
    return self.params.get("psi")

  @property
  def is_spirograph(self) -> bool:
    return self.config.data.name == "spirograph"

  @property
  def inputs(self):
    return inputs_for(self.config)

  def variables(self, name: str) -> dict:
    return {"params": self.params[name], "batch_stats": self.batch_stats.get(name, {})}

  def features(self, raw, key=None, num_copies: Optional[int] = None,
               chunk_size: int = CHUNK_SIZE) -> jax.Array:
    """Backbone features (N, D) of raw inputs (N, ...), with the dataset's evaluation transform.

    num_copies: None for the dataset's evaluation input (images: the clean probe transform;
      Spirograph: one view with a fresh α); 0 for the clean transform; M >= 1 for the average over
      M random views (feature averaging, docs/method.md §12; M = 1 is one random view).
    key: PRNG key of the random views (required when they are random).
    """
    inputs = self.inputs
    num_copies = inputs.default_copies if num_copies is None else int(num_copies)
    if num_copies == 0 and not isinstance(inputs, ImageInputs):
      raise EvaluationError("Spirograph has no untransformed input (docs/method.md §10): use "
                            "num_copies >= 1 random views.")
    if num_copies < 0:
      raise EvaluationError(f"num_copies={num_copies} must be >= 0.")
    key = _require_key(key, num_copies > 0)
    fn = functools.partial(_input_features, self.variables("backbone"), inputs,
                           backbone=self.networks.backbone, num_copies=num_copies)
    return map_chunks(lambda i, x: fn(x, key, i), [raw], chunk_size)

  def view_features(self, raw, key, num_views: int, chunk_size: int = CHUNK_SIZE) -> jax.Array:
    """Backbone features (N, V, D) of V random training views of each raw input."""
    fn = functools.partial(_view_features, self.variables("backbone"), self.inputs,
                           backbone=self.networks.backbone, num_views=int(num_views))
    return map_chunks(lambda i, x: fn(x, key, i), [raw], max(chunk_size // num_views, 1))

  def encode(self, x, chunk_size: int = CHUNK_SIZE) -> jax.Array:
    """Backbone features (N, D) of already preprocessed float inputs (N, H, W, 3)."""
    fn = functools.partial(_apply, self.variables("backbone"), module=self.networks.backbone)
    return map_chunks(lambda i, chunk: fn(chunk), [x], chunk_size)

  def project(self, h, chunk_size: int = 4 * CHUNK_SIZE) -> jax.Array:
    """Projector outputs (N, K) of backbone features h (N, D)."""
    fn = functools.partial(_apply, self.variables("projector"), module=self.networks.projector)
    return map_chunks(lambda i, chunk: fn(chunk), [h], chunk_size)

  def prior(self, z):
    """(μ_p, log b_p), each (N, M), of the fully warmed-up learned prior at features z (N, D)."""
    return _prior(self.params["prior"], jnp.asarray(z, jnp.float32), module=self.networks.prior)


def _require_key(key, needed: bool):
  if key is None:
    if needed:
      raise EvaluationError("Random views need a PRNG key: pass key=jax.random.key(seed).")
    return jax.random.key(0)  # unused by the clean transform
  return key


# --------------------------------------------------------------------------------------------
# Where models come from
# --------------------------------------------------------------------------------------------

def _local_copy(tree):
  """The tree on this process's first device. Evaluation runs there: the training mesh's
  replicated parameters would turn every feature call into a redundant multi-device program. A
  replicated global array holds its whole value in each addressable shard."""
  device = jax.local_devices()[0]

  def copy(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return jax.device_put(x, device)

  return jax.tree.map(copy, tree)


def model_from_state(config: ml_collections.ConfigDict, state) -> EvalModel:
  """The EvalModel of a live TrainState (periodic and final evaluation during training)."""
  return EvalModel(config=config, step=int(jax.device_get(state.step)),
                   params=_local_copy(state.params), batch_stats=_local_copy(state.batch_stats),
                   networks=objective.build_networks(config))


def random_model(config: ml_collections.ConfigDict, seed_offset: int = 1) -> EvalModel:
  """The same architecture at initialisation (seed + 1): the 'random encoder' baseline."""
  networks = objective.build_networks(config)
  # Jitted: eager initialisation of a ResNet dispatches hundreds of small ops.
  init = jax.jit(functools.partial(objective.init_variables, networks, config))
  params, batch_stats = init(jax.random.key(config.seed + seed_offset))
  return EvalModel(config=config, step=0, params=_local_copy(params),
                   batch_stats=_local_copy(batch_stats), networks=networks)


def restore_model(workdir: str, step: Optional[int] = None,
                  config: Optional[ml_collections.ConfigDict] = None) -> EvalModel:
  """The latest (or given) checkpoint of `workdir`, restored onto one device for evaluation.

  config: replaces WORKDIR/config.json (e.g. other config.eval values); its model must match.
  """
  config = config or checkpoint.read_config(workdir)
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints, async_save=False)
  try:
    networks, abstract_state = create.abstract_train_state(config, steps_per_epoch=1)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_state)
    state = checkpoint.restore_latest(manager, abstract_state, step)  # a missing step raises
  finally:
    manager.close()
  if state is None:
    raise EvaluationError(f"No checkpoint in {workdir}/checkpoints: train first with "
                          f"python -m mclr_jax.main --config=... --workdir={workdir}")
  return EvalModel(config=config, step=int(state.step), params=state.params,
                   batch_stats=state.batch_stats, networks=networks)
