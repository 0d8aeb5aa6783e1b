"""Runs `python -m mclr_jax.main` once per command line, each in a forked child of one process
that has imported the program already (the interpreter start-up and imports are paid once).

  python -m tests.reliability.bad_config_runner CASES.json RESULTS.json

CASES.json: a list of argv lists (without the program name). RESULTS.json: [{"rc", "stderr"}].
Each child runs exactly what `python -m mclr_jax.main ARGS` runs: it defines the flags, parses the
command line and calls main through `cli.run`.
"""

import json
import os
import sys
import tempfile


def _run_in_child(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from mclr_jax import cli  # pylint: disable=g-import-not-at-top
  from mclr_jax import main as program  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryFile(mode="w+") as err:
    pid = os.fork()
    if pid == 0:
      code = 0
      try:
        os.dup2(err.fileno(), 2)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.argv = ["mclr_jax.main", *args]
        jax.config.config_with_absl()
        cli.run(program.main, define_flags=program.define_flags)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except BaseException:  # pylint: disable=broad-except
        import traceback  # pylint: disable=g-import-not-at-top
        traceback.print_exc()
        code = 99
      sys.stderr.flush()
      os._exit(code)
    _, status = os.waitpid(pid, 0)
    err.seek(0)
    return {"rc": os.waitstatus_to_exitcode(status), "stderr": err.read()}


def main():
  with open(sys.argv[1]) as f:
    cases = json.load(f)
  results = [_run_in_child(args) for args in cases]
  with open(sys.argv[2], "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main()
