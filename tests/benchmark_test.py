"""tools/benchmark.py runs both frameworks on the same model and reports the ratio (no timing assertions).

Run: JAX_PLATFORMS=cpu python -m pytest -q tests/benchmark_test.py
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from tools import benchmark

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tiny_run_prints_and_writes_the_ratio_fields(tmp_path):
  out = tmp_path / "sub" / "bench.json"
  # A fresh process, as --threads pins it before JAX starts; one thread keeps it quick on a busy machine.
  argv = ["--config", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--what", "train,eval",
          "--threads", "1", "--json", str(out)]
  proc = subprocess.run([sys.executable, "-m", "tools.benchmark", *argv], cwd=REPO_ROOT, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]

  report = json.loads(out.read_text())
  assert report["command"] == "python -m tools.benchmark " + " ".join(argv)
  env = report["environment"]
  assert env["threads"] == 1 == env["torch_num_threads"]
  assert env["jax_version"] and env["torch_version"] and env["jax_device"]
  assert report["model_config"]["hidden_size"] == 64 and report["model_config"]["H_layers"] == 2
  rows = {row["what"]: row for row in report["results"]}
  assert sorted(rows) == ["eval", "train"]
  for row in rows.values():
    assert (row["config"], row["forward_dtype"], row["batch"], row["device"], row["threads"]) == (
        "tiny", "float32", 4, "cpu", 1)
    assert row["hrm_jax_ms"] > 0 and row["torch_ms"] > 0
    assert row["ratio"] == pytest.approx(row["torch_ms"] / row["hrm_jax_ms"])
    assert row["hrm_jax_ms_min"] <= row["hrm_jax_ms"] and row["torch_ms_min"] <= row["torch_ms"]
    assert row["hrm_jax_compile_s"] > 0 and row["hrm_jax_lower_s"] > 0
    assert row["load_avg_before"] >= 0 and row["load_avg_after"] >= 0
  # Same weights and batch in float32, so both computed the same loss: the ratio compares like with like.
  # One segment agrees to float32 rounding; 16 eval segments of recurrence amplify it to ~1e-4.
  train, evaluation = rows["train"], rows["eval"]
  assert train["hrm_jax_first_step_loss"] > 0
  assert train["loss_rel_diff"] < 1e-5, train
  assert evaluation["torch_first_batch_lm_loss"] > 0
  assert evaluation["loss_rel_diff"] < 2e-3, evaluation

  assert report["command"] in proc.stdout
  assert f"{train['hrm_jax_ms']:.2f}" in proc.stdout and f"{evaluation['torch_ms']:.2f}" in proc.stdout


def test_alternate_schedule_interleaves_and_excludes_warmup():
  calls = []
  runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  times, first = benchmark.time_calls(runners, steps=3, warmup=2)
  assert calls == ["a", "b", "a", "b"] + ["a", "b", "b", "a", "a", "b"]
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
  assert sorted(first) == ["a", "b"]

  calls.clear()
  times, _ = benchmark.time_calls(runners, steps=2, warmup=1, schedule="blocked")
  assert calls == ["a"] * 3 + ["b"] * 3
  assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}


def test_torch_config_matches_the_jax_model():
  cfg = benchmark.model_config(benchmark.CONFIGS["paper-sudoku"])
  torch_cfg = benchmark.torch_model_config(cfg, 768)
  assert (cfg.hidden_size, cfg.H_layers, cfg.L_layers, cfg.seq_len, cfg.forward_dtype) == (
      512, 4, 4, 81, "bfloat16")
  assert torch_cfg["batch_size"] == 768 and torch_cfg["puzzle_emb_ndim"] == 512
  assert all(torch_cfg[k] == getattr(cfg, k) for k in torch_cfg if k not in ("batch_size", "causal"))


@pytest.mark.parametrize("argv, message", [
    (["--what", "train,predict"], "--what 'train,predict': use a comma-separated subset of train,eval"),
    (["--steps", "0"], "--steps 0 must be >= 1"),
    (["--warmup", "0"], "--warmup 0 must be >= 1"),
    (["--config", "huge"], "invalid choice: 'huge'"),
])
def test_bad_command_lines_are_refused(argv, message, capsys):
  with pytest.raises(SystemExit) as exc:
    benchmark.main(argv)
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


def test_impossible_setups_name_the_fix(capsys):
  too_many = len(os.sched_getaffinity(0)) + 1
  assert benchmark.main(["--threads", str(too_many)]) == 2
  assert f"pass --threads {too_many - 1} or fewer" in capsys.readouterr().err
  jax.devices()  # JAX is running in this process, so it is too late to pin it.
  assert benchmark.main(["--threads", "1"]) == 2
  assert "run `python -m tools.benchmark` in a fresh process" in capsys.readouterr().err
  if not benchmark.torch.cuda.is_available():
    assert benchmark.main(["--torch-device", "cuda"]) == 2
    assert "pass --torch-device cpu" in capsys.readouterr().err


def test_halt_on_q_runs_fewer_segments_and_less_time_when_rows_halt_early():
  cfg = benchmark.model_config(benchmark.CONFIGS["tiny"])
  batches = benchmark.make_batches(cfg, 8, 2)
  optimizer = benchmark.optim.hrm_optimizer(benchmark.optim.make_dense_optimizer(1e-4),
                                            benchmark.optim.sparse_signsgd(1e-2, 0.0))
  state = jax.jit(lambda: benchmark.create_train_state(cfg, optimizer, 8, 0))()
  weights = benchmark.halting_early(jax.device_get((state.params, state.buffers, state.puzzle_table)))
  fixed = benchmark.JaxEval(cfg, batches, weights)
  early = benchmark.JaxEval(cfg, batches, weights, halt_on_q=True)
  times, _ = benchmark.time_calls({"fixed": fixed, "early": early}, steps=4, warmup=1)
  assert set(fixed.segments) == {cfg.halt_max_steps} and fixed.row_steps[0] == cfg.halt_max_steps
  assert max(early.segments) < cfg.halt_max_steps and max(early.row_steps) < cfg.halt_max_steps / 2
  # About 16 / 7 fewer segments; the fastest call of each, so a load spike on one call cannot flip it.
  assert min(times["early"]) < min(times["fixed"])
  # An untrained Q head (weight 0, bias -5 for both) never halts early: halt_on_q changes nothing there.
  untrained = benchmark.JaxEval(cfg, batches[:1], jax.device_get((state.params, state.buffers,
                                                                  state.puzzle_table)), halt_on_q=True)
  untrained()
  assert untrained.segments == [cfg.halt_max_steps]
