"""Config validation (one error naming the key) and the shipped configs (docs/method.md §5)."""

import importlib
import importlib.util
import os

import pytest

from configs import base
from mclr_jax.train.validate import ConfigError, validate_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "configs")


def _valid():
  return base.get_base_config()


def _set(config, dotted, value):
  *path, last = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  node[last] = value


@pytest.mark.parametrize("key,value,extra", [
    ("data.name", "imagenet", {}),
    ("method", "byol", {}),
    ("model.projection", "bottleneck", {}),
    ("manifold.block_dim", 48, {}),  # 8·64 = 512 is not a multiple of 48
    ("manifold.block_dim", 3, {"model.width": 3}),  # divides 24 but odd, with init="stable"
    ("batch_size", 0, {}),
    ("batch_size", -8, {}),
    ("optim.lr", 0.0, {}),
    ("optim.psi_lr", -1e-3, {}),
    ("optim.coeff_lr", 0.0, {}),
    ("manifold.best_of_j_dtype", "float16", {}),
    ("manifold.best_of_j_dtype", "bfloat16", {"manifold.best_of_j_method": "taylor"}),
    # Every number inside its real domain: NaN and inf pass `x < 0`, and must not pass here.
    ("optim.lr", float("nan"), {}),
    ("optim.lr", float("inf"), {}),
    ("optim.min_lr", 1.0, {}),  # above the peak lr
    ("optim.eps", 0.0, {}),
    ("optim.b1", 1.0, {}),
    ("optim.b2", 1.5, {}),
    ("optim.b2", float("nan"), {}),
    ("loss.temperature", float("inf"), {}),
    ("loss.temperature", 0.0, {}),
    ("data.prefetch", 0, {}),
    ("batch_size", True, {}),  # a bool is not a count
    ("invariance.weight", float("nan"), {}),
    ("eval_every_steps", -2, {}),
    ("seed", -1, {}),
    ("data.flip_prob", 1.5, {}),
    ("data.crop_scale", (0.9, 0.2), {}),
    ("manifold.scale_prior", 0.0, {}),
    ("manifold.num_samples", 0, {}),
])
def test_bad_value_raises_config_error_naming_the_key(key, value, extra):
  config = _valid()
  for k, v in extra.items():
    _set(config, k, v)
  _set(config, key, value)
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    validate_config(config)


def test_odd_block_dim_is_fine_with_gaussian_init():
  config = _valid()
  config.model.width, config.manifold.block_dim, config.manifold.init = 3, 3, "gaussian"
  validate_config(config)


def test_batch_not_divisible_by_devices_names_batch_size():
  config = _valid()
  config.batch_size = 512
  with pytest.raises(ConfigError, match=r"batch_size.*3 devices"):
    validate_config(config, num_devices=3)
  validate_config(config, num_devices=4)


def test_base_config_is_valid():
  validate_config(_valid())


