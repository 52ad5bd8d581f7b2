r"""One section of tools/gpu_check.sh: figures from a GPU (or, with --dry-run, tiny shapes on any machine).

  python -m tools.gpu_check --section env|sudoku|maze|eval --out DIR [--dry-run]
  python -m tools.gpu_check --merge --out DIR      # DIR/<section>.json files -> DIR/gpu_check.json

Each section writes DIR/<section>.json as soon as it has a figure (so a section killed by its timeout keeps
what it measured) and prints progress lines.
  env     nvidia-smi, versions of python/jax/jaxlib/flax/optax/orbax/torch, jax and torch devices.
  sudoku  the paper's Sudoku train step (hidden 512, 4+4 layers, H/L cycles 2/2, seq 81+1, batch 768, bf16):
          hrm_jax against the PyTorch reference eager and under torch.compile, with FLOPs per step from XLA's
          cost analysis and MFU against the device's dense bf16 peak (tools.benchmark).
  maze    the paper's Maze train step (seq 900+1, batch 96, bf16) with attention_impl=auto (cuDNN on a GPU):
          compiled memory (memory_analysis), a few timed steps, FLOPs and MFU; then the compiled memory of
          the blockwise and the one-shot ("xla") attention for comparison, as time allows.
  eval    the evaluation ACT loop (16 segments) at the Sudoku paper shape, hrm_jax against torch eager.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Callable

SECTIONS = ("env", "sudoku", "maze", "eval")


class Figures:
  """A section's figures, rewritten to DIR/<section>.json after every update."""

  def __init__(self, out: pathlib.Path, section: str, dry_run: bool):
    self.path = out / f"{section}.json"
    self.data: dict[str, Any] = {"section": section, "dry_run": dry_run, "started": time.time()}
    self.write()

  def set(self, **values) -> None:
    self.data.update(values)
    self.write()

  def write(self) -> None:
    self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")


def say(message: str) -> None:
  print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------
