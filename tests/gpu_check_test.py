"""tools/gpu_check.sh --dry-run: the GPU script's sections run on a CPU at tiny shapes and write their figures."""

import json
import os
import pathlib
import subprocess

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(out: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, OUT=str(out), JAX_PLATFORMS="cpu")
  return subprocess.run(["bash", "tools/gpu_check.sh", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=900, check=False)


def test_dry_run_env_and_maze_write_their_figures(tmp_path):
  proc = _run(tmp_path, "--dry-run", "--only", "env,maze")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  merged = json.loads((tmp_path / "gpu_check.json").read_text())
  assert sorted(merged) == ["env", "maze"]
  assert merged["env"]["ok"] and merged["env"]["jax_backend"] == "cpu"
  assert "jax" in merged["env"]["versions"] and "torch" in merged["env"]["versions"]
  maze = merged["maze"]
  assert maze["ok"] and maze["dry_run"]
  assert maze["attention"] == "blockwise"  # seq 300+1 on a CPU: auto picks the blockwise attention
  assert maze["flops_per_step"] > 0 and maze["median_step_ms"] > 0 and maze["first_loss"] > 0
  # The one-shot attention's [B, N, T, T] scores make its compiled temporaries larger than blockwise's.
  assert maze["memory"]["xla"]["temp_size_in_bytes"] > maze["memory"]["blockwise"]["temp_size_in_bytes"] > 0
  assert "=== section maze" in (tmp_path / "gpu_check.log").read_text()
  assert len(list(tmp_path.iterdir())) <= 8 and all(p.is_file() for p in tmp_path.iterdir())


def test_unknown_section_is_refused_in_one_line(tmp_path):
  proc = _run(tmp_path, "--dry-run", "--only", "maze,warp")
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("gpu_check.sh: unknown section 'warp' in --only; choose from "
                                 "env,sudoku,maze,eval")


@pytest.mark.slow
def test_full_dry_run_passes(tmp_path):
  proc = _run(tmp_path, "--dry-run")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  merged = json.loads((tmp_path / "gpu_check.json").read_text())
  assert sorted(merged) == ["env", "eval", "maze", "sudoku"]
  for name in ("sudoku", "eval"):
    row = merged[name]["benchmark"]["results"][0]
    assert row["hrm_jax_ms"] > 0 and row["torch_ms"] > 0 and row["flops_per_call"] > 0
    assert row["hrm_jax_tflops_per_s"] > 0
