"""The one base class of the errors mclr_jax raises about its input or environment.

A `UserFacingError` is not a bug: a config value out of range, a workdir that cannot be written, a
dataset that is not prepared, a checkpoint that cannot be restored, a run that went non-finite.
Its message names the offending value and the fix, in one line, and the command-line programs
(`mclr_jax.cli.run`) print exactly that line and exit non-zero. Anything else is a bug and keeps
its traceback.
"""


class UserFacingError(Exception):
  """An error about the program's input or environment whose message names the value and the fix.

  `exit_code` is the process exit status the command-line programs use for it.
  """
  exit_code = 1
