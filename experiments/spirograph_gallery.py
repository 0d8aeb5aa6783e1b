"""Pictures of the Spirograph dataset (docs/method.md §10).

  python experiments/spirograph_gallery.py --out DIR [--seed 0] [--num 64] [--views 8]

writes DIR/samples.png (i.i.d. samples of all 10 parameters, 8 per row) and DIR/views.png (one row
per θ; the columns share θ and differ only in the nuisance α, i.e. they are positive pairs). Runs in
seconds on a CPU.
"""

import argparse
import os

import jax
import numpy as np

from mclr_jax import cli
from mclr_jax.data import spirograph


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num", type=int, default=64, help="number of i.i.d. samples")
  parser.add_argument("--views", type=int, default=8, help="views per θ (and number of θ rows)")
  parser.add_argument("--normalization", default="row", choices=("row", "image"))
  args = parser.parse_args(argv)

  os.makedirs(args.out, exist_ok=True)
  sample_key, theta_key, view_key = jax.random.split(jax.random.key(args.seed), 3)
  params = spirograph.sample_params(sample_key, args.num)
  spirograph.save_grid_png(os.path.join(args.out, "samples.png"),
                           spirograph.render(params, args.normalization), nrow=8)

  theta, _ = spirograph.split_params(spirograph.sample_params(theta_key, args.views))
  views, _ = spirograph.make_views(view_key, theta, num_views=args.views,
                                   normalization=args.normalization)
  # (V, B, ...) -> (B, V, ...): one row per θ.
  rows = np.swapaxes(np.asarray(views), 0, 1).reshape((-1,) + views.shape[2:])
  spirograph.save_grid_png(os.path.join(args.out, "views.png"), rows, nrow=args.views)
  print(f"wrote {args.out}/samples.png and {args.out}/views.png")


if __name__ == "__main__":
  cli.run_script(main)
