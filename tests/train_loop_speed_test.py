"""The training loop's step: compiled once (nothing recompiles in 20 steps), metrics fetched one step late
without losing a log step, batches put on the devices ahead, model TFLOP/s in the log."""

import json
import os
import pathlib
import re
import subprocess
import sys

import tiny_data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILED = re.compile(r"Finished XLA compilation of (jit\([^)]*\))")


def _start(data_dir: pathlib.Path, workdir: pathlib.Path, steps: int) -> subprocess.Popen:
  overrides = {"num_steps": steps, "checkpoint.every_steps": 100, "eval.save_predictions": False}
  return subprocess.Popen(
      [sys.executable, "tests/train_driver.py", "--data-dir", str(data_dir), "--workdir", str(workdir),
       "--overrides", json.dumps(overrides)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1", PYTHONPATH=str(REPO_ROOT)))


def test_twenty_steps_compile_nothing_after_the_first_and_log_every_step(tmp_path):
  data_dir = tiny_data.write_tiny_dataset(tmp_path / "data")
  runs = {steps: _start(data_dir, tmp_path / f"run{steps}", steps) for steps in (2, 20)}
  compiled = {}
  for steps, proc in runs.items():
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    compiled[steps] = COMPILED.findall(out)
  # The pre-step memory check's compilation is the one the loop uses: one train step compilation.
  assert compiled[20].count("jit(train_step)") == 1
  # 18 more steps (with a log, a data wait and a host sync each) compile nothing more than 2 steps do.
  assert sorted(compiled[20]) == sorted(compiled[2])

  lines = [json.loads(line) for line in (tmp_path / "run20" / "metrics.jsonl").read_text().splitlines()]
  train = [row for row in lines if row.get("split") == "train"]
  assert [row["step"] for row in train] == list(range(1, 21))  # one step late, but none lost
  assert all(row["model_tflops_per_s"] > 0 for row in train[1:])
