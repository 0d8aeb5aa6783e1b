"""The evaluation suite: every downstream number and figure of one model (docs/method.md §8,
§12–§14). The training loop's periodic evaluation and final report (`runner.py`),
`python -m mclr_jax.evaluate` and the experiments all call `run_suite`.

A suite is one function `fn(ev: Evaluation) -> dict` registered with `@suite(name, help)`: adding a
suite is adding one function. `Evaluation` hands every suite the model, the evaluation splits, the
options, a PRNG key of its own and the backbone features, computed once per evaluation (on the
device, by the compiled chunk functions of `model.py`) and shared by all suites. Suites that need
class labels are reported as skipped on Spirograph, whose targets are regression targets.
"""

import dataclasses
import functools
import os
import zlib
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from mclr_jax.data import spirograph
from mclr_jax.evaluate import clustering
from mclr_jax.evaluate import figures
from mclr_jax.evaluate import geometry
from mclr_jax.evaluate import geometry_probe
from mclr_jax.evaluate import identity
from mclr_jax.evaluate import invariance_probe
from mclr_jax.evaluate import knn
from mclr_jax.evaluate import linear_probe
from mclr_jax.evaluate import operators
from mclr_jax.evaluate import prior_augmentation
from mclr_jax.evaluate import regression
from mclr_jax.evaluate import report
from mclr_jax.evaluate import semi_supervised
from mclr_jax.evaluate.model import EvalModel, EvaluationError
from mclr_jax.train import data as data_lib


@dataclasses.dataclass(frozen=True)
class Suite:
  name: str
  fn: Callable[["Evaluation"], dict]
  help: str  # one line, shown by `python -m mclr_jax.evaluate --help`
  needs_labels: bool = False


_REGISTRY: dict[str, Suite] = {}


def suite(name: str, help: str, needs_labels: bool = False):  # pylint: disable=redefined-builtin
  """Registers `fn(ev: Evaluation) -> dict` as the suite `name`."""
  def register(fn):
    _REGISTRY[name] = Suite(name, fn, help, needs_labels)
    return fn
  return register


DEFAULT_SUITES = ("probe", "knn", "cluster", "prior_aug", "figures")


def suite_names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def describe_suites() -> str:
  """One line per suite: its name and what it computes."""
  width = max(len(n) for n in _REGISTRY)
  return "\n".join(f"  {s.name:<{width}}  {s.help}" for s in _REGISTRY.values())


def parse_suites(text) -> tuple[str, ...]:
  """"probe,knn" (or a sequence of names) -> ("probe", "knn"); unknown names raise with the list."""
  names = text.split(",") if isinstance(text, str) else list(text)
  names = tuple(s.strip() for s in names if s.strip())
  unknown = [s for s in names if s not in _REGISTRY]
  if unknown or not names:
    raise EvaluationError(f"Unknown evaluation suite(s) {unknown or names}; choose from "
                          f"{','.join(_REGISTRY)}, e.g. --suite={','.join(DEFAULT_SUITES)}")
  return names


@dataclasses.dataclass
class SuiteOptions:
  """Overrides of config.eval for one evaluation; None means "use the config's value"."""
  linear_epochs: Optional[int] = None
  semi_supervised_trials: Optional[int] = None
  semi_supervised_steps: Optional[int] = None
  semi_supervised_hidden: int = 2048  # docs/method.md §8.5: MLP 512→2048→C
  labels_per_class: int = 5  # docs/method.md §8.5
  feature_average_copies: Optional[int] = None
  geometry_points: int = 256  # held-out inputs of the geometry probe (docs/method.md §14: ~2000)
  geometry_views: int = 32  # augmented views per input (docs/method.md §14: M = 32)
  geometry_tangent_dim: int = 4  # sample-based tangent dimension (images)
  geometry_neighbours: int = 20  # local-PCA neighbourhood (images)
  num_classes: Optional[int] = None  # default: the dataset's, or max label + 1 for injected data
  identity_strengths: tuple = identity.DEFAULT_STRENGTHS  # coefficient multipliers s (§17.1)
  identity_repeats: int = identity.DEFAULT_REPEATS  # draws per strength (authors' notebook: 20)


