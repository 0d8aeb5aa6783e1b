"""experiments/precision_curves.py: the float32-vs-bf16 verdict is the two-sample comparison it
claims (the training runs themselves are exercised by the training tests)."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "precision_curves.py"
_spec = importlib.util.spec_from_file_location("precision_curves", _PATH)
precision_curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(precision_curves)


def _runs(values):
  return [{"final_loss": v} for v in values]


def test_gap_and_standard_error_match_the_closed_form():
  a, b = [4.0, 4.2, 4.1], [4.3, 4.1, 4.25, 4.2]
  out = precision_curves.compare({"float32": _runs(a), "bfloat16": _runs(b)})["final_loss"]
  stderr = math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 4)
  assert out["gap"] == pytest.approx(np.mean(b) - np.mean(a))
  assert out["stderr"] == pytest.approx(stderr)
  assert out["within_noise"] == (abs(np.mean(b) - np.mean(a)) <= 2 * stderr)
  assert out["per_precision"]["bfloat16"]["n"] == 4


def test_verdict_is_a_two_standard_error_test():
  # Monte Carlo: for equal distributions the verdict says "different" about 5 % of the time (a bit
  # more with 8 seeds, as the threshold is 2 rather than the t quantile 2.14); for a shift of ten
  # standard deviations it always does.
  rng = np.random.default_rng(0)

  def different_rate(shift, trials=2000):
    flags = [precision_curves.compare({"float32": _runs(rng.normal(1.0, 0.1, 8)),
                                       "bfloat16": _runs(rng.normal(1.0 + shift, 0.1, 8))}
                                      )["final_loss"]["within_noise"] is False
             for _ in range(trials)]
    return np.mean(flags)

  assert 0.03 < different_rate(0.0) < 0.10
  assert different_rate(1.0, trials=200) == 1.0
  # One seed per precision: no noise estimate, no verdict.
  single = precision_curves.compare({"float32": _runs([1.0]), "bfloat16": _runs([1.1])})
  assert single["final_loss"]["within_noise"] is None


def test_read_losses_keeps_the_latest_value_of_a_resumed_step(tmp_path):
  records = [{"step": 8, "kind": "train", "loss": 3.0}, {"step": 16, "kind": "train", "loss": 2.5},
             {"step": 16, "kind": "eval", "probe": 0.1},  # not a training record
             {"step": 16, "kind": "train", "loss": 2.4}, {"step": 24, "kind": "train", "loss": 2.0}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  steps, losses = precision_curves.read_losses(str(tmp_path))
  np.testing.assert_array_equal(steps, [8, 16, 24])
  np.testing.assert_array_equal(losses, [3.0, 2.4, 2.0])


@pytest.mark.slow  # trains 2 precisions × 1 seed of the CPU Spirograph config
def test_main_trains_both_precisions_and_writes_the_verdict(tmp_path, capsys):
  out = tmp_path / "precision"
  assert precision_curves.main(["--config=configs/spirograph.py:cpu", "--seeds=0", "--steps=4",
                                "--log_every=2", f"--out={out}"]) is None
  result = json.loads((out / "precision.json").read_text())
  assert set(result["runs"]) == {"float32", "bfloat16"}
  for runs in result["runs"].values():
    assert np.isfinite(runs[0]["final_loss"]) and np.isfinite(runs[0]["probe_mse"])
  assert (out / "precision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "n/a (one seed)" in capsys.readouterr().out
