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