@functools.lru_cache(maxsize=4)
def _image_split_arrays(name: str, data_dir: Optional[str], max_train: int, max_test: int):
  """((train images, labels), (test images, labels)) of a TFDS dataset, read once per process."""
  from mclr_jax.data.datasets import get_dataset_info  # pylint: disable=g-import-not-at-top
  info = get_dataset_info(name)
  data = ml_collections.ConfigDict({"name": name, "data_dir": data_dir})
  train = data_lib.load_image_split(data, info.probe_train_split)
  test = data_lib.load_image_split(data, info.test_split)
  cut = lambda xy, n: (xy[0][:n], xy[1][:n]) if n > 0 else xy
  return cut(train, max_train), cut(test, max_test)


class Evaluation:
  """One evaluation of one model: its splits, options and keys, and the shared features.

  split(name) -> (raw inputs, targets) for name in ("train", "test"): uint8 images and int32
    labels, or Spirograph content parameters θ (N, n_c) float32 with θ as float64 targets (the
    probe is fitted on the contrastive training θ). config.eval.max_train_examples /
    max_test_examples > 0 keep the first that many rows.
  features(name, num_copies=None) -> (N, D) jax.Array, computed once per (split, copies).
  key(purpose) -> a PRNG key of its own for each suite or purpose.
  """

  def __init__(self, model: EvalModel, key, out_dir: str, data=None,
               options: Optional[SuiteOptions] = None):
    self.model, self.config = model, model.config
    self.out_dir = out_dir
    self.options = options or SuiteOptions()
    self._key, self._data, self._features = key, data, {}

  @property
  def is_spirograph(self) -> bool:
    return self.model.is_spirograph

  def key(self, purpose: str):
    # A hash of the name, not a position: adding a suite leaves every other suite's key unchanged.
    return jax.random.fold_in(self._key, zlib.crc32(purpose.encode()) & 0x7FFFFFFF)

  @functools.cached_property
  def _splits(self):
    config, ev = self.config, self.config.eval
    if self.is_spirograph:
      content = tuple(config.data.content)
      caps = {"train": ev.max_train_examples, "test": ev.max_test_examples}
      out = {}
      for name in ("train", "test"):
        params10 = data_lib.spirograph_split(config.data, name)
        if caps[name] > 0:
          params10 = params10[:caps[name]]
        theta = np.asarray(spirograph.split_params(params10, content)[0], np.float32)
        out[name] = (theta, theta.astype(np.float64))
      return out
    if self._data is not None:
      train_x, train_y, test_x, test_y = self._data
      train, test = (train_x, train_y), (test_x, test_y)
    else:
      train, test = _image_split_arrays(config.data.name, config.data.data_dir,
                                        ev.max_train_examples, ev.max_test_examples)
    return {name: (x, np.asarray(y, np.int32)) for name, (x, y) in (("train", train),
                                                                    ("test", test))}

  def split(self, name: str):
    return self._splits[name]

  def features(self, name: str, num_copies: Optional[int] = None) -> jax.Array:
    if (name, num_copies) not in self._features:
      raw = self.split(name)[0]
      key = jax.random.fold_in(self.key("features"), 0 if name == "train" else 1)
      self._features[name, num_copies] = self.model.features(raw, key, num_copies)
    return self._features[name, num_copies]

  @functools.cached_property
  def num_classes(self) -> int:
    if self.options.num_classes:
      return self.options.num_classes
    if self._data is None:
      from mclr_jax.data.datasets import get_dataset_info  # pylint: disable=g-import-not-at-top
      return get_dataset_info(self.config.data.name).num_classes
    return int(max(np.max(self.split("train")[1]), np.max(self.split("test")[1]))) + 1

  @property
  def feature_average_copies(self) -> int:
    copies = self.options.feature_average_copies or int(self.config.eval.feature_average_copies)
    if copies < 1:
      raise EvaluationError("feature_average needs M >= 1 copies: set "
                            "--config.eval.feature_average_copies or --feature_average_copies.")
    return copies

  def figure(self, name: str) -> str:
    return os.path.join(self.out_dir, "figures", name)


