"""Evaluation of a trained (or training) model on frozen backbone features.

Image datasets (docs/method.md §8): linear probe top-1/top-5, kNN (k = 5, cosine) and k-means purity on the
probe-train and test splits, preprocessed without augmentation. Spirograph (docs/method.md §13): the
closed-form linear regression probe on the 4 content targets, with and without test-time feature
averaging (docs/method.md §12), for the trained encoder and a randomly initialised one.

`make_periodic_eval` gives the training loop its `eval_fn(state, step) -> dict`; `final_report`
runs once training ends and writes WORKDIR/results.json (Spirograph) or WORKDIR/eval.json.
"""

import functools
import json
import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mclr_jax.data import spirograph
from mclr_jax.evaluate import clustering
from mclr_jax.evaluate import knn
from mclr_jax.evaluate import linear_probe
from mclr_jax.evaluate import regression
from mclr_jax.train import checkpoint
from mclr_jax.train import objective
from mclr_jax.train.data import load_image_split, spirograph_split
from mclr_jax.train.views import spirograph_ranges


def model_from_state(config, state) -> checkpoint.RestoredModel:
  """A RestoredModel of a live TrainState, copied to the first device.

  Evaluation runs on one device: the training mesh's replicated parameters would turn every
  feature extraction into a redundant multi-device program.
  """
  device = jax.devices()[0]
  return checkpoint.RestoredModel(config=config, step=int(jax.device_get(state.step)),
                                  params=jax.device_put(state.params, device),
                                  batch_stats=jax.device_put(state.batch_stats, device),
                                  networks=objective.build_networks(config))


def random_model(config) -> checkpoint.RestoredModel:
  """The same architecture at initialisation (seed + 1): the 'random encoder' baseline."""
  networks = objective.build_networks(config)
  params, batch_stats = objective.init_variables(networks, config,
                                                 jax.random.key(config.seed + 1))
  return checkpoint.RestoredModel(config=config, step=0, params=params, batch_stats=batch_stats,
                                  networks=networks)


# --------------------------------------------------------------------------------------------
# Spirograph
# --------------------------------------------------------------------------------------------

def spirograph_features(model, params10: np.ndarray, key, num_copies: int = 1,
                        batch_size: int = 500) -> np.ndarray:
  """Encoder features (N, D) of Spirograph draws, each pass rendered with a fresh α (docs/method.md §10: there
  is no untransformed input); num_copies > 1 averages the features over that many α draws (FA)."""
  data = model.config.data
  content = tuple(data.content)
  ranges = spirograph_ranges(data)
  theta, _ = spirograph.split_params(jnp.asarray(params10), content)
  total = 0.0
  for m in range(num_copies):
    alpha = spirograph.sample_nuisance(jax.random.fold_in(key, m), (len(params10),), ranges,
                                       content)
    images = spirograph.render(spirograph.merge_params(theta, alpha, content),
                               normalization=data.normalization)
    total = total + model.encode(np.asarray(images), batch_size)
  return total / num_copies


def spirograph_targets(config, params10):
  """The regression targets: the content parameters, raw (docs/method.md §13)."""
  theta, _ = spirograph.split_params(jnp.asarray(params10), tuple(config.data.content))
  return np.asarray(theta, np.float64)


def evaluate_spirograph(model, config, key, num_copies: int = 1, splits=None) -> dict:
  """Linear-regression probe: fit on probe-train features, report test MSE/R² per target."""
  train10, test10 = splits or (_spirograph_probe_train(config), spirograph_split(config.data, "test"))
  k_train, k_test = jax.random.split(key)
  train_x = spirograph_features(model, train10, k_train, num_copies)
  test_x = spirograph_features(model, test10, k_test, num_copies)
  return regression.spirograph_probe(train_x, spirograph_targets(config, train10), test_x,
                                     spirograph_targets(config, test10),
                                     names=tuple(config.data.content), l2=config.eval.probe_l2)


def _spirograph_probe_train(config):
  """The probe is fitted on the contrastive training θ (docs/method.md §10), capped for quick evaluation."""
  train10 = spirograph_split(config.data, "train")
  cap = config.eval.max_train_examples
  return train10[:cap] if cap > 0 else train10


# --------------------------------------------------------------------------------------------
# Image datasets
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _eval_arrays(name: str, data_dir: Optional[str], max_train: int, max_test: int):
  from mclr_jax.data.datasets import get_dataset_info
  info = get_dataset_info(name)
  data = ml_collections.ConfigDict({"name": name, "data_dir": data_dir})
  train = load_image_split(data, info.probe_train_split)
  test = load_image_split(data, info.test_split)
  cut = lambda xy, n: (xy[0][:n], xy[1][:n]) if n > 0 else xy
  return cut(train, max_train), cut(test, max_test)


