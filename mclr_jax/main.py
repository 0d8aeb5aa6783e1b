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

from mclr_jax.evaluate import runner
from mclr_jax.train import loop

FLAGS = flags.FLAGS


class _QuietLibraries(logging.logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the console; its warnings and errors still show."""

  def filter(self, record):
    # Standard-library levels: absl's own constants (logging.WARNING == -1) use another scale.
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


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
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = FLAGS.config
  logging.info("JAX %s on %s; process %d of %d.", jax.__version__, jax.devices(),
               jax.process_index(), jax.process_count())
  eval_fn = runner.make_periodic_eval(config, FLAGS.workdir)
  state = loop.train_and_evaluate(config, FLAGS.workdir, eval_fn=eval_fn)
  runner.final_report(config, FLAGS.workdir, state)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
