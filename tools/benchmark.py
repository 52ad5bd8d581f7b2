r"""Speed of hrm_jax against the PyTorch reference of the original HRM, side by side in one process.

  python -m tools.benchmark --config tiny --what train,eval --json /tmp/bench_tiny.json
  python -m tools.benchmark --config small --steps 30 --warmup 3
  python -m tools.benchmark --config paper-sudoku            # meant for a GPU (warns on CPU)
  python -m tools.benchmark --config tiny --arch trm          # TRM against tools/trm_torch

What is timed (both frameworks start from the SAME weights, converted from hrm_jax's init, and see the
same batches):
  train  one training step as the original's `train_batch` (HRM_REFERENCE §4.4): ACT reset of halted
         rows, one segment forward plus the target-Q second forward, backward of loss / B, SignSGD on the
         batch's puzzle-table rows, AdamATan2 on every dense parameter. hrm_jax: `make_train_step` jitted
         with the state donated, compiled ahead of time. torch: `ACTLossHead` in eager mode with
         `CastedSparseEmbeddingSignSGD` and `AdamATan2` (the original uses torch.compile on GPU;
         `--torch-compile` adds that as a third column).
  eval   the full evaluation ACT loop on one batch (halt_max_steps segments, then the metrics).
         hrm_jax: the jitted `make_eval_step` (`hrm.infer`'s while_loop plus the loss metrics). torch:
         the original's `evaluate` loop (`head(carry, batch)` until all_finish) under inference_mode.

Timing: after `--warmup` untimed calls, `--steps` calls per framework, alternated call by call (the
order flips every round) so that machine noise hits both; every call ends synchronised
(`jax.block_until_ready`, `torch.cuda.synchronize` on CUDA). Reported: median ms per call (and the
10th/90th percentiles), ratio = torch median / hrm_jax median (> 1: hrm_jax is faster), hrm_jax
trace+lower and XLA compile time (excluded from the medians), torch threads (= the CPU cores JAX's
thread pool uses), the load average before and after, and a sanity check that both computed the same
thing (first-step loss, final eval lm_loss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Sequence

# JAX must not grab most of the GPU's memory before torch allocates its share.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from hrm_jax.convert import torch_checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from hrm_jax.model.config import ATTENTION_IMPLS, ModelConfig  # pylint: disable=wrong-import-position
from hrm_jax.model.losses import IGNORE_LABEL_ID, LossConfig  # pylint: disable=wrong-import-position
from hrm_jax.evaluation import evaluate as eval_lib  # pylint: disable=wrong-import-position
from hrm_jax.training import flops as flops_lib  # pylint: disable=wrong-import-position
from hrm_jax.training import optim  # pylint: disable=wrong-import-position
from hrm_jax.training.train_step import (  # pylint: disable=wrong-import-position
    StepConfig, create_train_state, make_train_step)
from tools import trm_torch  # pylint: disable=wrong-import-position
from tools.hrm_torch import (  # pylint: disable=wrong-import-position
    AdamATan2, CastedSparseEmbeddingSignSGD, build_loss_head, load_into_loss_head)

WHATS = ("train", "eval")
NUM_BATCHES = 4  # distinct batches cycled through, so ACT resets take fresh rows
# The original's optimiser settings (config/cfg_pretrain.yaml); the warmup is shortened so the timed
# steps run at a non-trivial lr (the cost does not depend on its value).
LR, PUZZLE_EMB_LR, WEIGHT_DECAY, PUZZLE_EMB_WEIGHT_DECAY, BETAS = 1e-4, 1e-2, 0.1, 0.1, (0.9, 0.95)
WARMUP_STEPS, TOTAL_STEPS = 10, 100_000


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """A model and batch shape to time; everything not named here is the original's default."""

  hidden_size: int
  num_heads: int
  H_layers: int  # pylint: disable=invalid-name
  L_layers: int  # pylint: disable=invalid-name
  seq_len: int
  batch_size: int
  forward_dtype: str
  vocab_size: int = 11
  puzzle_emb_ndim: int | None = None  # None: hidden_size, as the original's arch config
  num_puzzle_identifiers: int = 1
  gpu_only: bool = False
  attention_impl: str = "auto"


