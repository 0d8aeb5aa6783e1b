"""The shared ManifoldCLR / SimCLR recipe (docs/method.md §5) and its variants, as one ConfigDict.

Dataset configs (`cifar10.py`, `stl10.py`, `tinyimagenet.py`, `spirograph.py`) import this and
override what their row of the docs/method.md §5 table changes. Choose a variant with a
config-string argument:

  python -m mclr_jax.main --config=configs/stl10.py:simclr --workdir=/tmp/stl10_simclr

Variants (docs/method.md §5 table rows):
  proj     ManifoldCLR with the MLP projection head (`transop_vi_proj_*`).
  thresh   ManifoldCLR + projection head + soft threshold λ = 0.01 and best-of-J (J = 20) sampling
           (`transop_vi-thresh_proj_*`).
  noproj   ManifoldCLR without projection head: MSE-similarity InfoNCE on backbone features with z0
           as extra negatives (`transop_vi_*`).
  simclr   the SimCLR baseline (`simclr_*`); `simclr_noproj` is SimCLR without projection head.
Variants and baselines beyond the table (docs/method.md §17), each from the authors' public configs:
  direct   ManifoldDirectCLR: `noproj` with Ψ (M, 1, 64, 64) and the coefficient networks on the
           first 64 backbone dimensions, which are also the contrastive embedding (projection
           "direct"); MSE InfoNCE with z0 negatives (`transop_vi_*` with `enable_direct`).
  nn       `proj` whose positives are nearest neighbours from a support queue of the last 65,536
           embeddings, location L2 off (`transop_vi_nn_proj_tin`; the queue size is the authors'
           `nnclr_tinyimagenet` value, which their ManifoldCLR file does not override).
  nnclr    the NNCLR baseline: `simclr` with the same support queue, 65,536 rows
           (`nnclr_tinyimagenet`; Dwibedi et al. 2021 use 98,304 and a prediction head, which the
           authors' baseline does not have).
  mixup    SimCLR without projection head whose view 0 is mixed with its positive in feature
           space, λ ~ U(0, 1) per sample, MSE InfoNCE with z0 negatives (`simclr_*_mixup`).
  gaussaug the same with Gaussian feature noise of per-sample variance ‖z0 − z1‖
           (`simclr_*_gaussaug`). `loss.feature_aug_strength` scales either augmentation.
Any single value can then be overridden, e.g. `--config.batch_size=256 --config.model.width=16`.
"""

import ml_collections

METHODS = ("simclr", "manifoldclr")
VARIANTS = ("proj", "thresh", "noproj", "simclr", "simclr_noproj", "direct", "nn", "nnclr", "mixup",
            "gaussaug")
# The support queue of the `nn` and `nnclr` variants (the authors' `nnclr_tinyimagenet`).
NN_QUEUE_SIZE = 65536


