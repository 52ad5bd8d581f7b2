"""Evaluation: every row runs ACT segments inside one jitted `while_loop`; metrics as the original reports them.

The original sums the last segment's metrics over all batches and divides every metric (losses too) by
`count`, the number of evaluated puzzles. Exact accuracy (the share of puzzles solved completely) is the
headline; token accuracy, per-class accuracy and mean halting steps stand beside it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.model import arch
from hrm_jax.model import hrm
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import IGNORE_LABEL_ID, LossConfig, act_loss, per_class_counts
from hrm_jax.training import ema as ema_lib


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  halt_on_q: bool = False  # True: stop each row at its first q_halt > q_continue (faster; not the original)
  halt_max_steps: int | None = None  # None: the model's; larger values = inference-time scaling


def make_eval_step(cfg: ModelConfig, loss_cfg: LossConfig, eval_cfg: EvalConfig) -> Callable:
  """(params, buffers, puzzle_table, batch) -> (metric sums, per-row predictions), jitted by the caller."""

  def eval_step(params, buffers, puzzle_table, batch):
    valid_B = batch.get("valid", jnp.ones(batch["inputs"].shape[:1], bool))
    outputs = arch.model_for(cfg).infer(params, buffers, cfg, puzzle_table, batch, halt_on_q=eval_cfg.halt_on_q,
                                        halt_max_steps=eval_cfg.halt_max_steps)
    labels = jnp.where(valid_B[:, None], batch["labels"], IGNORE_LABEL_ID)
    _, metrics = act_loss(outputs, labels, valid_B, outputs["steps"], **loss_cfg.kwargs())
    correct_V, total_V = per_class_counts(outputs["logits"], labels, valid_B, cfg.vocab_size)
    metrics = dict(metrics, class_correct=correct_V, class_total=total_V,
                   segments=outputs["num_segments"])
    predictions = {"preds": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32),
                   "q_halt_logits": outputs["q_halt_logits"], "q_continue_logits": outputs["q_continue_logits"],
                   "steps": outputs["steps"]}
    return metrics, predictions

  return eval_step


def summarize(metric_sums: dict[str, np.ndarray], num_batches: int) -> dict[str, Any]:
  """The original's eval reduction (divide by count) plus per-class accuracy and mean segments per batch."""
  count = float(metric_sums["count"])
  summary: dict[str, Any] = {"count": count}
  for name, value in metric_sums.items():
    if name in ("count", "class_correct", "class_total", "segments"):
      continue
    summary[name] = float(value) / max(count, 1.0)
  total = np.asarray(metric_sums["class_total"], np.float64)
  correct = np.asarray(metric_sums["class_correct"], np.float64)
  summary["per_class_accuracy"] = {str(c): float(correct[c] / total[c]) for c in range(len(total)) if total[c]}
  summary["mean_segments_per_batch"] = float(metric_sums["segments"]) / max(num_batches, 1)
  return summary


def _whole_batch_on_host(local_rows: dict[str, np.ndarray], predictions: dict[str, jax.Array]
                         ) -> dict[str, np.ndarray]:
  """This batch's rows and predictions as numpy; with several processes, the whole global batch.

  Each process holds only its slice of the rows, and predictions span devices it cannot read, so both are
  gathered across processes (rows concatenated in process order, the global batch's order).
  """
  if jax.process_count() == 1:
    return {**local_rows, **jax.device_get(predictions)}
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return {**multihost_utils.process_allgather(local_rows, tiled=True),
          **multihost_utils.process_allgather(predictions, tiled=True)}


def evaluate(eval_fn: Callable, state, batches: Iterable[dict[str, np.ndarray]], *,
             put_batch: Callable[[dict], dict] = lambda b: b,
             save_predictions_to: pathlib.Path | None = None,
             on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Runs `eval_fn` (the jitted eval step) over `batches`; returns the summary dict.

  Device metric sums are accumulated on device and fetched once at the end. `on_batch(rows)` is called
  after each batch is dispatched with its number of real (non-padding) rows, e.g. for a progress bar.
  """
  sums = None
  num_batches = 0
  saved: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    device_batch = put_batch(batch)
    metrics, predictions = eval_fn(ema_lib.eval_params(state), state.buffers, state.puzzle_table, device_batch)
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    num_batches += 1
    if on_batch is not None:
      on_batch(int(np.sum(batch["valid"])) if "valid" in batch else len(batch["inputs"]))
    if save_predictions_to is not None:
      rows = {k: np.asarray(batch[k]) for k in hrm.DATA_KEYS}
      rows["valid"] = np.asarray(batch.get("valid", np.ones(len(batch["inputs"]), bool)))
      host = _whole_batch_on_host(rows, predictions)
      keep = host.pop("valid")
      for name, value in host.items():
        saved.setdefault(name, []).append(np.asarray(value)[keep])
  if sums is None:
    raise ValueError("The evaluation split yielded no batches; check the dataset's test split.")
  summary = summarize(jax.device_get(sums), num_batches)
  if save_predictions_to is not None and jax.process_index() == 0:
    save_predictions_to.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(save_predictions_to, **{k: np.concatenate(v) for k, v in saved.items()})
  return summary
