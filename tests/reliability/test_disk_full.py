"""A full disk: the run stops with one line naming the cause, and a rerun on the still-full disk
does the same. The workdir is a small tmpfs mounted in a private mount namespace (`unshare -rm`,
no root needed where user namespaces are enabled); elsewhere the file-size limit (RLIMIT_FSIZE)
makes writes fail the same way."""

import resource
import shlex
import shutil
import subprocess

import pytest

from tests.reliability import harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

FREE_BYTES = 300_000


def _can_mount_tmpfs(tmp_path) -> bool:
  if not shutil.which("unshare"):
    return False
  probe = tmp_path / "probe"
  probe.mkdir()
  done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"],
                        capture_output=True)
  return done.returncode == 0


def _two_runs_on_tmpfs(workdir, logs, cache_dir):
  """Both runs inside one namespace, so the second sees what the first left on the full disk."""
  args = " ".join(shlex.quote(a) for a in harness.cli_args(workdir))
  script = (f"mount -t tmpfs -o size=3m tmpfs {workdir} && "
            f"head -c $((3*1024*1024 - {FREE_BYTES})) /dev/zero > {workdir}/.fill; "
            f"for i in 0 1; do {args} 2> {logs}/stderr$i; echo $? > {logs}/rc$i; done")
  subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=harness.REPO_ROOT,
                 env=harness.cli_env(cache_dir), timeout=1800, check=True)
  return [(int(open(f"{logs}/rc{i}").read()), open(f"{logs}/stderr{i}").read()) for i in (0, 1)]


def _two_runs_with_a_file_size_limit(workdir, cache_dir):
  def limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (FREE_BYTES, FREE_BYTES))

  out = []
  for _ in range(2):
    done = subprocess.run(harness.cli_args(workdir), cwd=harness.REPO_ROOT,
                          env=harness.cli_env(cache_dir), capture_output=True, text=True,
                          timeout=900, preexec_fn=limit)
    out.append((done.returncode, done.stderr))
  return out


def test_a_full_disk_ends_in_one_line_each_time(tmp_path, cache_dir, reference):
  del reference  # run first for its compilation cache
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  workdir.mkdir()
  logs.mkdir()
  use_tmpfs = _can_mount_tmpfs(tmp_path)
  runs = (_two_runs_on_tmpfs(str(workdir), str(logs), cache_dir) if use_tmpfs else
          _two_runs_with_a_file_size_limit(str(workdir), cache_dir))
  for attempt, (rc, stderr) in enumerate(runs):
    print(f"run {attempt} ({'3 MB tmpfs' if use_tmpfs else 'RLIMIT_FSIZE'}): exit {rc}, "
          f"{len(stderr.splitlines())} stderr lines, message {harness.message_lines(stderr)}")
    assert rc == 1, stderr[-4000:]
    line = harness.the_one_line(stderr)
    assert line.startswith("error: ") and any(
        cause in line for cause in ("No space left on device", "File too large",
                                    "File size limit")), line
    assert str(workdir) in line, line  # it names the file or folder it could not write
