"""Exponential moving average of the dense parameters (TRM's `models/ema.py`).

After every optimiser step: shadow = (1 - rate) * params + rate * shadow, started from the parameters at
the start of training, no bias correction. Only the dense parameters are averaged: the puzzle table and
H_init/L_init stay live, as in the original.
"""

from __future__ import annotations

import jax


def ema_update(ema_params, params, rate: float):
  """One EMA step (the original's `EMAHelper.update`)."""
  return jax.tree.map(lambda p, s: (1.0 - rate) * p + rate * s, params, ema_params)


def eval_params(state):
  """What evaluation, export and inference use: the EMA shadow when the state has one, else the params."""
  ema_params = getattr(state, "ema_params", None)
  return state.params if ema_params is None else ema_params


def restore_eval_weights(reader, step: int | None = None) -> dict:
  """{"params", "buffers", "puzzle_table"} of a saved run as the original would export them: with the
  EMA shadow as "params" when that run had EMA on (`reader` is a training.checkpoint.Checkpointer)."""
  step = reader.latest_good_step() if step is None else step
  if not reader.saved_config(step).get("ema"):
    return reader.restore_weights(step)
  weights = reader.restore_weights(step, keys=("ema_params", "buffers", "puzzle_table"))
  weights["params"] = weights.pop("ema_params")
  return weights