def run_suite(model: EvalModel, suites, key, out_dir: str, data=None,
              options: Optional[SuiteOptions] = None) -> dict:
  """Runs the named suites on one model; returns a JSON-serialisable {suite: results}.

  Args:
    model: an `EvalModel` (`model.restore_model`, `model.model_from_state`, ...).
    suites: names (a sequence, or "probe,knn"); see `describe_suites()`.
    key: PRNG key; every suite gets its own.
    out_dir: figures are written to out_dir/figures/.
    data: image datasets only: optional (train_x, train_y, test_x, test_y), uint8 images
      (N, H, W, 3) and int labels, used instead of the TFDS splits.
    options: SuiteOptions overrides.
  """
  ev = Evaluation(model, key, out_dir, data, options)
  results = {}
  for name in parse_suites(suites):
    entry = _REGISTRY[name]
    if entry.needs_labels and ev.is_spirograph:
      results[name] = {"skipped": "Spirograph has regression targets, not class labels."}
    else:
      results[name] = entry.fn(ev)
  return report.jsonable(results)


# --------------------------------------------------------------------------------------------
# The suites
# --------------------------------------------------------------------------------------------

def _probe(ev: Evaluation, num_copies: Optional[int]) -> dict:
  """The downstream probe on features with `num_copies` views (None: the evaluation input)."""
  (_, train_y), (_, test_y) = ev.split("train"), ev.split("test")
  f_train, f_test = ev.features("train", num_copies), ev.features("test", num_copies)
  if ev.is_spirograph:  # docs/method.md §13.1
    return regression.spirograph_probe(np.asarray(f_train), train_y, np.asarray(f_test), test_y,
                                       names=tuple(ev.config.data.content),
                                       l2=ev.config.eval.probe_l2)
  config = ev.config.eval
  probe = linear_probe.fit_linear_probe(  # docs/method.md §8.1
      ev.key(f"probe/{num_copies}"), f_train, train_y, f_test, test_y, ev.num_classes,
      num_epochs=ev.options.linear_epochs or config.linear_epochs,
      batch_size=min(config.batch_size, len(train_y)))
  return {"linear_top1": probe["top1"], "linear_top5": probe["top5"]}


@suite("probe", "linear probe top-1/top-5 (images); ridge regression of θ, MSE and R² (Spirograph)")
def probe_suite(ev: Evaluation) -> dict:
  return _probe(ev, None)


@suite("knn", "k-NN accuracy (k = config.eval.knn_k, cosine similarity)", needs_labels=True)
def knn_suite(ev: Evaluation) -> dict:
  (_, train_y), (_, test_y) = ev.split("train"), ev.split("test")
  return {"knn_acc": knn.knn_accuracy(ev.features("train"), train_y, ev.features("test"), test_y,
                                      k=ev.config.eval.knn_k, num_classes=ev.num_classes)}


@suite("cluster", "k-means purity, 10 clusters, up to 5000 test features", needs_labels=True)
def cluster_suite(ev: Evaluation) -> dict:
  f_test, test_y = np.asarray(ev.features("test")), ev.split("test")[1]
  # docs/method.md §8.3: 10 clusters for every dataset.
  return {"cluster_purity": clustering.cluster_purity(f_test, test_y, num_clusters=10,
                                                      num_points=min(5000, len(f_test)))}


@suite("prior_aug", "nearest-neighbour label of prior-transported features (ManifoldCLR)",
       needs_labels=True)
def prior_aug_suite(ev: Evaluation) -> dict:
  model = ev.model
  if model.psi is None:
    return {"skipped": f"method={ev.config.method!r} has no operators."}
  f_train, train_y = ev.features("train"), ev.split("train")[1]
  # docs/method.md §8.4, §15.16: the trained λ, coefficients clipped to [−1, 1].
  augment = operators.transport_augment_fn(model, threshold=float(ev.config.manifold.threshold),
                                           clip=1.0)
  return {"prior_aug_acc": prior_augmentation.prior_augmentation_nn_accuracy(
      ev.key("prior_aug"), f_train, train_y, augment, num_queries=min(20, len(train_y)))}


@suite("semi_supervised", "5 labels per class: transport / mixup / pseudo-label / FeatMatch / "
       "supervised MLPs", needs_labels=True)
