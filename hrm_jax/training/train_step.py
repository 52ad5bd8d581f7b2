"""Train state and the pure train step `(state, batch) -> (state, metrics)`.

One training step is one ACT segment per row, as the original's `train_batch`: reset halted rows with the new
batch, one segment forward + backward on `loss / global_batch_size`, then one update of the run's optimiser
(`optim.hrm_optimizer`: SignSGD on the touched puzzle-table rows, AdamATan2 or AdamW on the dense parameters).
The step is jitted once with the state donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from hrm_jax.model import arch
from hrm_jax.model import hrm
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import LossConfig
from hrm_jax.training import ema as ema_lib
from hrm_jax.training import optim
from hrm_jax.training.segment import segment_value_and_grad


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: saved whole in every checkpoint."""

  step: jax.Array  # int32 scalar: optimiser steps taken
  params: Any  # dense parameters (trained by AdamATan2 / AdamW)
  opt_state: optim.WithPuzzleEmb  # the optimiser's state: (dense half, puzzle-embedding half)
  puzzle_table: jax.Array | None  # [num_puzzle_identifiers, puzzle_emb_ndim] float32 (SignSGD); None if unused
  buffers: dict[str, jax.Array]  # H_init / L_init
  carry: hrm.Carry  # ACT carry persisting across steps
  rng: jax.Array  # uint32 key data (raw, so it checkpoints as a plain array)
  ema_params: Any = None  # EMA shadow of `params` when config.ema is on (None: no leaves, nothing saved)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step (hashable, so the step compiles once)."""

  model: ModelConfig
  loss: LossConfig
  global_batch_size: int
  grad_accum_steps: int = 1
  ema_rate: float = 0.999  # used when the state carries ema_params


def create_train_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, batch_size: int,
                       seed: int, ema: bool = False) -> TrainState:
  """A fresh state with the original's initialisation. `batch_size` is the GLOBAL batch (carry rows).

  `optimizer` is the run's `optim.hrm_optimizer(dense, puzzle_emb)`; ema=True adds the EMA shadow, starting at
  the initial parameters.
  """
  key = jax.random.key(seed)
  key_params, key_buffers, key_run = jax.random.split(key, 3)
  params = arch.model_for(cfg).init_params(cfg, key_params)
  puzzle_table = hrm.init_puzzle_table(cfg) if cfg.puzzle_emb_ndim > 0 else None
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(optim.WithPuzzleEmb(params, puzzle_table)),
      puzzle_table=puzzle_table,
      buffers=hrm.init_buffers(cfg, key_buffers),
      carry=hrm.initial_carry(cfg, batch_size),
      rng=jax.random.key_data(key_run),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def _split_rows(tree, num_chunks: int):
  return jax.tree.map(lambda x: x.reshape((num_chunks, x.shape[0] // num_chunks) + x.shape[1:]), tree)


def _merge_rows(tree):
  return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)


def make_train_step(step_cfg: StepConfig, optimizer: optax.GradientTransformation
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The pure train step of `optimizer` (`optim.hrm_optimizer`); jit it (with the state donated) before use."""
  cfg, loss_cfg = step_cfg.model, step_cfg.loss
  num_chunks = step_cfg.grad_accum_steps

  def grads_of(params, rows, carry, min_halt):
    return segment_value_and_grad(params, rows, cfg=cfg, loss_cfg=loss_cfg, carry=carry, rng=None,
                                  global_batch_size=step_cfg.global_batch_size, min_halt_steps_B=min_halt)

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    carry = hrm.reset_carry(state.carry, batch, state.buffers)
    ids_B = carry.current_data["puzzle_identifiers"]
    rows = hrm.gather_puzzle_rows(cfg, state.puzzle_table, ids_B)
    rng, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    batch_size = ids_B.shape[0]
    min_halt = (hrm.exploration_min_steps(cfg, step_key, batch_size) if cfg.halt_exploration_prob > 0
                else None)

    if num_chunks == 1:
      (_, (new_carry, _, metrics, _)), (grads, row_grads) = grads_of(state.params, rows, carry, min_halt)
    else:
      # Micro-batches over rows: summed gradients equal the full batch's (the loss is a sum over rows
      # divided by the global batch size), and per-row draws are shared, so the update is identical.
      chunks = _split_rows((rows, carry, min_halt), num_chunks)

      def body(grad_acc, chunk):
        rows_c, carry_c, min_halt_c = chunk
        (_, (carry_out, _, metrics_c, _)), (g, row_g) = grads_of(state.params, rows_c, carry_c, min_halt_c)
        grad_acc = jax.tree.map(jnp.add, grad_acc, g)
        return grad_acc, (carry_out, metrics_c, row_g)

      zero = jax.tree.map(jnp.zeros_like, state.params)
      grads, (carries, chunk_metrics, row_grads) = jax.lax.scan(body, zero, chunks)
      new_carry = _merge_rows(carries)
      row_grads = _merge_rows(row_grads)
      metrics = jax.tree.map(lambda m: jnp.sum(m, axis=0), chunk_metrics)

    trainables = optim.WithPuzzleEmb(state.params, state.puzzle_table)
    row_grads = optim.SparseRowGrads(ids_B, row_grads) if cfg.puzzle_emb_ndim > 0 else None
    updates, opt_state = optimizer.update(optim.WithPuzzleEmb(grads, row_grads), state.opt_state, trainables)
    params, puzzle_table = optim.apply_updates(trainables, updates)

    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              puzzle_table=puzzle_table, carry=new_carry, rng=jax.random.key_data(rng))
    if state.ema_params is not None:
      new_state = new_state.replace(ema_params=ema_lib.ema_update(state.ema_params, params, step_cfg.ema_rate))
    return new_state, reduce_train_metrics(metrics, step_cfg.global_batch_size, grads)

  return train_step


def reduce_train_metrics(metric_sums: dict[str, jax.Array], global_batch_size: int, grads) -> dict:
  """The original's train reduction: `*loss` / global batch, everything else / max(count, 1).

  `count` is the number of rows that halted this step (the original logs count/count = 1; we keep the raw
  number as `halted_rows`). Also reports the global gradient norm (non-finite flags a diverged run).
  """
  count = metric_sums["count"].astype(jnp.float32)
  out = {}
  for name, value in metric_sums.items():
    value = value.astype(jnp.float32)
    if name == "count":
      out["halted_rows"] = value
    elif name.endswith("loss"):
      out[name] = value / global_batch_size
    else:
      out[name] = value / jnp.maximum(count, 1.0)
  out["loss"] = (metric_sums["lm_loss"] + 0.5 * (metric_sums["q_halt_loss"]
                                                 + metric_sums.get("q_continue_loss", 0.0))) / global_batch_size
  out["grad_norm"] = optax.tree.norm(grads)
  return out
