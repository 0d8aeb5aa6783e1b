"""A table of bad command lines and configs, each run through the real program: every one ends
with exactly one line on stderr that names the value (and, for a typo, the key it meant), with
exit status 2 (a command line that does not parse) or 1 (a value outside its domain), before any
work. Most run in forked children of one process (bad_config_runner.py); a few as plain
`python -m mclr_jax.main` subprocesses, to show the two agree."""

import json
import subprocess
import sys

import pytest

from tests.reliability import harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SPIRO = "--config=configs/spirograph.py"
MANIFOLD = "--config=configs/spirograph.py:manifoldclr"
CIFAR = "--config=configs/cifar10.py"

# (config and overrides, exit status, text the one line must contain)
CASES = [
    ((SPIRO, "--config.bach_size=4"), 2, "did you mean --config.batch_size?"),
    ((SPIRO, "--config.optim.lrr=0.1"), 2, "did you mean --config.optim.lr?"),
    ((SPIRO, "--config.optm.lr=0.1"), 2, "did you mean --config.optim.lr?"),
    ((SPIRO, "--config.batch_size=abc"), 2, "--config.batch_size=abc"),
    ((SPIRO, "--config.strict_checkpoints=maybe"), 2, "--config.strict_checkpoints=maybe"),
    (("--config=configs/nope.py",), 2, "No such file or directory: 'configs/nope.py'"),
    (("--config=configs/spirograph.py:bogus",), 2, "Unknown spirograph variant 'bogus'"),
    ((SPIRO, "--workdri=x"), 2, "Did you mean: workdir"),
    ((SPIRO, "extra_argument"), 2, "Unexpected arguments ['extra_argument']"),
    ((SPIRO, "--config.optim.lr=nan"), 1, "config.optim.lr=nan"),
    ((SPIRO, "--config.optim.lr=inf"), 1, "config.optim.lr=inf"),
    ((SPIRO, "--config.optim.lr=-0.1"), 1, "config.optim.lr=-0.1"),
    ((SPIRO, "--config.optim.min_lr=0.1"), 1, "config.optim.min_lr=0.1"),
    ((SPIRO, "--config.optim.eps=0"), 1, "config.optim.eps=0"),
    ((SPIRO, "--config.optim.b1=1.0"), 1, "config.optim.b1=1.0"),
    ((SPIRO, "--config.optim.b1=-0.5"), 1, "config.optim.b1=-0.5"),
    ((SPIRO, "--config.optim.b2=1.5"), 1, "config.optim.b2=1.5"),
    ((SPIRO, "--config.optim.weight_decay=-1e-3"), 1, "config.optim.weight_decay=-0.001"),
    ((SPIRO, "--config.optim.warmup_epochs=nan"), 1, "config.optim.warmup_epochs=nan"),
    ((SPIRO, "--config.loss.temperature=inf"), 1, "config.loss.temperature=inf"),
    ((SPIRO, "--config.loss.temperature=0"), 1, "config.loss.temperature=0"),
    ((SPIRO, "--config.data.prefetch=0"), 1, "config.data.prefetch=0"),
    ((SPIRO, "--config.batch_size=0"), 1, "config.batch_size=0"),
    ((SPIRO, "--config.data.num_train=8"), 1, "config.data.num_train=8"),
    ((SPIRO, "--config.model.width=0"), 1, "config.model.width=0"),
    ((SPIRO, "--config.log_every_steps=0"), 1, "config.log_every_steps=0"),
    ((SPIRO, "--config.checkpoint_every_steps=-5"), 1, "config.checkpoint_every_steps=-5"),
    ((SPIRO, "--config.keep_checkpoints=0"), 1, "config.keep_checkpoints=0"),
    ((SPIRO, "--config.num_epochs=0"), 1, "config.num_epochs=0"),
    ((SPIRO, "--config.eval_every_steps=-2"), 1, "config.eval_every_steps=-2"),
    ((SPIRO, "--config.seed=-1"), 1, "config.seed=-1"),
    ((SPIRO, "--config.method=byol"), 1, "config.method='byol'"),
    ((SPIRO, "--config.model.projection=bottleneck"), 1, "config.model.projection='bottleneck'"),
    ((SPIRO, "--config.invariance.weight=-1"), 1, "config.invariance.weight=-1"),
    ((SPIRO, "--config.invariance.weight=0.01", "--config.invariance.clip=0"), 1,
     "config.invariance.clip=0"),
    ((SPIRO, "--config.eval.knn_k=0"), 1, "config.eval.knn_k=0"),
    ((SPIRO, "--config.data.content=('m', 'zz')"), 1, "unknown names ['zz']"),
    ((MANIFOLD, "--config.manifold.block_dim=48"), 1, "config.manifold.block_dim=48"),
    ((MANIFOLD, "--config.manifold.scale_prior=0"), 1, "config.manifold.scale_prior=0"),
    ((MANIFOLD, "--config.manifold.num_samples=0"), 1, "config.manifold.num_samples=0"),
    ((CIFAR, "--config.data.flip_prob=1.5"), 1, "config.data.flip_prob=1.5"),
    ((CIFAR, "--config.data.crop_scale=(0.9, 0.2)"), 1, "config.data.crop_scale=(0.9, 0.2)"),
]


