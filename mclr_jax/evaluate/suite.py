"""The evaluation suite behind `python -m mclr_jax.evaluate`: every downstream number and figure of
one restored checkpoint (docs/method.md §8, §12–§14).

`run_suite(model, suites, key, out_dir)` runs the named parts on frozen backbone features:

  probe            linear probe top-1/top-5 (images) or the closed-form regression probe (Spirograph)
  knn              k-NN accuracy (k = config.eval.knn_k, cosine)
  cluster          k-means purity (10 clusters)
  prior_aug        prior-augmentation nearest-neighbour accuracy, coefficients clipped to [−1, 1]
                   (ManifoldCLR only)
  semi_supervised  the paper's semi-supervised experiment: transport (ManifoldCLR only), mixup and
                   none consistency, plus the supervised baseline; mean ± std over trials
  feature_average  test-time feature averaging over M random views, then the probe (docs/method.md §12)
  geometry         the cheap geometry report: spectra + projector-Jacobian retention
  figures          operator orbits, coefficient usage and operator spectra (ManifoldCLR only), and
                   the encoder/projector feature spectra (always)

Labelled parts (knn, cluster, prior_aug, semi_supervised) need class labels and are reported as
skipped on Spirograph. The helpers (`transport_augment_fn`, `operator_orbits`, ...) are pure array
code so tests can check them against hand-applied transports.
"""

import dataclasses
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax import manifold
from mclr_jax.evaluate import clustering
from mclr_jax.evaluate import figures
from mclr_jax.evaluate import geometry
from mclr_jax.evaluate import knn
from mclr_jax.evaluate import linear_probe
from mclr_jax.evaluate import prior_augmentation
from mclr_jax.evaluate import runner
from mclr_jax.evaluate import semi_supervised
from mclr_jax.train.data import spirograph_split

SUITES = ("probe", "knn", "cluster", "semi_supervised", "prior_aug", "feature_average", "geometry",
          "figures")
DEFAULT_SUITES = ("probe", "knn", "cluster", "prior_aug", "figures")
# The prior is queried "fully warmed up" (docs/method.md §3: inference uses a late step).
_LATE_STEP = 10 ** 8


@dataclasses.dataclass
class SuiteOptions:
  """Overrides of config.eval for one evaluation; None means "use the config's value"."""
  linear_epochs: Optional[int] = None
  semi_supervised_trials: Optional[int] = None
  semi_supervised_steps: Optional[int] = None
  semi_supervised_hidden: int = 2048  # docs/method.md §8: MLP 512→2048→C
  labels_per_class: int = 5  # docs/method.md §8
  feature_average_copies: Optional[int] = None
  geometry_points: int = 256  # rows whose projector Jacobian is computed
  num_classes: Optional[int] = None  # default: the dataset's, or max label + 1 for injected data


def parse_suites(text: str) -> tuple[str, ...]:
  """"probe,knn" -> ("probe", "knn"); unknown names raise with the valid list."""
  names = tuple(s.strip() for s in text.split(",") if s.strip())
  unknown = [s for s in names if s not in SUITES]
  if unknown:
    raise ValueError(f"Unknown evaluation suite(s) {unknown}; choose from {SUITES}, e.g. "
                     f"--suite={','.join(DEFAULT_SUITES)}")
  return names


# --------------------------------------------------------------------------------------------
# ManifoldCLR pieces (docs/method.md §2, §3, §8)
# --------------------------------------------------------------------------------------------

def _require_operators(model):
  if model.psi is None:
    raise ValueError(f"The model was trained with method={model.config.method!r} and has no "
                     f"operator dictionary psi; this evaluation needs a manifoldclr checkpoint.")


def _prior_fn(model):
  prior, params = model.networks.prior, model.params["prior"]
  return lambda z: prior.apply({"params": params}, z, jnp.asarray(_LATE_STEP, jnp.int32))