CONFIGS = {
    "tiny": BenchConfig(hidden_size=64, num_heads=4, H_layers=2, L_layers=2, seq_len=16, batch_size=32,
                        forward_dtype="float32", num_puzzle_identifiers=100),
    # A small Sudoku (9x9 board, vocab 11); 1000 puzzle ids so the sparse update touches few rows.
    "small": BenchConfig(hidden_size=128, num_heads=4, H_layers=2, L_layers=2, seq_len=81, batch_size=64,
                         forward_dtype="float32", num_puzzle_identifiers=1000),
    # The paper's Sudoku-Extreme model (27M parameters) and global batch; one puzzle id, as the builder.
    "paper-sudoku": BenchConfig(hidden_size=512, num_heads=8, H_layers=4, L_layers=4, seq_len=81,
                                batch_size=768, forward_dtype="bfloat16", gpu_only=True),
    # The paper's Maze 30x30 model at its per-GPU batch (vocab 6: pad, #, space, S, G, o).
    "paper-maze": BenchConfig(hidden_size=512, num_heads=8, H_layers=4, L_layers=4, seq_len=900,
                              batch_size=96, forward_dtype="bfloat16", vocab_size=6, gpu_only=True),
}


class BenchmarkError(ValueError):
  """A bad command line or an impossible setup; the message names the fix."""


# --------------------------------------------------------------------------------------------------------
# Setup: configs, data, devices
# --------------------------------------------------------------------------------------------------------
def model_config(bench: BenchConfig, forward_dtype: str | None = None,
                 attention_impl: str | None = None, arch: str = "hrm_v1") -> ModelConfig:
  """HRM of the bench's shape; arch="trm": TRM's defaults (2 layers, H 3 / L 6, 16-slot prefix) at its width."""
  fields = dict(
      vocab_size=bench.vocab_size, seq_len=bench.seq_len, hidden_size=bench.hidden_size,
      num_heads=bench.num_heads, H_layers=bench.H_layers, L_layers=bench.L_layers,
      puzzle_emb_ndim=bench.hidden_size if bench.puzzle_emb_ndim is None else bench.puzzle_emb_ndim,
      num_puzzle_identifiers=bench.num_puzzle_identifiers,
      forward_dtype=forward_dtype or bench.forward_dtype, attention_impl=attention_impl or bench.attention_impl)
  if arch == "trm":
    fields.update(arch="trm", H_layers=0, L_layers=2, H_cycles=3, L_cycles=6)
  return ModelConfig.from_dict(fields)


def torch_model_config(cfg: ModelConfig, batch_size: int) -> dict[str, Any]:
  """The original's model_cfg dict (arch fields plus the dataset's sizes) for the same model."""
  fields = ("seq_len", "num_puzzle_identifiers", "vocab_size", "H_cycles", "L_cycles", "H_layers",
            "L_layers", "hidden_size", "expansion", "num_heads", "pos_encodings", "halt_max_steps",
            "halt_exploration_prob", "puzzle_emb_ndim", "rms_norm_eps", "rope_theta", "forward_dtype")
  if cfg.arch == "trm":
    fields += ("mlp_t", "puzzle_emb_len", "no_ACT_continue")
  return dict({name: getattr(cfg, name) for name in fields}, batch_size=batch_size, causal=False)


