"""CIFAR-10 / CIFAR-100 as the invariance paper (Foster et al. 2021) ran them (docs/method.md §11.4,
§18): SimCLR on a ResNet-50 with the CIFAR stem, with or without the gradient penalty.

  python -m mclr_jax.main --config=configs/invariance_cifar.py:cifar10_gp --workdir=runs/c10_gp
  python -m mclr_jax.evaluate --workdir=runs/c10_gp --suite=invariance_probe

Variants (`--config=configs/invariance_cifar.py:<variant>`, default cifar10_gp):
  cifar10_gp     CIFAR-10, gradient penalty λ = 0.1 over the four colour-jitter factors, clip U = 1
  cifar10_nogp   CIFAR-10, λ = 0 (the SimCLR baseline of the same recipe)
  cifar100_gp    CIFAR-100, λ = 0.1, U = 1
  cifar100_nogp  CIFAR-100, λ = 0

The recipe: batch 512, 1000 epochs (97 steps each, 97,000 steps); SGD with momentum 0.9 and weight
decay 1e-6 in optax's LARS (trust coefficient 1e-3), lr = 1.5 · batch / 256 = 3.0 on the per-epoch
schedule (a linear 10-epoch ramp, then cosine to 0); the projector Linear(2048→2048, no bias) → BN
→ ReLU → Linear(2048→128, no bias) → BN without affine parameters; NT-Xent at τ = 0.5. Views:
random resized crop (scale 0.08–1) and flip, then colour jitter of strength 0.5 (brightness,
contrast and saturation factors in [0.6, 1.4], hue in [−0.1, 0.1]) with probability 0.8 and
grayscale with probability 0.2. The authors trained on 8 GPUs.

Evaluation (`invariance_probe` suite, docs/method.md §18.5): a linear classifier fitted by
full-batch L-BFGS (500 steps, mean cross-entropy + 1e-5·‖W‖²) on a stratified half of the training
labels, scored on the full test set with untransformed inputs, with one transformed view, and with
feature averaging over M = 100 views.

Cost: 97,000 steps of a ResNet-50 on 2 × 512 views of 32 px; with the penalty about 2–3× the step
time of the baseline (§11.5). GPU time to be measured (experiments/reproduce.py
--table=invariance_cifar prints its estimate).
"""

from configs import base

VARIANTS = ("cifar10_gp", "cifar10_nogp", "cifar100_gp", "cifar100_nogp")


def get_config(variant: str = "cifar10_gp"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown invariance_cifar variant {variant!r}; choose one of {VARIANTS}, "
                     f"e.g. --config=configs/invariance_cifar.py:cifar10_nogp")
  dataset, penalty = variant.split("_")
  config = base.get_base_config()
  config.method = "simclr"
  config.data.name = dataset
  config.batch_size = 512
  config.num_epochs = 1000
  config.checkpoint_every_steps = 970  # every 10 epochs
  config.eval_every_steps = 0  # evaluate the finished encoder with the invariance_probe suite

  # The authors' views (torchvision defaults for the crop, colour distortion of strength s = 0.5).
  config.data.crop_scale = (0.08, 1.0)
  config.data.crop_ratio = (3 / 4, 4 / 3)
  config.data.flip_prob = 0.5
  config.data.jitter_strength = (0.4, 0.4, 0.4, 0.1)  # 0.8·s, 0.8·s, 0.8·s, 0.2·s with s = 0.5
  config.data.jitter_prob = 0.8
  config.data.grayscale_prob = 0.2

  config.model.arch = "resnet50"  # 2048-d features
  config.model.width = 64
  config.model.stem = "cifar"
  config.model.projection = "invclr"
  config.model.proj_output_dim = 128
  config.loss.temperature = 0.5

  base.apply_lars_recipe(config)

  config.invariance.weight = 0.1 if penalty == "gp" else 0.0  # λ over the colour-jitter factors
  config.invariance.clip = 1.0  # U
  config.invariance.num_alpha_samples = 100
  config.invariance.normalize = True

  config.eval.label_proportion = 0.5  # stratified share of the probe-train labels
  config.eval.feature_average_copies = 100  # M
  config.eval.classifier_l2 = 1e-5  # w of mean CE + w·‖W‖² (bias unpenalised)
  config.eval.lbfgs_steps = 500
  return config