def transport_augment_fn(model, threshold: float = 0.0, clip: Optional[float] = None):
  """The transport augmentation (key, z (n, D)) -> (n, D), a pure JAX function (docs/method.md §8).

  c ~ the learned prior p(c | z) at a late step (fully warmed up), soft-thresholded with λ =
  `threshold` (0 for the semi-supervised experiment: "thresholding disabled"), optionally clipped
  to [−clip, clip] (prior-aug NN: clip = 1); z_aug = T(c) z, all under stop_gradient. Build it
  once per model: the semi-supervised code caches compilations by the function's identity.
  """
  _require_operators(model)
  psi = jnp.asarray(model.psi)
  prior = _prior_fn(model)
  method = model.config.manifold.expm

  def augment(key, z):
    z = jax.lax.stop_gradient(z)
    mu, log_scale = prior(z)
    coeffs = manifold.sample_coefficients(key, mu, log_scale, threshold)
    if clip is not None:
      coeffs = jnp.clip(coeffs, -clip, clip)
    return jax.lax.stop_gradient(manifold.transport(psi, coeffs, z, method=method))

  return augment


def pca_basis(z, num_components: int = 2):
  """(mean (D,), components (num_components, D)) of the centred rows of z: (N, D), float64."""
  z = np.asarray(z, np.float64)
  mean = z.mean(axis=0)
  _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
  return mean, vt[:num_components]


def operator_orbits(model, z, ts: Optional[Sequence[float]] = None, point: int = 0) -> np.ndarray:
  """Orbits exp(t Ψ_m) z_point for every operator m, in the 2-D PCA plane of z.

  Args:
    model: a manifoldclr RestoredModel.
    z: (N, D) features; the PCA is fitted on all rows, the orbit starts at row `point`.
    ts: (T,) values of t (coefficients one_hot(m)·t); default 64 values in [0, 1].

  Returns:
    (M, T, 2) float64, for `figures.plot_operator_orbits`.
  """
  _require_operators(model)
  psi = jnp.asarray(model.psi)
  ts = jnp.linspace(0.0, 1.0, 64) if ts is None else jnp.asarray(ts, jnp.float32)
  num_operators = psi.shape[0]
  coeffs = jnp.eye(num_operators)[:, None, :] * ts[None, :, None]  # (M, T, M)
  start = jnp.asarray(z[point], jnp.float32)
  moved = manifold.transport(psi, coeffs, start, method="pade")  # (M, T, D)
  mean, components = pca_basis(z)
  return (np.asarray(moved, np.float64) - mean) @ components.T


def coefficient_samples(model, z, key=None, threshold: Optional[float] = None) -> np.ndarray:
  """Coefficients c ~ p(c | z) of the fully warmed-up prior: z (N, D) -> (N, M).

  `threshold` defaults to the training λ (config.manifold.threshold), so the zeros in the usage
  plot are the ones the augmentations actually have.
  """
  _require_operators(model)
  key = jax.random.key(0) if key is None else key
  threshold = model.config.manifold.threshold if threshold is None else threshold
  mu, log_scale = _prior_fn(model)(jnp.asarray(z, jnp.float32))
  return np.asarray(manifold.sample_coefficients(key, mu, log_scale, float(threshold)))


def operator_eigenvalues(psi) -> np.ndarray:
  """Eigenvalues of every block of every operator: psi (M, K, b, b) -> (M, K·b) complex128."""
  psi = np.asarray(psi, np.float64)
  num_operators = psi.shape[0]
  return np.linalg.eigvals(psi).reshape(num_operators, -1)


def feature_spectra(model, h) -> dict:
  """Singular values of the centred encoder features h (N, D) and projector outputs g(h) (N, K)."""
  return {"encoder": geometry.singular_values(h),
          "projector": geometry.singular_values(model.project(np.asarray(h, np.float32)))}


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------

def run_suite(model, suites: Sequence[str], key, out_dir: str, data=None,
              options: Optional[SuiteOptions] = None) -> dict:
  """Runs the named evaluations of one model; returns a JSON-serialisable dict.

  Args:
    model: a `checkpoint.RestoredModel` (or `runner.model_from_state(...)`).
    suites: names from SUITES.
    key: PRNG key; every part gets its own fold_in.
    out_dir: figures are written to out_dir/figures/.
    data: image datasets only: optional (train_x, train_y, test_x, test_y), uint8 images
      (N, H, W, 3) and int labels, used instead of loading the TFDS splits.
    options: SuiteOptions overrides.

  Returns:
    {suite: results}; figure paths under results["figures"].
  """
  suites = tuple(suites)
  parse_suites(",".join(suites))
  options = options or SuiteOptions()
  keys = {name: jax.random.fold_in(key, i) for i, name in enumerate(SUITES)}
  fig_dir = os.path.join(out_dir, "figures")
  if model.config.data.name == "spirograph":
    results = _spirograph_suite(model, suites, keys, options)
    h = runner.spirograph_features(model, spirograph_split(model.config.data, "test"), keys["figures"])
  else:
    results, h = _image_suite(model, suites, keys, data, options, fig_dir)
  if "geometry" in suites:
    results["geometry"] = _geometry(model, h[:options.geometry_points], keys["geometry"])
  if "figures" in suites:
    results["figures"] = _figures(model, h, keys["figures"], fig_dir)
  return _jsonable(results)


