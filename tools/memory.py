r"""Compiled memory of a config's train and eval steps, without running them (nothing is allocated).

  python -m tools.memory --config configs/maze.py
  python -m tools.memory --config configs/maze.py --batch 96 --seq-len 1800     # T = 1800 + 1
  python -m tools.memory --config configs/sudoku.py --batch 96 --attention xla --json /tmp/mem.json

Shapes (vocab, sequence length, puzzle identifiers) come from the config's dataset when it exists, else from
the paper datasets' shapes below; --seq-len/--vocab-size/--num-puzzle-ids override them. Figures are XLA's
`memory_analysis()` of the steps compiled for this machine's first device (per device with several), and
the device's capacity as the training run's check reads it (`hrm_jax.training.memory`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hrm_jax.data import format as data_format
from hrm_jax.model.config import ATTENTION_IMPLS, ModelConfig
from hrm_jax.evaluation import evaluate as eval_lib
from hrm_jax.training import memory as memory_lib
from hrm_jax.training import train
from hrm_jax.training.train_step import StepConfig, create_train_state, make_train_step

# (seq_len, vocab_size, num_puzzle_identifiers) of the paper datasets as this repo builds them; ARC: 800 tasks
# x (1 + 1000 augmentations) identifiers plus the blank one (as hrm_jax.data.arc numbers them, about).
PAPER_SHAPES = {"sudoku": (81, 11, 1), "maze": (900, 6, 1), "arc1": (900, 12, 800_801),
                "arc2": (900, 12, 1_120_121), "demo": (16, 6, 1)}


def load_config(spec: str):
  """configs/<task>.py[:variant] -> its ConfigDict (unlocked copy)."""
  path, _, variant = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise SystemExit(f"memory: error: --config {path}: no such file; pass e.g. --config configs/maze.py")
  module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except ValueError as e:
    raise SystemExit(f"memory: error: {e}") from None
  return config.copy_and_resolve_references()


def dataset_shapes(config, name: str) -> tuple[tuple[int, int, int], str]:
  try:
    meta = data_format.load_metadata(pathlib.Path(config.data_dir), "train")
    return (meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers), f"dataset {config.data_dir}"
  except Exception:  # pylint: disable=broad-except  (no dataset built yet: the paper's shapes)
    if name not in PAPER_SHAPES:
      raise SystemExit(f"memory: error: no dataset in {config.data_dir} and no paper shape for {name!r}; pass "
                       "--seq-len, --vocab-size and --num-puzzle-ids") from None
    return PAPER_SHAPES[name], f"paper shapes of {name} (no dataset in {config.data_dir})"


def compile_steps(config, cfg: ModelConfig, batch: int, eval_batch: int) -> dict[str, memory_lib.StepMemory]:
  """Lowers and compiles the train and eval steps exactly as train.py jits them, on abstract arguments."""
  plan = train.RunPlan(total_steps=max(1, config.num_steps or 100_000), steps_per_epoch=1.0, warmup_steps=1,
                       epochs=1.0, samples=batch, eval_every_steps=1)
  optimizer, _, _ = train.make_optimizers(config, plan)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  batch_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  abstract_state = jax.eval_shape(lambda: create_train_state(cfg, optimizer, batch, config.seed, ema=config.ema))
  shardings = train.state_shardings(mesh, abstract_state)
  state_spec = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
                            shardings)
  step_cfg = StepConfig(model=cfg, loss=train.loss_config_from(config), global_batch_size=batch,
                        grad_accum_steps=config.grad_accum_steps)
  train_step = jax.jit(make_train_step(step_cfg, optimizer),
                       in_shardings=(shardings, batch_sharding), out_shardings=(shardings, replicated),
                       donate_argnums=0)
  out = {"train": memory_lib.step_memory(
      train_step.lower(state_spec, memory_lib.batch_spec(cfg.seq_len, batch, batch_sharding)).compile())}
  eval_cfg = eval_lib.EvalConfig(halt_on_q=config.eval.halt_on_q, halt_max_steps=config.eval.halt_max_steps or None)
  eval_step = jax.jit(eval_lib.make_eval_step(cfg, step_cfg.loss, eval_cfg))
  eval_batch_spec = dict(memory_lib.batch_spec(cfg.seq_len, eval_batch, batch_sharding),
                         valid=jax.ShapeDtypeStruct((eval_batch,), np.bool_, sharding=batch_sharding))
  out["eval"] = memory_lib.step_memory(eval_step.lower(
      state_spec.params, state_spec.buffers, state_spec.puzzle_table, eval_batch_spec).compile())
  return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m tools.memory", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="configs/<task>.py[:variant]")
  parser.add_argument("--batch", type=int, default=None, help="global batch size (default: the config's)")
  parser.add_argument("--eval-batch", type=int, default=None, help="default: the config's eval.batch_size or --batch")
  parser.add_argument("--seq-len", type=int, default=None, help="tokens per example, without the puzzle prefix")
  parser.add_argument("--vocab-size", type=int, default=None)
  parser.add_argument("--num-puzzle-ids", type=int, default=None)
  parser.add_argument("--attention", choices=ATTENTION_IMPLS, default=None, help="model.attention_impl")
  parser.add_argument("--forward-dtype", choices=["float32", "bfloat16"], default=None)
  parser.add_argument("--grad-accum", type=int, default=None, help="grad_accum_steps (default: the config's)")
  parser.add_argument("--json", default=None, help="also write the figures here")
  args = parser.parse_args(argv)
  for name in ("batch", "eval_batch", "seq_len", "vocab_size", "num_puzzle_ids", "grad_accum"):
    value = getattr(args, name)
    if value is not None and value < 1:
      parser.error(f"--{name.replace('_', '-')} {value} must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  config = load_config(args.config)
  name = pathlib.Path(args.config.partition(":")[0]).stem
  (seq_len, vocab, ids), source = dataset_shapes(config, name)
  seq_len, vocab, ids = args.seq_len or seq_len, args.vocab_size or vocab, args.num_puzzle_ids or ids
  batch = args.batch or config.global_batch_size
  if args.grad_accum:
    config.grad_accum_steps = args.grad_accum
  model = dict(config.model.to_dict())
  if args.attention:
    model["attention_impl"] = args.attention
  if args.forward_dtype:
    model["forward_dtype"] = args.forward_dtype
  platform = jax.default_backend()
  try:
    cfg = ModelConfig(vocab_size=vocab, seq_len=seq_len, num_puzzle_identifiers=ids, **model)
    cfg.check_platform(platform)
  except ValueError as e:
    print(f"memory: error: {e}", file=sys.stderr)
    return 2
  devices = jax.device_count()
  eval_batch = args.eval_batch or (config.eval.batch_size if args.batch is None else 0) or batch
  if batch % (devices * config.grad_accum_steps) or eval_batch % devices:
    print(f"memory: error: --batch {batch} (eval {eval_batch}) must split evenly over {devices} devices and "
          f"{config.grad_accum_steps} accumulation steps", file=sys.stderr)
    return 2
  impl = cfg.resolved_attention_impl(platform, cfg.total_len)
  print(f"{args.config}: seq {seq_len}+{cfg.puzzle_emb_len} (T={cfg.total_len}), vocab {vocab}, {ids:,} puzzle "
        f"ids ({source}); batch {batch} (eval {eval_batch}), grad_accum_steps {config.grad_accum_steps}, "
        f"{cfg.forward_dtype}, attention {cfg.attention_impl} -> {impl}; {devices} x {jax.devices()[0].device_kind}")
  steps = compile_steps(config, cfg, batch, eval_batch)
  capacity, capacity_source = memory_lib.device_capacity()
  report: dict[str, Any] = {"config": args.config, "seq_len": seq_len, "total_len": cfg.total_len, "batch": batch,
                            "eval_batch": eval_batch, "attention": impl, "forward_dtype": cfg.forward_dtype,
                            "device": jax.devices()[0].device_kind, "capacity_bytes": capacity}
  for what, memory in steps.items():
    fits = "" if capacity is None else ("  fits" if memory.total <= capacity else "  DOES NOT FIT")
    print(f"  {what:5} step: {memory.describe()} per device{fits}")
    report[what] = dict(vars(memory), total=memory.total)
  if capacity is not None:
    print(f"  device capacity: {capacity / memory_lib.GiB:.2f} GiB ({capacity_source})")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
