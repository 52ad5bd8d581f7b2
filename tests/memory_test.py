"""Memory known before it fails: a run that cannot fit stops in one line before its first step, with advice
that is true (the suggested batch and accumulation compile to fit); tools.memory prints compiled bytes."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import LossConfig
from hrm_jax.training import memory as memory_lib
from hrm_jax.training import optim
from hrm_jax.training.train_step import StepConfig, create_train_state, make_train_step

import tiny_data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=11, seq_len=81, hidden_size=32, num_heads=2, H_layers=1, L_layers=1, puzzle_emb_ndim=32,
            num_puzzle_identifiers=50, forward_dtype="float32", halt_max_steps=2)


def _compiled_step(batch: int, grad_accum_steps: int = 1):
  cfg = ModelConfig(**TINY)
  opt = optim.hrm_optimizer(optim.make_dense_optimizer(1e-4), optim.sparse_signsgd(1e-2, 0.1))
  state = jax.eval_shape(lambda: create_train_state(cfg, opt, batch, 0))
  step_cfg = StepConfig(cfg, LossConfig(), batch, grad_accum_steps=grad_accum_steps)
  step = jax.jit(make_train_step(step_cfg, opt), donate_argnums=0)
  return step, state, memory_lib.batch_spec(cfg.seq_len, batch)


def test_too_small_a_device_names_a_batch_and_accumulation_that_fit():
  step, state, spec = _compiled_step(64)
  needed = memory_lib.step_memory(step.lower(state, spec).compile())
  capacity = int(0.5 * needed.total)
  with pytest.raises(memory_lib.DoesNotFitError) as error:
    memory_lib.check_train_step_fits(step, state, spec, global_batch_size=64, grad_accum_steps=1,
                                     capacity=capacity)
  message = str(error.value)
  assert "\n" not in message and f"{needed.total / memory_lib.GiB:.2f} GiB" in message
  fitting = int(message.split("--config.global_batch_size=")[1].split()[0].rstrip(";"))
  accum = int(message.split("--config.grad_accum_steps=")[1].rstrip("."))
  assert 1 <= fitting < 64 and accum >= 2 and 64 % accum == 0
  # The advice holds: both suggestions compile to a step that fits.
  step_b, state_b, spec_b = _compiled_step(fitting)
  assert memory_lib.step_memory(step_b.lower(state_b, spec_b).compile()).total <= capacity
  step_a, state_a, spec_a = _compiled_step(64, grad_accum_steps=accum)
  assert memory_lib.step_memory(step_a.lower(state_a, spec_a).compile()).total <= capacity
  # And a device big enough passes silently, returning the figures.
  assert memory_lib.check_train_step_fits(step, state, spec, global_batch_size=64, grad_accum_steps=1,
                                          capacity=needed.total) == needed


def _available_ram() -> int:
  capacity, source = memory_lib.device_capacity(jax.devices("cpu")[0])
  assert source == "available RAM" and capacity > 0
  return capacity


@pytest.mark.slow  # compiles the paper model (~1-2 min on 2 busy cores)
def test_paper_sudoku_model_too_big_for_this_machine_stops_before_the_first_step(tmp_path):
  data_dir = tiny_data.write_tiny_dataset(tmp_path / "data")
  # The paper Sudoku model needs ~4 MB per row at these 8+1 positions (~29 GB at batch 768 and 81+1): a
  # batch of four times this machine's RAM in those rows cannot fit, while its carry (18 KB a row) does.
  batch = 768
  while batch * 4e6 < 4 * _available_ram():
    batch *= 2
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "hrm_jax.main", "--config=configs/sudoku.py", f"--workdir={workdir}",
       f"--config.data_dir={data_dir}", f"--config.global_batch_size={batch}", "--config.num_steps=2",
       "--config.log.progress_bar=False", "--config.log.tensorboard=False"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT)))
  assert proc.returncode == 1, proc.stderr[-3000:]
  error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "The compiled train step needs" in error[0] and "(available RAM)" in error[0]
  assert f"at global_batch_size={batch}, grad_accum_steps=1" in error[0]
  fitting = int(error[0].split("--config.global_batch_size=")[1].split()[0].rstrip(";"))
  accum = int(error[0].split("--config.grad_accum_steps=")[1].rstrip("."))
  assert 1 <= fitting < batch and batch % accum == 0 and accum > batch // fitting / 2
  assert not list((workdir / "checkpoints").glob("*")) if (workdir / "checkpoints").exists() else True


def test_tools_memory_prints_train_and_eval_bytes(tmp_path):
  out = tmp_path / "mem.json"
  proc = subprocess.run(
      [sys.executable, "-m", "tools.memory", "--config", "configs/sudoku.py:smoke", "--batch", "32",
       "--seq-len", "300", "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      check=False, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert (report["total_len"], report["batch"], report["attention"]) == (301, 32, "blockwise")
  for what in ("train", "eval"):
    assert report[what]["temp"] > 0 and report[what]["total"] >= report[what]["temp"]
    assert f"{what:5} step: {report[what]['total'] / memory_lib.GiB:.2f} GiB" in proc.stdout


@pytest.mark.slow  # two compilations of the paper model at Maze length (~2 min each on 2 busy cores)
def test_maze_paper_train_step_memory_grows_linearly_with_length(tmp_path):
  temps = {}
  for seq_len in (900, 1800):
    out = tmp_path / f"mem{seq_len}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.memory", "--config", "configs/maze.py", "--batch", "8", "--seq-len",
         str(seq_len), "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
        check=False, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["attention"] == "blockwise"
    temps[seq_len] = report["train"]["temp"]
  assert temps[1800] <= 2.3 * temps[900]  # one-shot attention: about 3.2x (BUILD.md, batch 96)
