"""What every mclr_jax command-line program shares: one-line errors, exit codes, quiet logging.

  from mclr_jax import cli
  if __name__ == "__main__":
    cli.run(main)

`run(main)` is `absl.app.run(main)` plus:
- an error about the input or environment (`mclr_jax.errors.UserFacingError`, and `OSError`s such
  as a full disk or an unwritable path) ends the program with one line on stderr and the error's
  exit code; `--verbose` shows the traceback instead;
- `main` returning a value never becomes the exit status (absl hands it to `sys.exit`): success is
  exit 0;
- INFO chatter of libraries (orbax's per-save lines) is kept off the console; their warnings and
  errors still show.
"""

import errno
import logging as std_logging
import sys
from typing import Callable, Optional

from absl import app
from absl import flags
from absl import logging

from mclr_jax.errors import UserFacingError

flags.DEFINE_bool("verbose", False, "On an error, show the full traceback instead of one line.")

# Library code whose INFO records are dropped from the console.
_QUIET_PATHS = ("/orbax/",)


class QuietLibraries(std_logging.Filter):
  """Drops INFO records of noisy libraries (orbax); their warnings and errors, and everything of
  mclr_jax's own, pass."""

  def filter(self, record):
    # Standard-library levels: absl's own constants (logging.WARNING == -1) use another scale.
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(p in record.pathname for p in _QUIET_PATHS)


def describe_os_error(e: OSError) -> str:
  """One line for an OSError: what failed on which path, and what to do."""
  path = f" {e.filename}" if getattr(e, "filename", None) else ""
  if e.errno == errno.ENOSPC:
    return f"No space left on device while writing{path}; free disk space and rerun the same command."
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return (f"Cannot write{path}: {e.strerror}. Choose a writable --workdir (or fix its "
            f"permissions).")
  return f"{type(e).__name__}{path}: {e.strerror or e}."


def _exit_with(message: str, code: int):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _guarded(main: Callable):
  def wrapped(argv):
    logging.get_absl_handler().addFilter(QuietLibraries())
    try:
      main(argv)
    except UserFacingError as e:
      if flags.FLAGS["verbose"].value:
        raise
      _exit_with(str(e), e.exit_code)
    except OSError as e:
      if flags.FLAGS["verbose"].value:
        raise
      _exit_with(describe_os_error(e), 1)
  return wrapped


def run(main: Callable, argv: Optional[list] = None, **kwargs):
  """`absl.app.run(main)` with one-line errors and exit status 0 on success (module docstring)."""
  app.run(_guarded(main), argv=argv, **kwargs)
