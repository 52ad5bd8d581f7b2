"""Optimisers, LR schedules, gradient accumulation and the sparse puzzle-embedding SignSGD.

Mirrors the original's `pretrain.py` (HRM_REFERENCE §4.1–4.2): AdamATan2 on every dense parameter, a
sign-SGD step on only the puzzle-table rows present in the batch, both driven by the same
cosine-with-warmup schedule (each with its own base lr). AdamW and global-norm clipping are options the
original does not use.

Step numbering: optax hands a schedule the 0-based count of updates already applied; the original
increments its step before use, so its first update runs at step 1. Every schedule here takes the optax
count and evaluates the original at `step = count + 1`. The sparse update has no state: the caller passes
`lr = schedule(count)` with the same count as the dense optimiser.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

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
# Gradient accumulation
# ------------------------------------------------------------------------------------------------


def split_microbatches(batch: Any, num_microbatches: int) -> Any:
  """Reshapes every leaf's leading axis B into [num_microbatches, B / num_microbatches, ...]."""

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch axis {x.shape[0]} is not divisible by num_microbatches="
                       f"{num_microbatches}; pick a divisor of the per-device batch")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])

  return jax.tree.map(split, batch)


def accumulate_gradients(
    grad_fn: Callable[[Any, Any], tuple[Any, Any]],
    params: Any,
    microbatches: Any,
    *,
    reduce: str = "sum",
) -> tuple[Any, Any]:
  """Runs `grad_fn` over micro-batches with `lax.scan` and combines the gradients in float32.

  HRM's loss is a sum of per-example losses divided by the GLOBAL batch size; with that
  normalisation inside `grad_fn`, `reduce="sum"` gives the large-batch gradient. Use `reduce="mean"`
  when `grad_fn` normalises by the micro-batch size instead. Anything per-example (the ACT carry, the
  puzzle-embedding row gradients, metrics) comes back stacked in `aux` with a leading micro-batch
  axis; flatten the row gradients and their ids to [M·b, E] / [M·b] and apply the sparse update once.

  Args:
    grad_fn: (params, microbatch) -> (grads, aux).
    params: passed unchanged to every call.
    microbatches: pytree whose leaves have a leading axis M (see `split_microbatches`).
    reduce: "sum" or "mean" over micro-batches.

  Returns:
    (grads in the dtype grad_fn returns, aux stacked over M).
  """
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce={reduce!r}; use 'sum' (loss already divided by the global batch) or "
                     "'mean' (loss divided by the micro-batch)")
  num_microbatches = jax.tree.leaves(microbatches)[0].shape[0]
  first = jax.tree.map(lambda x: x[0], microbatches)
  grads_shape, _ = jax.eval_shape(grad_fn, params, first)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), grads_shape)

  def body(acc, microbatch):
    grads, aux = grad_fn(params, microbatch)
    return jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads), aux

  total, aux = jax.lax.scan(body, zeros, microbatches)
  if reduce == "mean":
    total = jax.tree.map(lambda g: g / num_microbatches, total)
  grads = jax.tree.map(lambda g, s: g.astype(s.dtype), total, grads_shape)
  return grads, aux


# ------------------------------------------------------------------------------------------------
# Sparse puzzle-embedding SignSGD
# ------------------------------------------------------------------------------------------------


def gather_rows(table_NxE: jax.Array, ids_B: jax.Array) -> jax.Array:
  """The batch's puzzle-table rows (the original's `local_weights`); differentiate w.r.t. these.

  ids must lie in [0, N): larger ids give NaN rows, negative ids wrap like NumPy.
  """
  return jnp.take(table_NxE, ids_B, axis=0)


def sparse_signsgd_update(
    table_NxE: jax.Array,
    ids_B: jax.Array,
    row_grads_BxE: jax.Array,
    lr: jax.typing.ArrayLike,
    weight_decay: float,
) -> jax.Array:
  """The original's `CastedSparseEmbeddingSignSGD_Distributed` step on only the rows in the batch.

  Gradients of duplicate ids are summed, then each touched row gets
  w ← w·(1 − lr·wd) − lr·sign(G); other rows are left bit-identical (no decay). The work and
  temporaries are O(B·E): with the table donated under jit the scatters are in place, provided every
  other read of the table (`gather_rows`) feeds the row gradients, so XLA orders it first. For data
  parallelism pass the GLOBAL batch's ids and row gradients (under `shard_map`, see
  `all_gather_sparse_grads`; under plain jit with globally sharded arrays, pass them as they are).
  Ids outside [0, N) are ignored.

  Args:
    table_NxE: the puzzle-embedding table.
    ids_B: puzzle id of each row gradient (duplicates allowed).
    row_grads_BxE: gradient w.r.t. `gather_rows(table_NxE, ids_B)`.
    lr: learning rate for this step (e.g. `make_lr_schedule(puzzle_emb_lr, ...)(count)`).
    weight_decay: the original's `puzzle_emb_weight_decay`.

  Returns:
    The updated table, same shape and dtype.
  """
  num_rows = table_NxE.shape[0]
  batch = ids_B.shape[0]
  ids_B = ids_B.astype(jnp.int32)
  # Sorted unique ids padded (with num_rows) to the static size B; inverse maps each slot to its id.
  uniq_U, inverse_B = jnp.unique(ids_B, return_inverse=True, size=batch, fill_value=num_rows)
  grads_UxE = jax.ops.segment_sum(
      row_grads_BxE.astype(jnp.float32), inverse_B.reshape(-1), num_segments=batch)
  # Padding and invalid ids get distinct out-of-range indices so the scatter drops them and its
  # indices stay truly unique.
  slots_U = jnp.arange(batch, dtype=jnp.int32)
  uniq_U = jnp.where((uniq_U >= 0) & (uniq_U < num_rows), uniq_U, num_rows + slots_U)
  lr = jnp.asarray(lr, jnp.float32)
  # Two in-place scatters, not one of w·decay − lr·sign: the original rounds after the decay and
  # again after the step, while XLA contracts the fused expression into one FMA (an ulp away).
  # Deriving the decay from the gradient (NaN in, NaN out, as sign(NaN) in the original) orders the
  # first scatter after every read of the table; without that dependency XLA copies the whole table.
  decay = (1.0 - lr * weight_decay).astype(table_NxE.dtype)
  decay_UxE = jnp.where(jnp.isnan(grads_UxE), jnp.nan, decay).astype(table_NxE.dtype)
  step_UxE = (-lr * jnp.sign(grads_UxE)).astype(table_NxE.dtype)
  table_NxE = table_NxE.at[uniq_U].multiply(decay_UxE, mode="drop", unique_indices=True)
  return table_NxE.at[uniq_U].add(step_UxE, mode="drop", unique_indices=True)


def all_gather_sparse_grads(
    ids_B: jax.Array, row_grads_BxE: jax.Array, axis_name: str | tuple[str, ...]
) -> tuple[jax.Array, jax.Array]:
  """Inside `shard_map`: every device's ids and row gradients, concatenated in device order.

  The original all-gathers before its sparse step; feeding the result to `sparse_signsgd_update` on
  each device's replicated table keeps the copies identical.
  """
  return (jax.lax.all_gather(ids_B, axis_name, tiled=True),
          jax.lax.all_gather(row_grads_BxE, axis_name, tiled=True))
