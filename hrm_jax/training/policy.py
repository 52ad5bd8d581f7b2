"""When the loop evaluates, stops early, saves, and which checkpoint it trusts: small pure policies.

Each policy is a frozen dataclass built from the config; the state it needs between steps is an
`EvalRecord` value (saved in every checkpoint's metadata, so a resumed run evaluates and stops at the same
steps as an uninterrupted one). Nothing here touches devices or files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import ml_collections


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """What the evaluation policy remembers between steps (and across restarts)."""
  best_fast: float = -1.0  # best fast-subset exact accuracy so far
  last_full_step: int = 0
  best_exact: float | None = None  # best full-evaluation exact accuracy and its step
  best_step: int | None = None
  evals_without_improvement: int = 0

  def to_metadata(self) -> dict[str, Any]:
    return {"best_fast_exact_accuracy": self.best_fast, "last_full_step": self.last_full_step,
            "best_exact_accuracy": self.best_exact, "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement}

  @classmethod
  def from_metadata(cls, metadata: Mapping[str, Any], start_step: int) -> "EvalRecord":
    return cls(best_fast=metadata.get("best_fast_exact_accuracy", -1.0),
               last_full_step=metadata.get("last_full_step", start_step),
               best_exact=metadata.get("best_exact_accuracy"), best_step=metadata.get("best_step"),
               evals_without_improvement=metadata.get("evals_without_improvement", 0))


@dataclasses.dataclass(frozen=True)
class EvalPolicy:
  """Fast evaluations on a subset every `every_steps`; a full one when the fast one gained, at least every
  `full_every_steps`, and at the end; an early stop after `early_stop_patience` full ones without a gain."""
  every_steps: int
  subset_size: int
  full_every_steps: int
  full_on_fast_gain: float
  early_stop_patience: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, every_steps: int) -> "EvalPolicy":
    e = config.eval
    return cls(every_steps=every_steps, subset_size=e.subset_size, full_every_steps=e.full_every_steps,
               full_on_fast_gain=e.full_on_fast_gain, early_stop_patience=e.early_stop_patience)

  def due(self, step: int, is_last: bool) -> bool:
    return is_last or bool(self.every_steps and step % self.every_steps == 0)

  def runs_fast(self, is_last: bool) -> bool:
    return bool(self.subset_size) and not is_last

  def runs_full(self, record: EvalRecord, step: int, is_last: bool, fast_exact: float | None) -> bool:
    return (fast_exact is None or is_last
            or bool(self.full_every_steps and step - record.last_full_step >= self.full_every_steps)
            or fast_exact >= record.best_fast + self.full_on_fast_gain)

  @staticmethod
  def after_fast(record: EvalRecord, fast_exact: float) -> EvalRecord:
    return dataclasses.replace(record, best_fast=max(record.best_fast, fast_exact))

  @staticmethod
  def after_full(record: EvalRecord, step: int, exact: float) -> EvalRecord:
    if record.best_exact is None or exact > record.best_exact:
      return dataclasses.replace(record, last_full_step=step, best_exact=exact, best_step=step,
                                 evals_without_improvement=0)
    return dataclasses.replace(record, last_full_step=step,
                               evals_without_improvement=record.evals_without_improvement + 1)

  def stops_early(self, record: EvalRecord) -> bool:
    return bool(self.early_stop_patience) and record.evals_without_improvement >= self.early_stop_patience


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
  """A step is saved periodically, after a full evaluation, at the end, on a stop signal or an early stop."""
  every_steps: int

  def due(self, step: int, *, is_last: bool, full_eval: bool, stopping: bool) -> bool:
    return is_last or full_eval or stopping or step % self.every_steps == 0


def divergence(metrics: Mapping[str, float], weights_norm: float | None = None) -> str | None:
  """What is not finite among the loss, the gradient norm and the weights' global norm, or None.

  The weights' float32 global norm overflows to inf once any weight passes ~1e19, so a checkpoint whose loss
  was still finite but whose update blew the weights up is caught before it is saved.
  """
  bad = [f"{k}={metrics[k]}" for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k])]
  if weights_norm is not None and not math.isfinite(weights_norm):
    bad.append(f"weights' global norm={weights_norm}")
  return ", ".join(bad) or None
