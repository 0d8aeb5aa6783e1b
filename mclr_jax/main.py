"""Train (and evaluate) a model: `python -m mclr_jax.main --config=configs/<name>.py --workdir=DIR`.

Rerunning the same command with the same workdir resumes from its latest checkpoint. Any config value
can be overridden (`--config.batch_size=256`); a variant is chosen with `--config=configs/stl10.py:simclr`.
Multi-host runs: set `--distributed` (or the cluster's environment) so `jax.distributed.initialize()`
connects the processes before any device is touched.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mclr_jax import cli
from mclr_jax.evaluate import runner
from mclr_jax.train import loop

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", "configs/spirograph.py", "Training config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.distributed:
    jax.distributed.initialize()
  config = FLAGS.config
  logging.info("JAX %s on %s; process %d of %d.", jax.__version__, jax.devices(),
               jax.process_index(), jax.process_count())
  eval_fn = runner.make_periodic_eval(config, FLAGS.workdir)
  state = loop.train_and_evaluate(config, FLAGS.workdir, eval_fn=eval_fn)
  runner.final_report(config, FLAGS.workdir, state)


if __name__ == "__main__":
  jax.config.config_with_absl()
  cli.run(main)
