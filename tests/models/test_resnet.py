"""The ResNet backbone (docs/method.md §6): sizes by eval_shape, BatchNorm on a tiny model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mclr_jax.models import Bottleneck, ResNet, ResNet18, ResNet50
from mclr_jax.models import resnet as resnet_lib

# Tiny model for real forward passes: width 4 on 8×8 images, batch 4 (one compile per mode).
WIDTH, SIZE, BATCH = 4, 8, 4


def _init_key(seed):
  # The "rbg" generator compiles in a fraction of threefry's time on CPU (≈3 s vs ≈15 s for this
  # init); the initial values' distribution, which is all the tests check, is the same.
  return jax.random.key(seed, impl="rbg")


def _count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _resnet18_counts(width, stem_kernel, num_classes=0):
  """(trainable params, BN channels) of torchvision's resnet18, counted layer by layer."""
  conv = lambda k, c_in, c_out: k * k * c_in * c_out
  params = conv(stem_kernel, 3, width) + 2 * width  # stem conv + BN (γ, β)
  bn_channels = width
  c_in = width
  for stage in range(4):
    c_out = width * 2 ** stage
    for block in range(2):
      params += conv(3, c_in, c_out) + conv(3, c_out, c_out) + 2 * (2 * c_out)
      bn_channels += 2 * c_out
      if stage > 0 and block == 0:  # stride-2 projection shortcut: 1×1 conv + BN
        params += conv(1, c_in, c_out) + 2 * c_out
        bn_channels += c_out
      c_in = c_out
  if num_classes:
    params += c_in * num_classes + num_classes
  return params, bn_channels


def test_hand_count_reproduces_torchvision_resnet18():
  # torchvision.models.resnet18(): 11,689,512 parameters (7×7 conv1 of 9,408, fc 512·1000 + 1000).
  assert _resnet18_counts(64, stem_kernel=7, num_classes=1000)[0] == 11_689_512


@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet64", 64)])
def test_full_size_parameter_count(stem, size):
  variables = jax.eval_shape(lambda: ResNet18(stem=stem).init(
      jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False))
  # docs/method.md §6: fc removed and conv1 swapped for a 3×3 conv; the max-pool has no parameters.
  want = 11_689_512 - (512 * 1000 + 1000) - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
  assert want == _resnet18_counts(64, stem_kernel=3)[0] == 11_168_832
  assert _count(variables["params"]) == want
  # BatchNorm running mean and variance: two per BN channel (4,800 channels in ResNet-18).
  assert _count(variables["batch_stats"]) == 2 * _resnet18_counts(64, stem_kernel=3)[1] == 9_600
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("stem,size,after_stem", [("cifar", 32, 32), ("imagenet64", 64, 32)])
def test_full_size_shapes(stem, size, after_stem):
  model = ResNet18(stem=stem)
  x = jnp.zeros((2, size, size, 3))

  def forward():
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=False, capture_intermediates=True,
                       mutable=["intermediates"])

  out, state = jax.eval_shape(forward)
  assert out.shape == (2, 512) and out.dtype == jnp.float32
  inter = state["intermediates"]
  # Stage 1 keeps the resolution, so its output shows the spatial size right after the stem.
  assert inter["stage1_block0"]["__call__"][0].shape == (2, after_stem, after_stem, 64)
  assert inter["stage4_block1"]["__call__"][0].shape == (2, after_stem // 8, after_stem // 8, 512)


def test_rejects_unknown_stem():
  with pytest.raises(ValueError, match="stem='imagenet'"):
    jax.eval_shape(lambda: ResNet18(stem="imagenet").init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))


@pytest.fixture(scope="module")
def tiny():
  """Tiny ResNet-18, its variables and jitted train/eval forwards shared by the tests below."""
  model = ResNet18(width=WIDTH)
  x = jax.random.normal(jax.random.key(1), (BATCH, SIZE, SIZE, 3))
  variables = jax.jit(model.init, static_argnames="train")(_init_key(2), x, train=False)
  train_fn = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  eval_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return model, variables, train_fn, eval_fn


