"""The command line: one-line errors with the right exit status (a typo'd config key with its
suggestion, a bad value naming the key), and the console filter (orbax's INFO chatter is dropped,
its warnings and everything else are kept). The full table of bad configs is in
tests/reliability/test_bad_configs.py (slow tier)."""

import logging
import os
import subprocess
import sys

from absl import flags
import pytest

from mclr_jax import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(level, pathname):
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_orbax_info_is_dropped_but_its_warnings_and_other_info_are_kept():
  quiet = cli.QuietLibraries()
  orbax_file = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not quiet.filter(_record(logging.INFO, orbax_file))
  assert quiet.filter(_record(logging.WARNING, orbax_file))
  assert quiet.filter(_record(logging.ERROR, orbax_file))
  assert quiet.filter(_record(logging.INFO, "/repo/mclr_jax/train/loop.py"))


def _exc_info_raised_in(filename, error=None):
  """exc_info of `error` (default ValueError('DATA_LOSS')) raised by code compiled as `filename`."""
  namespace = {"error": ValueError("DATA_LOSS") if error is None else error}
  exec(compile("def read():\n  raise error\n", filename, "exec"), namespace)
  try:
    namespace["read"]()
  except Exception:  # pylint: disable=broad-except
    return sys.exc_info()


def test_abandoned_checkpoint_reads_are_dropped_but_other_task_errors_kept():
  """After a damaged checkpoint failed to restore, asyncio reports its other reads as "Task
  exception was never retrieved" (ERROR, with a traceback through orbax, or only through asyncio
  for TensorStore's own error): dropped. The same report for other code and other errors, and late
  "Event loop is closed" echoes only, are told apart."""
  quiet = cli.QuietLibraries()

  def task_record(exc_info):
    return logging.LogRecord("asyncio", logging.ERROR, "/usr/lib/asyncio/base_events.py", 1,
                             "Task exception was never retrieved", None, exc_info)

  orbax_file = "/venv/lib/python3.11/site-packages/orbax/checkpoint/serialization.py"
  assert not quiet.filter(task_record(_exc_info_raised_in(orbax_file)))
  assert quiet.filter(task_record(_exc_info_raised_in("/repo/mclr_jax/train/loop.py")))
  # A TensorStore future that asyncio wrapped itself: no orbax frame, TensorStore's own error.
  asyncio_file = "/usr/lib/python3.11/asyncio/tasks.py"
  damaged = ('DATA_LOSS: Error reading "step/.zarray" in OCDBT database [tensorstore_spec=\'{}\']')
  assert not quiet.filter(task_record(_exc_info_raised_in(asyncio_file, ValueError(damaged))))
  assert quiet.filter(task_record(_exc_info_raised_in(asyncio_file, ValueError("DATA_LOSS"))))
  assert cli._late_checkpoint_callback(RuntimeError("Event loop is closed"))
  assert not cli._late_checkpoint_callback(RuntimeError("Event loop is running"))
  assert not cli._late_checkpoint_callback(ValueError("Event loop is closed"))


def _run_cli(*args, cwd=REPO_ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "mclr_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def _only_line(stderr: str) -> str:
  """The one line a failed run printed on stderr (no traceback, nothing else)."""
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


def test_a_typo_in_a_config_key_is_one_line_with_a_suggestion(tmp_path):
  done = _run_cli("--config=configs/spirograph.py", f"--workdir={tmp_path}", "--config.bach_size=4")
  assert done.returncode == 2
  assert _only_line(done.stderr) == ("error: --config.bach_size: config has no key 'bach_size'; "
                                     "did you mean --config.batch_size?")
  assert not os.listdir(tmp_path)  # rejected before any work


@pytest.mark.slow  # a second CLI process; tests/reliability/test_bad_configs.py covers the rest
def test_a_nan_learning_rate_is_one_line_naming_the_key(tmp_path):
  done = _run_cli("--config=configs/spirograph.py", f"--workdir={tmp_path}",
                  "--config.optim.lr=nan")
  assert done.returncode == 1
  line = _only_line(done.stderr)
  assert line.startswith("error: config.optim.lr=nan must be a finite number"), line
  done = _run_cli("--config=configs/spirograph.py", f"--workdir={tmp_path}", "--verbose",
                  "--config.optim.lr=nan")
  assert done.returncode == 1 and "Traceback" in done.stderr  # --verbose shows where


@pytest.mark.parametrize("error,argv,expected", [
    (AttributeError('\'lrr\'\nDid you mean "lr" instead of "lrr"?'),
     ["prog", "--workdir=w", "--config.optim.lrr=1"],
     "--config.optim.lrr: config has no key 'optim.lrr'; did you mean --config.optim.lr?"),
    (AttributeError('\'optm\'\nDid you mean "optim" instead of "optm"?'),
     ["prog", "--config.optm.lr=1"],
     "--config.optm.lr: config has no key 'optm.lr'; did you mean --config.optim.lr?"),
    (KeyError("'nokey'"), ["prog", "--config.nokey=1"],
     "Unknown config key 'nokey'; list the keys with --helpfull or read the config file."),
    (flags.IllegalFlagValueError("flag --config=c.py:x: Error whilst parsing config file: "
                                 "Traceback (most recent call last):\n  File \"c.py\", line 3\n"
                                 "ValueError: Unknown variant 'x'"), ["prog"],
     "flag --config=c.py:x: ValueError: Unknown variant 'x' (see --helpshort)."),
])
def test_flag_errors_become_one_line(error, argv, expected):
  assert cli.describe_flag_error(error, argv) == expected
