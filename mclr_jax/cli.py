"""What every mclr_jax command-line program shares: one-line errors, exit codes, quiet logging.

  from mclr_jax import cli
  if __name__ == "__main__":
    cli.run(main)          # absl programs (mclr_jax.main, mclr_jax.evaluate)
    cli.run_script(main)   # argparse scripts (experiments/)

`run(main)` is `absl.app.run(main)` plus:
- a command line that does not parse (an unknown flag, an unknown config key such as
  `--config.bach_size=4`, a value of the wrong type, a missing required flag) ends with one line
  on stderr, with a "did you mean" suggestion for near-misses, and exit status 2;
- an error about the input or environment (`mclr_jax.errors.UserFacingError`, and `OSError`s such
  as a full disk or an unwritable path) ends the program with one line on stderr and the error's
  exit code (1, or 143 for a preempted run); `--verbose` shows the traceback instead;
- `main` returning a value never becomes the exit status (absl hands it to `sys.exit`): success is
  exit 0;
- INFO chatter of libraries (orbax's per-save lines) is kept off the console; their warnings and
  errors still show.
The exit codes are listed in `mclr_jax/errors.py`.
"""

import errno
import logging as std_logging
import os
import re
import sys
import threading
from typing import Callable, Optional

from absl import app
from absl import flags
from absl import logging

from mclr_jax.errors import USAGE_EXIT_CODE, UserFacingError, disk_error_reason

flags.DEFINE_bool("verbose", False, "On an error, show the full traceback instead of one line.")

# Library code whose INFO records are dropped from the console (orbax's per-save lines, JAX's
# "Unable to initialize backend 'tpu'").
_QUIET_PATHS = ("/orbax/", "/jax/_src/xla_bridge.py")

# ml_collections' ConfigDict suggests the nearest key:
#   'Did you mean "batch_size" instead of "bach_size"?'
_CONFIG_SUGGESTION = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')


class QuietLibraries(std_logging.Filter):
  """Drops INFO records of noisy libraries (orbax); their warnings and errors, and everything of
  mclr_jax's own, pass, except the tracebacks that orbax's writer threads log for a full disk
  and those of a damaged checkpoint's abandoned reads: the program reports each failure once, in
  one line."""

  def filter(self, record):
    if record.exc_info and disk_error_reason(record.exc_info[1]):
      return False
    if record.name == "asyncio" and record.exc_info and (
        _raised_in_orbax(record.exc_info[2]) or _tensorstore_error(record.exc_info[1])):
      # "Task exception was never retrieved": the other reads of a checkpoint that failed to
      # restore, finishing after the failure was handled (moved aside, or refused in one line).
      # Their traceback passes through orbax, or, for a TensorStore future asyncio wrapped
      # itself, holds only asyncio frames and TensorStore's error, which names its spec.
      return False
    # Standard-library levels: absl's own constants (logging.WARNING == -1) use another scale.
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(p in record.pathname for p in _QUIET_PATHS)


def _late_checkpoint_callback(e: BaseException) -> bool:
  """True for the error a TensorStore read or write reports when it completes after orbax has
  closed the asyncio loop it would report to: after a failed restore (a corrupt checkpoint, which
  the program then handles: moved aside, or refused in one line) or a failed save (a full disk).
  The failure itself has been reported by then; this is only its late echo."""
  return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"


def _tensorstore_error(e: BaseException) -> bool:
  """Whether `e` is an error TensorStore reported for a read or write (it quotes the spec)."""
  return isinstance(e, Exception) and "tensorstore_spec=" in str(e)


def _raised_in_orbax(tb) -> bool:
  """Whether a traceback passes through orbax's code."""
  while tb is not None:
    if "/orbax/" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


def _quiet_disk_errors_in_threads():
  """A full disk fails every writer thread of an async checkpoint save, and each would print its
  traceback; the main thread raises the same failure as one line (checkpoint.save / wait). Late
  callbacks of failed checkpoint reads and writes (`_late_checkpoint_callback`) are dropped too."""
  thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

  def quiet(e) -> bool:
    return bool(disk_error_reason(e)) or _late_checkpoint_callback(e)

  def quiet_thread(args):
    if not quiet(args.exc_value):
      thread_hook(args)

  def quiet_unraisable(args):
    if not quiet(args.exc_value):
      unraisable_hook(args)

  threading.excepthook, sys.unraisablehook = quiet_thread, quiet_unraisable


def describe_os_error(e: OSError) -> str:
  """One line for an OSError: what failed on which path, and what to do."""
  path = f" {e.filename}" if getattr(e, "filename", None) else ""
  if e.errno == errno.ENOSPC:
    return (f"No space left on device while writing{path}; free disk space and rerun the same "
            f"command.")
  if e.errno == errno.EFBIG:
    return (f"File size limit reached while writing{path} (ulimit -f); raise the limit and rerun "
            f"the same command.")
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return (f"Cannot write{path}: {e.strerror}. Choose a writable --workdir (or fix its "
            f"permissions).")
  if e.errno in (errno.ENOTDIR, errno.EEXIST):
    return f"{path.strip()} is a file where a directory is needed; choose another --workdir."
  return f"{type(e).__name__}{path}: {e.strerror or e}."


