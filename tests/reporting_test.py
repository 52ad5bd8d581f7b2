"""Tests for hrm_jax.training.reporting: files are read back by real readers, time is faked."""

import io
import json
import math
import pathlib
import re
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

from hrm_jax.training import reporting

# TensorBoard is a test dependency (requirements-test.txt); its own readers check what we write.
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow  # pylint: disable=g-import-not-at-top


class FakeClock:
  """A clock the test moves by hand; `sleep` advances it."""

  def __init__(self, start: float = 1000.0):
    self.now = start

  def __call__(self) -> float:
    return self.now

  def sleep(self, seconds: float) -> None:
    self.now += seconds


# --------------------------------------------------------------------------------------------------
# TensorBoardWriter read back by TensorBoard.
# --------------------------------------------------------------------------------------------------


def _load(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return acc


def test_tensorboard_writer_is_read_back_by_event_accumulator(tmp_path):
  logdir = tmp_path / "tb"
  expected = {}
  with reporting.TensorBoardWriter(logdir) as writer:
    for step in range(0, 50, 5):
      loss = np.float32(1.0 / (step + 1)) if step % 2 else 1.0 / (step + 1)
      writer.scalar("train/loss", loss, step)
      expected.setdefault("train/loss", []).append((step, 1.0 / (step + 1)))
    writer.scalars({"exact_accuracy": np.float64(0.123456789), "steps": 7, "names": "skipped",
                    "per_token": np.zeros(3)}, step=40, prefix="eval")
    writer.write(45, {"lr": 1e-4}, split="train")
  files = list(logdir.iterdir())
  assert len(files) == 1 and "tfevents" in files[0].name

  acc = _load(logdir)
  assert acc.file_version == 2.0
  assert sorted(acc.Tags()["scalars"]) == ["eval/exact_accuracy", "eval/steps", "train/loss", "train/lr"]
  got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
  assert got == [(s, float(np.float32(v))) for s, v in expected["train/loss"]]
  assert [(e.step, e.value) for e in acc.Scalars("eval/exact_accuracy")] == [
      (40, float(np.float32(0.123456789)))]
  assert [(e.step, e.value) for e in acc.Scalars("eval/steps")] == [(40, 7.0)]
  assert [(e.step, e.value) for e in acc.Scalars("train/lr")] == [(45, float(np.float32(1e-4)))]


def test_tensorboard_writer_restart_adds_a_file_that_tensorboard_merges(tmp_path):
  with reporting.TensorBoardWriter(tmp_path) as writer:
    writer.scalar("loss", 2.0, 1)
  with reporting.TensorBoardWriter(tmp_path) as writer:
    writer.scalar("loss", 1.0, 2)
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  assert [(e.step, e.value) for e in _load(tmp_path).Scalars("loss")] == [(1, 2.0), (2, 1.0)]


def test_tensorboard_writer_flush_makes_data_visible_before_close(tmp_path):
  writer = reporting.TensorBoardWriter(tmp_path, flush_secs=3600)
  writer.scalar("loss", 0.5, 3)
  writer.flush()
  assert [(e.step, e.value) for e in _load(tmp_path).Scalars("loss")] == [(3, 0.5)]
  writer.close()
  writer.close()  # Idempotent.
  with pytest.raises(ValueError, match="closed"):
    writer.scalar("loss", 0.5, 4)


def test_tensorboard_event_records_pass_the_strict_crc_checking_reader(tmp_path):
  with reporting.TensorBoardWriter(tmp_path) as writer:
    writer.scalars({"ü/λ": -3.5, "huge": 1e300, "loss": 0.1}, step=2**40 + 3, prefix="train")
    writer.scalar("first", 1.0, 0)
  reader = pywrap_tensorflow.PyRecordReader_New(str(writer.path))
  events = []
  for _ in range(3):  # file_version, then the two events; GetNext raises DataLossError on a CRC mismatch.
    reader.GetNext()
    events.append(event_pb2.Event.FromString(reader.record()))
  assert events[0].file_version == "brain.Event:2"
  assert events[1].step == 2**40 + 3
  assert [(v.tag, v.simple_value) for v in events[1].summary.value] == [
      ("train/ü/λ", -3.5), ("train/huge", math.inf), ("train/loss", float(np.float32(0.1)))]
  assert events[2].step == 0 and events[2].summary.value[0].tag == "first"
  # A flipped payload byte is caught by the data CRC.
  corrupt = bytearray(writer.path.read_bytes())
  corrupt[-6] ^= 0x01
  writer.path.write_bytes(bytes(corrupt))
  reader = pywrap_tensorflow.PyRecordReader_New(str(writer.path))
  reader.GetNext()
  reader.GetNext()
  with pytest.raises(Exception, match="crc32 check"):
    reader.GetNext()


def test_tensorboard_writer_does_not_import_torch_or_boto3_but_leaves_them_importable(tmp_path):
  script = (
      "import importlib.util, sys\n"
      "from hrm_jax.training import reporting\n"
      f"w = reporting.TensorBoardWriter({str(tmp_path)!r}); w.scalar('x', 1.0, 1); w.close()\n"
      "assert 'torch' not in sys.modules and 'boto3' not in sys.modules, sorted(sys.modules)\n"
      "if importlib.util.find_spec('torch') is not None:\n"
      "  import torch; print('torch importable', torch.__name__)\n"
      "print('OK')\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]
  assert [(e.step, e.value) for e in _load(tmp_path).Scalars("x")] == [(1, 1.0)]


def test_tensorboard_writer_rejects_unusable_logdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(OSError, match="writable folder"):
    reporting.TensorBoardWriter(blocker / "tb")


# --------------------------------------------------------------------------------------------------
# JSONL.
# --------------------------------------------------------------------------------------------------


def test_jsonl_lines_parse_convert_numbers_and_append_across_writers(tmp_path):
  path = tmp_path / "run" / "metrics.jsonl"
  with reporting.JsonlWriter(path) as writer:
    writer.write(1, {"loss": np.float32(0.5), "count": np.int64(3), "lr": 1e-3}, wall_time=10.0)
    writer.write(2, {"loss": float("nan"), "hist": np.array([1, 2]), "note": "hi"})
  with reporting.JsonlWriter(path) as writer:  # A restarted run appends.
    writer.write(3, {"exact_accuracy": np.float64(0.25)}, split="eval")
  lines = path.read_text().splitlines()
  assert len(lines) == 3
  records = [json.loads(line) for line in lines]  # Strict JSON: every line parses alone.
  assert records[0] == {"step": 1, "time": 10.0, "split": "train", "loss": 0.5, "count": 3.0, "lr": 1e-3}
  assert type(records[0]["loss"]) is float and type(records[0]["count"]) is float
  assert records[1]["loss"] is None and records[1]["hist"] == [1.0, 2.0] and records[1]["note"] == "hi"
  assert records[2]["split"] == "eval" and records[2]["exact_accuracy"] == 0.25
  assert "NaN" not in path.read_text()


def test_jsonl_converts_jax_scalars(tmp_path):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  path = tmp_path / "m.jsonl"
  with reporting.JsonlWriter(path) as writer:
    writer.write(4, {"loss": jnp.float32(1.5), "acc": jnp.array([0.75])})
  record = reporting.read_jsonl(path)[0]
  assert record["loss"] == 1.5 and record["acc"] == 0.75 and type(record["acc"]) is float


def test_jsonl_recovers_from_a_torn_last_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"step": 1, "time": 0, "split": "train"}\n{"step": 2, "ti')  # Crash mid-write.
  with reporting.JsonlWriter(path) as writer:
    writer.write(3, {"loss": 1.0})
  assert [r["step"] for r in reporting.read_jsonl(path)] == [1, 3]
  assert json.loads(path.read_text().splitlines()[-1])["step"] == 3


def test_jsonl_rejects_reserved_names_bad_split_and_bad_paths(tmp_path):
  with reporting.JsonlWriter(tmp_path / "m.jsonl") as writer:
    with pytest.raises(ValueError, match="collide"):
      writer.write(1, {"step": 3})
    with pytest.raises(ValueError, match="'train' or 'eval'"):
      writer.write(1, {"loss": 3}, split="test")
  with pytest.raises(IsADirectoryError, match="is a folder"):
    reporting.JsonlWriter(tmp_path)
  (tmp_path / "file").write_text("")
  with pytest.raises(OSError, match="writable folder"):
    reporting.JsonlWriter(tmp_path / "file" / "m.jsonl")


# --------------------------------------------------------------------------------------------------
# Writers: fan-out, W&B, the standard set.
# --------------------------------------------------------------------------------------------------


class RecordingWriter:

  def __init__(self, fail=False):
    self.calls = []
    self.fail = fail

  def write(self, step, metrics, split="train"):
    self.calls.append(("write", step, dict(metrics), split))
    if self.fail:
      raise RuntimeError("disk full")

  def flush(self):
    self.calls.append(("flush",))

  def close(self):
    self.calls.append(("close",))


def test_multi_writer_fans_out_and_reports_failures_after_calling_everyone():
  a, broken, c = RecordingWriter(), RecordingWriter(fail=True), RecordingWriter()
  multi = reporting.MultiWriter([a, broken, c])
  with pytest.raises(RuntimeError, match="disk full"):
    multi.write(5, {"loss": 1.0}, "eval")
  assert a.calls == c.calls == [("write", 5, {"loss": 1.0}, "eval")]
  multi.flush()
  multi.close()
  assert c.calls[1:] == [("flush",), ("close",)]


def test_make_writers_writes_jsonl_and_tensorboard(tmp_path):
  with reporting.make_writers(tmp_path) as writers:
    writers.write(10, {"loss": 0.25})
    writers.write(10, {"exact_accuracy": 0.5}, split="eval")
  assert [(r["step"], r["split"]) for r in reporting.read_jsonl(tmp_path / "metrics.jsonl")] == [
      (10, "train"), (10, "eval")]
  acc = _load(tmp_path / "tb")
  assert [(e.step, e.value) for e in acc.Scalars("eval/exact_accuracy")] == [(10, 0.5)]


def test_wandb_writer_without_wandb_says_how_to_fix(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # Makes `import wandb` fail even if installed.
  assert not reporting.wandb_available()
  with pytest.raises(ImportError, match=r"pip install wandb"):
    reporting.WandbWriter("hrm")


def test_wandb_writer_logs_prefixed_scalars(monkeypatch):
  logged, finished = [], []
  run = types.SimpleNamespace(log=lambda data, step: logged.append((step, data)),
                              finish=lambda: finished.append(True))
  fake = types.ModuleType("wandb")
  fake.init = lambda **kwargs: run
  monkeypatch.setitem(sys.modules, "wandb", fake)
  assert reporting.wandb_available()
  writer = reporting.WandbWriter("hrm", name="r1")
  writer.write(3, {"loss": np.float32(0.5), "note": "x"}, split="train")
  writer.close()
  writer.close()
  assert logged == [(3, {"train/loss": 0.5})] and finished == [True]


# --------------------------------------------------------------------------------------------------
# status.json
# --------------------------------------------------------------------------------------------------


def test_status_file_rate_limit_force_and_state_changes(tmp_path):
  clock = FakeClock()
  path = tmp_path / "status.json"
  status = reporting.StatusFile(path, run_id="r1", total_steps=1000, min_interval_s=10,
                                clock=clock, wall_clock=clock)
  assert status.update(step=1)  # First call always writes.
  clock.sleep(5)
  assert not status.update(step=2)
  assert reporting.StatusFile.read(path)["step"] == 1
  clock.sleep(5)
  assert status.update(step=3)
  assert reporting.StatusFile.read(path)["step"] == 3
  clock.sleep(1)
  assert status.update(force=True, step=4, latest_checkpoint=tmp_path / "ckpt_4")
  clock.sleep(1)
  assert status.update(state="stopped", message="SIGTERM")  # State changes are never held back.
  data = reporting.StatusFile.read(path)
  assert (data["step"], data["state"], data["message"]) == (4, "stopped", "SIGTERM")
  assert data["latest_checkpoint"] == str(tmp_path / "ckpt_4")
  assert status.writes == 4


def test_status_file_is_rewritten_at_least_once_a_minute_when_called_every_step(tmp_path):
  clock = FakeClock()
  status = reporting.StatusFile(tmp_path / "status.json", min_interval_s=10, clock=clock,
                                wall_clock=clock)
  write_times = []
  for step in range(2000):  # ~23 minutes of 0.7 s steps.
    if status.update(step=step):
      write_times.append(clock())
    clock.sleep(0.7)
  gaps = np.diff(write_times)
  assert gaps.max() <= 60 and gaps.min() >= 10
  assert len(write_times) < 2000 / 10  # Far fewer writes than calls.
  with pytest.raises(ValueError, match="once a minute"):
    reporting.StatusFile(tmp_path / "s.json", min_interval_s=120)


def test_status_file_contents_eta_and_eval_tracking(tmp_path):
  clock = FakeClock(start=1_700_000_000.0)
  path = tmp_path / "status.json"
  status = reporting.StatusFile(path, run_id="r1", total_steps=1000, clock=clock, wall_clock=clock)
  clock.sleep(120)
  status.update(force=True, step=400, epoch=2, samples_seen=400 * 32, samples_per_s=np.float32(64.0),
                steps_per_s=2.0, data_wait_fraction=0.05, extra={"lr": 1e-4})
  data = reporting.StatusFile.read(path)
  assert data["eta_seconds"] == 300.0 and data["eta"] == "5m 00s"
  assert data["progress"] == 0.4 and data["elapsed_seconds"] == 120.0
  assert data["samples_per_s"] == 64.0 and data["extra"] == {"lr": 1e-4}
  assert data["updated_at"] == "2023-11-14T22:15:20+00:00"
  assert data["eta_at"] == "2023-11-14T22:20:20+00:00"
  assert data["state"] == "running" and data["run_id"] == "r1"

  assert status.record_eval(400, {"exact_accuracy": 0.30, "lm_loss": np.float32(0.5)})
  assert not status.record_eval(800, {"exact_accuracy": 0.20})
  assert status.record_eval(900, {"exact_accuracy": 0.35})
  data = reporting.StatusFile.read(path)
  assert data["last_eval"] == {"step": 900, "metrics": {"exact_accuracy": 0.35}}
  assert data["best_eval"] == {"metric": "exact_accuracy", "value": 0.35, "step": 900}

  status.finish("failed", message="NaN loss at step 901")
  data = reporting.StatusFile.read(path)
  assert (data["state"], data["message"]) == ("failed", "NaN loss at step 901")
  with pytest.raises(ValueError, match="one of"):
    status.update(state="crashed")
  with pytest.raises(TypeError, match="unknown status field"):
    status.update(sample_seen=3)


def test_status_file_is_always_valid_json_for_a_concurrent_reader(tmp_path):
  path = tmp_path / "status.json"
  status = reporting.StatusFile(path, min_interval_s=0)
  status.update(step=0)
  stop = threading.Event()
  errors, reads = [], [0]

  def reader():
    while not stop.is_set():
      try:
        with open(path) as f:
          json.load(f)
        reads[0] += 1
      except (json.JSONDecodeError, FileNotFoundError) as e:
        errors.append(e)

  thread = threading.Thread(target=reader)
  thread.start()
  try:
    for step in range(300):
      status.update(step=step, extra={"padding": "x" * (step * 37 % 5000)})
  finally:
    stop.set()
    thread.join()
  assert not errors and reads[0] > 0
  assert reporting.StatusFile.read(path)["step"] == 299
  assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # No temporary files left behind.


# --------------------------------------------------------------------------------------------------
# ETA arithmetic, run ids.
# --------------------------------------------------------------------------------------------------


def test_eta_arithmetic_and_duration_formatting():
  assert reporting.eta_seconds(250, 1000, 5.0) == 150.0
  assert reporting.eta_seconds(1000, 1000, 5.0) == 0.0
  assert reporting.eta_seconds(1200, 1000, None) == 0.0
  assert reporting.eta_seconds(10, 1000, 0.0) is None
  assert reporting.eta_seconds(10, None, 3.0) is None
  assert [reporting.format_duration(s) for s in (0, 12.4, 65, 3600, 3725, 90061, None, -1)] == [
      "0s", "12s", "1m 05s", "1h 00m", "1h 02m", "1d 01h", "?", "?"]


def test_run_ids_are_short_unique_and_sortable():
  run_id = reporting.new_run_id(now=1_795_458_781.0)
  assert re.fullmatch(r"20261123-\d{6}-[0-9a-f]{4}", run_id)
  ids = {reporting.new_run_id(now=0.0) for _ in range(200)}
  assert len(ids) > 190  # Random suffix separates runs started in the same second.
  assert reporting.new_run_id(now=100.0) < reporting.new_run_id(now=100_000.0)


# --------------------------------------------------------------------------------------------------
# ProgressBar.
# --------------------------------------------------------------------------------------------------


def test_progress_bar_non_tty_prints_plain_lines_every_interval():
  clock, out = FakeClock(), io.StringIO()
  bar = reporting.ProgressBar(1000, stream=out, plain_interval_s=30, clock=clock)
  assert not bar.is_tty  # StringIO is not a terminal.
  for step in range(1, 501):
    clock.sleep(0.5)  # 2 steps/s.
    bar.update(step, {"loss": 0.5, "exact_accuracy": 0.25, "count": 1} if step % 50 == 0 else None)
  bar.close()
  text = out.getvalue()
  assert "\r" not in text and "\x1b" not in text
  lines = text.splitlines()
  # 250 fake seconds: the first update, one line per 30 s after it, and the final state on close.
  assert len(lines) == 1 + 250 // 30 + 1
  assert lines[0].startswith("step 1/1000 (0.1%)")
  assert lines[-1] == "step 500/1000 (50.0%) | 2.00 steps/s | ETA 4m 10s | loss 0.5 | exact_acc 25.0%"


def test_progress_bar_tty_redraws_in_place_and_uses_given_rate():
  clock, out = FakeClock(), io.StringIO()
  bar = reporting.ProgressBar(100, stream=out, is_tty=True, width=200, clock=clock, initial_step=50)
  for step in range(51, 101):
    clock.sleep(1.0)
    bar.update(step, {"lm_loss": 1.25}, steps_per_s=4.0)
    if step == 60:
      bar.write("eval done")  # A message goes on its own line and the bar is redrawn below it.
      before, message, after = out.getvalue().rpartition("eval done\n")
      assert message and before.endswith("\r") and before.rstrip("\r").split("\r")[-1].strip() == ""
      assert after == "\r[############........] step 60/100 (60.0%) | 4.00 steps/s | ETA 10s | loss 1.25"
  bar.close()
  text = out.getvalue()
  assert text.count("\n") == 2 and text.endswith("\n")
  assert "\r" in text and text.count("step 100/100") >= 1  # Redrawn in place, never on new lines.
  last = text.rstrip("\n").split("\r")[-1]
  assert last == "[####################] step 100/100 (100.0%) | 4.00 steps/s | ETA 0s | loss 1.25"


# --------------------------------------------------------------------------------------------------
# StepTimer.
# --------------------------------------------------------------------------------------------------


def test_step_timer_splits_data_wait_and_compute_with_fake_sleeps():
  clock = FakeClock()
  pending = [0.0]  # Device work queued by asynchronous dispatch, finished only when the host blocks.

  def batches():
    while True:
      clock.sleep(0.2)  # The input pipeline makes the host wait 0.2 s per batch.
      yield "batch"

  def train_step(batch):
    clock.sleep(0.01)  # Dispatch returns quickly...
    pending[0] += 0.29  # ...while the device needs 0.29 s more.
    return {"loss": 1.0}

  def block(outputs):
    clock.sleep(pending[0])
    pending[0] = 0.0

  timer = reporting.StepTimer(batch_size=8, clock=clock, block_fn=block)
  clock.sleep(100)  # Setup before the loop must not count.
  all_stats = []
  for step, batch in enumerate(timer.timed(batches()), start=1):
    metrics = train_step(batch)
    if step == 1:
      clock.sleep(20)  # Compilation on the first step.
    timer.step_done()
    if step % 10 == 0:
      all_stats.append(timer.sync(metrics))
      with timer.excluded():
        clock.sleep(50)  # Evaluation between windows is not step time.
    if step == 40:
      break
  first, later = all_stats[0], all_stats[1:]
  assert first.includes_compile and first.wall_s == pytest.approx(10 * 0.5 + 20)
  for stats in later:
    assert not stats.includes_compile
    assert stats.steps == 10 and stats.samples == 80
    assert stats.data_wait_per_step_s == pytest.approx(0.2)
    assert stats.compute_per_step_s == pytest.approx(0.3)
    assert stats.steps_per_s == pytest.approx(2.0)
    assert stats.samples_per_s == pytest.approx(16.0)
    assert stats.data_wait_fraction == pytest.approx(0.4)
  assert timer.mean_data_wait_s == pytest.approx(0.2)
  assert timer.mean_compute_s == pytest.approx(0.3)
  assert timer.smoothed_steps_per_s == pytest.approx(2.0)
  assert timer.smoothed_samples_per_s == pytest.approx(16.0)
  assert timer.total_steps == 40 and timer.total_samples == 320
  assert timer.sync() is None  # No steps since the last sync.


def test_step_timer_blocks_on_real_jax_outputs():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  step_fn = jax.jit(lambda x: (x @ x.T).sum())
  timer = reporting.StepTimer(batch_size=4)
  x = jnp.ones((4, 8))
  out = None
  for batch in timer.timed([x, x, x]):
    out = step_fn(batch)
    timer.step_done()
  stats = timer.sync({"loss": out})
  assert stats.steps == 3 and stats.samples == 12 and stats.wall_s > 0
  assert stats.data_wait_s <= stats.wall_s
  assert float(out) == 4 * 4 * 8


# --------------------------------------------------------------------------------------------------
# Evaluation report.
# --------------------------------------------------------------------------------------------------


def test_eval_report_puts_exact_accuracy_first_then_the_rest_in_order():
  report = reporting.format_eval_report({
      "lm_loss": np.float32(0.75), "q_halt_loss": 0.0312, "accuracy": 0.9321, "steps": 7.4167,
      "exact_accuracy": np.float64(0.413), "count": 1000, "q_halt_accuracy": 0.981,
      "per_class_accuracy": {"wall": 0.99, "path": 0.5},
  }, step=5208)
  lines = report.splitlines()
  assert lines[0] == "Evaluation at step 5208"
  assert lines[1] == "  EXACT ACCURACY  41.30%  (413 / 1000 examples)"
  assert lines[2] == "  token accuracy  93.21%"
  assert lines[3:6] == ["  per-class accuracy:", "    wall  99.00%", "    path  50.00%"]
  assert lines[6] == "  mean halting steps  7.42"
  assert lines[7] == "  losses  lm_loss 0.7500  q_halt_loss 0.0312"
  assert lines[8] == "  other  q_halt_accuracy 98.10%"
  assert len(lines) == 9


def test_eval_report_handles_nested_sets_and_missing_exact_accuracy():
  report = reporting.format_eval_report({
      "all": {"exact_accuracy": 0.5, "per_class_accuracy/3": 0.25},
      "hard": {"accuracy": 0.1},
  })
  assert report.splitlines() == [
      "Evaluation", "  [all]", "    EXACT ACCURACY  50.00%", "    per-class accuracy:", "      3  25.00%",
      "  [hard]", "    EXACT ACCURACY  n/a (no exact_accuracy in the metrics)",
      "    token accuracy  10.00%"]