def image_features(model, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Backbone features (N, D) of uint8 images, with the dataset's eval preprocessing (docs/method.md §7)."""
  from mclr_jax.data import augment
  from mclr_jax.data.datasets import get_dataset_info
  info = get_dataset_info(model.config.data.name)
  prep = jax.jit(lambda x: augment.eval_preprocess(x, info))
  chunks = [model.encode(np.asarray(prep(jnp.asarray(images[i:i + batch_size]))), batch_size)
            for i in range(0, len(images), batch_size)]
  return np.concatenate(chunks)


def evaluate_images(model, config, key, linear_epochs: Optional[int] = None) -> dict:
  """Linear probe (top-1/top-5), kNN and clustering purity on frozen features (docs/method.md §8)."""
  from mclr_jax.data.datasets import get_dataset_info
  ev = config.eval
  (train_x, train_y), (test_x, test_y) = _eval_arrays(
      config.data.name, config.data.data_dir, ev.max_train_examples, ev.max_test_examples)
  num_classes = get_dataset_info(config.data.name).num_classes
  f_train, f_test = image_features(model, train_x), image_features(model, test_x)
  probe = linear_probe.fit_linear_probe(
      key, f_train, train_y, f_test, test_y, num_classes,
      num_epochs=linear_epochs or ev.linear_epochs, batch_size=min(ev.batch_size, len(f_train)))
  return {
      "linear_top1": float(probe["top1"]), "linear_top5": float(probe["top5"]),
      "knn_acc": float(knn.knn_accuracy(f_train, train_y, f_test, test_y, k=ev.knn_k,
                                        num_classes=num_classes)),
      "cluster_purity": float(clustering.cluster_purity(
          f_test, test_y, num_clusters=10, num_points=min(5000, len(f_test)))),
  }


# --------------------------------------------------------------------------------------------
# Hooks for the training program
# --------------------------------------------------------------------------------------------

def make_periodic_eval(config, workdir: str):
  """`eval_fn(state, step) -> dict` for the training loop (chief process only computes)."""
  del workdir

  def eval_fn(state, step):
    if jax.process_index() != 0:
      return {}
    model = model_from_state(config, state)
    key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
    if config.data.name == "spirograph":
      results = evaluate_spirograph(model, config, key)
      return {f"probe/{k}": v for k, v in results.items()}
    return {f"probe/{k}": v for k, v in evaluate_images(model, config, key).items()}

  return eval_fn


def spirograph_table(config, state) -> dict:
  """Trained vs random encoder, without and with feature averaging (M = eval.feature_average_copies)."""
  copies = max(int(config.eval.feature_average_copies), 1)
  splits = (_spirograph_probe_train(config), spirograph_split(config.data, "test"))
  models = {"trained": model_from_state(config, state), "random": random_model(config)}
  table = {}
  for name, model in models.items():
    for m in sorted({1, copies}):
      key = jax.random.key(config.seed + 3)
      label = f"{name}/fa{m}" if m > 1 else f"{name}/single"
      table[label] = evaluate_spirograph(model, config, key, num_copies=m, splits=splits)
  return table


def format_spirograph_table(table: dict, names) -> str:
  header = f"{'encoder':<10}{'features':<12}{'MSE mean':>10}{'R2 mean':>9}" + "".join(
      f"{'MSE ' + n:>12}" for n in names)
  lines = [header, "-" * len(header)]
  for label, r in table.items():
    encoder, features = label.split("/")
    features = "single view" if features == "single" else f"FA, M={features[2:]}"
    lines.append(f"{encoder:<10}{features:<12}{r['mse_mean']:>10.4f}{r['r2_mean']:>9.3f}" + "".join(
        f"{r['mse/' + n]:>12.4f}" for n in names))
  return "\n".join(lines)


def final_report(config, workdir: str, state) -> dict:
  """Runs the end-of-training evaluation, prints a table and writes it as JSON in the workdir."""
  if jax.process_index() != 0:
    return {}
  if config.data.name == "spirograph":
    table = spirograph_table(config, state)
    text = format_spirograph_table(table, tuple(config.data.content))
    path = os.path.join(workdir, "results.json")
  else:
    table = evaluate_images(model_from_state(config, state), config, jax.random.key(config.seed))
    text = "\n".join(f"{k:<16}{v:.4f}" for k, v in table.items())
    path = os.path.join(workdir, "eval.json")
  with open(path, "w") as f:
    json.dump({"step": int(jax.device_get(state.step)), "results": table}, f, indent=2)
  print(f"\nDownstream evaluation at step {int(jax.device_get(state.step))} "
        f"({config.data.name}, {config.method}):\n{text}\nWritten to {path}", flush=True)
  logging.info("Wrote %s", path)
  return table
