"""Scores a trained model on a dataset split: the original's metrics, named per-class accuracy, segments
and seconds, a predictions file, and for ARC the voting pass@k and a Kaggle submission.json.
"""

from __future__ import annotations

import json
import pathlib
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.convert.model_file import LoadedModel
from hrm_jax.convert.torch_checkpoint import CheckpointConversionError
from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline
from hrm_jax.evaluation import arc_eval
from hrm_jax.evaluation import evaluate as eval_lib
from hrm_jax.evaluation import names
from hrm_jax.model.losses import LossConfig

PREDICTIONS_FILE = "predictions.npz"
REPORT_FILE = "report.json"
SUBMISSION_FILE = "submission.json"


def check_fits(model: LoadedModel, meta: data_format.DatasetMetadata, where: str) -> None:
  """Raises CheckpointConversionError unless the model's vocabulary, length and puzzle ids cover the data."""
  cfg = model.model_config
  problems = []
  if cfg.vocab_size != meta.vocab_size:
    problems.append(f"vocab_size {cfg.vocab_size} vs the data's {meta.vocab_size}")
  if cfg.seq_len != meta.seq_len:
    problems.append(f"seq_len {cfg.seq_len} vs the data's {meta.seq_len}")
  if cfg.puzzle_emb_ndim > 0 and cfg.num_puzzle_identifiers < meta.num_puzzle_identifiers:
    problems.append(f"{cfg.num_puzzle_identifiers} puzzle identifiers vs the data's {meta.num_puzzle_identifiers}")
  if problems:
    raise CheckpointConversionError(f"{model.source} does not fit {where} ({'; '.join(problems)}); evaluate it on "
                                    "the dataset it was trained on.")


