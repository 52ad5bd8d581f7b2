"""Scaling tests: 8 devices and 2 processes train exactly as 1 device does (the real `train_and_evaluate`).

Each run is a fresh process (`tests/train_driver.py`): the device count must be fixed before JAX starts, and
`jax.distributed` can be initialised once per process. All runs train the same tiny config (puzzle table,
ACT exploration, global batch 16) for 20 steps, log every step, and are compared on their per-step training
loss and gradient norm and on the final evaluation. The runs start together when the module's fixture is
set up, to share the cores, and each test waits for its own.
"""

from __future__ import annotations

import json
import pathlib
import socket

import numpy as np
import pytest

import background_runs
import tiny_data

NUM_STEPS = 20
RTOL = 1e-5
RUN_TIMEOUT_S = 400  # per run, on a busy 2-core machine; a hung collective fails the test, not the suite


def _free_loopback_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """name -> (Run, workdir) for: one_device, eight_devices, process0 + process1 (one 2-process job)."""
  root = tmp_path_factory.mktemp("scaling")
  data_dir = tiny_data.write_tiny_dataset(root / "data")
  coordinator = f"127.0.0.1:{_free_loopback_port()}"
  specs = {
      "one_device": ("one_device", 1, []),
      "eight_devices": ("eight_devices", 8, []),
      **{f"process{i}": ("two_processes", 1, ["--coordinator", coordinator, "--num-processes", "2",
                                               "--process-id", str(i)]) for i in range(2)},
  }
  started = {}
  for name, (workdir_name, num_devices, extra) in specs.items():
    args = ["tests/train_driver.py", "--data-dir", str(data_dir), "--workdir", str(root / workdir_name), *extra]
    run = background_runs.Run(name, args, root / "logs", background_runs.cpu_env(num_devices), RUN_TIMEOUT_S)
    started[name] = (run, root / workdir_name)
  yield started
  for run, _ in started.values():
    run.kill()


def _finished(runs, *names: str) -> list[str]:
  chosen = [runs[name][0] for name in names]
  results = background_runs.wait_all(chosen)
  if any(r.returncode != 0 for r in results):
    pytest.fail("a training process failed or timed out:\n" + "\n".join(run.describe() for run in chosen))
  return [r.stdout for r in results]


def _train_metrics(workdir: pathlib.Path) -> dict[int, dict[str, float]]:
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [line for line in lines if line["split"] == "train"]
  steps = [line["step"] for line in train]
  assert steps == list(range(1, NUM_STEPS + 1)), steps  # one writer, every step logged once
  return {line["step"]: line for line in train}


def _final_summary(stdout: str) -> dict[str, float]:
  return json.loads(stdout.split("driver: final ", 1)[1].splitlines()[0])


def _reference(runs):
  (stdout,) = _finished(runs, "one_device")
  assert "process 0/1, 1 local / 1 global devices" in stdout
  return _train_metrics(runs["one_device"][1]), _final_summary(stdout)


def _assert_same_predictions(workdir: pathlib.Path, reference_workdir: pathlib.Path) -> None:
  """eval.save_predictions: every test example once, in order, with the same predictions as one device."""
  name = f"predictions/step_{NUM_STEPS}.npz"
  with np.load(workdir / name) as got, np.load(reference_workdir / name) as want:
    assert sorted(got.files) == sorted(want.files)
    assert len(want["inputs"]) == sum(tiny_data.TEST_SET_SIZES.values())
    for key in want.files:
      if key in ("q_halt_logits", "q_continue_logits"):  # float logits; the rest are integer predictions
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=1e-6)
      else:
        np.testing.assert_array_equal(got[key], want[key])


def _assert_same_training(got: dict[int, dict], want: dict[int, dict]) -> float:
  worst = 0.0
  for step, line in want.items():
    for name in ("loss", "grad_norm"):
      error = abs(got[step][name] - line[name]) / abs(line[name])
      assert error <= RTOL, (step, name, got[step][name], line[name])
      worst = max(worst, error)
  # The runs must actually train: a flat trajectory would match trivially.
  assert want[NUM_STEPS]["loss"] < 0.95 * want[1]["loss"]
  return worst


def _assert_same_evaluation(summary: dict[str, float], want: dict[str, float]) -> None:
  assert summary["count"] == sum(tiny_data.TEST_SET_SIZES.values())
  for name in ("accuracy", "lm_loss", "q_halt_loss"):
    assert summary[name] == pytest.approx(want[name], rel=RTOL)


def test_eight_devices_train_like_one(runs):
  want, want_summary = _reference(runs)
  (stdout,) = _finished(runs, "eight_devices")
  assert "8 local / 8 global devices" in stdout
  worst = _assert_same_training(_train_metrics(runs["eight_devices"][1]), want)
  _assert_same_evaluation(_final_summary(stdout), want_summary)
  _assert_same_predictions(runs["eight_devices"][1], runs["one_device"][1])
  print(f"8 devices vs 1: worst relative difference of loss / grad_norm over {NUM_STEPS} steps {worst:.1e}")


def test_two_processes_train_like_one(runs):
  stdouts = _finished(runs, "process0", "process1")
  for i, stdout in enumerate(stdouts):
    assert f"process {i}/2, 1 local / 2 global devices" in stdout
  want, want_summary = _reference(runs)
  workdir = runs["process0"][1]
  worst = _assert_same_training(_train_metrics(workdir), want)
  for stdout in stdouts:  # each process evaluated its half of every batch; both report the whole split
    _assert_same_evaluation(_final_summary(stdout), want_summary)
  _assert_same_predictions(workdir, runs["one_device"][1])  # gathered from both processes, written once
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
  # status.json is process 0's alone (every process draws its own run id on a fresh start).
  run_id = stdouts[0].split("Started run ", 1)[1].split()[0]
  status = json.loads((workdir / "status.json").read_text())
  assert status["run_id"] == run_id and status["state"] == "finished"
  print(f"2 processes vs 1: worst relative difference of loss / grad_norm over {NUM_STEPS} steps {worst:.1e}")
