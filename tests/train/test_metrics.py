"""Training metrics: the device-side window (averages against float64 numpy, the first non-finite
step and its checks), metrics.jsonl and TensorBoard event-file repair on resume (and on a full
disk), throughput/ETA against a fake clock, and the console line's fields."""

import errno
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mclr_jax.train import event_files
from mclr_jax.train import metrics as metrics_lib
from tests.tiny import tensorboard_scalars

CHECKS = ("data", "contrastive", "gradient", "params")


def _step_metrics(rng, bad=()):
  """One step's metrics as train_step returns them: scalars and nonfinite/<check> flags."""
  out = {"loss": rng.normal(5, 1), "grad_norm": rng.lognormal()}
  out.update({f"nonfinite/{c}": float(c in bad) for c in CHECKS})
  return {k: jnp.float32(v) for k, v in out.items()}


@jax.jit
def _add(window, metrics, step):
  return window.add(metrics, step)


def test_window_averages_match_float64_means():
  rng = np.random.default_rng(0)
  steps = [_step_metrics(rng) for _ in range(7)]
  window = metrics_lib.StepMetrics.empty(steps[0], ("params", "data", "gradient", "contrastive"))
  for i, m in enumerate(steps):
    window = _add(window, m, jnp.int32(i))
  means = window.means()
  for key in ("loss", "grad_norm"):
    expected = np.mean([np.float64(m[key]) for m in steps])
    np.testing.assert_allclose(means[key], expected, rtol=1e-6)
  assert set(means) == {"loss", "grad_norm"}  # the flags are not averaged
  assert window.failed_checks() == (None, [])


def test_window_keeps_the_first_nonfinite_step_and_its_checks_in_report_order():
  rng = np.random.default_rng(1)
  order = ("data", "contrastive", "gradient", "params")
  window = metrics_lib.StepMetrics.empty(_step_metrics(rng), order)
  flags = [(), (), ("params", "gradient", "contrastive"), ("data",), ()]
  for i, bad in enumerate(flags, start=10):
    window = _add(window, _step_metrics(rng, bad), jnp.int32(i))
  assert window.failed_checks() == (12, ["contrastive", "gradient", "params"])
  assert not bool(window.clean)
  fresh = metrics_lib.StepMetrics.empty(_step_metrics(rng), order)
  assert bool(fresh.clean) and fresh.failed_checks() == (None, [])


def test_jsonl_truncate_drops_later_rows_and_a_partial_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  writer = metrics_lib.JsonlWriter(str(path))
  for step in (5, 10, 15, 20):
    writer.write(step, {"loss": 1.0 / step})
  writer.write(10, {"probe": 0.5}, kind="eval")
  writer.write(20, {"probe": 0.6}, kind="eval")
  with open(path, "a") as f:
    f.write('{"step": 25, "kind": "train", "lo')  # a write cut short by a kill or a full disk
  assert writer.truncate_after(15) == 3  # the two rows of step 20 and the partial line
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert [(r["step"], r["kind"]) for r in records] == [(5, "train"), (10, "train"),
                                                       (15, "train"), (10, "eval")]
  writer.write(20, {"loss": 0.05})  # appending after the repair gives valid JSON lines again
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()][-1] == 20
  assert writer.truncate_after(100) == 0


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_rate_eta_and_dispatch_against_a_fake_clock():
  clock = FakeClock()
  progress = metrics_lib.Progress(start_step=10, total_steps=110, images_per_step=256, clock=clock)
  for _ in range(3):
    progress.dispatched(0.002)
  clock.now += 5.0  # 10 steps in 5 s
  speed = progress.update(20)
  assert speed["steps_per_sec"] == pytest.approx(2.0)
  assert speed["images_per_sec"] == pytest.approx(512.0)
  assert speed["step_ms"] == pytest.approx(500.0)
  assert speed["dispatch_ms"] == pytest.approx(2.0)
  assert speed["eta_sec"] == pytest.approx(90 / 2.0)
  clock.now += 20.0  # then 10 steps in 20 s: the rate is the last window's, the ETA the run's
  speed = progress.update(30)
  assert speed["steps_per_sec"] == pytest.approx(0.5)
  assert speed["eta_sec"] == pytest.approx(80 / (20 / 25.0))
  assert "dispatch_ms" not in speed  # no step was dispatched between these two boundaries


def test_console_line_fields():
  scalars = {"loss": 5.12345, "contrastive": 5.0, "nonfinite/data": 0.0, "lr/backbone": 3e-3,
             "steps_per_sec": 2.0, "images_per_sec": 812.4, "eta_sec": 192.0, "step_ms": 500.0,
             "dispatch_ms": 1.0}
  speed = {"images_per_sec": 812.4, "eta_sec": 3723.0}
  line = metrics_lib.console_line(120, 1000, scalars, speed)
  assert line == ("[ 120/1000] loss 5.123 contrastive 5 | lr backbone 3.00e-03 | 812 img/s | "
                  "ETA 1:02:03")
  assert metrics_lib.console_line(3, 9, {"loss": 1.0}, None) == "[3/9] loss 1"  # no speed yet


def test_time_dispatch_reports_launch_and_step_time():
  step = jax.jit(lambda x: jnp.tanh(x @ x))
  state = {"x": jnp.eye(64)}

  def dispatch():
    state["x"] = step(state["x"])
    return state["x"]

  timing = metrics_lib.time_dispatch(dispatch, num_steps=5)
  assert 0 < timing["dispatch_ms"] <= timing["step_ms"]