def evaluate_model(model: LoadedModel, data_dir: pathlib.Path, *, split: str = "test",
                   halt_max_steps: int | None = None, early_halt: bool = False, subset: int | None = None,
                   batch_size: int | None = None, out_dir: pathlib.Path | None = None,
                   progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
  """Evaluates `model` on `data_dir/split`; returns the report (also written to out_dir/report.json)."""
  meta = data_format.load_metadata(data_dir, split)
  check_fits(model, meta, f"{data_dir}/{split}")
  kind = names.puzzle_kind(meta)
  cfg = model.model_config
  max_steps = halt_max_steps or cfg.halt_max_steps
  loss_cfg = LossConfig(loss_type=model.loss_type or "stablemax_cross_entropy")
  eval_cfg = eval_lib.EvalConfig(halt_on_q=early_halt, halt_max_steps=max_steps)
  step_fn = jax.jit(eval_lib.make_eval_step(cfg, loss_cfg, eval_cfg))
  state = types.SimpleNamespace(
      params=jax.tree.map(jnp.asarray, model.params),
      buffers={k: jnp.asarray(v, cfg.dtype) for k, v in model.buffers.items()},
      puzzle_table=None if model.puzzle_table is None else jnp.asarray(model.puzzle_table, jnp.float32))

  if batch_size is None:  # a run's own evaluation batch, so that its metrics come out bit for bit
    run_config = model.run_config or {}
    batch_size = (run_config.get("eval") or {}).get("batch_size") or run_config.get("global_batch_size") or 256
  batches = pipeline.make_eval_batches(data_dir, global_batch_size=batch_size, split=split, subset_size=subset)
  compile_start = time.perf_counter()
  example = {"inputs": jax.ShapeDtypeStruct((batch_size, meta.seq_len), jnp.int32),
             "labels": jax.ShapeDtypeStruct((batch_size, meta.seq_len), jnp.int32),
             "puzzle_identifiers": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
             "valid": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
  compiled = step_fn.lower(state.params, state.buffers, state.puzzle_table, example).compile()
  compile_s = time.perf_counter() - compile_start

  num_batches = 0

  def on_batch(rows: int) -> None:
    nonlocal num_batches
    num_batches += 1
    if progress is not None:
      progress(rows)

  save_to = out_dir / PREDICTIONS_FILE if out_dir is not None else None
  if out_dir is not None:
    out_dir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  summary = eval_lib.evaluate(compiled, state, batches, save_predictions_to=save_to, on_batch=on_batch)
  seconds = time.perf_counter() - start

  per_class = {names.token_name(kind, int(token)): acc for token, acc in summary.pop("per_class_accuracy").items()}
  segments_run = int(round(summary["mean_segments_per_batch"] * num_batches))
  report: dict[str, Any] = {
      "exact_accuracy": summary["exact_accuracy"], "accuracy": summary["accuracy"],
      "per_class_accuracy": per_class, "steps": summary["steps"], "q_halt_accuracy": summary["q_halt_accuracy"],
      "lm_loss": summary["lm_loss"], "q_halt_loss": summary["q_halt_loss"], "count": int(summary["count"]),
      "segments_run": segments_run, "segments_max": num_batches * max_steps, "batches": num_batches,
      "halt_max_steps": max_steps, "trained_halt_max_steps": cfg.halt_max_steps, "early_halt": early_halt,
      "seconds": seconds, "compile_seconds": compile_s, "kind": kind, "checkpoint": model.source,
      "step": model.step, "data": str(data_dir), "split": split, "batch_size": batch_size, "subset": subset,
      "model_config": cfg.to_dict(),
  }
  if kind == "arc":
    if save_to is None:
      raise ValueError("ARC scoring needs the predictions: pass --out DIR.")
    with np.load(save_to) as npz:
      predictions = {k: npz[k] for k in npz.files}
    identifiers = data_format.load_identifiers(data_dir)
    report.update(arc_eval.arc_pass_at_k(predictions, identifiers))
    submission = arc_eval.submission(predictions, identifiers)
    (out_dir / SUBMISSION_FILE).write_text(json.dumps(submission))
    report["submission"] = str(out_dir / SUBMISSION_FILE)
  if out_dir is not None:
    report["predictions"] = str(save_to)
    report["report"] = str(out_dir / REPORT_FILE)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
  return report


def format_report(report: dict[str, Any]) -> str:
  """Exact accuracy first (the headline), then token and per-class accuracy, halting, segments and time."""
  lines = [f"exact accuracy   {report['exact_accuracy']:.2%}  ({round(report['exact_accuracy'] * report['count'])}"
           f" / {report['count']} puzzles solved completely)",
           f"token accuracy   {report['accuracy']:.2%}",
           "per-class accuracy  " + "  ".join(f"{k} {v:.2%}" for k, v in report["per_class_accuracy"].items()),
           f"halting steps    {report['steps']:.2f} per puzzle (of at most {report['halt_max_steps']}; trained "
           f"with {report['trained_halt_max_steps']})",
           f"q-halt accuracy  {report['q_halt_accuracy']:.2%}",
           f"segments run     {report['segments_run']} of {report['segments_max']} "
           f"({report['batches']} batches x {report['halt_max_steps']})"
           + (f"; early halting: {report['steps']:.2f} segments per puzzle instead of {report['halt_max_steps']} "
              f"({1 - report['steps'] / report['halt_max_steps']:.0%} fewer), "
              f"{1 - report['segments_run'] / max(report['segments_max'], 1):.0%} fewer batch segments"
              if report["early_halt"] else ""),
           f"seconds          {report['seconds']:.2f} (+ {report['compile_seconds']:.1f} compiling)"]
  for k in (1, 2, 10, 100, 1000):
    if f"arc_pass@{k}" in report:
      lines.append(f"ARC pass@{k:<5}   {report[f'arc_pass@{k}']:.2%}  ({int(report['arc_tasks'])} tasks)")
  for key in ("submission", "predictions", "report"):
    if key in report:
      lines.append(f"wrote {report[key]}")
  return "\n".join(lines)