def semi_supervised_suite(ev: Evaluation) -> dict:
  """docs/method.md §8.5; the trials are seeded by index (seed = trial), as the authors'."""
  config, options = ev.config.eval, ev.options
  seeds = range(int(options.semi_supervised_trials or config.semi_supervised_trials))
  common = dict(labels_per_class=options.labels_per_class,
                num_steps=int(options.semi_supervised_steps or config.semi_supervised_steps),
                hidden_dim=options.semi_supervised_hidden)
  arrays = (ev.features("train"), ev.split("train")[1], ev.features("test"), ev.split("test")[1],
            ev.num_classes)
  model = ev.model
  methods = (("transport",) if model.psi is not None else ()) + ("mixup", "none", "featmatch")
  # One transport function for all calls: the compiled trials are cached by its identity.
  augment = operators.transport_augment_fn(model) if model.psi is not None else None
  out = {}
  for method in methods:
    r = semi_supervised.run_semi_supervised(seeds, *arrays, augmentation=method,
                                            augment_fn=augment, **common)
    out[method] = {"mean": r["mean"], "std": r["std"]}
  r = semi_supervised.run_supervised_baseline(seeds, *arrays, **common)
  out["supervised"] = {"mean": r["mean"], "std": r["std"]}
  out["figure"] = figures.plot_semi_supervised(
      ev.figure("semi_supervised.png"), {m: (v["mean"], v["std"]) for m, v in out.items()})
  return out


@suite("identity", "identity preservation: the clean linear probe on test features moved by the "
       "learned prior, the hyper-prior, norm-matched noise and the posterior, against strength "
       "(ManifoldCLR)", needs_labels=True)
def identity_suite(ev: Evaluation) -> dict:
  model = ev.model  # docs/method.md §17.1
  if model.psi is None:
    return {"skipped": f"method={ev.config.method!r} has no operators."}
  options = ev.options
  (_, train_y), (_, test_y) = ev.split("train"), ev.split("test")
  # The posterior's pair: one random training view of each test input (§12: M = 1).
  return identity.protocol(
      model, (ev.features("train"), train_y), (ev.features("test"), test_y),
      ev.features("test", 1), ev.num_classes, ev.key("identity"),
      strengths=tuple(options.identity_strengths), repeats=options.identity_repeats,
      probe_epochs=options.linear_epochs or ev.config.eval.linear_epochs,
      figure_path=ev.figure("identity_preservation.png"))


@suite("feature_average", "the probe on features averaged over M training views (M = "
       "eval.feature_average_copies)")
def feature_average_suite(ev: Evaluation) -> dict:
  copies = ev.feature_average_copies  # docs/method.md §12
  return dict(copies=copies, **_probe(ev, copies))


@suite("invariance_probe", "L-BFGS linear classifier on a stratified eval.label_proportion of the "
       "labels: untransformed, one view, feature averaging (Foster et al.)", needs_labels=True)
def invariance_probe_suite(ev: Evaluation) -> dict:
  config = ev.config.eval  # docs/method.md §18.5
  return invariance_probe.protocol(
      ev.model, ev.split("train"), ev.split("test"), ev.num_classes, ev.key("invariance_probe"),
      label_proportion=config.label_proportion, l2=config.classifier_l2,
      num_steps=config.lbfgs_steps, copies=ev.feature_average_copies)


@suite("geometry", "projector retention of augmentation/data/random directions, invariance "
       "ratios, spectra")
def geometry_suite(ev: Evaluation) -> dict:
  options = ev.options
  raw = ev.split("test")[0][:options.geometry_points]
  return geometry_probe.probe(ev.model, raw, ev.key("geometry"), num_views=options.geometry_views,
                              tangent_dim=options.geometry_tangent_dim,
                              k_neighbours=options.geometry_neighbours)


@suite("figures", "PNGs: feature spectra; operator orbits, coefficients, eigenvalues (ManifoldCLR)")
def figures_suite(ev: Evaluation) -> dict:
  model, h = ev.model, np.asarray(ev.features("test"))
  spectra = {"encoder": geometry.singular_values(h),
             "projector": geometry.singular_values(model.project(h))}
  paths = {"feature_spectra": figures.plot_feature_spectra(ev.figure("feature_spectra.png"),
                                                           spectra)}
  if model.psi is not None:
    paths["operator_orbits"] = figures.plot_operator_orbits(
        ev.figure("operator_orbits.png"), operators.operator_orbits(model, h))
    paths["coefficient_usage"] = figures.plot_coefficient_usage(
        ev.figure("coefficient_usage.png"),
        operators.coefficient_samples(model, h, ev.key("figures")))
    paths["operator_spectra"] = figures.plot_operator_spectra(
        ev.figure("operator_spectra.png"), operators.operator_eigenvalues(model.psi))
  return paths

