"""Geometry probe across augmentation strengths (docs/method.md §14): encoder vs projector.

Usage (once training and checkpoint restore exist):
  python experiments/geometry_sweep.py --workdirs=runs/s0.25,runs/s0.5,runs/s1 \
      --strengths=0.25,0.5,1 --output_dir=runs/geometry

For each workdir (one model trained at strength s) it restores the model, probes N held-out images
(N = 2000, M = 32, docs/method.md §14), and writes `geometry_s{s}.json` plus a text
table `geometry_table.txt` comparing encoder and projector across strengths.

"""

import argparse
import json
import os

import jax
import jax.numpy as jnp

from mclr_jax.evaluate import geometry


def probe_model(key, model, images, augment_fn, num_augmentations: int = 32, tangent_dim: int = 4,
                k_neighbours: int = 20) -> dict:
  """Runs the geometry probe for one model (docs/method.md §14).

  Args:
    key: PRNG key.
    model: object with `.encode(images) -> (N, D)` and `.project(h (N, D)) -> (N, K)`.
    images: (N, H, W, C) held-out inputs.
    augment_fn: (key, images) -> augmented images of the same shape (strength s baked in).
    num_augmentations: M augmentations per input.
    tangent_dim: dimension of the augmentation and data tangents.
    k_neighbours: neighbourhood size of the local-PCA data tangent.

  Returns:
    `geometry.geometry_report` dict.
  """
  aug_key, report_key = jax.random.split(key)
  h = model.encode(images)
  z = model.project(h)
  aug_keys = jax.random.split(aug_key, num_augmentations)
  h_aug = jnp.stack([model.encode(augment_fn(k, images)) for k in aug_keys], axis=1)  # (N, M, D)
  z_aug = jax.vmap(model.project, in_axes=1, out_axes=1)(h_aug)
  # G_x = ∂g/∂h at f(x), one row at a time (the projector must accept a batch of one).
  jacobians = geometry.projector_jacobians(lambda v: model.project(v[None])[0], h)
  return geometry.geometry_report(
      h, z, jacobians=jacobians, aug_tangents=geometry.sample_tangents(h_aug, tangent_dim),
      data_tangents=geometry.data_tangents_knn(h, k_neighbours, tangent_dim), h_aug=h_aug,
      z_aug=z_aug, key=report_key)


def flatten_report(strength: float, report: dict) -> dict:
  """One table row: the scalars of a geometry report at augmentation strength s."""
  row = dict(strength=strength)
  for name in ("encoder", "projector"):
    spectrum = report["spectra"][name]
    row[f"{name}_effective_rank"] = spectrum["effective_rank"]
    row[f"{name}_participation_ratio"] = spectrum["participation_ratio"]
    row[f"{name}_rank@0.001"] = spectrum["rank@0.001"]
  for name, value in report.get("retention", {}).items():
    row[f"retention_{name}"] = value
  for name, value in report.get("invariance_ratio", {}).items():
    row[f"ir_{name}"] = value
  return row


def _format(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def tabulate(rows: list[dict]) -> str:
  """Aligned text table; columns in order of first appearance, '-' for a missing value."""
  columns = []
  for row in rows:
    columns += [c for c in row if c not in columns]
  cells = [[_format(row.get(c)) for c in columns] for row in rows]
  widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
  line = lambda items: "  ".join(item.rjust(w) for item, w in zip(items, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _restore_model(workdir):
  from mclr_jax.train.checkpoint import restore_model  # pylint: disable=import-outside-toplevel
  return restore_model(workdir)


def _load_probe_data(workdir, strength, num_points):
  """(images (N, H, W, 3) preprocessed, augment_fn(key, images)) for the run in `workdir` at
  augmentation strength s (docs/method.md §14).

  Spirograph: held-out θ rendered with nuisance ranges scaled by s around their midpoints
  (`spirograph.scaled_nuisance_ranges`); augmenting re-renders the same θ with fresh α, so the
  `images` argument only fixes which rows are meant. Images: the test split, eval-preprocessed; an
  augmentation is the SimCLR pipeline with colour-jitter strengths scaled by s.
  """
  # pylint: disable=import-outside-toplevel
  from mclr_jax.data import augment, spirograph
  from mclr_jax.data.datasets import get_dataset_info
  from mclr_jax.train.checkpoint import read_config
  from mclr_jax.train.data import load_image_split, spirograph_split

  config = read_config(workdir)
  data = config.data
  if data.name == "spirograph":
    content = tuple(data.content)
    ranges = spirograph.scaled_nuisance_ranges(strength)
    theta, _ = spirograph.split_params(jnp.asarray(spirograph_split(data, "test")[:num_points]),
                                       content)

    def augment_fn(key, images):
      del images  # the rows are the θ above
      alpha = spirograph.sample_nuisance(key, (theta.shape[0],), ranges, content)
      return spirograph.render(spirograph.merge_params(theta, alpha, content),
                               normalization=data.normalization)

    return augment_fn(jax.random.PRNGKey(0), None), augment_fn

  info = get_dataset_info(data.name)
  raw, _ = load_image_split(data, info.test_split)
  raw = jnp.asarray(raw[:num_points])
  jitter = tuple(strength * v for v in data.jitter_strength)

  def augment_fn(key, images):
    del images  # views of the same raw test images
    return augment.simclr_augment(key, raw, out_size=info.image_size, mean=info.mean,
                                  std=info.std, jitter_strength=jitter)

  return augment.eval_preprocess(raw, info), augment_fn


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdirs", required=True, help="comma-separated, one per strength")
  parser.add_argument("--strengths", required=True, help="comma-separated floats")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--num_points", type=int, default=2000)
  parser.add_argument("--num_augmentations", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  workdirs = args.workdirs.split(",")
  strengths = [float(s) for s in args.strengths.split(",")]
  if len(workdirs) != len(strengths):
    raise ValueError(f"--workdirs has {len(workdirs)} entries but --strengths {len(strengths)}.")
  os.makedirs(args.output_dir, exist_ok=True)
  rows = []
  for workdir, strength in zip(workdirs, strengths):
    model = _restore_model(workdir)
    images, augment_fn = _load_probe_data(workdir, strength, args.num_points)
    report = probe_model(jax.random.PRNGKey(args.seed), model, images, augment_fn,
                         args.num_augmentations)
    with open(os.path.join(args.output_dir, f"geometry_s{strength:g}.json"), "w") as f:
      json.dump(dict(workdir=workdir, strength=strength, **report), f, indent=1)
    rows.append(flatten_report(strength, report))
  table = tabulate(rows)
  with open(os.path.join(args.output_dir, "geometry_table.txt"), "w") as f:
    f.write(table + "\n")
  print(table)


if __name__ == "__main__":
  main()