def describe_flag_error(e: Exception, argv) -> str:
  """One line for an error raised while the command line is parsed (absl flags, config_flags)."""
  message = str(e).strip()
  suggestion = _CONFIG_SUGGESTION.search(message.replace("\\n", "\n").replace('\\"', '"'))
  if suggestion:
    right, wrong = suggestion.groups()
    for arg in argv[1:]:
      name = arg.lstrip("-").split("=", 1)[0]
      parts = name.split(".")
      if len(parts) > 1 and wrong in parts[1:]:
        fixed = ".".join(right if p == wrong else p for p in parts)
        return f"--{name}: {parts[0]} has no key {'.'.join(parts[1:])!r}; did you mean --{fixed}?"
    return f"Unknown config key {wrong!r}; did you mean {right!r}?"
  if isinstance(e, (AttributeError, KeyError)):
    key = message.splitlines()[0].strip("'\"\\")
    return f"Unknown config key {key!r}; list the keys with --helpfull or read the config file."
  if "Traceback (most recent call last)" in message:
    # config_flags embeds the config file's own traceback; its last line is the cause.
    head = message.split(": ", 1)[0] if message.startswith("flag --") else type(e).__name__
    message = f"{head}: {message.strip().splitlines()[-1].strip()}"
  first = " ".join(message.split())  # absl's messages may wrap; keep them on one line
  if isinstance(e, flags.Error):
    return f"{first} (see --helpshort)."
  return f"Command line: {type(e).__name__}: {first}"


def loaded_config(config_flag):
  """The value of a config_flags flag; a config file that failed to load is a one-line
  UsageError naming it (config_flags defers that failure to the first read of the value)."""
  try:
    config = config_flag.value
    config.keys()  # a file that failed to load is a stand-in that raises on first use
    return config
  except (OSError, ImportError, SyntaxError) as e:
    cause = " ".join(str(e).strip().splitlines()[-1].split())
    raise app.UsageError(f"--{config_flag.name}: the config file could not be loaded ({cause}); "
                         f"give an existing file, e.g. --{config_flag.name}=configs/spirograph.py")


def _exit_with(label: str, message: str, code: int, at_once: bool = False):
  print(f"{label}: {message}", file=sys.stderr, flush=True)
  if at_once:
    # After a failure inside the program (`_call_with_one_line_errors`): the program has closed
    # or abandoned its checkpoint saves, so what is on disk is final. Threads of orbax/TensorStore
    # still blocked on a failed write (a full disk) can abort the interpreter's shutdown (C++
    # "exception not rethrown", exit 134) after the one line was printed; ending the process here
    # keeps the documented exit code.
    logging.flush()
    sys.stdout.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _verbose(argv) -> bool:
  """--verbose, read from argv itself: flag parsing may be what failed."""
  try:
    return bool(flags.FLAGS["verbose"].value) or "--verbose" in argv
  except flags.Error:
    return "--verbose" in argv


def _with_flag_errors(fn: Callable, argv):
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except  (absl and config_flags raise many types)
    if "--verbose" in argv:
      raise
    _exit_with("error", describe_flag_error(e, argv), USAGE_EXIT_CODE)


def _parse_flags(argv):
  return _with_flag_errors(lambda: flags.FLAGS(argv), argv)


def _guarded(main: Callable):
  def wrapped(argv):
    logging.get_absl_handler().addFilter(QuietLibraries())
    _quiet_disk_errors_in_threads()
    _call_with_one_line_errors(lambda: main(argv), argv)
  return wrapped


def _call_with_one_line_errors(fn: Callable[[], object], argv):
  try:
    fn()
  except UserFacingError as e:
    if _verbose(argv):
      raise
    _exit_with(e.label, str(e), e.exit_code, at_once=True)
  except OSError as e:
    if _verbose(argv):
      raise
    _exit_with("error", describe_os_error(e), 1, at_once=True)
  except app.UsageError as e:
    if _verbose(argv):
      raise
    _exit_with("error", str(e), USAGE_EXIT_CODE, at_once=True)


def run(main: Callable, argv: Optional[list] = None, define_flags: Optional[Callable] = None,
        **kwargs):
  """`absl.app.run(main)` with one-line errors and exit status 0 on success (module docstring).

  `define_flags()`, if given, defines the program's flags first, under the same one-line errors
  as their parsing (config_flags reads the config file and its overrides at definition).
  """
  if define_flags is not None:
    _with_flag_errors(define_flags, sys.argv if argv is None else argv)
  kwargs.setdefault("flags_parser", _parse_flags)
  app.run(_guarded(main), argv=argv, **kwargs)


def run_script(main: Callable[[], object]):
  """Runs an argparse script's `main()` with one-line errors and exit status 0 on success.

  `--verbose` anywhere on the command line shows the traceback of an error instead (it is removed
  from sys.argv before `main` parses it). argparse's own usage errors keep their exit status 2.
  """
  verbose = "--verbose" in sys.argv
  if verbose:
    sys.argv.remove("--verbose")
  _call_with_one_line_errors(main, ["--verbose"] if verbose else [])
  sys.exit(0)
