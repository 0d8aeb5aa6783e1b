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
def test_main_times_two_calls_and_the_second_compiles_nothing(capsys, tmp_path):
  out = tmp_path / "rows.json"
  assert evaluation_time.main(["--num_train=30", "--num_test=20", "--width=2",
                               "--repeats=1", f"--json={out}"]) is None
  written = json.loads(out.read_text())
  first, second = written["calls"]
  assert first["call"] == 0 and first["compilations"] > 0
  assert second["call"] == 1 and second["compilations"] == 0
  assert second["linear_top1"] == first["linear_top1"]  # the same evaluation, reproducibly
  assert written["train_features_seconds"] >= 0
  table = capsys.readouterr().out.splitlines()
  assert table[0].split()[:3] == ["call", "seconds", "compilations"]
  assert table[2].split()[2] == "0" and "{" not in "".join(table)  # a table, not JSON
