"""HRM-ACT-v1: the H/L recurrent core, one ACT segment, and ACT training/inference as pure functions.

Layout of the model's variables (all plain pytrees):
  params   Flax parameters, trained by the dense optimiser (AdamATan2 / AdamW).
  buffers  {"H_init": [D], "L_init": [D]} in the forward dtype; fixed after init (as the original's buffers).
  puzzle table  [num_puzzle_identifiers, puzzle_emb_ndim] float32, trained by sparse SignSGD; kept outside
                `params` so its rows can be gathered and differentiated alone. The model only ever sees the
                gathered rows `puzzle_rows_BxE`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from hrm_jax.model import layers
from hrm_jax.model.config import ModelConfig

DATA_KEYS = ("inputs", "labels", "puzzle_identifiers")
_LEARNED_POS_MIX = 0.707106781  # the original's literal for 1/sqrt(2)


class HRMInner(nn.Module):
  """The original's `HierarchicalReasoningModel_ACTV1_Inner`, exposed as methods for the pure segment loop."""

  config: ModelConfig

  def setup(self):
    self.setup_embeddings_and_heads()
    self.H_level = layers.ReasoningModule(self.config, self.config.H_layers)
    self.L_level = layers.ReasoningModule(self.config, self.config.L_layers)

  def setup_embeddings_and_heads(self):
    cfg = self.config
    cfg.check_x64()
    init_std = 1.0 / cfg.hidden_size ** 0.5
    self.embed_tokens = layers.CastedEmbed(cfg.vocab_size, cfg.hidden_size, cfg.dtype, init_std)
    self.lm_head = layers.CastedDense(cfg.vocab_size)
    self.q_head = layers.CastedDense(
        2, use_bias=True, kernel_init=nn.initializers.zeros_init(),
        bias_init=nn.initializers.constant(-5.0))
    if cfg.pos_encodings == "learned":
      self.embed_pos = layers.CastedEmbed(cfg.total_len, cfg.hidden_size, cfg.dtype, init_std)

  def embed(self, inputs_BxS: jax.Array, puzzle_rows_BxE: jax.Array | None) -> jax.Array:
    """Token embedding, puzzle prefix, optional learned positions, then the sqrt(D) scale: `[B, T, D]`."""
    cfg = self.config
    x = self.embed_tokens(inputs_BxS)
    if cfg.puzzle_emb_ndim > 0:
      rows = puzzle_rows_BxE.astype(cfg.dtype)
      pad = cfg.puzzle_emb_len * cfg.hidden_size - cfg.puzzle_emb_ndim
      if pad:
        rows = jnp.pad(rows, ((0, 0), (0, pad)))
      prefix_BxPxD = rows.reshape(rows.shape[0], cfg.puzzle_emb_len, cfg.hidden_size)
      x = jnp.concatenate([prefix_BxPxD, x], axis=1)
    if cfg.pos_encodings == "learned":
      x = _LEARNED_POS_MIX * (x + self.embed_pos.embedding.astype(cfg.dtype))
    return (cfg.hidden_size ** 0.5) * x

  def L_update(self, z_L: jax.Array, injection: jax.Array) -> jax.Array:
    return self.L_level(z_L, injection)

  def H_update(self, z_H: jax.Array, injection: jax.Array) -> jax.Array:
    return self.H_level(z_H, injection)

  def heads(self, z_H_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """lm logits `[B, S, V]` in the forward dtype (prefix dropped) and Q logits `[B, 2]` in float32."""
    logits = self.lm_head(z_H_BxTxD)[:, self.config.puzzle_emb_len:]
    q_Bx2 = self.q_head(z_H_BxTxD[:, 0]).astype(jnp.float32)
    return logits, q_Bx2

  def __call__(self, inputs_BxS, puzzle_rows_BxE, z_H, z_L):
    # Used only by `init`: touches every submodule once so all parameters get created.
    x = self.embed(inputs_BxS, puzzle_rows_BxE)
    z_L = self.L_update(z_L, z_H + x)
    z_H = self.H_update(z_H, z_L)
    return self.heads(z_H)


def _matmul_precision(cfg: ModelConfig):
  if cfg.dtype == jnp.float32:
    return jax.default_matmul_precision("highest")
  return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------------------
def init_params(cfg: ModelConfig, key: jax.Array) -> dict[str, Any]:
  """Fresh parameters with the original's initialisation (Q head weight 0 / bias -5)."""
  batch = 1
  inputs = jnp.zeros((batch, cfg.seq_len), jnp.int32)
  rows = jnp.zeros((batch, cfg.puzzle_emb_ndim), jnp.float32) if cfg.puzzle_emb_ndim else None
  z = jnp.zeros((batch, cfg.total_len, cfg.hidden_size), cfg.dtype)
  return HRMInner(cfg).init(key, inputs, rows, z, z)["params"]


def init_buffers(cfg: ModelConfig, key: jax.Array) -> dict[str, jax.Array]:
  """H_init / L_init: truncated normal with std 1, stored in the forward dtype."""
  key_h, key_l = jax.random.split(key)
  init = layers.trunc_normal_init(1.0)
  return {"H_init": init(key_h, (cfg.hidden_size,)).astype(cfg.dtype),
          "L_init": init(key_l, (cfg.hidden_size,)).astype(cfg.dtype)}


def init_puzzle_table(cfg: ModelConfig) -> jax.Array:
  """The puzzle-embedding table starts at zero (the original's init_std=0)."""
  return jnp.zeros((cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim), jnp.float32)


def gather_puzzle_rows(cfg: ModelConfig, table: jax.Array, puzzle_ids_B: jax.Array) -> jax.Array | None:
  if cfg.puzzle_emb_ndim == 0:
    return None
  return jnp.take(table, puzzle_ids_B.astype(jnp.int32), axis=0)


# --------------------------------------------------------------------------------------------------------
# One segment of the H/L recurrence
# --------------------------------------------------------------------------------------------------------
def input_embeddings(params, cfg: ModelConfig, inputs_BxS, puzzle_rows_BxE) -> jax.Array:
  with _matmul_precision(cfg):
    return HRMInner(cfg).apply({"params": params}, inputs_BxS, puzzle_rows_BxE, method=HRMInner.embed)


def segment(params, cfg: ModelConfig, z_H, z_L, inputs_BxS, puzzle_rows_BxE):
  """One ACT segment of the inner model (the original's `Inner.forward`).

  H_cycles·L_cycles L-updates and H_cycles H-updates; only the final L and H update carry gradient
  (the "1-step gradient"); the returned carry is detached.

  Returns ((z_H, z_L), logits_BxSxV, q_halt_B, q_continue_B).
  """
  module = HRMInner(cfg)
  with _matmul_precision(cfg):
    def run(p, method, *args):
      return module.apply({"params": p}, *args, method=method)

    x = run(params, HRMInner.embed, inputs_BxS, puzzle_rows_BxE)

    # No-gradient part: detach every input so nothing here is differentiated or kept for the backward pass.
    params_ng, x_ng = jax.lax.stop_gradient((params, x))
    z_H, z_L = jax.lax.stop_gradient((z_H, z_L))
    l_step = lambda _, zl, zh: run(params_ng, HRMInner.L_update, zl, zh + x_ng)

    def full_cycle(_, carry):
      zh, zl = carry
      zl = jax.lax.fori_loop(0, cfg.L_cycles, functools.partial(l_step, zh=zh), zl)
      zh = run(params_ng, HRMInner.H_update, zh, zl)
      return zh, zl

    z_H, z_L = jax.lax.fori_loop(0, cfg.H_cycles - 1, full_cycle, (z_H, z_L))
    z_L = jax.lax.fori_loop(0, cfg.L_cycles - 1, functools.partial(l_step, zh=z_H), z_L)

    # The 1-step gradient: one L update and one H update with gradient.
    z_L = run(params, HRMInner.L_update, z_L, z_H + x)
    z_H = run(params, HRMInner.H_update, z_H, z_L)
    logits, q_Bx2 = run(params, HRMInner.heads, z_H)
  new_carry = jax.lax.stop_gradient((z_H, z_L))
  return new_carry, logits, q_Bx2[:, 0], q_Bx2[:, 1]


# --------------------------------------------------------------------------------------------------------
# ACT carry and one ACT step
# --------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class Carry:
  """ACT state kept between calls: inner state, segments used, halted flags and the data each row works on."""

  z_H: jax.Array  # [B, T, D] forward dtype
  z_L: jax.Array  # [B, T, D] forward dtype
  steps: jax.Array  # [B] int32
  halted: jax.Array  # [B] bool
  current_data: dict[str, jax.Array]  # inputs [B, S], labels [B, S], puzzle_identifiers [B]


def initial_carry(cfg: ModelConfig, batch_size: int) -> Carry:
  """Every row starts halted, so the first call resets it and takes the batch's row."""
  # Two separate buffers: one array in both fields could not be donated to the jitted train step.
  z_shape = (batch_size, cfg.total_len, cfg.hidden_size)
  return Carry(
      z_H=jnp.zeros(z_shape, cfg.dtype), z_L=jnp.zeros(z_shape, cfg.dtype),
      steps=jnp.zeros((batch_size,), jnp.int32),
      halted=jnp.ones((batch_size,), bool),
      current_data={
          "inputs": jnp.zeros((batch_size, cfg.seq_len), jnp.int32),
          "labels": jnp.zeros((batch_size, cfg.seq_len), jnp.int32),
          "puzzle_identifiers": jnp.zeros((batch_size,), jnp.int32),
      })


def _where_rows(flag_B, new, old):
  return jnp.where(flag_B.reshape(flag_B.shape + (1,) * (old.ndim - 1)), new, old)


def reset_carry(carry: Carry, batch: dict[str, jax.Array], buffers: dict[str, jax.Array]) -> Carry:
  """Halted rows restart from H_init/L_init with steps 0 and take the new batch's row at the same index."""
  halted = carry.halted
  return Carry(
      z_H=_where_rows(halted, buffers["H_init"].astype(carry.z_H.dtype), carry.z_H),
      z_L=_where_rows(halted, buffers["L_init"].astype(carry.z_L.dtype), carry.z_L),
      steps=jnp.where(halted, 0, carry.steps),
      halted=halted,
      current_data={k: _where_rows(halted, batch[k].astype(v.dtype), v)
                    for k, v in carry.current_data.items()})


def exploration_min_steps(cfg: ModelConfig, rng: jax.Array, batch_size: int,
                          halt_max_steps: int | None = None) -> jax.Array:
  """Per-row minimum segments: with prob `halt_exploration_prob` a random 2..max, else 0."""
  max_steps = cfg.halt_max_steps if halt_max_steps is None else halt_max_steps
  key_explore, key_min = jax.random.split(rng)
  explore = jax.random.uniform(key_explore, (batch_size,)) < cfg.halt_exploration_prob
  return explore * jax.random.randint(key_min, (batch_size,), 2, max_steps + 1)


def wants_halt(cfg: ModelConfig, q_halt_B: jax.Array, q_continue_B: jax.Array) -> jax.Array:
  """The Q halting rule: q_halt > q_continue; with TRM's `no_ACT_continue`, q_halt > 0."""
  if getattr(cfg, "no_ACT_continue", False):
    return q_halt_B > 0
  return q_halt_B > q_continue_B


def act_step(params, cfg: ModelConfig, carry: Carry, puzzle_rows_BxE, *, training: bool,
             rng: jax.Array | None = None, min_halt_steps_B: jax.Array | None = None,
             halt_on_q: bool = False, halt_max_steps: int | None = None, segment_fn: Callable | None = None
             ) -> tuple[Carry, dict[str, jax.Array]]:
  """One ACT call on a carry that `reset_carry` already prepared (the original's `ACT.forward` after reset).

  training=True: Q-based halting with exploration and the target-Q second forward (needs `rng`, or the
  precomputed `min_halt_steps_B` from `exploration_min_steps`, when `halt_exploration_prob > 0`); with
  `no_ACT_continue` (TRM) halting reads q_halt alone and there is no target Q.
  training=False: the original's evaluation, halting only at
  `halt_max_steps`, unless `halt_on_q` also halts rows that `wants_halt`.
  `segment_fn` is the architecture's segment (default: HRM's `segment`).
  """
  segment_fn = segment if segment_fn is None else segment_fn
  max_steps = cfg.halt_max_steps if halt_max_steps is None else halt_max_steps
  data = carry.current_data
  (z_H, z_L), logits, q_halt, q_continue = segment_fn(
      params, cfg, carry.z_H, carry.z_L, data["inputs"], puzzle_rows_BxE)
  outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

  steps = carry.steps + 1
  is_last = steps >= max_steps
  halted = is_last
  if training and max_steps > 1:
    halted = halted | wants_halt(cfg, q_halt, q_continue)
    if cfg.halt_exploration_prob > 0:
      if min_halt_steps_B is None:
        if rng is None:
          raise ValueError("act_step(training=True) needs `rng` when halt_exploration_prob > 0")
        min_halt_steps_B = exploration_min_steps(cfg, rng, steps.shape[0], max_steps)
      halted = halted & (steps >= min_halt_steps_B)
    if not getattr(cfg, "no_ACT_continue", False):
      # Target Q from the next segment (no gradient), as the original's "PQN-like" bootstrap.
      _, _, next_q_halt, next_q_continue = segment_fn(
          jax.lax.stop_gradient(params), cfg, z_H, z_L, data["inputs"],
          jax.lax.stop_gradient(puzzle_rows_BxE))
      outputs["target_q_continue"] = jax.nn.sigmoid(
          jnp.where(is_last, next_q_halt, jnp.maximum(next_q_halt, next_q_continue)))
  elif halt_on_q:
    halted = halted | wants_halt(cfg, q_halt, q_continue)
  outputs = {k: jax.lax.stop_gradient(v) if k == "target_q_continue" else v for k, v in outputs.items()}
  new_carry = Carry(z_H=z_H, z_L=z_L, steps=steps, halted=jax.lax.stop_gradient(halted), current_data=data)
  return new_carry, outputs


# --------------------------------------------------------------------------------------------------------
# Inference: segments inside a while_loop until every row halted
# --------------------------------------------------------------------------------------------------------
def infer(params, buffers, cfg: ModelConfig, puzzle_table, batch: dict[str, jax.Array], *,
          halt_on_q: bool = False, halt_max_steps: int | None = None, segment_fn: Callable | None = None
          ) -> dict[str, jax.Array]:
  """Runs ACT segments in `jax.lax.while_loop` until every row halted or `halt_max_steps` is reached.

  halt_on_q=False is the original's evaluation (every row runs exactly `halt_max_steps` segments);
  halt_on_q=True stops a row at the first segment that `wants_halt` and freezes its outputs, and the
  loop ends as soon as every row halted. `halt_max_steps` above the training value is inference-time scaling.

  Returns the final outputs per row: logits, q_halt_logits, q_continue_logits, steps (segments used per row)
  and num_segments (segments the loop ran).
  """
  max_steps = cfg.halt_max_steps if halt_max_steps is None else halt_max_steps
  batch_size = batch["inputs"].shape[0]
  carry = reset_carry(initial_carry(cfg, batch_size), batch, buffers)
  rows = gather_puzzle_rows(cfg, puzzle_table, carry.current_data["puzzle_identifiers"])
  out_shape = jax.eval_shape(
      lambda c: act_step(params, cfg, c, rows, training=False, halt_max_steps=max_steps,
                         segment_fn=segment_fn)[1], carry)
  outputs0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

  def cond(state):
    carry, _, num_segments = state
    return jnp.logical_and(num_segments < max_steps, ~jnp.all(carry.halted))

  def body(state):
    carry, outputs, num_segments = state
    active_B = ~carry.halted if halt_on_q else jnp.ones_like(carry.halted)
    new_carry, new_outputs = act_step(
        params, cfg, carry.replace(halted=jnp.zeros_like(carry.halted)), rows, training=False,
        halt_on_q=halt_on_q, halt_max_steps=max_steps, segment_fn=segment_fn)
    outputs = jax.tree.map(lambda n, o: _where_rows(active_B, n, o), new_outputs, outputs)
    new_carry = new_carry.replace(
        steps=jnp.where(active_B, new_carry.steps, carry.steps),
        halted=carry.halted | new_carry.halted)
    return new_carry, outputs, num_segments + 1

  carry = carry.replace(halted=jnp.zeros((batch_size,), bool))
  carry, outputs, num_segments = jax.lax.while_loop(cond, body, (carry, outputs0, jnp.int32(0)))
  return {**outputs, "steps": carry.steps, "num_segments": num_segments}
