"""The one place that maps a model config to its architecture's functions.

Both modules expose the same functions (init_params, init_buffers, init_puzzle_table, initial_carry,
reset_carry, gather_puzzle_rows, exploration_min_steps, input_embeddings, segment, act_step, infer), so the
train step, evaluation and tools call `model_for(cfg).<fn>` and run HRM or TRM alike.
"""

from __future__ import annotations

import types

from hrm_jax.model import hrm
from hrm_jax.model import trm
from hrm_jax.model.config import ModelConfig

_MODULES = {"hrm_v1": hrm, "trm": trm}


def model_for(cfg: ModelConfig) -> types.ModuleType:
  """`hrm_jax.model.hrm` or `hrm_jax.model.trm`, by `cfg.arch`."""
  return _MODULES[cfg.arch]
