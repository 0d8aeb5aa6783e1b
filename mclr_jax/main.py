"""Train (and evaluate) a model: `python -m mclr_jax.main --config=configs/<name>.py --workdir=DIR`.

Rerunning the same command with the same workdir resumes from its latest checkpoint. Any config value
can be overridden (`--config.batch_size=256`); a variant is chosen with `--config=configs/stl10.py:simclr`.

Exit status: 0 the run finished (and its final evaluation ran); 1 an error about the input or
environment, printed as one line on stderr (`--verbose` for the traceback); 2 a command line that
does not parse; 143 preempted: SIGTERM saved a checkpoint at the next step and skipped (or stopped)
evaluation, so a scheduler should requeue the job, and rerunning the same command resumes it.

Multi-host runs: `--distributed` calls `jax.distributed.initialize()` before any device is touched;
on a cluster it detects the processes itself (SLURM, Open MPI, ...), elsewhere give
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to every process.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mclr_jax import cli
from mclr_jax.evaluate import runner
from mclr_jax.train import loop
from mclr_jax.train.validate import validate_config

FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags. Called by the program (inside `cli.run`, whose one-line errors then cover
  the config file and its overrides, which config_flags parses as soon as the flag is defined)."""
  config_flags.DEFINE_config_file("config", "configs/spirograph.py", "Training config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
  flags.DEFINE_string("coordinator_address", None,
                      "HOST:PORT of process 0 (with --distributed, where no cluster is detected).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
  flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags are --name=value.")
  config = cli.loaded_config(FLAGS["config"])
  validate_config(config)  # before anything else: a bad value costs no start-up and no log
  if FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("JAX %s on %s; process %d of %d.", jax.__version__, jax.devices(),
               jax.process_index(), jax.process_count())
  eval_fn = runner.make_periodic_eval(config, FLAGS.workdir)
  state = loop.train_and_evaluate(config, FLAGS.workdir, eval_fn=eval_fn)  # Preempted: exit 143
  runner.final_report(config, FLAGS.workdir, state)


if __name__ == "__main__":
  jax.config.config_with_absl()
  cli.run(main, define_flags=define_flags)