def _conv3x3_numpy(x, kernel):
  """Stride-1, pad-1 cross-correlation in float64; x: (B, H, W, C), kernel: (3, 3, C, O)."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1] - 2, x.shape[2] - 2
  kernel = np.asarray(kernel, np.float64)
  return sum(np.einsum("bhwc,co->bhwo", x[:, i:i + h, j:j + w], kernel[i, j])
             for i in range(3) for j in range(3))


def test_train_mode_updates_running_stats_with_momentum_0_9(tiny):
  _, variables, train_fn, _ = tiny
  rng = np.random.default_rng(0)
  # Start from non-trivial running statistics so the old value's weight is visible.
  stats = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype),
                                 variables["batch_stats"])
  x = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
  _, updates = train_fn({"params": variables["params"], "batch_stats": stats}, x)
  stem_out = _conv3x3_numpy(x, variables["params"]["stem_conv"]["kernel"])
  batch_mean = stem_out.mean(axis=(0, 1, 2))
  batch_var = stem_out.var(axis=(0, 1, 2))  # biased, as Flax (see resnet.py docstring)
  old = stats["stem_bn"]
  new = updates["batch_stats"]["stem_bn"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * batch_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * batch_var, rtol=1e-4, atol=1e-5)
  # Every BN layer was updated, not only the stem's.
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), stats, updates["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))


def test_eval_mode_features_do_not_depend_on_batch_composition(tiny):
  _, variables, train_fn, eval_fn = tiny
  x = jax.random.normal(jax.random.key(3), (2 * BATCH, SIZE, SIZE, 3))
  # Non-trivial running statistics from one train-mode step.
  _, updates = train_fn(variables, x[:BATCH])
  variables = {"params": variables["params"], **updates}
  first = x[:BATCH]
  # Example 0 and 2 again, at other positions, among other examples.
  second = jnp.stack([x[5], x[0], x[6], x[2]])
  f1, f2 = eval_fn(variables, first), eval_fn(variables, second)
  assert f1.shape == (BATCH, 8 * WIDTH) and f1.dtype == jnp.float32
  np.testing.assert_allclose(f2[1], f1[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f2[3], f1[2], rtol=1e-5, atol=1e-6)
  # Contrast: train mode normalises with batch statistics, so the same example's features change.
  t1, _ = train_fn(variables, first)
  t2, _ = train_fn(variables, second)
  assert np.max(np.abs(np.asarray(t2[1]) - np.asarray(t1[0]))) > 1e-3


def test_bfloat16_model_gives_float32_features_close_to_float32(tiny):
  _, variables, _, eval_fn = tiny
  x = jax.random.normal(jax.random.key(4), (BATCH, SIZE, SIZE, 3))
  bf16 = ResNet18(width=WIDTH, dtype=jnp.bfloat16)
  got = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
  want = eval_fn(variables, x)
  assert got.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(got) - np.asarray(want)) / np.linalg.norm(np.asarray(want))
  assert rel < 3e-2, rel
  # Parameter and statistics dtypes do not follow the compute dtype.
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), x, train=False))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))


def test_initialisation_statistics(tiny):
  _, variables, _, _ = tiny
  params = variables["params"]
  # The fresh stem conv keeps PyTorch's default U(±1/sqrt(fan_in)), fan_in = 3·3·3 (§6).
  stem = np.asarray(params["stem_conv"]["kernel"])
  assert np.max(np.abs(stem)) <= 1 / math.sqrt(27)
  big = np.asarray(resnet_lib.stem_kernel(_init_key(5), (3, 3, 3, 4096)))
  assert np.max(np.abs(big)) <= 1 / math.sqrt(27)
  np.testing.assert_allclose(big.var(), 1 / (3 * 27), rtol=0.03)
  # Other convs: torchvision's kaiming normal, fan_out = 3·3·C_out, std sqrt(2 / fan_out).
  c = 8 * WIDTH
  stage4 = np.concatenate([np.ravel(params["stage4_block0"]["conv2"]["kernel"]),
                           np.ravel(params["stage4_block1"]["conv1"]["kernel"]),
                           np.ravel(params["stage4_block1"]["conv2"]["kernel"])])
  np.testing.assert_allclose(stage4.var(), 2 / (9 * c), rtol=0.05)
  assert abs(stage4.mean()) < 4 * math.sqrt(2 / (9 * c) / stage4.size)
  # BN γ = 1, β = 0 everywhere, including each block's last BN (no zero-init residual).
  flat = traverse_util.flatten_dict(params, sep="/")
  scales = [k for k in flat if k.endswith("scale")]
  assert len(scales) == 20  # 1 stem + 16 in blocks + 3 shortcuts
  for key in scales:
    np.testing.assert_array_equal(flat[key], 1.0, err_msg=key)
    np.testing.assert_array_equal(flat[key[:-len("scale")] + "bias"], 0.0, err_msg=key)


def test_generic_stage_sizes_output_width():
  model = ResNet(stage_sizes=(1, 1), width=4)
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((3, 8, 8, 3)), train=False)[0])
  assert out.shape == (3, 8)


# --------------------------------------------------------------------------------------------
# ResNet-50 (docs/method.md §18.3): torchvision's Bottleneck layout with the CIFAR stem
# --------------------------------------------------------------------------------------------

def _resnet50_counts(width, stem_kernel, num_classes=0):
  """(trainable params, BN channels) of torchvision's resnet50, counted layer by layer."""
  conv = lambda k, c_in, c_out: k * k * c_in * c_out
  params, bn_channels, c_in = conv(stem_kernel, 3, width) + 2 * width, width, width
  for stage, blocks in enumerate((3, 4, 6, 3)):
    mid = width * 2 ** stage
    c_out = 4 * mid
    for block in range(blocks):
      params += conv(1, c_in, mid) + conv(3, mid, mid) + conv(1, mid, c_out)
      params += 2 * (mid + mid + c_out)
      bn_channels += mid + mid + c_out
      if block == 0:  # the first block of every stage changes the width: projection shortcut
        params += conv(1, c_in, c_out) + 2 * c_out
        bn_channels += c_out
      c_in = c_out
  if num_classes:
    params += c_in * num_classes + num_classes
  return params, bn_channels