def get_base_config() -> ml_collections.ConfigDict:
  """ManifoldCLR with projection head on CIFAR-10 (`transop_vi_proj_cifar10`), the authors' defaults."""
  config = ml_collections.ConfigDict()
  config.method = "manifoldclr"  # "simclr" | "manifoldclr"
  config.seed = 0
  config.batch_size = 512  # global batch over all devices and hosts (drop_last)
  config.num_epochs = 1000
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3  # the last N checkpoints are kept
  # A latest checkpoint that fails to restore is moved aside (checkpoints/<step>.corrupt-<time>) and
  # the run resumes from the newest one that restores; True refuses to start instead.
  config.strict_checkpoints = False
  config.eval_every_steps = -1  # -1: every `eval.every_epochs` epochs and at the end; 0: never
  # bf16 compute for backbone and heads; parameters, optimiser state, losses, expm and KL stay float32.
  # None ("auto"): bf16 on GPU/TPU, float32 on CPU; True/False force it (--config.half_precision=False).
  config.half_precision = ml_collections.config_dict.placeholder(bool)

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"  # cifar10 | stl10 | tinyimagenet | spirograph
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir (None: default)
  config.data.prefetch = 2  # batches moved to the device ahead of the step
  # SimCLR augmentations (docs/method.md §7), identical for every image dataset.
  config.data.jitter_strength = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
  config.data.jitter_prob = 0.8
  config.data.grayscale_prob = 0.1
  config.data.crop_scale = (0.2, 1.0)
  config.data.crop_ratio = (3 / 4, 4 / 3)
  config.data.flip_prob = 0.5

  config.model = ml_collections.ConfigDict()
  config.model.arch = "resnet18"  # "resnet18" (8·width features) | "resnet50" (32·width)
  config.model.width = 64  # ResNet base channel count: ResNet-18 features have 8 * width dims (512)
  config.model.stem = "cifar"  # "cifar": 3x3 s1, no max-pool; "imagenet64": 3x3 s1 + max-pool
  config.model.projection = "mlp"  # mlp | linear | none | direct | invclr (docs/method.md §18.2)
  config.model.proj_hidden_dim = 1024
  config.model.proj_output_dim = 128

  config.manifold = ml_collections.ConfigDict()
  config.manifold.dictionary_size = 16  # M
  config.manifold.block_dim = 64  # b; K = feature_dim / b blocks share one coefficient vector
  config.manifold.init = "stable"  # "stable" (rotation generators, docs/method.md §2) | "gaussian"
  config.manifold.real_range = 1e-4
  config.manifold.imag_range = 6.0
  config.manifold.expm = "taylor"  # "taylor" (scaling & squaring, fixed degree) | "pade" (jax.scipy)
  config.manifold.threshold = 0.0  # λ of the soft threshold (0: plain Laplace sampling)
  config.manifold.num_samples = 1  # J of best-of-J sampling (1: off)
  config.manifold.best_of_j_start = 5000  # global step from which best-of-J is used
  config.manifold.best_of_j_method = "action"  # "action": expm(A)z without forming expm(A)
  config.manifold.best_of_j_dtype = "float32"  # "bfloat16": generators read in bf16 ("action" only)
  config.manifold.l1_penalty = 0.0  # added to the best-of-J selection error
  config.manifold.scale_prior = 0.01
  config.manifold.shift_prior = 0.05
  config.manifold.prior_warmup_steps = 10000
  config.manifold.encoder_hidden = (2048, 2048, 512)
  config.manifold.prior_hidden = (2048, 1024, 512)
  # ManifoldDirectCLR (docs/method.md §2.5): Ψ (M, 1, b, b) and the coefficient networks act on the
  # first block_dim feature dimensions only; the rest pass through the transport unchanged.
  config.manifold.direct = False

  config.loss = ml_collections.ConfigDict()
  config.loss.temperature = 0.5
  config.loss.contrastive = "cosine"  # "cosine": NT-Xent on projections; "mse": MSE InfoNCE
  config.loss.z0_negatives = False  # mse mode: un-augmented z0 as extra negatives
  config.loss.transport_weight = 10.0  # w_TO
  config.loss.kl_weight = 1e-5  # w_KL
  config.loss.kl_warmup = "none"  # "none" | "exponential" (w·(5e-3)^(1 - min(t, T)/T))
  config.loss.kl_warmup_steps = 5000
  config.loss.location_l2_weight = 1e-3  # w_L2 on the posterior locations μ_q (0: off)
  # > 0: each positive is its nearest neighbour in a support queue of this many past embeddings
  # (NNCLR, docs/method.md §17.3); 0: off.
  config.loss.nn_queue_size = 0
  # SimCLR only: a feature-space view 0 (docs/method.md §17.4): "none" | "mixup" (λ ~ U(0, s)
  # toward the positive) | "gaussian" (noise of std s·sqrt(‖z0 − z1‖)), s = feature_aug_strength.
  config.loss.feature_aug = "none"
  config.loss.feature_aug_strength = 1.0

  config.optim = ml_collections.ConfigDict()
  # "adamw" | "lars" (backbone and projector; Ψ and the coefficient networks keep AdamW, §18.1)
  config.optim.name = "adamw"
  # "warmup_cosine" (per iteration, §5) | "epoch_ramp_cosine" (per epoch, §18.1)
  config.optim.schedule = "warmup_cosine"
  config.optim.lr = 3e-3  # backbone and projector
  config.optim.weight_decay = 1e-5  # AdamW, decoupled, on every parameter incl. BN and biases
  config.optim.min_lr = 1e-5  # cosine end value for backbone and projector
  config.optim.warmup_epochs = 10.0  # linear warm-up from 0, stepped per iteration
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.psi_lr = 1e-3
  config.optim.psi_weight_decay = 1e-3
  config.optim.psi_min_lr = 1e-6
  config.optim.psi_clip = 0.1  # global-norm clip on Ψ's gradient (0: none)
  config.optim.coeff_lr = 1e-4  # posterior and prior networks
  config.optim.coeff_weight_decay = 1e-5
  config.optim.coeff_min_lr = 1e-6
  config.optim.coeff_clip = 1.0
  # LARS only (optax.lars): SGD momentum, trust coefficient and its denominator's eps.
  config.optim.momentum = 0.9
  config.optim.trust_coefficient = 1e-3
  config.optim.lars_eps = 1e-8
  config.optim.lars_exclude_bias_and_norm = False  # True: no decay / trust ratio on 1-D leaves

  # Gradient-penalty invariance regulariser (Foster et al. 2021); weight 0 is the baseline.
  config.invariance = ml_collections.ConfigDict()
  config.invariance.weight = 0.0  # λ
  config.invariance.clip = 1.0  # U, applied to the batch mean
  config.invariance.num_alpha_samples = 100  # L
  config.invariance.normalize = True  # L2-normalise the representation before the penalty
  # Log penalty_grad_share and penalty_grad_cosine (docs/method.md §11.6): a second backward pass.
  config.invariance.log_grad_share = False

  config.eval = ml_collections.ConfigDict()
  config.eval.every_epochs = 100
  config.eval.linear_epochs = 500
  config.eval.batch_size = 1000
  config.eval.knn_k = 5
  config.eval.max_train_examples = -1  # > 0: subsample the probe-train features (quick checks)
  config.eval.max_test_examples = -1
  config.eval.feature_average_copies = 0  # M of test-time feature averaging (0: off)
  config.eval.probe_l2 = 1e-8  # L2 weight of the Spirograph regression probe (docs/method.md §13)
  # The invariance paper's image probe (`invariance_probe` suite, docs/method.md §18.5).
  config.eval.label_proportion = 1.0  # stratified share of the probe-train labels (paper: 0.5)
  config.eval.classifier_l2 = 1e-5  # w of mean CE + w·‖W‖², the bias unpenalised
  config.eval.lbfgs_steps = 500  # full-batch L-BFGS iterations
  config.eval.semi_supervised_trials = 50
  config.eval.semi_supervised_steps = 10000
  return config


