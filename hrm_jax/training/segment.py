"""The differentiable core of one training step: one ACT segment, its loss, and gradients.

Kept apart from the train loop so parity tools and tests run exactly the code that training runs.
"""

from __future__ import annotations

import jax

from hrm_jax.model import arch
from hrm_jax.model import hrm
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import LossConfig, act_loss


def segment_loss(params, puzzle_rows_BxE, *, cfg: ModelConfig, loss_cfg: LossConfig, carry: hrm.Carry,
                 rng: jax.Array | None, global_batch_size: int, min_halt_steps_B: jax.Array | None = None):
  """Loss of one training-mode ACT segment on a carry already reset with the new batch.

  Returns (loss / global_batch_size, (new_carry, outputs, metrics, total_loss)); gradients w.r.t. `params`
  and the gathered puzzle rows follow the original's `(loss / global_batch_size).backward()`.
  """
  new_carry, outputs = arch.model_for(cfg).act_step(params, cfg, carry, puzzle_rows_BxE, training=True, rng=rng,
                                                    min_halt_steps_B=min_halt_steps_B)
  total, metrics = act_loss(outputs, new_carry.current_data["labels"], new_carry.halted, new_carry.steps,
                            **loss_cfg.kwargs())
  return total / global_batch_size, (new_carry, outputs, metrics, total)


segment_value_and_grad = jax.value_and_grad(segment_loss, argnums=(0, 1), has_aux=True)