def test_hand_count_reproduces_torchvision_resnet50():
  # torchvision.models.resnet50(): 25,557,032 parameters (7×7 conv1, fc 2048·1000 + 1000).
  assert _resnet50_counts(64, stem_kernel=7, num_classes=1000)[0] == 25_557_032


def test_resnet50_full_size_parameters_and_shapes():
  model = ResNet50(stem="cifar")
  x = jnp.zeros((2, 32, 32, 3))

  def forward():
    variables = model.init(jax.random.key(0), x, train=False)
    out, state = model.apply(variables, x, train=False, capture_intermediates=True,
                             mutable=["intermediates"])
    return variables, out, state

  variables, out, state = jax.eval_shape(forward)
  want_params, bn_channels = _resnet50_counts(64, stem_kernel=3)
  assert want_params == 25_557_032 - (2048 * 1000 + 1000) - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
  assert _count(variables["params"]) == want_params == 23_500_352
  assert _count(variables["batch_stats"]) == 2 * bn_channels
  assert out.shape == (2, 2048) and out.dtype == jnp.float32 and model.feature_dim == 2048
  inter = state["intermediates"]
  # CIFAR stem: 32 px through stage 1, then halved by each later stage (stride on the 3×3 conv).
  for stage, (blocks, side) in enumerate(zip((3, 4, 6, 3), (32, 16, 8, 4))):
    shape = inter[f"stage{stage + 1}_block{blocks - 1}"]["__call__"][0].shape
    assert shape == (2, side, side, 256 * 2 ** stage), (stage, shape)
  stride_conv = variables["params"]["stage2_block0"]
  assert stride_conv["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert stride_conv["shortcut_conv"]["kernel"].shape == (1, 1, 256, 512)


def _conv_nhwc(x, kernel, stride, pad):
  """float64 cross-correlation (B, H, W, C) ⊛ (k, k, C, O) with symmetric zero padding."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = kernel.shape[0]
  windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # B,H',W',C,k,k
  windows = windows[:, ::stride, ::stride]
  return np.einsum("bhwcij,ijco->bhwo", windows, kernel)


def _bn_train(y, scale, bias):
  mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
  return (y - mean) / np.sqrt(var + 1e-5) * scale + bias


def test_bottleneck_train_forward_matches_float64_reference():
  """One stride-2 Bottleneck with batch-statistics BN against a numpy float64 reference: the stride
  on the 3×3 conv, the 4× expansion, the projection shortcut and the final ReLU after the sum."""
  block = Bottleneck(features=4, strides=2)
  x = np.random.default_rng(0).normal(size=(3, 6, 6, 8)).astype(np.float32)
  variables = jax.jit(block.init, static_argnames="train")(_init_key(5), x, train=False)
  # Non-trivial BN affine parameters, so that a skipped or misplaced BN shows.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p, variables["params"])
  for name in ("bn1", "bn2", "bn3", "shortcut_bn"):
    n = params[name]["scale"].shape[0]
    params[name] = {"scale": rng.uniform(0.5, 1.5, n).astype(np.float32),
                    "bias": rng.normal(size=n).astype(np.float32)}
  out, _ = jax.jit(lambda v, x: block.apply(v, x, train=True, mutable=["batch_stats"]))(
      {"params": params, "batch_stats": variables["batch_stats"]}, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xd = x.astype(np.float64)
  y = np.maximum(_bn_train(_conv_nhwc(xd, p["conv1"]["kernel"], 1, 0), **p["bn1"]), 0)
  y = np.maximum(_bn_train(_conv_nhwc(y, p["conv2"]["kernel"], 2, 1), **p["bn2"]), 0)
  y = _bn_train(_conv_nhwc(y, p["conv3"]["kernel"], 1, 0), **p["bn3"])
  shortcut = _bn_train(_conv_nhwc(xd, p["shortcut_conv"]["kernel"], 2, 0), **p["shortcut_bn"])
  want = np.maximum(y + shortcut, 0)
  assert out.shape == (3, 3, 3, 16)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_architecture_table_and_feature_dim():
  for arch, per_width in (("resnet18", 8), ("resnet50", 32)):
    model = resnet_lib.backbone(arch, width=WIDTH)
    out = jax.eval_shape(lambda m=model: m.init_with_output(
        jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3)), train=False)[0])
    assert out.shape == (2, per_width * WIDTH) and model.feature_dim == per_width * WIDTH
  with pytest.raises(ValueError, match="resnet34"):
    resnet_lib.backbone("resnet34")