def _load_by_path(name, variant=None):
  """As ml_collections' config_flags does for --config=configs/<name>.py[:variant]."""
  path = os.path.join(CONFIG_DIR, f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


@pytest.mark.parametrize("name,variants", [
    ("cifar10", (None, "proj", "thresh", "noproj", "simclr", "simclr_noproj")),
    ("stl10", (None, "proj", "thresh", "noproj", "simclr")),
    ("tinyimagenet", (None, "proj", "thresh", "noproj", "simclr")),
    ("spirograph", (None, "cpu", "gp", "manifoldclr", "paper")),
])
def test_shipped_configs_load_and_validate(name, variants):
  module = importlib.import_module(f"configs.{name}")
  for variant in variants:
    by_import = module.get_config(variant) if variant else module.get_config()
    by_path = _load_by_path(name, variant)
    assert by_import.to_dict() == by_path.to_dict()
    validate_config(by_import)


def test_unknown_variant_is_rejected():
  from configs import cifar10, spirograph
  with pytest.raises(ValueError, match="tresh"):
    cifar10.get_config("tresh")
  with pytest.raises(ValueError, match="gpu"):
    spirograph.get_config("gpu")


def test_cifar10_default_is_the_thresh_row():
  from configs import cifar10
  c = cifar10.get_config()
  assert c.to_dict() == cifar10.get_config("thresh").to_dict()
  assert (c.data.name, c.method, c.model.projection, c.loss.contrastive) == (
      "cifar10", "manifoldclr", "mlp", "cosine")
  assert c.manifold.dictionary_size == 32
  assert c.manifold.threshold == 0.01
  assert c.manifold.num_samples == 20 and c.manifold.best_of_j_start == 5000
  assert c.loss.kl_weight == 1e-3 and c.loss.kl_warmup == "none"
  assert c.loss.location_l2_weight == 1e-2
  assert c.loss.transport_weight == 10.0
  assert c.optim.lr == 3e-3 and c.optim.psi_weight_decay == 1e-3


def test_stl10_rows():
  from configs import stl10
  proj = stl10.get_config()
  assert proj.to_dict() == stl10.get_config("proj").to_dict()
  assert proj.model.stem == "imagenet64" and proj.optim.lr == 2e-3
  assert proj.manifold.dictionary_size == 64 and proj.manifold.threshold == 0.0
  assert proj.manifold.num_samples == 1
  assert proj.loss.kl_weight == 1e-5 and proj.loss.transport_weight == 10.0
  assert proj.loss.location_l2_weight == 1e-3
  thresh = stl10.get_config("thresh")
  assert thresh.manifold.dictionary_size == 128  # docs/method.md §5 table
  assert thresh.manifold.threshold == 0.01 and thresh.manifold.num_samples == 20
  assert thresh.loss.kl_weight == 1e-3
  simclr = stl10.get_config("simclr")
  assert simclr.method == "simclr" and simclr.optim.lr == 2e-3
  assert simclr.model.projection == "mlp"


def test_tinyimagenet_proj_row():
  from configs import tinyimagenet
  c = tinyimagenet.get_config()
  assert c.manifold.dictionary_size == 128 and c.optim.psi_weight_decay == 1e-4
  assert c.optim.lr == 2e-3 and c.model.stem == "imagenet64"
  assert c.data.name == "tinyimagenet"
  # Ψ weight decay 1e-4 is the proj row's only: the other TIN rows keep 1e-3.
  assert tinyimagenet.get_config("thresh").optim.psi_weight_decay == 1e-3


@pytest.mark.parametrize("name", ["cifar10", "stl10", "tinyimagenet"])
def test_noproj_rows(name):
  c = importlib.import_module(f"configs.{name}").get_config("noproj")
  assert c.method == "manifoldclr" and c.model.projection == "none"
  assert c.loss.contrastive == "mse" and c.loss.z0_negatives
  assert c.loss.transport_weight == 1.0
  assert c.loss.kl_warmup == "exponential" and c.loss.kl_weight == 1e-5
  assert c.loss.location_l2_weight == 0.0
  assert c.manifold.prior_warmup_steps == 5000
  assert c.manifold.dictionary_size == {"cifar10": 16, "stl10": 64, "tinyimagenet": 128}[name]


@pytest.mark.parametrize("name,lr", [("cifar10", 3e-3), ("stl10", 2e-3), ("tinyimagenet", 2e-3)])
def test_simclr_rows(name, lr):
  c = importlib.import_module(f"configs.{name}").get_config("simclr")
  assert c.method == "simclr" and c.optim.lr == lr
  assert c.model.projection == "mlp" and c.model.proj_output_dim == 128
  assert c.loss.contrastive == "cosine"


def test_common_optimiser_settings():
  o = _valid().optim
  assert (o.b1, o.b2, o.eps) == (0.9, 0.999, 1e-8)
  assert (o.weight_decay, o.min_lr, o.warmup_epochs) == (1e-5, 1e-5, 10)
  assert (o.psi_lr, o.psi_min_lr, o.psi_clip) == (1e-3, 1e-6, 0.1)
  assert (o.coeff_lr, o.coeff_weight_decay, o.coeff_min_lr, o.coeff_clip) == (1e-4, 1e-5, 1e-6,
                                                                               1.0)
  assert _valid().batch_size == 512
