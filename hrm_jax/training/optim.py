"""Optimisers and LR schedules: AdamATan2 on the dense parameters, sparse SignSGD on the puzzle table.

Mirrors the original's `pretrain.py` (HRM_REFERENCE §4.1–4.2): AdamATan2 on every dense parameter, a
sign-SGD step on only the puzzle-table rows present in the batch, both driven by the same
cosine-with-warmup schedule (each with its own base lr). AdamW and global-norm clipping are options the
original does not use.

Step numbering: optax hands a schedule the 0-based count of updates already applied; the original
increments its step before use, so its first update runs at step 1. Every schedule here takes the optax
count and evaluates the original at `step = count + 1`.

`hrm_optimizer(dense, sparse_signsgd(...))` is the one optimiser object of a run. Its params, gradients,
updates and state are `WithPuzzleEmb(dense=..., puzzle_emb=...)` pairs: the dense half is any optax
transformation over the parameter tree; the puzzle half sees only the batch's rows (`SparseRowGrads` in,
`SparseRowUpdates` out), so its cost is O(batch × embedding), never O(table).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

DENSE_OPTIMIZERS = ("adam_atan2", "adamw")
WARMUP_UNITS = ("steps", "epochs", "samples")


# ------------------------------------------------------------------------------------------------
# AdamATan2
# ------------------------------------------------------------------------------------------------


class AdamAtan2State(NamedTuple):
  """State of `adam_atan2`: updates applied so far and float32 moments shaped like the params."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def adam_atan2(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.95,
    weight_decay: float = 0.1,
) -> optax.GradientTransformation:
  """AdamATan2 exactly as the original's fused kernel (pip `adam-atan2`, HRM_REFERENCE §4.1).

  Per update t (1-based), in float32, on every parameter:
    p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
    p ← p − lr/(1−β1^t) · atan2(m, sqrt(v)/sqrt(1−β2^t))
  There is no epsilon (atan2(0, 0) = 0, so all-zero gradients stay finite). The returned updates
  already contain the weight decay: `optax.apply_updates(params, updates)` gives the new params.

  Args:
    learning_rate: a constant or a schedule of the 0-based update count.
    b1: first-moment decay.
    b2: second-moment decay.
    weight_decay: decoupled decay, multiplied by the lr, applied to every parameter.

  Returns:
    The transformation; its `update` needs `params`.
  """

  def init_fn(params: optax.Params) -> AdamAtan2State:
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)
    return AdamAtan2State(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(zeros, params),
        nu=jax.tree.map(zeros, params),
    )

  def update_fn(
      grads: optax.Updates, state: AdamAtan2State, params: optax.Params | None = None
  ) -> tuple[optax.Updates, AdamAtan2State]:
    if params is None:
      raise ValueError("adam_atan2 applies weight decay, so update() needs params: "
                       "call optimizer.update(grads, state, params)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, jnp.float32)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    step_size = lr / (1.0 - jnp.float32(b1) ** t)
    bias_correction2_sqrt = jnp.sqrt(1.0 - jnp.float32(b2) ** t)
    decay = 1.0 - lr * jnp.float32(weight_decay)

    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g.astype(jnp.float32), state.mu, grads)
    nu = jax.tree.map(
        lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g.astype(jnp.float32)), state.nu, grads)

    def param_update(p, m, v):
      p32 = p.astype(jnp.float32)
      new_p32 = p32 * decay - step_size * jnp.arctan2(m, jnp.sqrt(v) / bias_correction2_sqrt)
      # new − old is exact whenever they are within 2× of each other (Sterbenz), so apply_updates
      # reproduces new_p32 bit for bit in the usual case.
      return (new_p32 - p32).astype(p.dtype)

    updates = jax.tree.map(param_update, params, mu, nu)
    return updates, AdamAtan2State(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ------------------------------------------------------------------------------------------------


def make_lr_schedule(
    base_lr: float,
    *,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 1.0,
    restart_every: int = 0,
) -> optax.Schedule:
  """The original's `cosine_schedule_with_warmup_lr_lambda` (num_cycles 0.5) as an optax schedule.

  With the original's step s = count + 1 (count: optax's 0-based number of updates applied), W the
  warmup and T the total steps:
    s < W:  base_lr · s / max(1, W)
    else:   base_lr · (min_ratio + (1 − min_ratio) · ½(1 + cos(π · p))),  p = (s − W) / max(1, T − W)
  p is clamped to 1 after T (the original stops at T, so this never changes a value it computes).
  `min_ratio = 1` (the original's default) gives linear warmup then a constant lr.

  restart_every = N > 0 (not in the original) replaces the single decay with cycles of N steps after
  the warmup: p = ((s − W) mod N) / N, so the lr jumps back to base_lr at s = W + kN; the warmup is
  not repeated and `total_steps` no longer shapes the decay.

  Args:
    base_lr: peak learning rate (the original's `lr` or `puzzle_emb_lr`).
    warmup_steps: W, optimiser steps of linear warmup (see `resolve_warmup_steps`).
    total_steps: T, the run's optimiser steps.
    min_ratio: final lr as a fraction of base_lr.
    restart_every: cycle length N in optimiser steps for warm restarts; 0 disables them.

  Returns:
    count ↦ float32 lr, jit-friendly.
  """
  problems = []
  if warmup_steps < 0:
    problems.append(f"warmup_steps={warmup_steps} must be >= 0")
  if total_steps < 1:
    problems.append(f"total_steps={total_steps} must be >= 1")
  if not 0.0 <= min_ratio <= 1.0:
    problems.append(f"min_ratio={min_ratio} must lie in [0, 1]")
  if restart_every < 0:
    problems.append(f"restart_every={restart_every} must be >= 0 (0 disables restarts)")
  if problems:
    raise ValueError("invalid lr schedule: " + "; ".join(problems))

  warmup_denominator = float(max(1, warmup_steps))
  decay_span = float(restart_every if restart_every else max(1, total_steps - warmup_steps))

  def schedule(count: jax.typing.ArrayLike) -> jax.Array:
    step = jnp.asarray(count, jnp.int32) + 1
    warmup_lr = base_lr * step.astype(jnp.float32) / warmup_denominator
    since_warmup = jnp.maximum(step - warmup_steps, 0)
    if restart_every:
      since_warmup = since_warmup % restart_every
    progress = jnp.minimum(since_warmup.astype(jnp.float32) / decay_span, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    decay_lr = base_lr * (min_ratio + jnp.maximum(0.0, (1.0 - min_ratio) * cosine))
    return jnp.where(step < warmup_steps, warmup_lr, decay_lr).astype(jnp.float32)

  return schedule


def resolve_warmup_steps(
    warmup: int | Mapping[str, float], steps_per_epoch: float, global_batch_size: int
) -> int:
  """Converts a warmup given in steps, epochs or samples into optimiser steps.

  Accepts an int (steps) or a one-key mapping `{"steps": n}`, `{"epochs": e}` (e · steps_per_epoch) or
  `{"samples": n}` (n / global_batch_size). Fractional results round up, so the warmup covers at least
  the requested amount.

  Args:
    warmup: the config value.
    steps_per_epoch: optimiser steps per epoch (total_groups · mean_puzzle_examples / global_batch).
    global_batch_size: examples per optimiser step, over all devices.

  Returns:
    The warmup length in optimiser steps.
  """
  if isinstance(warmup, bool):
    raise ValueError(f"warmup={warmup!r} is a bool; give steps as an int or one of "
                     f"{{'steps': n}}, {{'epochs': e}}, {{'samples': n}}")
  if isinstance(warmup, int):
    warmup = {"steps": warmup}
  if not isinstance(warmup, Mapping) or len(warmup) != 1:
    raise ValueError(f"warmup={warmup!r} must be an int or a mapping with exactly one key of "
                     f"{WARMUP_UNITS}, e.g. {{'epochs': 5}}")
  (unit, amount), = warmup.items()
  if unit not in WARMUP_UNITS:
    raise ValueError(f"warmup unit {unit!r} is unknown; use one of {WARMUP_UNITS}")
  if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
    raise ValueError(f"warmup {unit}={amount!r} must be a non-negative number")
  if unit == "steps":
    steps = amount
  elif unit == "epochs":
    if steps_per_epoch <= 0:
      raise ValueError(f"steps_per_epoch={steps_per_epoch} must be > 0 to convert warmup epochs")
    steps = amount * steps_per_epoch
  else:
    if global_batch_size < 1:
      raise ValueError(f"global_batch_size={global_batch_size} must be >= 1 to convert warmup samples")
    steps = amount / global_batch_size
  # Guard against float noise such as 5 * 0.2 = 1.0000000000000002 turning into 2 steps.
  return int(math.ceil(round(steps, 9)))


# ------------------------------------------------------------------------------------------------
# Dense optimiser factory
# ------------------------------------------------------------------------------------------------


def make_dense_optimizer(
    learning_rate: float | optax.Schedule,
    *,
    name: str = "adam_atan2",
    b1: float = 0.9,
    b2: float = 0.95,
    weight_decay: float = 0.1,
    eps: float = 1e-8,
    grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
  """The optimiser for every dense parameter, optionally after global-norm clipping.

  Args:
    learning_rate: a constant or a schedule of the 0-based update count (`make_lr_schedule`).
    name: "adam_atan2" (the original) or "adamw" (optax.adamw, decoupled decay on every parameter).
    b1: first-moment decay.
    b2: second-moment decay.
    weight_decay: decoupled weight decay (multiplied by the lr in both optimisers).
    eps: AdamW's epsilon; AdamATan2 has none.
    grad_clip_norm: clip the gradients' global norm to this before the optimiser; None or 0 disables
      clipping (the original does not clip).

  Returns:
    A GradientTransformation whose `update` needs params.
  """
  if name == "adam_atan2":
    optimizer = adam_atan2(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  elif name == "adamw":
    optimizer = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  else:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {DENSE_OPTIMIZERS}")
  if grad_clip_norm is not None and grad_clip_norm < 0:
    raise ValueError(f"grad_clip_norm={grad_clip_norm} must be > 0, or None/0 to disable clipping")
  if grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)
  return optimizer


# ------------------------------------------------------------------------------------------------
# Sparse puzzle-embedding SignSGD
# ------------------------------------------------------------------------------------------------


class SparseRowGrads(NamedTuple):
  """The puzzle table's gradient as the batch's rows: what `sparse_signsgd` takes."""

  ids_B: jax.Array  # puzzle id of each row (duplicates allowed; ids outside [0, N) are ignored)
  rows_BxE: jax.Array  # gradient w.r.t. the gathered rows (`hrm.gather_puzzle_rows`)


class SparseRowUpdates(NamedTuple):
  """What `sparse_signsgd` returns: w ← w·decay + step on each listed row (`apply_row_updates`).

  `ids_U` holds each touched id once (static size B); unused slots hold distinct ids ≥ N and are dropped.
  """

  ids_U: jax.Array
  decay_UxE: jax.Array
  step_UxE: jax.Array


class SignSGDState(NamedTuple):
  count: jax.Array  # int32 updates applied so far; the schedule's argument


def signsgd_row_updates(num_rows: int, grads: SparseRowGrads, lr: jax.typing.ArrayLike,
                        weight_decay: float, dtype: Any = jnp.float32) -> SparseRowUpdates:
  """The original's `CastedSparseEmbeddingSignSGD_Distributed` step, as row updates.

  Gradients of duplicate ids are summed (in float32), then each touched row gets
  w ← w·(1 − lr·wd) − lr·sign(G). Decay and step stay separate because the original rounds after each,
  while XLA would contract `w·decay − lr·sign` into one FMA (an ulp away). The decay is NaN where the
  gradient is (sign(NaN) is NaN in the original); deriving it from the gradient also orders the in-place
  scatters after every read of the table, so XLA never copies the whole table.
  """
  batch = grads.ids_B.shape[0]
  ids_B = grads.ids_B.astype(jnp.int32)
  # Sorted unique ids padded (with num_rows) to the static size B; inverse maps each slot to its id.
  uniq_U, inverse_B = jnp.unique(ids_B, return_inverse=True, size=batch, fill_value=num_rows)
  grads_UxE = jax.ops.segment_sum(
      grads.rows_BxE.astype(jnp.float32), inverse_B.reshape(-1), num_segments=batch)
  # Padding and invalid ids get distinct out-of-range indices so the scatter drops them and its
  # indices stay truly unique.
  slots_U = jnp.arange(batch, dtype=jnp.int32)
  uniq_U = jnp.where((uniq_U >= 0) & (uniq_U < num_rows), uniq_U, num_rows + slots_U)
  lr = jnp.asarray(lr, jnp.float32)
  decay = (1.0 - lr * weight_decay).astype(dtype)
  decay_UxE = jnp.where(jnp.isnan(grads_UxE), jnp.nan, decay).astype(dtype)
  step_UxE = (-lr * jnp.sign(grads_UxE)).astype(dtype)
  return SparseRowUpdates(uniq_U, decay_UxE, step_UxE)


def apply_row_updates(table_NxE: jax.Array, updates: SparseRowUpdates) -> jax.Array:
  """Applies `SparseRowUpdates` as two scatters; in place when the table is donated under jit.

  Rows not listed stay bit-identical (no decay).
  """
  table_NxE = table_NxE.at[updates.ids_U].multiply(updates.decay_UxE, mode="drop", unique_indices=True)
  return table_NxE.at[updates.ids_U].add(updates.step_UxE, mode="drop", unique_indices=True)


def sparse_signsgd(learning_rate: float | optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
  """SignSGD on only the puzzle-table rows in the batch, as an optax transformation.

  `update(SparseRowGrads, state, table)` returns `SparseRowUpdates` for `apply_row_updates`; the lr is
  `learning_rate(count)` (the original's `puzzle_emb_lr` schedule) and the weight decay is the
  original's `puzzle_emb_weight_decay`. For data parallelism pass the GLOBAL batch's ids and row
  gradients (under jit with globally sharded arrays they are already global).
  """

  def init_fn(table_NxE) -> SignSGDState:
    del table_NxE
    return SignSGDState(count=jnp.zeros([], jnp.int32))

  def update_fn(grads: SparseRowGrads, state: SignSGDState, table_NxE=None):
    if table_NxE is None:
      raise ValueError("sparse_signsgd needs the table: call update(row_grads, state, table)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    updates = signsgd_row_updates(table_NxE.shape[0], grads, lr, weight_decay, table_NxE.dtype)
    return updates, SignSGDState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------------------------------------
# The run's optimiser: dense + sparse in one object
# ------------------------------------------------------------------------------------------------


class WithPuzzleEmb(NamedTuple):
  """A (dense tree, puzzle table part) pair: the params, gradients, updates and state of `hrm_optimizer`.

  As params: (dense parameters, table or None); as gradients: (dense grads, `SparseRowGrads` or None);
  as updates: (dense updates, `SparseRowUpdates` or None); as state: (dense state, `SignSGDState`).
  """

  dense: Any
  puzzle_emb: Any


def hrm_optimizer(dense: optax.GradientTransformation,
                  puzzle_emb: optax.GradientTransformation) -> optax.GradientTransformation:
  """The original's two optimisers as one: `puzzle_emb` on the table's rows, `dense` on the rest.

  Each half keeps its own state, schedule and weight decay. A None table (no puzzle embedding) leaves
  the puzzle half's state unchanged. Apply the result with `apply_updates`.
  """

  def init_fn(params: WithPuzzleEmb) -> WithPuzzleEmb:
    return WithPuzzleEmb(dense.init(params.dense), puzzle_emb.init(params.puzzle_emb))

  def update_fn(grads: WithPuzzleEmb, state: WithPuzzleEmb, params: WithPuzzleEmb | None = None):
    if params is None:
      raise ValueError("hrm_optimizer applies weight decay, so update() needs params")
    # The original steps the sparse optimiser first; the halves are independent, so only the order of
    # the ops in the program follows it.
    row_updates, emb_state = None, state.puzzle_emb
    if grads.puzzle_emb is not None:
      row_updates, emb_state = puzzle_emb.update(grads.puzzle_emb, state.puzzle_emb, params.puzzle_emb)
    dense_updates, dense_state = dense.update(grads.dense, state.dense, params.dense)
    return WithPuzzleEmb(dense_updates, row_updates), WithPuzzleEmb(dense_state, emb_state)

  return optax.GradientTransformation(init_fn, update_fn)


def apply_updates(params: WithPuzzleEmb, updates: WithPuzzleEmb) -> WithPuzzleEmb:
  """`optax.apply_updates` on the dense half, `apply_row_updates` on the table."""
  table = params.puzzle_emb
  if updates.puzzle_emb is not None:
    table = apply_row_updates(table, updates.puzzle_emb)
  return WithPuzzleEmb(optax.apply_updates(params.dense, updates.dense), table)


def sparse_signsgd_update(table_NxE: jax.Array, ids_B: jax.Array, row_grads_BxE: jax.Array,
                          lr: jax.typing.ArrayLike, weight_decay: float) -> jax.Array:
  """One SignSGD step at a given lr, without optimiser state (for checks against the original)."""
  updates = signsgd_row_updates(table_NxE.shape[0], SparseRowGrads(ids_B, row_grads_BxE), lr,
                                weight_decay, table_NxE.dtype)
  return apply_row_updates(table_NxE, updates)
