"""On the accelerator: one ManifoldCLR training step, float32 and bf16, against the float32 step on
the host's CPU backend, with the host's own bf16 step as the yardstick of rounding noise
(docs/method.md §1, §2.2).

The step is the real one (`create_train_state` + `make_train_step`, tiny CIFAR-10 `proj` config,
batch 16 of random images) with plain SGD at learning rate 1e4 in place of the config's optimiser,
so the update is -1e4·gradient and dominates the updated parameters, which give back every
gradient to float32 rounding (AdamW's first update is ±lr whatever the gradient's size, which
would hide any error). The same
key drives both devices (JAX's random bits do not depend on the backend), so the augmentations
and Laplace samples agree and any difference is arithmetic.
"""

import contextlib

import jax
import numpy as np
import optax
import pytest

from mclr_jax.train import create
from mclr_jax.train import step as step_lib
from tests.tiny import tiny_image_config

pytestmark = pytest.mark.gpu

LEARNING_RATE = 1e4
# How far a step may be from the host's float32 step, per parameter group's gradient, in units of
# how far the host's own bf16 step is from it (the yardstick; measured on the CPU at this config:
# 36 % for the backbone, 18 % projector, 2.5 % posterior, 2 % Ψ: at width 4 and batch 16 the
# backbone's gradient is that sensitive to rounding). float32 on the accelerator may run
# convolutions and dots in TF32, 3 bits more than bf16, so it must come in under half the
# yardstick; a bf16 step must stay within twice the yardstick, i.e. be no worse than bf16 is.
GRAD_YARDSTICK_FACTOR = {"float32": 0.5, "bfloat16": 2.0}
# Loss terms, relative: bf16 moves them by ~2e-3 on the CPU; TF32 by less.
LOSS_TOLERANCE = {"float32": 2e-3, "bfloat16": 1e-2}
_STEPS = {}


def _config(precision):
  config = tiny_image_config("cifar10", "proj")
  config.half_precision = precision == "bfloat16"
  return config


def _images():
  return np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), np.uint8)


def _one_step(precision, device):
  """(gradients by parameter group as float64 numpy, scalar metrics) of one step on `device`;
  computed once per (precision, device) in this process."""
  if (precision, device) in _STEPS:
    return _STEPS[precision, device]
  config = _config(precision)
  with jax.default_device(device):
    networks, state, _, _ = create.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    tx = optax.sgd(LEARNING_RATE)
    state = jax.device_put(state.replace(opt_state=tx.init(state.params)), device)
    train_step = jax.jit(step_lib.make_train_step(networks, config, tx))
    new_state, metrics = train_step(state, {"image": jax.device_put(_images(), device)},
                                    jax.device_put(jax.random.key(1), device))[:2]
  assert new_state.params["psi"].devices() == {device}
  grads = jax.tree.map(lambda old, new: (np.asarray(old, np.float64) - np.asarray(new, np.float64))
                       / LEARNING_RATE, jax.device_get(state.params),
                       jax.device_get(new_state.params))
  scalars = {k: float(v) for k, v in jax.device_get(metrics).items()
             if np.ndim(v) == 0 and not k.startswith("nonfinite/")}
  _STEPS[precision, device] = grads, scalars
  return grads, scalars


@contextlib.contextmanager
def unoptimised_compiles():
  """XLA optimisations off for what compiles inside: the host references, which would otherwise
  spend most of the numerics part's time in the CPU compiler (the values are the same)."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)


def _host_step(precision, host):
  with unoptimised_compiles():  # the reference's values, not its speed, matter
    return _one_step(precision, host)


def _norm(tree):
  return np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree)))


def _rel_err(tree, ref):
  return _norm(jax.tree.map(lambda a, b: a - b, tree, ref)) / _norm(ref)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_manifoldclr_step_matches_the_cpu_step(precision, accelerator, host, record):
  grads, scalars = _one_step(precision, accelerator)
  ref_grads, ref_scalars = _host_step("float32", host)
  yard_grads, _ = _host_step("bfloat16", host)

  assert set(grads) >= {"backbone", "projector", "psi", "coeff_encoder", "prior"}
  for group in grads:
    ref_norm = _norm(ref_grads[group])
    assert np.isfinite(ref_norm), group
    if ref_norm == 0:  # the prior during its warm-up (docs/method.md §3.2): zero on both sides
      assert group == "prior" and _norm(grads[group]) == 0, group
      continue
    yardstick = _rel_err(yard_grads[group], ref_grads[group])
    assert yardstick > 0, group  # bf16 must round something, or the yardstick measures nothing
    tol = GRAD_YARDSTICK_FACTOR[precision] * yardstick
    err = _rel_err(grads[group], ref_grads[group])
    record(f"step_{precision}_grad_{group}_rel_err", err, tol)
    assert err <= tol, (group, err, yardstick)

  for term in ("loss", "contrastive", "transport", "kl"):
    assert np.isfinite(ref_scalars[term]), term
    err = abs(scalars[term] - ref_scalars[term]) / max(abs(ref_scalars[term]), 1e-6)
    record(f"step_{precision}_{term}_rel_err", err, LOSS_TOLERANCE[precision])
    assert err < LOSS_TOLERANCE[precision], (term, scalars[term], ref_scalars[term])
