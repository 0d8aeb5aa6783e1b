"""The one base class of the errors mclr_jax raises about its input or environment.

A `UserFacingError` is not a bug: a config value out of range, a workdir that cannot be written, a
dataset that is not prepared, a checkpoint that cannot be restored, a run that went non-finite, a
run stopped by its scheduler. Its message names the offending value and the fix, in one line, and
the command-line programs (`mclr_jax.cli.run`) print exactly that line and exit with the error's
`exit_code`. Anything else is a bug and keeps its traceback.

Exit codes of every mclr_jax program: 0 success; 1 an error about the input or environment;
2 a command line that does not parse (unknown flag or config key, unparsable value);
143 (= 128 + SIGTERM) preempted: a checkpoint was saved, rerun the same command to resume.
"""

import contextlib
import errno
import os
import sys

USAGE_EXIT_CODE = 2
# What a process killed by SIGTERM reports (128 + 15): schedulers that requeue preempted jobs
# (e.g. a Kubernetes podFailurePolicy on exit code 143) treat the clean stop the same way.
PREEMPTED_EXIT_CODE = 143


class UserFacingError(Exception):
  """An error about the program's input or environment whose message names the value and the fix.

  `exit_code` is the process exit status the command-line programs use for it, and `label` the
  word that starts its line on stderr.
  """
  exit_code = 1
  label = "error"


class Preempted(UserFacingError):
  """Training stopped on SIGTERM after saving a checkpoint (no evaluation ran, or the periodic one
  running was stopped); rerunning the same command resumes it. Exit status 143."""
  exit_code = PREEMPTED_EXIT_CODE
  label = "preempted"

  def __init__(self, step: int, message: str):
    super().__init__(message)
    self.step = step


# What a full or unwritable disk says: by errno, and by message (TensorStore's errors are only text).
_DISK_ERRORS = {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large (ulimit -f)",
                errno.EDQUOT: "Disk quota exceeded", errno.EROFS: "Read-only file system"}


def disk_error_reason(e: BaseException):
  """'No space left on device' (or the like) if `e`, or an exception it was raised from, reports
  a full or read-only disk; else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
      return _DISK_ERRORS[e.errno]
    text = str(e).lower()
    for reason in _DISK_ERRORS.values():
      if reason.split(" (")[0].lower() in text:
        return reason
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def writing_file(path: str, tmp: str = ""):
  """Around a write of `path`: Python's file writes raise OSErrors without the file's name (a full
  disk fails at `write` or `close`), so the name is added and the one-line error says which file;
  `tmp`, the temporary file a rewrite goes through, is removed if the write fails in any way, so
  the original stays as it was and nothing half-written is left."""
  try:
    yield
  except BaseException as e:
    if tmp and os.path.exists(tmp):
      os.remove(tmp)
    if not isinstance(e, OSError) or e.filename:
      raise
    raise OSError(e.errno, e.strerror, path) from e


@contextlib.contextmanager
def tensorflow_disk_errors(path: str):
  """Around a TensorFlow file write (TensorBoard's event files): TensorFlow reports a failed write
  as its own error type, not an OSError. Those about the disk (full, over quota, read-only,
  permission denied) are raised as the OSError Python would raise for `path`, so the command line
  reports them in one line; any other TensorFlow error is left as it is (a bug keeps its
  traceback)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless a disk error)
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(e, tf.errors.OpError):
      raise
    if isinstance(e, tf.errors.PermissionDeniedError):
      raise OSError(errno.EACCES, os.strerror(errno.EACCES), path) from e
    reason = disk_error_reason(e)
    if reason is None:
      raise
    code = next(c for c, text in _DISK_ERRORS.items() if text == reason)
    raise OSError(code, reason, path) from e