def _spirograph_suite(model, suites, keys, options) -> dict:
  config = model.config
  results = {}
  if "probe" in suites:
    results["probe"] = runner.evaluate_spirograph(model, config, keys["probe"])
  if "feature_average" in suites:
    copies = _copies(config, options)
    results["feature_average"] = dict(
        copies=copies, **runner.evaluate_spirograph(model, config, keys["feature_average"],
                                                    num_copies=copies))
  for name in ("knn", "cluster", "prior_aug", "semi_supervised"):
    if name in suites:
      results[name] = {"skipped": "Spirograph has regression targets, not class labels."}
  return results


def _copies(config, options) -> int:
  copies = options.feature_average_copies or int(config.eval.feature_average_copies)
  if copies < 1:
    raise ValueError("feature_average needs M >= 1 copies: set --config.eval.feature_average_copies"
                     " or --feature_average_copies.")
  return copies


def _image_suite(model, suites, keys, data, options, fig_dir):
  from mclr_jax.data.datasets import get_dataset_info
  config, ev = model.config, model.config.eval
  if data is None:
    (train_x, train_y), (test_x, test_y) = runner._eval_arrays(  # pylint: disable=protected-access
        config.data.name, config.data.data_dir, ev.max_train_examples, ev.max_test_examples)
    num_classes = get_dataset_info(config.data.name).num_classes
  else:
    train_x, train_y, test_x, test_y = data
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
  num_classes = options.num_classes or num_classes
  train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
  f_train, f_test = runner.image_features(model, train_x), runner.image_features(model, test_x)
  results = {}
  if "probe" in suites:
    results["probe"] = _linear_probe(keys["probe"], f_train, train_y, f_test, test_y, num_classes,
                                     ev, options)
  if "knn" in suites:
    results["knn"] = {"knn_acc": float(knn.knn_accuracy(f_train, train_y, f_test, test_y,
                                                         k=ev.knn_k, num_classes=num_classes))}
  if "cluster" in suites:
    # docs/method.md §8: 10 clusters for every dataset, on up to 5000 evenly spaced test features.
    results["cluster"] = {"cluster_purity": clustering.cluster_purity(
        f_test, test_y, num_clusters=10, num_points=min(5000, len(f_test)))}
  is_manifold = model.psi is not None
  if "prior_aug" in suites:
    if is_manifold:
      augment = transport_augment_fn(model, clip=1.0)  # docs/method.md §8: coefficients clipped to [−1, 1]
      results["prior_aug"] = {"prior_aug_acc": prior_augmentation.prior_augmentation_nn_accuracy(
          keys["prior_aug"], f_train, train_y, augment, num_queries=min(20, len(f_train)))}
    else:
      results["prior_aug"] = {"skipped": f"method={config.method!r} has no operators."}
  if "semi_supervised" in suites:
    results["semi_supervised"] = _semi_supervised(model, keys["semi_supervised"], f_train, train_y,
                                                  f_test, test_y, num_classes, options, fig_dir)
  if "feature_average" in suites:
    copies = _copies(config, options)
    k_train, k_test, k_probe = jax.random.split(keys["feature_average"], 3)
    fa_train = _averaged_image_features(model, train_x, k_train, copies)
    fa_test = _averaged_image_features(model, test_x, k_test, copies)
    results["feature_average"] = dict(copies=copies, **_linear_probe(
        k_probe, fa_train, train_y, fa_test, test_y, num_classes, ev, options))
  return results, f_test


def _linear_probe(key, f_train, train_y, f_test, test_y, num_classes, ev, options) -> dict:
  probe = linear_probe.fit_linear_probe(
      key, f_train, train_y, f_test, test_y, num_classes,
      num_epochs=options.linear_epochs or ev.linear_epochs,
      batch_size=min(ev.batch_size, len(f_train)))
  return {"linear_top1": probe["top1"], "linear_top5": probe["top5"]}