def section_env(fig: Figures, dry_run: bool) -> None:
  del dry_run
  try:
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30, check=False).stdout
  except (OSError, subprocess.TimeoutExpired) as e:
    smi = f"nvidia-smi unavailable: {e}"
  say(smi.strip() or "nvidia-smi printed nothing")
  fig.set(nvidia_smi=smi)
  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "numpy", "ml_collections",
               "grain"):
    try:
      module = __import__(name, fromlist=["_"])
      versions[name] = getattr(module, "__version__", "?")
    except ImportError as e:
      versions[name] = f"missing ({e})"
  say(f"versions: {versions}")
  fig.set(versions=versions)
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  devices = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
  say(f"jax devices: {devices}; default backend {jax.default_backend()}")
  fig.set(jax_devices=devices, jax_backend=jax.default_backend(), torch_cuda=torch.cuda.is_available(),
          torch_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
          torch_cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
  say(f"torch cuda: {fig.data['torch_cuda']} ({fig.data['torch_device']}, cudnn {fig.data['torch_cudnn']})")


def _benchmark(fig: Figures, argv: list[str], out: pathlib.Path, name: str) -> None:
  """tools.benchmark with `argv`; if it fails with the default attention (cuDNN on a GPU), once more with
  the one-shot "xla" attention, so a cuDNN problem still leaves the other figures."""
  from tools import benchmark  # pylint: disable=import-outside-toplevel
  path = out / f"{name}.bench.tmp"
  for attempt in (argv, argv + ["--attention", "xla"]):
    say("python -m tools.benchmark " + " ".join(attempt))
    try:
      rc = benchmark.main(attempt + ["--json", str(path)])
    except Exception as e:  # pylint: disable=broad-except
      rc = 1
      say(f"{name}: tools.benchmark failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
      fig.set(**{f"error_{len(fig.data)}": f"{' '.join(attempt)}: {type(e).__name__}: {e}"[:2000]})
    report = json.loads(path.read_text()) if path.exists() else {}
    path.unlink(missing_ok=True)
    fig.set(benchmark_rc=rc, benchmark=report)
    if rc == 0:
      return
  raise SystemExit(f"tools.benchmark exited {rc}")


def section_sudoku(fig: Figures, dry_run: bool, out: pathlib.Path) -> None:
  if dry_run:
    argv = ["--config", "tiny", "--batch", "4", "--steps", "1", "--warmup", "1", "--what", "train"]
  else:
    argv = ["--config", "paper-sudoku", "--steps", "6", "--warmup", "2", "--what", "train", "--torch-compile"]
  _benchmark(fig, argv, out, "sudoku")


def section_eval(fig: Figures, dry_run: bool, out: pathlib.Path) -> None:
  if dry_run:
    argv = ["--config", "tiny", "--batch", "4", "--steps", "1", "--warmup", "1", "--what", "eval"]
  else:
    argv = ["--config", "paper-sudoku", "--steps", "3", "--warmup", "1", "--what", "eval"]
  _benchmark(fig, argv, out, "eval")


def _memory_dict(compiled) -> dict[str, int]:
  stats = compiled.memory_analysis()
  names = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
           "generated_code_size_in_bytes")
  return {name: int(getattr(stats, name, 0) or 0) for name in names}


def section_maze(fig: Figures, dry_run: bool, budget_s: float) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from hrm_jax.training import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from tools import benchmark  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  if dry_run:
    bench = benchmark.BenchConfig(hidden_size=32, num_heads=2, H_layers=1, L_layers=1, seq_len=300,
                                  batch_size=2, forward_dtype="float32", vocab_size=6)
  else:
    bench = benchmark.CONFIGS["paper-maze"]
  cfg = benchmark.model_config(bench)
  impl = cfg.resolved_attention_impl(jax.default_backend(), cfg.total_len)
  say(f"maze: seq {cfg.seq_len}+{cfg.puzzle_emb_len}, batch {bench.batch_size}, {cfg.forward_dtype}, "
      f"attention auto -> {impl}")
  fig.set(seq_len=cfg.seq_len, total_len=cfg.total_len, batch=bench.batch_size, dtype=cfg.forward_dtype,
          attention=impl)
  batches = benchmark.make_batches(cfg, bench.batch_size, 2)
  try:
    runner = benchmark.JaxTrain(cfg, bench.batch_size, batches, seed=0)
  except Exception as e:  # pylint: disable=broad-except  (e.g. cuDNN refusing the shape: try blockwise)
    if impl == "blockwise":
      raise
    say(f"maze: attention {impl} failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); using blockwise")
    fig.set(error=f"{impl}: {type(e).__name__}: {e}"[:2000])
    impl, cfg = "blockwise", cfg.replace(attention_impl="blockwise")
    fig.set(attention=impl)
    runner = benchmark.JaxTrain(cfg, bench.batch_size, batches, seed=0)
  memory = {impl: _memory_dict(runner.compiled)}
  say(f"maze: compiled in {runner.lower_s:.1f}+{runner.compile_s:.1f} s; memory_analysis "
      + ", ".join(f"{k} {v / 2**30:.3f} GiB" for k, v in memory[impl].items()))
  fig.set(lower_s=runner.lower_s, compile_s=runner.compile_s, memory=memory, flops_per_step=runner.flops)
  runner()  # first call: allocation and autotuning
  steps = 2 if dry_run else 5
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    runner()
    times.append(time.perf_counter() - t0)
  median = sorted(times)[len(times) // 2]
  use = flops_lib.utilisation(runner.flops, median)
  mfu = "no known peak" if use["mfu"] is None else f"MFU {100 * use['mfu']:.1f}% of {use['peak_tflops']:.0f}"
  say(f"maze: {steps} steps, median {1e3 * median:.1f} ms/step, loss {runner.first_loss:.4f}, "
      f"{runner.flops / 1e9:.1f} GFLOP/step, {use['tflops_per_s']:.2f} TFLOP/s ({mfu}, {use['device_kind']})")
  fig.set(step_ms=[1e3 * t for t in times], median_step_ms=1e3 * median, first_loss=runner.first_loss,
          utilisation=use)
  del runner
  for other in ("blockwise", "xla"):
    if other == impl:
      continue
    first_compile_s = fig.data["lower_s"] + fig.data["compile_s"]
    if time.perf_counter() - start + 1.5 * first_compile_s > budget_s - 10:
      say(f"maze: skipping the {other} attention's compile (time budget)")
      continue
    other_cfg = cfg.replace(attention_impl=other)
    try:
      compiled = benchmark.JaxTrain(other_cfg, bench.batch_size, batches[:1], seed=0, count_flops=False)
      memory[other] = _memory_dict(compiled.compiled)
    except Exception as e:  # pylint: disable=broad-except  (an OOM at compile time is itself a figure)
      memory[other] = {"error": str(e).splitlines()[0][:300]}
    say(f"maze: attention {other}: {memory[other]}")
    fig.set(memory=memory)


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
def merge(out: pathlib.Path) -> dict[str, Any]:
  merged = {name: json.loads((out / f"{name}.json").read_text()) for name in SECTIONS
            if (out / f"{name}.json").exists()}
  (out / "gpu_check.json").write_text(json.dumps(merged, indent=1, default=str) + "\n")
  return merged


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
  parser.add_argument("--section", choices=SECTIONS)
  parser.add_argument("--merge", action="store_true", help="merge OUT/<section>.json into OUT/gpu_check.json")
  parser.add_argument("--out", required=True)
  parser.add_argument("--dry-run", action="store_true", help="tiny shapes: checks the script on a CPU")
  parser.add_argument("--budget", type=float, default=120.0, help="seconds the section may take (its timeout)")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.merge:
    merged = merge(out)
    say(f"wrote {out / 'gpu_check.json'} (sections: {', '.join(merged) or 'none'})")
    return 0
  if not args.section:
    parser.error("pass --section NAME or --merge")
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  fig = Figures(out, args.section, args.dry_run)
  runs: dict[str, Callable[[], None]] = {
      "env": lambda: section_env(fig, args.dry_run),
      "sudoku": lambda: section_sudoku(fig, args.dry_run, out),
      "maze": lambda: section_maze(fig, args.dry_run, args.budget),
      "eval": lambda: section_eval(fig, args.dry_run, out),
  }
  start = time.perf_counter()
  runs[args.section]()
  fig.set(seconds=time.perf_counter() - start, ok=True)
  say(f"{args.section}: done in {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