def test_tensorboard_resume_keeps_each_step_once_and_repairs_a_partial_record(tmp_path):
  pytest.importorskip("tensorflow", reason="TensorBoard event files need TensorFlow")
  logdir = str(tmp_path)
  first = metrics_lib.TensorBoardWriter(logdir)
  for step in (5, 10, 15, 20):
    first.write(step, {"loss": 1.0 / step})
  first.close()
  [path] = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  with open(path, "ab") as f:
    f.write(b"\x1a\x00\x00\x00\x00\x00\x00\x00\x07")  # a record cut short by a kill
  # A rewrite's temporary file left by a kill: removed, and never read as events.
  (tmp_path / event_files.TMP_NAME).write_bytes(b"partial")
  resumed = metrics_lib.TensorBoardWriter(logdir, resume_step=10)
  assert resumed.dropped == 2  # steps 15 and 20; the partial record is dropped without a count
  for step in (15, 20):
    resumed.write(step, {"loss": 2.0 / step})
  resumed.close()
  rows = sorted(tensorboard_scalars(logdir), key=lambda r: r[1])
  assert [(tag, step) for tag, step, _ in rows] == [("loss", s) for s in (5, 10, 15, 20)]
  np.testing.assert_allclose([v for *_, v in rows], [1 / 5, 1 / 10, 2 / 15, 2 / 20], rtol=1e-6)
  assert not (tmp_path / event_files.TMP_NAME).exists()
  files = {p: open(p, "rb").read() for p in glob.glob(os.path.join(logdir, "events.out.*"))}
  assert event_files.truncate(logdir, 20) == 0  # nothing after step 20: the files are untouched
  assert {p: open(p, "rb").read() for p in files} == files


def test_event_file_truncation_repairs_a_partial_record_with_nothing_to_drop(tmp_path):
  pytest.importorskip("tensorflow", reason="TensorBoard event files need TensorFlow")
  logdir = str(tmp_path)
  writer = metrics_lib.TensorBoardWriter(logdir)
  writer.write(5, {"loss": 0.2})
  writer.close()
  [path] = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  whole = open(path, "rb").read()
  with open(path, "ab") as f:
    f.write(b"\x1a\x00\x00")  # a kill inside the next record's length
  assert event_files.truncate(logdir, 5) == 0
  assert open(path, "rb").read() == whole  # exactly the partial record is gone
  assert tensorboard_scalars(logdir) == [("loss", 5, pytest.approx(0.2))]


def test_event_file_truncation_leaves_a_file_that_holds_no_events(tmp_path, caplog):
  tf = pytest.importorskip("tensorflow", reason="TensorBoard event files need TensorFlow")
  path = str(tmp_path / "events.out.tfevents.0.other")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b"\xff\xff\xff")  # a valid record whose payload is not an Event
  before = open(path, "rb").read()
  assert event_files.truncate(str(tmp_path), 0) == 0
  assert open(path, "rb").read() == before
  assert "does not hold TensorBoard events" in caplog.text


def test_a_full_disk_under_tensorboard_is_an_os_error_and_keeps_the_event_file(tmp_path,
                                                                                monkeypatch):
  tf = pytest.importorskip("tensorflow", reason="TensorBoard event files need TensorFlow")
  full = tf.errors.ResourceExhaustedError(None, None, "events.out; No space left on device")

  def fail(error):
    def raise_it(*args, **kwargs):
      raise error
    return raise_it

  logdir = str(tmp_path)
  writer = metrics_lib.TensorBoardWriter(logdir)
  writer.write(1, {"loss": 1.0})
  writer.write(2, {"loss": 0.5})
  monkeypatch.setattr(writer._writer, "flush", fail(full))
  with pytest.raises(OSError) as raised:  # the command line reports OSErrors in one line
    writer.write(3, {"loss": 0.25})
  assert raised.value.errno == errno.ENOSPC and raised.value.filename == logdir
  invalid = tf.errors.InvalidArgumentError(None, None, "x")
  monkeypatch.setattr(writer._writer, "flush", fail(invalid))
  with pytest.raises(tf.errors.InvalidArgumentError):  # not a disk error: left as it is (a bug)
    writer.write(4, {"loss": 0.125})
  monkeypatch.undo()
  writer.close()
  [path] = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  before = open(path, "rb").read()

  class FullDiskWriter:  # a TFRecordWriter on a full disk
    def __init__(self, tmp):
      open(tmp, "wb").close()

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def write(self, record):
      raise full

  monkeypatch.setattr(tf.io, "TFRecordWriter", FullDiskWriter)
  with pytest.raises(OSError) as raised:
    event_files.truncate(logdir, 1)
  assert raised.value.errno == errno.ENOSPC and raised.value.filename == path
  assert open(path, "rb").read() == before  # the original is untouched
  assert os.listdir(logdir) == [os.path.basename(path)]  # and no temporary file is left
  monkeypatch.setattr(tf.io, "TFRecordWriter", fail(ValueError("not TensorFlow's")))
  with pytest.raises(ValueError):  # other errors are not relabelled
    event_files.truncate(logdir, 1)
  assert os.listdir(logdir) == [os.path.basename(path)]


def test_a_failed_metrics_rewrite_names_the_file_and_keeps_it(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  writer = metrics_lib.JsonlWriter(str(path))
  for step in (5, 10):
    writer.write(step, {"loss": 1.0 / step})
  before = path.read_text()
  real_open = open

  def full_disk_open(name, mode="r", *args, **kwargs):
    handle = real_open(name, mode, *args, **kwargs)
    if "w" in mode or "a" in mode:
      handle.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
    return handle

  monkeypatch.setattr("builtins.open", full_disk_open)
  for call in (lambda: writer.truncate_after(5), lambda: writer.write(15, {"loss": 0.1})):
    with pytest.raises(OSError) as raised:
      call()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
  monkeypatch.undo()
  assert path.read_text() == before and os.listdir(tmp_path) == ["metrics.jsonl"]