def apply_lars_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Foster et al.'s SimCLR optimiser (docs/method.md §11.4), in place: SGD with momentum 0.9 and
  weight decay 1e-6 wrapped in LARS (trust coefficient 1e-3), lr = 1.5·batch/256, a linear 10-epoch
  ramp then cosine to 0, stepped per epoch. Set `config.batch_size` first: the learning rate is
  computed from it here, once, so `--config.batch_size=B` also needs `--config.optim.lr=1.5·B/256`."""
  config.optim.name = "lars"
  config.optim.schedule = "epoch_ramp_cosine"
  config.optim.lr = 1.5 * config.batch_size / 256
  config.optim.min_lr = 0.0
  config.optim.warmup_epochs = 10  # the linear ramp, in epochs
  config.optim.weight_decay = 1e-6
  config.optim.momentum = 0.9
  config.optim.trust_coefficient = 1e-3
  return config


def apply_variant(config: ml_collections.ConfigDict, variant: str, *, dataset: str):
  """Switches `config` to one row family of the docs/method.md §5 table, in place; returns it."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant {variant!r}; choose one of {VARIANTS}, e.g. "
                     f"--config=configs/{dataset}.py:simclr")
  if variant in ("simclr", "simclr_noproj", "nnclr"):
    config.method = "simclr"
    if variant == "simclr_noproj":
      config.model.projection = "none"
    if variant == "nnclr":
      config.loss.nn_queue_size = NN_QUEUE_SIZE
  elif variant in ("mixup", "gaussaug"):
    config.method = "simclr"
    config.model.projection = "none"
    config.loss.contrastive = "mse"
    config.loss.z0_negatives = True
    config.loss.feature_aug = "mixup" if variant == "mixup" else "gaussian"
    config.loss.feature_aug_strength = 1.0
  elif variant in ("noproj", "direct"):
    config.model.projection = "none"
    config.loss.contrastive = "mse"
    config.loss.z0_negatives = True
    config.loss.transport_weight = 1.0
    config.loss.kl_warmup = "exponential"
    config.loss.location_l2_weight = 0.0
    config.manifold.prior_warmup_steps = 5000
    if variant == "direct":
      config.model.projection = "direct"  # the contrastive embedding: the first 64 dims
      config.manifold.direct = True
      config.manifold.block_dim = 64
  elif variant == "nn":
    config.loss.nn_queue_size = NN_QUEUE_SIZE
    config.loss.location_l2_weight = 0.0
  elif variant == "thresh":
    config.manifold.threshold = 0.01
    config.manifold.num_samples = 20
    config.manifold.best_of_j_start = 5000
    config.loss.kl_weight = 1e-3
  return config