def _semi_supervised(model, key, f_train, train_y, f_test, test_y, num_classes, options,
                     fig_dir) -> dict:
  """docs/method.md §8 paper experiment: transport / mixup / none consistency and the supervised baseline."""
  ev = model.config.eval
  trials = options.semi_supervised_trials or ev.semi_supervised_trials
  seeds = range(int(trials))  # docs/method.md §8: seed = trial index
  common = dict(labels_per_class=options.labels_per_class,
                num_steps=int(options.semi_supervised_steps or ev.semi_supervised_steps),
                hidden_dim=options.semi_supervised_hidden)
  del key  # the trials are seeded by index, as in the paper
  methods = (("transport",) if model.psi is not None else ()) + ("mixup", "none")
  # One transport function for all calls: the compiled trials are cached by its identity.
  augment = transport_augment_fn(model) if model.psi is not None else None
  out = {}
  for method in methods:
    r = semi_supervised.run_semi_supervised(seeds, f_train, train_y, f_test, test_y, num_classes,
                                            augmentation=method, augment_fn=augment, **common)
    out[method] = {"mean": r["mean"], "std": r["std"]}
  r = semi_supervised.run_supervised_baseline(seeds, f_train, train_y, f_test, test_y, num_classes,
                                              **common)
  out["supervised"] = {"mean": r["mean"], "std": r["std"]}
  out["figure"] = figures.plot_semi_supervised(
      os.path.join(fig_dir, "semi_supervised.png"), {m: (v["mean"], v["std"]) for m, v in out.items()})
  return out


def _averaged_image_features(model, images, key, copies: int, batch_size: int = 500) -> np.ndarray:
  """Backbone features averaged over `copies` SimCLR views of each image (docs/method.md §12)."""
  from mclr_jax.data import augment
  from mclr_jax.data.datasets import get_dataset_info
  from mclr_jax.invariance import averaging
  data = model.config.data
  info = get_dataset_info(data.name)
  view_kwargs = dict(out_size=info.image_size, mean=info.mean, std=info.std,
                     jitter_strength=tuple(data.jitter_strength), jitter_prob=data.jitter_prob,
                     grayscale_prob=data.grayscale_prob, crop_scale=tuple(data.crop_scale),
                     crop_ratio=tuple(data.crop_ratio), flip_prob=data.flip_prob)
  backbone = model.networks.backbone
  variables = {"params": model.params["backbone"], "batch_stats": model.batch_stats["backbone"]}

  @jax.jit
  def averaged(k, x):
    return averaging.feature_average(
        lambda v: backbone.apply(variables, v, train=False),
        lambda kk, xx: augment.simclr_augment(kk, xx, **view_kwargs), k, x, copies)

  return np.concatenate([np.asarray(averaged(jax.random.fold_in(key, i), images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def _geometry(model, h, key) -> dict:
  """Cheap geometry report (docs/method.md §14): spectra and projector-Jacobian retention."""
  h = np.asarray(h, np.float32)
  projector = model.networks.projector
  variables = {"params": model.params["projector"], "batch_stats": model.batch_stats["projector"]}
  project_row = lambda row: projector.apply(variables, row[None], train=False)[0]
  jacobians = geometry.projector_jacobians(project_row, h)
  return geometry.geometry_report(h, model.project(h), jacobians=jacobians, key=key)


def _figures(model, h, key, fig_dir) -> dict:
  paths = {"feature_spectra": figures.plot_feature_spectra(
      os.path.join(fig_dir, "feature_spectra.png"), feature_spectra(model, h))}
  if model.psi is not None:
    paths["operator_orbits"] = figures.plot_operator_orbits(
        os.path.join(fig_dir, "operator_orbits.png"), operator_orbits(model, h))
    paths["coefficient_usage"] = figures.plot_coefficient_usage(
        os.path.join(fig_dir, "coefficient_usage.png"), coefficient_samples(model, h, key))
    paths["operator_spectra"] = figures.plot_operator_spectra(
        os.path.join(fig_dir, "operator_spectra.png"), operator_eigenvalues(model.psi))
  return paths


def _jsonable(x):
  """Nested dicts of numpy/JAX values -> plain Python (floats, ints, lists, str)."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  return x


def flatten_scalars(results: dict, prefix: str = "") -> dict:
  """{"probe": {"linear_top1": 0.5}} -> {"probe/linear_top1": 0.5}; numbers only (for metrics.jsonl)."""
  flat = {}
  for k, v in results.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      flat.update(flatten_scalars(v, name + "/"))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      flat[name] = v
  return flat
