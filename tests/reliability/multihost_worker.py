"""One process of a multi-process (or a one-process, several-device) run of the training loop on
the tiny config, recording what it read:

  python -m tests.reliability.multihost_worker WORKDIR OUT.npz [--process_id=I --num_processes=P
      --port=PORT]

Writes OUT.npz with `batches` (steps, local batch, content) — the rows of every global batch this
process fed to the loop — and `params/<path>`, the final parameters (replicated, so every process
holds them all).
"""

import argparse
import sys

import jax
import numpy as np


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("out")
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  if args.num_processes > 1:
    jax.distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id)

  from mclr_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from mclr_jax.train import loop  # pylint: disable=g-import-not-at-top
  from tests.reliability import tiny_config  # pylint: disable=g-import-not-at-top

  read = []
  make = data_lib.make_train_data

  def recording(*a, **k):
    train_data = make(*a, **k)
    make_iterator = train_data.make_iterator

    def iterator(start_step):
      for batch in make_iterator(start_step):
        read.append(np.asarray(batch["theta"]))
        yield batch

    train_data.make_iterator = iterator
    return train_data

  data_lib.make_train_data = recording
  state = loop.train_and_evaluate(tiny_config.get_config(), args.workdir)
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
  arrays = {f"params/{jax.tree_util.keystr(p)}": np.asarray(v) for p, v in flat}
  np.savez(args.out, batches=np.stack(read), **arrays)
  jax.distributed.shutdown() if args.num_processes > 1 else None
  sys.exit(0)


if __name__ == "__main__":
  main()