def _argv(case, workdir):
  return [*case[0], f"--workdir={workdir}"]


def test_every_bad_config_is_one_line_with_its_exit_status(tmp_path, cache_dir):
  assert len(CASES) >= 30
  workdir = tmp_path / "workdir"
  cases_path, results_path = tmp_path / "cases.json", tmp_path / "results.json"
  cases_path.write_text(json.dumps([_argv(c, workdir) for c in CASES]))
  done = subprocess.run([sys.executable, "-m", "tests.reliability.bad_config_runner",
                         str(cases_path), str(results_path)], cwd=harness.REPO_ROOT,
                        env=harness.cli_env(cache_dir), capture_output=True, text=True,
                        timeout=1500)
  assert done.returncode == 0, done.stderr[-4000:]
  results = json.loads(results_path.read_text())
  failures = []
  for (args, rc, text), result in zip(CASES, results):
    lines = harness.message_lines(result["stderr"])
    ok = (result["rc"] == rc and len(lines) == 1 and lines[0].startswith("error: ")
          and text in lines[0] and "Traceback" not in result["stderr"])
    if not ok:
      failures.append((args, result["rc"], result["stderr"][-1500:]))
  print(f"{len(CASES) - len(failures)} of {len(CASES)} bad configs rejected in one line")
  assert not failures, failures
  assert not workdir.exists()  # all of them before any work


def test_unusable_workdirs_are_one_line(tmp_path, cache_dir):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  done = harness.run_cli(str(a_file), cache_dir=cache_dir, config="configs/spirograph.py")
  assert done.returncode == 1
  assert harness.the_one_line(done.stderr) == (
      f"error: --workdir={a_file} is a file, not a directory; choose another --workdir.")
  below_a_file = a_file / "run"
  done = harness.run_cli(str(below_a_file), cache_dir=cache_dir, config="configs/spirograph.py")
  assert done.returncode == 1
  assert str(below_a_file) in harness.the_one_line(done.stderr)


@pytest.mark.parametrize("index", [0, 9, 21])
def test_a_plain_subprocess_agrees_with_the_forked_runner(index, tmp_path, cache_dir):
  args, rc, text = CASES[index]
  done = subprocess.run([sys.executable, "-m", "mclr_jax.main", *_argv(CASES[index], tmp_path)],
                        cwd=harness.REPO_ROOT, env=harness.cli_env(cache_dir),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == rc, done.stderr[-3000:]
  assert text in harness.the_one_line(done.stderr)
