"""The invariance paper's recipes as configs (docs/method.md §11.4, §18): the Spirograph `paper`
presets and the CIFAR-10/100 ResNet-50 runs build their full-size train steps (`jax.eval_shape`:
no computation), and the CIFAR-100 recipe trains at tiny size on mocked TFDS data."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import invariance_cifar
from configs import spirograph as spirograph_config
from mclr_jax.train import create
from mclr_jax.train import objective
from mclr_jax.train import optimizer as optimizer_lib
from mclr_jax.train.step import make_train_step
from mclr_jax.train.validate import validate_config
from tests.tiny import read_metrics

# Steps per epoch of the full-size runs: 100k Spirograph draws and 50k CIFAR images at batch 512.
SPIROGRAPH_STEPS, CIFAR_STEPS = 100_000 // 512, 50_000 // 512

FULL_SIZE = [
    ("spirograph:paper", lambda: spirograph_config.get_config("paper"), SPIROGRAPH_STEPS, 512),
    ("spirograph:paper_gp", lambda: spirograph_config.get_config("paper_gp"), SPIROGRAPH_STEPS,
     512),
    ("invariance_cifar:cifar10_gp", lambda: invariance_cifar.get_config("cifar10_gp"),
     CIFAR_STEPS, 2048),
    ("invariance_cifar:cifar100_nogp", lambda: invariance_cifar.get_config("cifar100_nogp"),
     CIFAR_STEPS, 2048),
]


def _abstract_step(config, steps_per_epoch):
  """(initial TrainState, state after one step, metrics), all as ShapeDtypeStructs."""
  total = create.total_train_steps(config, steps_per_epoch)
  networks, state = create.abstract_train_state(config, steps_per_epoch)
  tx, _ = optimizer_lib.make_optimizer(config.optim, steps_per_epoch, total)
  step_fn = make_train_step(networks, config, tx)
  if config.data.name == "spirograph":
    batch = {"theta": jax.ShapeDtypeStruct((config.batch_size, len(config.data.content)),
                                           jnp.float32)}
  else:
    batch = {"image": jax.ShapeDtypeStruct((config.batch_size, 32, 32, 3), jnp.uint8)}
  new_state, metrics = jax.eval_shape(step_fn, state, batch, jax.random.key(0))
  return state, new_state, metrics


@pytest.mark.parametrize("name,make_config,steps_per_epoch,dim", FULL_SIZE,
                         ids=[c[0] for c in FULL_SIZE])
@pytest.mark.slow  # traces the full-size ResNet-50 step of each recipe
def test_full_size_train_step_builds(name, make_config, steps_per_epoch, dim):
  config = make_config()
  validate_config(config)
  assert config.batch_size == 512 and config.optim.lr == pytest.approx(1.5 * 512 / 256)
  assert (config.optim.name, config.optim.schedule) == ("lars", "epoch_ramp_cosine")
  assert objective.feature_dim(config) == dim
  state, new_state, metrics = _abstract_step(config, steps_per_epoch)
  # One step maps the state onto itself, shape for shape and dtype for dtype.
  same = jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, state, new_state)
  assert all(jax.tree.leaves(same))
  assert metrics["loss"].shape == () and ("penalty" in metrics) == (config.invariance.weight > 0)
  # The invariance paper's projector: d → d → 128 without biases, a final BN without parameters.
  proj = state.params["projector"]
  assert proj["hidden"]["kernel"].shape == (dim, dim)
  assert proj["output"]["kernel"].shape == (dim, 128)
  assert "bias" not in proj["hidden"] and "bias" not in proj["output"] and "output_bn" not in proj
  assert state.batch_stats["projector"]["output_bn"]["mean"].shape == (128,)
  # LARS keeps one momentum buffer per parameter; nothing else in its state is that large.
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  opt_floats = sum(x.size for x in jax.tree.leaves(state.opt_state)
                   if jnp.issubdtype(x.dtype, jnp.floating))
  assert opt_floats == num_params


def test_spirograph_paper_presets_are_the_authors_recipe():
  paper, paper_gp = (spirograph_config.get_config(v).to_dict() for v in ("paper", "paper_gp"))
  assert paper["invariance"]["weight"] == 0.0 and paper_gp["invariance"]["weight"] == 0.01
  assert paper_gp["invariance"]["clip"] == 1000.0
  paper_gp["invariance"]["weight"] = 0.0
  assert paper == paper_gp  # the penalty is the only difference
  c = spirograph_config.get_config("paper")
  assert (c.method, c.model.arch, c.model.width, c.model.projection) == (
      "simclr", "resnet18", 64, "invclr")
  assert (c.num_epochs, c.batch_size, c.data.num_train) == (50, 512, 100_000)
  assert (c.optim.weight_decay, c.optim.momentum, c.optim.trust_coefficient) == (1e-6, 0.9, 1e-3)
  assert (c.optim.warmup_epochs, c.optim.min_lr, c.loss.temperature) == (10, 0.0, 0.5)
  # The CPU-sized `gp` preset keeps its AdamW recipe.
  gp = spirograph_config.get_config("gp")
  assert (gp.optim.name, gp.invariance.weight, gp.model.projection) == ("adamw", 0.01, "mlp")


def test_invariance_cifar_variants_differ_only_in_dataset_and_penalty():
  configs = {v: invariance_cifar.get_config(v).to_dict() for v in invariance_cifar.VARIANTS}
  base = configs["cifar10_gp"]
  for variant, config in configs.items():
    dataset, penalty = variant.split("_")
    assert config["data"]["name"] == dataset
    assert config["invariance"]["weight"] == (0.1 if penalty == "gp" else 0.0)
    diff = {k for k in base if base[k] != config[k]}
    assert diff <= {"data", "invariance"}, diff
  assert invariance_cifar.get_config().to_dict() == base
  with pytest.raises(ValueError, match="cifar10_gpp"):
    invariance_cifar.get_config("cifar10_gpp")


@pytest.mark.slow
@pytest.mark.timeout(900)  # compiling the ResNet-50 step takes 2–4 min on 2 busy cores
def test_cifar100_recipe_trains_on_mock_data(tmp_path, fast_compiles):
  """The CIFAR-100 recipe (ResNet-50 bottlenecks, invclr head, LARS, per-epoch schedule) at width 2
  on 16 mocked images: finite, logged, checkpointed. (The penalty's image path is trained by the
  invariance tests; with a ResNet-50 its second-order step takes minutes to compile on a CPU.)"""
  tfds = pytest.importorskip("tensorflow_datasets", reason="the mock-data run reads TFDS splits")
  from mclr_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = invariance_cifar.get_config("cifar100_nogp")
  config.model.width = 2
  config.model.proj_output_dim = 8
  config.batch_size = 16
  config.num_train_steps = 6
  config.log_every_steps = 3
  config.checkpoint_every_steps = 6
  config.data.prefetch = 1
  workdir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=16):
    state = loop.train_and_evaluate(config, workdir)
  assert int(state.step) == 6
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [3, 6]
  for r in records:
    assert np.isfinite(r["loss"]) and r["loss"] > 0
  # One epoch per step (16 images, batch 16): the lr ramps 0.3, 0.6, ... as in the recipe.
  assert records[0]["lr/backbone"] == pytest.approx(3.0 * 3 / 10)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))
