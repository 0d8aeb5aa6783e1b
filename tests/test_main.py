"""The training CLI's console filter: orbax's INFO chatter is dropped, its warnings and everything
else are kept."""

import logging

from mclr_jax import cli


def _record(level, pathname):
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_orbax_info_is_dropped_but_its_warnings_and_other_info_are_kept():
  quiet = cli.QuietLibraries()
  orbax_file = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not quiet.filter(_record(logging.INFO, orbax_file))
  assert quiet.filter(_record(logging.WARNING, orbax_file))
  assert quiet.filter(_record(logging.ERROR, orbax_file))
  assert quiet.filter(_record(logging.INFO, "/repo/mclr_jax/train/loop.py"))
