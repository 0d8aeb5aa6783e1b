"""experiments/evaluation_time.py at tiny size: a repeated evaluation compiles nothing."""

import importlib.util
import json
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "evaluation_time.py"
_spec = importlib.util.spec_from_file_location("evaluation_time", _PATH)
evaluation_time = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluation_time)

pytestmark = pytest.mark.usefixtures("fast_cpu_compiles")


@pytest.mark.slow  # the timing script end to end; tests/evaluate/test_model.py counts compiles in the default tier
def test_main_times_two_calls_and_the_second_compiles_nothing(capsys):
  assert evaluation_time.main(["--num_train=30", "--num_test=20", "--width=2",
                               "--repeats=1"]) is None
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  first, second, features = rows
  assert first["call"] == 0 and first["compilations"] > 0
  assert second["call"] == 1 and second["compilations"] == 0
  assert second["linear_top1"] == first["linear_top1"]  # the same evaluation, reproducibly
  assert features["train_features_seconds"] >= 0
