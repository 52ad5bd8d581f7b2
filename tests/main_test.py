"""The training CLI, `python -m hrm_jax.main`, as a user runs it (subprocesses), and every task config.

The four training runs (demo smoke, a diverging demo run, sudoku and maze smoke) start together when the
module's fixture is set up, to share the cores; each test waits for its own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

import background_runs

REPO_ROOT = background_runs.REPO_ROOT
CONFIG_DIR = REPO_ROOT / "configs"
TASK_CONFIGS = ("sudoku", "maze", "arc1", "arc2", "demo")
# TRM's task configs: loaded and locked here; built into models by tests/trm_model_test.py.
TRM_CONFIGS = ("trm_sudoku", "trm_maze", "trm_arc1", "trm_arc2", "trm_demo")
RUN_TIMEOUT_S = 400


def _run_main(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "hrm_jax.main", *args], cwd=REPO_ROOT,
                        env=background_runs.cpu_env(), capture_output=True, text=True, timeout=timeout)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
  """name -> (background Run of `python -m hrm_jax.main ...`, its workdir, its data_dir)."""
  from hrm_jax.data import demo  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("main")
  demo_data = root / "demo_data"
  demo.ensure_demo_dataset(demo_data)
  # lr 1e30: step 1's loss is finite (computed before the update), the update blows the weights up, and
  # step 2's loss would be NaN. Checkpoints every step, metrics logged every 3 steps: the weights' check
  # before the save of step 1 stops the run.
  diverging = ["--config.optimizer.lr=1e30", "--config.checkpoint.every_steps=1", "--config.log.every_steps=3"]
  specs = {"demo_smoke": ("configs/demo.py:smoke", demo_data, []),
           "nan": ("configs/demo.py:smoke", demo_data, diverging),
           # The task smoke variants build their own tiny datasets (under root, not the checkout's data/).
           "sudoku_smoke": ("configs/sudoku.py:smoke", root / "sudoku_data", []),
           "maze_smoke": ("configs/maze.py:smoke", root / "maze_data", [])}
  started = {}
  for name, (config, data_dir, extra) in specs.items():
    workdir = root / name
    args = ["-m", "hrm_jax.main", f"--config={config}", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
            *extra]
    started[name] = (background_runs.Run(name, args, root / "logs", background_runs.cpu_env(), RUN_TIMEOUT_S),
                     workdir, data_dir)
  yield started
  for run, _, _ in started.values():
    run.kill()


def _result(cli_runs, name: str, returncode: int) -> tuple[background_runs.Result, pathlib.Path, pathlib.Path]:
  run, workdir, data_dir = cli_runs[name]
  result = run.wait()
  assert result.returncode == returncode, run.describe()
  return result, workdir, data_dir


# ==========================================================================================================
# Mistakes a user makes are reported in one line, before anything runs.
# ==========================================================================================================
@pytest.mark.parametrize("override, key", [("--config.optimizer.lrr=1e-3", "lrr"),
                                           ("--config.num_stepz=3", "num_stepz")])
def test_mistyped_config_key_fails_fast_in_one_line(tmp_path, override, key):
  workdir = tmp_path / "run"
  result = _run_main("--config=configs/demo.py", f"--workdir={workdir}", override, timeout=120)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: bad config override " + override)
  assert f"'{key}'" in lines[0] and "Did you mean" in lines[0]
  assert "\\'" not in lines[0]  # no escaped repr
  assert not workdir.exists()  # failed while parsing flags: nothing was started


def test_missing_dataset_names_the_path_and_the_build_command(tmp_path):
  data_dir = tmp_path / "no_such_dataset"
  result = _run_main("--config=configs/sudoku.py", f"--workdir={tmp_path / 'run'}",
                     f"--config.data_dir={data_dir}", "--config.build_data_if_missing=", timeout=120)
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  (line,) = _error_lines(result)
  assert str(data_dir) in line
  assert "python -m hrm_jax.data.build" in line


# ==========================================================================================================
# A diverging run stops with a clear message and keeps only the checkpoints from before the NaN.
# ==========================================================================================================
def test_nan_loss_stops_and_saves_no_checkpoint_after_it(cli_runs):
  result, workdir, _ = _result(cli_runs, "nan", returncode=1)
  (line,) = _error_lines(result)
  # Step 1's loss is finite, but its update left weights whose norm is inf: that checkpoint is never written
  # (the "last good" checkpoint held weights of 5e29).
  assert "the run diverged at step 1 (weights' global norm=inf)" in line, line
  assert "nothing was saved, so rerun with a lower --config.optimizer.lr (now 1e+30)" in line
  assert "Traceback" not in result.stderr
  assert not [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  status = json.loads((workdir / "status.json").read_text())
  assert status["state"] == "failed" and "diverged" in status["message"]
  train = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "train"]
  assert [r["step"] for r in train] == [1] and math.isfinite(train[0]["loss"])


# ==========================================================================================================
# A finished run: status, metrics, TensorBoard, config, and the run length on the console.
# ==========================================================================================================
def test_demo_smoke_run_writes_its_files_and_prints_the_run_length(cli_runs):
  result, workdir, demo_data = _result(cli_runs, "demo_smoke", returncode=0)
  # demo: 2000 training puzzles, global batch 64 -> 31.25 steps per epoch; smoke runs 6 steps.
  assert re.search(r"Run length: 6 optimiser steps = 0\.19 epochs = 384 samples", result.stdout), result.stdout

  status = json.loads((workdir / "status.json").read_text())
  assert status["state"] == "finished", status
  assert status["step"] == status["total_steps"] == 6
  assert status["best_eval"]["metric"] == "exact_accuracy"
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == [1, 2, 3, 4, 5, 6]  # log.every_steps = 1 in the smoke variant
  evals = [r for r in records if r["split"] == "eval"]
  assert 6 in [r["step"] for r in evals] and all(r["count"] == 256 for r in evals)
  events = list((workdir / "tb").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0
  config = json.loads((workdir / "config.json").read_text())
  assert config["num_steps"] == 6 and config["data_dir"] == str(demo_data)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]


def test_rerun_of_a_finished_run_prints_its_result_and_touches_nothing(cli_runs):
  _, workdir, demo_data = _result(cli_runs, "demo_smoke", returncode=0)
  watched = [workdir / "status.json", workdir / "metrics.jsonl", *sorted((workdir / "tb").iterdir())]
  before = {p: p.read_bytes() for p in watched}
  rerun = _run_main("--config=configs/demo.py:smoke", f"--workdir={workdir}", f"--config.data_dir={demo_data}")
  assert rerun.returncode == 0, rerun.stderr
  assert "is already finished at step 6: Evaluation at step 6" in rerun.stdout
  assert "EXACT ACCURACY" in rerun.stdout and "Raise --config.num_steps" in rerun.stdout
  assert sorted((workdir / "tb").iterdir()) == watched[2:]  # no new TensorBoard file
  assert {p: p.read_bytes() for p in watched} == before  # best_eval and last_eval kept, nothing appended


@pytest.mark.parametrize("task", ["sudoku", "maze"])
def test_task_smoke_variant_runs_end_to_end(cli_runs, task):
  result, workdir, _ = _result(cli_runs, f"{task}_smoke", returncode=0)
  assert "Run length: 10 optimiser steps" in result.stdout
  assert json.loads((workdir / "status.json").read_text())["state"] == "finished"
  splits = [json.loads(line)["split"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert splits.count("train") == 10 and "eval" in splits and "eval_fast" in splits


# ==========================================================================================================
# Every task config loads, in both variants, and refuses unknown keys.
# ==========================================================================================================
def _load_config(name: str, variant: str) -> ml_collections.ConfigDict:
  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the configs import `configs._paper`
  spec = importlib.util.spec_from_file_location(f"_config_under_test_{name}", CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def test_every_task_config_file_is_covered():
  found = {p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_")}
  assert found == set(TASK_CONFIGS) | set(TRM_CONFIGS)


@pytest.mark.parametrize("variant", ["", "smoke"])
@pytest.mark.parametrize("name", TASK_CONFIGS + TRM_CONFIGS)
def test_task_config_loads_and_is_locked(name, variant):
  config = _load_config(name, variant)
  assert config.is_locked
  assert config.data_dir and config.global_batch_size > 0
  for mistyped in ("num_stepz", "optimizer.lrr", "model.hidden_sise"):
    *parents, leaf = mistyped.split(".")
    node = config
    for part in parents:
      node = node[part]
    with pytest.raises(AttributeError, match=leaf):
      setattr(node, leaf, 1)
  if variant == "smoke":
    assert config.num_steps <= 20 and config.model.hidden_size <= 64
  with pytest.raises(ValueError, match="variant"):
    _load_config(name, "smokey")


# ==========================================================================================================
# The ARC smoke config (sequence length 900): finishes quickly and never goes quiet for 10 s.
# ==========================================================================================================
@pytest.mark.slow
@pytest.mark.parametrize("task", ["arc1"])
def test_arc_smoke_finishes_and_prints_a_line_at_least_every_10_s(tmp_path, task):
  import time  # pylint: disable=import-outside-toplevel
  started = time.monotonic()
  proc = subprocess.Popen([sys.executable, "-u", "-m", "hrm_jax.main", f"--config=configs/{task}.py:smoke",
                           f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tmp_path / 'data'}"],
                          cwd=REPO_ROOT, env=background_runs.cpu_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  stamps, lines = [started], []
  for line in proc.stdout:
    stamps.append(time.monotonic())
    lines.append(line.rstrip())
  assert proc.wait(timeout=600) == 0, "\n".join(lines[-30:])
  gaps = [b - a for a, b in zip(stamps, stamps[1:])]
  print(f"{task} smoke: {stamps[-1] - started:.0f} s wall, longest quiet stretch {max(gaps):.1f} s")
  assert max(gaps) <= 10.0, [(round(g, 1), l) for g, l in zip(gaps, lines) if g > 10]
  assert lines[-1].startswith("Finished 10 steps. Last evaluation (step 10): "), lines[-1]