def make_batches(cfg: ModelConfig, batch_size: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Random int32 batches: tokens in [0, V), labels in [1, V) with 10% ignored, random puzzle ids."""
  rng = np.random.default_rng(seed)
  shape = (batch_size, cfg.seq_len)
  batches = []
  for _ in range(count):
    labels = rng.integers(1, cfg.vocab_size, shape)
    batches.append({
        "inputs": rng.integers(0, cfg.vocab_size, shape).astype(np.int32),
        "labels": np.where(rng.random(shape) < 0.1, IGNORE_LABEL_ID, labels).astype(np.int32),
        "puzzle_identifiers": rng.integers(0, cfg.num_puzzle_identifiers, (batch_size,)).astype(np.int32),
    })
  return batches


def cpu_threads(requested: int | None = None) -> int:
  """Cores this process may run on, which is the size of XLA's CPU thread pool.

  With `requested`, first pins the process to that many of its cores. Pinning works only before JAX
  creates its CPU backend (the first device query), so call this before any JAX computation.
  """
  try:
    cores = sorted(os.sched_getaffinity(0))
  except AttributeError:  # not Linux: no pinning
    if requested is not None:
      raise BenchmarkError("--threads needs Linux (sched_setaffinity); leave it out") from None
    return os.cpu_count() or 1
  if requested is not None:
    if requested > len(cores):
      raise BenchmarkError(f"--threads {requested}, but this process may use only {len(cores)} cores; "
                           f"pass --threads {len(cores)} or fewer")
    if _jax_backend_started():
      raise BenchmarkError("--threads must pin the process before JAX starts its CPU thread pool, but JAX "
                           "is already running here; run `python -m tools.benchmark` in a fresh process")
    cores = cores[:requested]
    os.sched_setaffinity(0, cores)
  return len(cores)


def _jax_backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, "backends_are_initialized", None)  # private API: assume fresh if gone
  return bool(started and started())


def resolve_torch_device(requested: str) -> torch.device:
  if requested == "auto":
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if requested == "cuda" and not torch.cuda.is_available():
    raise BenchmarkError("--torch-device cuda, but this torch build sees no CUDA device; install a CUDA "
                         "build of torch or pass --torch-device cpu")
  return torch.device(requested)


def describe_devices(torch_device: torch.device) -> dict[str, str]:
  jax_device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  jax_name = jax_device.device_kind if jax_device.platform != "cpu" else f"cpu ({cpu})"
  torch_name = (torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda"
                else f"cpu ({cpu})")
  return {"jax_platform": jax_device.platform, "jax_device": jax_name, "torch_device": torch_name,
          "cpu": cpu}


def _sync_torch(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def _torch_batch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def _lr(base_lr: float, step: int) -> float:
  """The original's cosine-with-warmup lambda at its 1-based step (min_ratio 1: warmup, then constant)."""
  if step < WARMUP_STEPS:
    return base_lr * step / max(1, WARMUP_STEPS)
  return base_lr


def _rel_diff(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-30)


def _compile_timed(jitted, *args):
  """(compiled, lower seconds, compile seconds): ahead-of-time compilation, each phase timed."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lower_s, time.perf_counter() - start


def _flops(step_fn, compiled, *args) -> float:
  """FLOPs of one call (loops unrolled for the count); the compiled step's own count if that fails."""
  try:
    return flops_lib.step_flops(step_fn, *args)
  except Exception as e:  # pylint: disable=broad-except  (a figure, never a reason to lose the timings)
    print(f"benchmark: warning: FLOPs with loops unrolled failed ({type(e).__name__}: {e}); using the "
          "compiled step's cost analysis, which counts each loop body once", file=sys.stderr)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


# --------------------------------------------------------------------------------------------------------
# The four things timed: each is a callable doing one synchronised call
# --------------------------------------------------------------------------------------------------------
class JaxTrain:
  """hrm_jax's jitted train step with the state donated, compiled ahead of time."""

  def __init__(self, cfg: ModelConfig, batch_size: int, batches: list[dict[str, np.ndarray]], seed: int,
               count_flops: bool = True):
    schedule = lambda base: optim.make_lr_schedule(base, warmup_steps=WARMUP_STEPS, total_steps=TOTAL_STEPS)
    optimizer = optim.hrm_optimizer(
        optim.make_dense_optimizer(schedule(LR), b1=BETAS[0], b2=BETAS[1], weight_decay=WEIGHT_DECAY),
        optim.sparse_signsgd(schedule(PUZZLE_EMB_LR), PUZZLE_EMB_WEIGHT_DECAY))
    self.state = jax.jit(lambda: create_train_state(cfg, optimizer, batch_size, seed))()
    # Host copies (not views of buffers that the first step donates).
    self.initial_weights = jax.tree.map(
        np.array, jax.device_get((self.state.params, self.state.buffers, self.state.puzzle_table)))
    step_cfg = StepConfig(model=cfg, loss=LossConfig(), global_batch_size=batch_size)
    step_fn = make_train_step(step_cfg, optimizer)
    jitted = jax.jit(step_fn, donate_argnums=0)
    self.batches = [jax.device_put(b) for b in batches]
    self.compiled, self.lower_s, self.compile_s = _compile_timed(jitted, self.state, self.batches[0])
    # Counted on the one-shot attention: the same arithmetic, but visible to the cost analysis (cuDNN's
    # fused kernel is a custom call that counts 0 FLOPs; blockwise pads keys to whole blocks).
    flops_fn = make_train_step(dataclasses.replace(step_cfg, model=cfg.replace(attention_impl="xla")), optimizer)
    self.flops = _flops(flops_fn, self.compiled, self.state, self.batches[0]) if count_flops else None
    self.calls = 0
    self.first_loss: float | None = None

  def __call__(self) -> None:
    self.state, metrics = self.compiled(self.state, self.batches[self.calls % len(self.batches)])
    jax.block_until_ready((self.state, metrics))
    if self.first_loss is None:
      self.first_loss = float(metrics["loss"])
    self.calls += 1


class TorchTrain:
  """The original's train_batch on the PyTorch reference: forward, (loss / B).backward(), both optimisers."""

  def __init__(self, cfg: ModelConfig, batch_size: int, batches: list[dict[str, np.ndarray]],
               initial_weights, device: torch.device, compile_model: bool):
    self.device = device
    self.batch_size = batch_size
    self.head = _torch_head(cfg, batch_size, initial_weights, device)
    self.head.train()
    self.optimizers = []
    if cfg.puzzle_emb_ndim > 0:
      self.optimizers.append((CastedSparseEmbeddingSignSGD(
          self.head.model.puzzle_emb.buffers(), lr=0.0, weight_decay=PUZZLE_EMB_WEIGHT_DECAY), PUZZLE_EMB_LR))
    self.optimizers.append((AdamATan2(self.head.parameters(), lr=0.0, betas=BETAS,
                                      weight_decay=WEIGHT_DECAY), LR))
    self.model = torch.compile(self.head, dynamic=False) if compile_model else self.head
    self.batches = [_torch_batch(b, device) for b in batches]
    self.carry = None
    self.calls = 0
    self.first_loss: float | None = None

  def __call__(self) -> None:
    batch = self.batches[self.calls % len(self.batches)]
    if self.carry is None:
      with torch.device(self.device):
        self.carry = self.head.initial_carry(batch)
    self.carry, loss, _, _, _ = self.model(return_keys=[], carry=self.carry, batch=batch)
    (loss / self.batch_size).backward()
    self.calls += 1
    if self.first_loss is None:
      self.first_loss = float(loss.detach()) / self.batch_size
    for optimizer, base_lr in self.optimizers:
      for group in optimizer.param_groups:
        group["lr"] = _lr(base_lr, self.calls)
      optimizer.step()
      optimizer.zero_grad()
    _sync_torch(self.device)


class JaxEval:
  """hrm_jax's jitted eval step: `hrm.infer` (while_loop over segments) plus the loss metrics."""

  def __init__(self, cfg: ModelConfig, batches: list[dict[str, np.ndarray]], initial_weights,
               halt_on_q: bool = False):
    params, buffers, table = jax.device_put(initial_weights)
    self.args = (params, buffers, table)
    step_fn = eval_lib.make_eval_step(cfg, LossConfig(), eval_lib.EvalConfig(halt_on_q=halt_on_q))
    self.batches = [jax.device_put(b) for b in batches]
    self.compiled, self.lower_s, self.compile_s = _compile_timed(jax.jit(step_fn), *self.args, self.batches[0])
    # The ACT while_loop counts once: FLOPs of one segment, times the segments every row runs (16, fixed).
    flops_fn = eval_lib.make_eval_step(cfg.replace(attention_impl="xla"), LossConfig(), eval_lib.EvalConfig())
    self.flops = _flops(flops_fn, self.compiled, *self.args, self.batches[0]) * cfg.halt_max_steps
    self.calls = 0
    self.first_loss: float | None = None
    self.segments: list[int] = []  # loop iterations per call (16 unless halt_on_q lets every row stop)
    self.row_steps: list[float] = []  # mean segments per row

  def __call__(self) -> None:
    metrics, predictions = self.compiled(*self.args, self.batches[self.calls % len(self.batches)])
    jax.block_until_ready((metrics, predictions))
    if self.first_loss is None:
      self.first_loss = float(metrics["lm_loss"])
    self.segments.append(int(metrics["segments"]))
    self.row_steps.append(float(np.mean(predictions["steps"])))
    self.calls += 1


def halting_early(weights, seed: int = 0):
  """The weights with a random Q head (std 1/sqrt(D)), so rows halt at data-dependent segments.

  An untrained model's Q head (weight 0, bias -5 for both logits) never has q_halt > q_continue, so
  `halt_on_q` would change nothing; a trained one halts most rows early. Both frameworks get these weights.
  """
  params, buffers, table = weights
  kernel = np.asarray(params["q_head"]["kernel"])
  draw = np.random.default_rng(seed).standard_normal(kernel.shape) / np.sqrt(kernel.shape[0])
  params = dict(params, q_head=dict(params["q_head"], kernel=draw.astype(kernel.dtype)))
  return params, buffers, table


class TorchEval:
  """The original's evaluate loop on one batch: fresh carry, segments until all_finish, inference mode."""

  def __init__(self, cfg: ModelConfig, batch_size: int, batches: list[dict[str, np.ndarray]],
               initial_weights, device: torch.device, compile_model: bool):
    self.device = device
    self.head = _torch_head(cfg, batch_size, initial_weights, device)
    self.head.eval()
    self.model = torch.compile(self.head, dynamic=False) if compile_model else self.head
    self.batches = [_torch_batch(b, device) for b in batches]
    self.calls = 0
    self.first_loss: float | None = None

  def __call__(self) -> None:
    batch = self.batches[self.calls % len(self.batches)]
    with torch.inference_mode():
      with torch.device(self.device):
        carry = self.head.initial_carry(batch)
      while True:
        carry, _, metrics, _, all_finish = self.model(return_keys=[], carry=carry, batch=batch)
        if all_finish:
          break
    _sync_torch(self.device)
    if self.first_loss is None:
      self.first_loss = float(metrics["lm_loss"])
    self.calls += 1


def _torch_head(cfg: ModelConfig, batch_size: int, initial_weights, device: torch.device):
  params, buffers, table = initial_weights
  build = trm_torch.build_loss_head if cfg.arch == "trm" else build_loss_head
  with torch.device(device):
    head = build(torch_model_config(cfg, batch_size))
  load_into_loss_head(head, torch_checkpoint.to_torch_state_dict(params, buffers, table, cfg))
  return head


# --------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------
def time_calls(runners: dict[str, Callable[[], None]], steps: int, warmup: int, schedule: str = "alternate"
               ) -> tuple[dict[str, list[float]], dict[str, float]]:
  """Seconds per call of each runner after `warmup` untimed calls of each.

  schedule="alternate": one call of each runner per round, the order reversed every other round, so load
  spikes hit all of them. "blocked": all calls of one runner, then the next (shows whether one framework's
  idle spinning threads slow the other down when alternated).

  Returns (timed seconds per runner, seconds of each runner's first warm-up call).
  """
  names = list(runners)
  first = {}

  def timed(name: str) -> float:
    start = time.perf_counter()
    runners[name]()
    return time.perf_counter() - start

  times: dict[str, list[float]] = {name: [] for name in names}
  if schedule == "alternate":
    for i in range(warmup):
      for name in names:
        elapsed = timed(name)
        first.setdefault(name, elapsed)
    for i in range(steps):
      for name in (names if i % 2 == 0 else names[::-1]):
        times[name].append(timed(name))
  elif schedule == "blocked":
    for name in names:
      for i in range(warmup):
        elapsed = timed(name)
        first.setdefault(name, elapsed)
      times[name] = [timed(name) for _ in range(steps)]
  else:
    raise ValueError(f"schedule={schedule!r}; use 'alternate' or 'blocked'")
  return times, first


def _summary_ms(seconds: list[float]) -> dict[str, float]:
  ms = sorted(1e3 * s for s in seconds)
  pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
  return {"median": statistics.median(ms), "p10": pick(0.1), "p90": pick(0.9), "min": ms[0]}


def run_one(what: str, cfg: ModelConfig, batch_size: int, *, steps: int, warmup: int,
            torch_device: torch.device, torch_compile: bool, schedule: str = "alternate",
            seed: int = 0, halt_on_q: bool = False, halt_early: bool = False) -> dict[str, Any]:
  """Times one of `train` / `eval` for both frameworks; returns the result row (times in ms)."""
  batches = make_batches(cfg, batch_size, NUM_BATCHES, seed)
  if what == "train":
    jax_runner = JaxTrain(cfg, batch_size, batches, seed)
    make_torch = lambda compile_model: TorchTrain(cfg, batch_size, batches, jax_runner.initial_weights,
                                                  torch_device, compile_model)
  else:
    optimizer = optim.hrm_optimizer(optim.make_dense_optimizer(LR), optim.sparse_signsgd(PUZZLE_EMB_LR, 0.0))
    state = jax.jit(lambda: create_train_state(cfg, optimizer, batch_size, seed))()
    weights = jax.device_get((state.params, state.buffers, state.puzzle_table))
    if halt_early:
      weights = halting_early(weights, seed)
    jax_runner = JaxEval(cfg, batches, weights)
    make_torch = lambda compile_model: TorchEval(cfg, batch_size, batches, weights, torch_device,
                                                 compile_model)
  runners: dict[str, Callable[[], None]] = {"hrm_jax": jax_runner, "torch": make_torch(False)}
  if torch_compile:
    runners["torch_compile"] = make_torch(True)
  if what == "eval" and halt_on_q:
    runners["hrm_jax_halt_on_q"] = JaxEval(cfg, batches, weights, halt_on_q=True)
  loads_before = os.getloadavg()
  times, first = time_calls(runners, steps, warmup, schedule)
  loads_after = os.getloadavg()

  row: dict[str, Any] = {"what": what}
  for name, seconds in times.items():
    summary = _summary_ms(seconds)
    row[f"{name}_ms"] = summary["median"]
    row[f"{name}_ms_p10"], row[f"{name}_ms_p90"], row[f"{name}_ms_min"] = (
        summary["p10"], summary["p90"], summary["min"])
    if name in first:
      row[f"{name}_first_call_s"] = first[name]
  row["ratio"] = row["torch_ms"] / row["hrm_jax_ms"]
  for name, runner in runners.items():
    if isinstance(runner, JaxEval):
      row[f"{name}_loop_segments"] = statistics.mean(runner.segments)
      row[f"{name}_mean_row_segments"] = statistics.mean(runner.row_steps)
  if "hrm_jax_halt_on_q_ms" in row:
    row["halt_on_q_speedup"] = row["hrm_jax_ms"] / row["hrm_jax_halt_on_q_ms"]
  if torch_compile:
    row["ratio_torch_compile"] = row["torch_compile_ms"] / row["hrm_jax_ms"]
  # FLOPs per call from XLA's cost analysis of hrm_jax's step; torch computes the same thing, so the same
  # count turns each column's time into model FLOP/s.
  row["flops_per_call"] = jax_runner.flops
  for name in (n for n in times if n != "hrm_jax_halt_on_q"):
    use = flops_lib.utilisation(jax_runner.flops, row[f"{name}_ms"] / 1e3)
    row[f"{name}_tflops_per_s"] = use["tflops_per_s"]
    row[f"{name}_mfu"] = use["mfu"]
  row["peak_tflops"], row["peak_device"] = use["peak_tflops"], use["device_kind"]
  row["hrm_jax_lower_s"] = jax_runner.lower_s
  row["hrm_jax_compile_s"] = jax_runner.compile_s
  row["load_avg_before"] = round(loads_before[0], 2)
  row["load_avg_after"] = round(loads_after[0], 2)
  # Same weights and batches: the first call's loss must agree (float32: ~1e-6; bfloat16: ~1e-2).
  loss_name = "first_step_loss" if what == "train" else "first_batch_lm_loss"
  row[f"hrm_jax_{loss_name}"] = jax_runner.first_loss
  row[f"torch_{loss_name}"] = runners["torch"].first_loss
  row["loss_rel_diff"] = _rel_diff(jax_runner.first_loss, runners["torch"].first_loss)
  return row


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
  parser.add_argument("--arch", choices=["hrm_v1", "trm"], default="hrm_v1",
                      help="trm: TRM (reference tools/trm_torch) at the config's width and sequence length")
  parser.add_argument("--batch", type=int, default=None, help="rows per batch (default: the config's)")
  parser.add_argument("--forward-dtype", choices=["float32", "bfloat16"], default=None,
                      help="default: the config's (float32 for tiny/small, bfloat16 for paper-sudoku)")
  parser.add_argument("--attention", choices=list(ATTENTION_IMPLS), default=None,
                      help="hrm_jax's attention_impl (default: the config's, auto)")
  parser.add_argument("--steps", type=int, default=20, help="timed calls per framework")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls per framework first (>= 1)")
  parser.add_argument("--what", default="train,eval", help="comma-separated subset of train,eval")
  parser.add_argument("--torch-device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="auto: cuda when torch sees a GPU, else cpu")
  parser.add_argument("--torch-compile", action="store_true",
                      help="also time torch.compile(model, dynamic=False), as the original trains")
  parser.add_argument("--schedule", choices=["alternate", "blocked"], default="alternate",
                      help="alternate: one call of each framework per round (default); blocked: all calls "
                           "of hrm_jax, then all of torch")
  parser.add_argument("--threads", type=int, default=None,
                      help="pin the process to this many cores: XLA's pool and torch.set_num_threads both "
                           "use them (default: every core the process may use)")
  parser.add_argument("--halt-on-q", action="store_true",
                      help="eval: also time hrm_jax with halt_on_q (rows stop at q_halt > q_continue)")
  parser.add_argument("--halt-early", action="store_true",
                      help="eval: give the Q head random weights so rows halt at data-dependent segments "
                           "(an untrained model never halts early)")
  parser.add_argument("--json", default=None, help="write the results here as JSON")
  args = parser.parse_args(argv)
  whats = [w.strip() for w in args.what.split(",") if w.strip()]
  unknown = sorted(set(whats) - set(WHATS))
  if unknown or not whats:
    parser.error(f"--what {args.what!r}: use a comma-separated subset of {','.join(WHATS)}")
  args.what = whats
  if args.batch is not None and args.batch < 1:
    parser.error(f"--batch {args.batch} must be >= 1")
  if args.steps < 1:
    parser.error(f"--steps {args.steps} must be >= 1")
  if args.threads is not None and args.threads < 1:
    parser.error(f"--threads {args.threads} must be >= 1")
  if args.warmup < 1:
    parser.error(f"--warmup {args.warmup} must be >= 1 (the first call of each framework is never timed)")
  return args


def _frameworks(row: dict[str, Any]) -> list[str]:
  return [name for name in ("hrm_jax", "torch", "torch_compile") if f"{name}_mfu" in row]


def format_table(report: dict[str, Any]) -> str:
  env = report["environment"]
  lines = [
      f"command: {report['command']}",
      f"hrm_jax on {env['jax_device']} (jax {env['jax_version']}); torch on {env['torch_device']} "
      f"(torch {env['torch_version']}, eager{' + torch.compile' if report['torch_compile'] else ''}); "
      f"{env['threads']} CPU threads for both (torch.set_num_threads)",
  ]
  header = (f"{'config':13} {'what':5} {'dtype':8} {'batch':>5} {'device':6} {'thr':>3} {'load':>9} "
            f"{'hrm_jax ms':>10} {'torch ms':>9} {'ratio':>6} {'jax compile s':>13} {'loss rel diff':>13}")
  if report["torch_compile"]:
    header += f" {'torch.compile ms':>16} {'ratio':>6}"
  lines.append(header)
  for row in report["results"]:
    line = (f"{row['config']:13} {row['what']:5} {row['forward_dtype']:8} {row['batch']:>5} "
            f"{row['device']:6} {row['threads']:>3} "
            f"{row['load_avg_before']:>4.1f}/{row['load_avg_after']:<4.1f} "
            f"{row['hrm_jax_ms']:>10.2f} {row['torch_ms']:>9.2f} {row['ratio']:>6.2f} "
            f"{row['hrm_jax_lower_s'] + row['hrm_jax_compile_s']:>13.2f} {row['loss_rel_diff']:>13.1e}")
    if report["torch_compile"]:
      line += f" {row['torch_compile_ms']:>16.2f} {row['ratio_torch_compile']:>6.2f}"
    lines.append(line)
  order = "alternated" if report["schedule"] == "alternate" else "consecutive"
  lines.append(f"ratio = torch ms / hrm_jax ms (> 1: hrm_jax faster); medians over {report['steps']} {order} "
               f"calls after {report['warmup']} warm-up calls; load = 1-min load average before/after; jax "
               "compile = trace+lower+XLA compile, not in the medians")
  for row in report["results"]:
    peak = (f"MFU against {row['peak_device']}'s dense bf16 peak {row['peak_tflops']:.0f} TFLOP/s: " + ", ".join(
        f"{name} {100 * row[f'{name}_mfu']:.1f}%" for name in _frameworks(row)) if row["peak_tflops"] else
            "MFU: no known peak for this device")
    lines.append(f"{row['what']}: {row['flops_per_call'] / 1e9:.2f} GFLOP per call (XLA cost analysis); "
                 "model TFLOP/s " + ", ".join(f"{name} {row[f'{name}_tflops_per_s']:.3f}"
                                              for name in _frameworks(row)) + "; " + peak)
  for row in report["results"]:
    if "halt_on_q_speedup" in row:
      lines.append(f"eval with halt_on_q: {row['hrm_jax_halt_on_q_ms']:.2f} ms, {row['halt_on_q_speedup']:.2f}x "
                   f"faster than the fixed loop; loop segments {row['hrm_jax_halt_on_q_loop_segments']:.1f} vs "
                   f"{row['hrm_jax_loop_segments']:.1f}, mean segments per row "
                   f"{row['hrm_jax_halt_on_q_mean_row_segments']:.2f} vs {row['hrm_jax_mean_row_segments']:.2f}")
  if report["torch_compile"]:
    lines.append("torch.compile first call (compilation included), s: " + ", ".join(
        f"{row['what']} {row['torch_compile_first_call_s']:.1f}" for row in report["results"]))
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  bench = CONFIGS[args.config]
  try:
    threads = cpu_threads(args.threads)
    torch_device = resolve_torch_device(args.torch_device)
  except BenchmarkError as e:
    print(f"benchmark: error: {e}", file=sys.stderr)
    return 2
  torch.set_num_threads(threads)
  devices = describe_devices(torch_device)
  jax_on_gpu = devices["jax_platform"] != "cpu"
  if bench.gpu_only and not jax_on_gpu:
    print(f"benchmark: warning: --config {args.config} is sized for a GPU; on this CPU a step takes "
          "minutes. Use tiny or small here.", file=sys.stderr)
  if jax_on_gpu != (torch_device.type == "cuda"):
    print(f"benchmark: warning: hrm_jax runs on {devices['jax_platform']} but torch on {torch_device.type}; "
          "the ratio compares different devices.", file=sys.stderr)

  try:
    cfg = model_config(bench, args.forward_dtype, args.attention, args.arch)
    cfg.check_platform(devices["jax_platform"])
  except ValueError as e:
    print(f"benchmark: error: {e}", file=sys.stderr)
    return 2
  batch_size = args.batch or bench.batch_size
  device_label = "gpu" if jax_on_gpu else "cpu"
  report: dict[str, Any] = {
      "command": "python -m tools.benchmark " + shlex.join(argv),
      "argv": argv,
      "steps": args.steps, "warmup": args.warmup, "schedule": args.schedule,
      "torch_compile": args.torch_compile,
      "model_config": cfg.to_dict(),
      "environment": dict(devices, threads=threads, torch_num_threads=torch.get_num_threads(),
                          jax_version=jax.__version__, torch_version=torch.__version__,
                          python=platform.python_version(), hostname=platform.node(),
                          env={k: os.environ[k] for k in ("JAX_PLATFORMS", "XLA_FLAGS", "OMP_NUM_THREADS",
                                                          "CUDA_VISIBLE_DEVICES") if k in os.environ}),
      "results": [],
  }
  for what in args.what:
    row = run_one(what, cfg, batch_size, steps=args.steps, warmup=args.warmup, torch_device=torch_device,
                  torch_compile=args.torch_compile, schedule=args.schedule, halt_on_q=args.halt_on_q,
                  halt_early=args.halt_early)
    row = dict(config=args.config, forward_dtype=cfg.forward_dtype, batch=batch_size, device=device_label,
               threads=threads, **row)
    report["results"].append(row)
    print(f"  done: {args.config} {what} (hrm_jax {row['hrm_jax_ms']:.2f} ms, torch {row['torch_ms']:.2f} "
          "ms)", file=sys.stderr)
    load = max(row["load_avg_before"], row["load_avg_after"])
    if not jax_on_gpu and load > (os.cpu_count() or 1):
      print(f"benchmark: warning: load average {load:.1f} exceeds the machine's "
            f"{os.cpu_count()} cores: other processes took CPU time, so these timings are unreliable "
            "(torch's OpenMP threads suffer most from oversubscribed cores; compare with --threads 1).",
            file=sys.stderr)
  print(format_table(report))
  if args.json:
    path = pathlib.Path(args.json)
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(report, indent=1) + "\n")
    except OSError as e:
      print(f"benchmark: error: cannot write --json {path}: {e}; pass a writable path", file=sys.stderr)
      return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
