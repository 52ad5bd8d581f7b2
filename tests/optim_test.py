"""Tests of hrm_jax.training.optim against the original's optimiser trajectory and by construction."""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrm_jax.training import optim

FORWARD_DTYPES = ("float32", "bfloat16")
# The original's trajectory settings (fixture README): constant lr, no warmup.
ADAM_LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 0.1
PUZZLE_LR, PUZZLE_WEIGHT_DECAY = 1e-2, 0.1
# AdamATan2 vs the original, per tensor: |ours − theirs| ≤ 1e-6 · max|theirs|. The measured worst is
# 3e-8 absolute (≈1e-7 of max|p|): float32 rounding of a different atan2/sqrt implementation.
ADAM_RTOL_OF_MAX = 1e-6


def _load_original(fixture_dir: pathlib.Path, forward_dtype: str):
  torch = pytest.importorskip("torch")
  case_dir = fixture_dir / forward_dtype
  reference = np.load(case_dir / "reference.npz")
  state_dict = torch.load(case_dir / "checkpoint_dir" / "step_0", map_location="cpu",
                          weights_only=True)
  initial = {key[len("_orig_mod."):]: value.float().numpy() for key, value in state_dict.items()}
  return reference, initial


def _traj_param_names(reference) -> list[str]:
  return sorted(k[len("traj_rows__"):] for k in reference.files if k.startswith("traj_rows__"))


@pytest.mark.parametrize("forward_dtype", FORWARD_DTYPES)
def test_adam_atan2_reproduces_original_three_steps(original_fixture_dir, forward_dtype):
  reference, initial = _load_original(original_fixture_dir, forward_dtype)
  names = _traj_param_names(reference)
  assert len(names) == 20
  # AdamATan2 is element-wise, so the fixture's kept rows evolve independently of the dropped ones:
  # every parameter is checked, fully kept or not.
  params = {n: jnp.asarray(initial[n][reference["traj_rows__" + n]]) for n in names}
  optimizer = optim.adam_atan2(ADAM_LR, *BETAS, weight_decay=WEIGHT_DECAY)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for k in range(3):
    grads = {n: jnp.asarray(reference[f"traj{k}_grad__{n}"]) for n in names}
    previous = params
    params, state = step(params, state, grads)
    assert int(state.count) == k + 1
    for n in names:
      want = reference[f"traj{k}_param__{n}"]
      got = np.asarray(params[n])
      tolerance = ADAM_RTOL_OF_MAX * np.abs(want).max()
      np.testing.assert_allclose(got, want, rtol=0, atol=tolerance, err_msg=f"step {k} {n}")
      # The step itself is far above the tolerance, so a wrong step could not pass.
      assert np.abs(want - np.asarray(previous[n])).max() > 100 * tolerance


def _signsgd_step(learning_rate, weight_decay):
  """One jitted step of the optax transformation, table donated: (table, state, ids, grads) -> (table, state)."""
  transform = optim.sparse_signsgd(learning_rate, weight_decay)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(table, state, ids, row_grads):
    updates, state = transform.update(optim.SparseRowGrads(ids, row_grads), state, table)
    return optim.apply_row_updates(table, updates), state

  return transform, step


@pytest.mark.parametrize("forward_dtype", FORWARD_DTYPES)
def test_sparse_signsgd_reproduces_original_three_steps(original_fixture_dir, forward_dtype):
  reference, initial = _load_original(original_fixture_dir, forward_dtype)
  table = jnp.asarray(initial["model.inner.puzzle_emb.weights"])
  transform, step = _signsgd_step(PUZZLE_LR, PUZZLE_WEIGHT_DECAY)
  state = transform.init(table)
  saw_duplicates = False
  for k in range(3):
    ids = reference[f"traj{k}_local_ids"]
    saw_duplicates |= len(np.unique(ids)) < len(ids)
    previous = np.asarray(table)
    table, state = step(table, state, jnp.asarray(ids),
                        jnp.asarray(reference[f"traj{k}_grad__puzzle_emb.local_weights"]))
    # Exact gradients in, sign out: bit-identical to the original.
    np.testing.assert_array_equal(np.asarray(table), reference[f"traj{k}_param__puzzle_emb.weights"])
    assert not np.array_equal(np.asarray(table), previous)
    assert int(state.count) == k + 1
  assert saw_duplicates


@pytest.mark.parametrize("forward_dtype", FORWARD_DTYPES)
def test_sparse_signsgd_reproduces_original_single_step(original_fixture_dir, forward_dtype):
  reference, initial = _load_original(original_fixture_dir, forward_dtype)
  table = optim.sparse_signsgd_update(
      jnp.asarray(initial["model.inner.puzzle_emb.weights"]),
      jnp.asarray(reference["puzzle_identifiers"]),
      jnp.asarray(reference["grad__puzzle_emb.local_weights"]), PUZZLE_LR, PUZZLE_WEIGHT_DECAY)
  np.testing.assert_array_equal(np.asarray(table), reference["puzzle_emb_weights_after_signsgd"])


def test_sparse_signsgd_sums_duplicates_and_leaves_other_rows_untouched():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(10, 3)).astype(np.float32)
  ids = np.array([3, 7, 3, 3, 0, 12], np.int32)  # 12 is out of range: ignored.
  grads = np.array([
      [1.0, -1.0, 0.5],
      [0.2, 0.0, -0.3],
      [-0.4, 0.6, -0.5],
      [-0.4, 0.6, 0.0],  # row 3 sums to [+0.2, +0.2, 0]: signs differ from a majority vote.
      [0.0, 0.0, 0.0],   # touched with a zero gradient: decay only.
      [5.0, 5.0, 5.0],
  ], np.float32)
  lr, weight_decay = 0.05, 0.2
  transform, step = _signsgd_step(lr, weight_decay)
  got, _ = step(jnp.asarray(table), transform.init(table), jnp.asarray(ids), jnp.asarray(grads))
  got = np.asarray(got)

  decay = np.float32(1.0 - np.float32(lr) * np.float32(weight_decay))
  want = table.copy()
  want[3] = table[3] * decay - np.float32(lr) * np.array([1, 1, 0], np.float32)
  want[7] = table[7] * decay - np.float32(lr) * np.array([1, 0, -1], np.float32)
  want[0] = table[0] * decay
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  untouched = [r for r in range(10) if r not in (0, 3, 7)]
  np.testing.assert_array_equal(got[untouched], table[untouched])


def test_sparse_signsgd_donated_table_is_updated_in_place():
  table = jnp.arange(40, dtype=jnp.float32).reshape(8, 5)
  transform, step = _signsgd_step(0.1, 0.0)
  new_table, _ = step(table, transform.init(table), jnp.array([1, 1], jnp.int32), jnp.ones((2, 5)))
  assert table.is_deleted()  # the donation was accepted, so no second table was allocated.
  np.testing.assert_allclose(np.asarray(new_table[1]), np.arange(5, 10) - 0.1, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new_table[2:]), np.arange(10, 40).reshape(6, 5))


def test_sparse_signsgd_schedule_runs_on_its_own_count_and_needs_the_table():
  # lr = 0.1·count+0.1 at counts 0, 1, 2: a zero-decay step moves a row by exactly -lr·sign(g).
  schedule = lambda count: 0.1 * (count.astype(jnp.float32) + 1.0)
  transform, step = _signsgd_step(schedule, 0.0)
  table = jnp.zeros((4, 2), jnp.float32)
  state = transform.init(table)
  moves = []
  for _ in range(3):
    before = np.asarray(table)
    table, state = step(table, state, jnp.array([2], jnp.int32), jnp.array([[1.0, -1.0]]))
    moves.append(np.asarray(table)[2] - before[2])
  np.testing.assert_allclose(moves, [[-0.1, 0.1], [-0.2, 0.2], [-0.3, 0.3]], rtol=1e-6)
  assert int(state.count) == 3
  with pytest.raises(ValueError, match="needs the table"):
    transform.update(optim.SparseRowGrads(jnp.array([0]), jnp.ones((1, 2))), state)


def test_hrm_optimizer_is_the_two_optimisers_side_by_side_bit_for_bit():
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.zeros((4,), jnp.float32)}
  table = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)
  dense = optim.adam_atan2(optim.make_lr_schedule(1e-2, warmup_steps=2, total_steps=5))
  emb_schedule = optim.make_lr_schedule(1e-1, warmup_steps=2, total_steps=5)
  optimizer = optim.hrm_optimizer(dense, optim.sparse_signsgd(emb_schedule, 0.1))

  @jax.jit
  def combined_step(trainables, state, grads):
    updates, state = optimizer.update(grads, state, trainables)
    return optim.apply_updates(trainables, updates), state

  @jax.jit
  def dense_step(params, state, grads):
    updates, state = dense.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  trainables = optim.WithPuzzleEmb(params, table)
  state = optimizer.init(trainables)
  dense_params, dense_state, separate_table = params, dense.init(params), table
  for k in range(4):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    ids = jnp.asarray(rng.integers(0, 12, size=6), jnp.int32)
    row_grads = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    trainables, state = combined_step(trainables, state,
                                      optim.WithPuzzleEmb(grads, optim.SparseRowGrads(ids, row_grads)))
    # The same step by hand: AdamATan2 on the dense tree, SignSGD at lr = schedule(k) on the rows.
    dense_params, dense_state = dense_step(dense_params, dense_state, grads)
    separate_table = jax.jit(optim.sparse_signsgd_update)(separate_table, ids, row_grads, emb_schedule(k), 0.1)
    for key in params:
      np.testing.assert_array_equal(np.asarray(trainables.dense[key]), np.asarray(dense_params[key]))
    np.testing.assert_array_equal(np.asarray(trainables.puzzle_emb), np.asarray(separate_table))
  assert int(state.dense.count) == int(state.puzzle_emb.count) == 4
  assert not np.array_equal(np.asarray(trainables.puzzle_emb), np.asarray(table))

  # Without a puzzle table only the dense half moves; the puzzle half's state is left as it was.
  no_table = optim.WithPuzzleEmb(params, None)
  empty_state = optimizer.init(no_table)
  updates, after = optimizer.update(optim.WithPuzzleEmb(grads, None), empty_state, no_table)
  assert updates.puzzle_emb is None and optim.apply_updates(no_table, updates).puzzle_emb is None
  assert int(after.puzzle_emb.count) == 0 and int(after.dense.count) == 1
  with pytest.raises(ValueError, match="needs params"):
    optimizer.update(optim.WithPuzzleEmb(grads, None), empty_state)


def test_sparse_update_memory_is_batch_sized_not_table_sized():
  num_rows, dim, batch = 1_000_000, 512, 768
  table_bytes = num_rows * dim * 4
  transform = optim.sparse_signsgd(optim.make_lr_schedule(1e-2, warmup_steps=10, total_steps=100), 0.1)

  def sparse_step(table_NxE, state, ids_B, scale_BxE):
    rows_BxE = jnp.take(table_NxE, ids_B, axis=0)  # as hrm.gather_puzzle_rows
    row_grads_BxE = jax.grad(lambda r: jnp.sum(jnp.tanh(r * scale_BxE)))(rows_BxE)
    updates, state = transform.update(optim.SparseRowGrads(ids_B, row_grads_BxE), state, table_NxE)
    return optim.apply_row_updates(table_NxE, updates), state

  def dense_step(table_NxE, state, ids_B, scale_BxE):
    loss = lambda t: jnp.sum(jnp.tanh(jnp.take(t, ids_B, axis=0) * scale_BxE))
    return table_NxE * (1 - 1e-3) - 1e-2 * jnp.sign(jax.grad(loss)(table_NxE)), state

  shapes = (jax.ShapeDtypeStruct((num_rows, dim), jnp.float32),
            optim.SignSGDState(jax.ShapeDtypeStruct((), jnp.int32)),
            jax.ShapeDtypeStruct((batch,), jnp.int32),
            jax.ShapeDtypeStruct((batch, dim), jnp.float32))

  def memory(step):
    return jax.jit(step, donate_argnums=0).lower(*shapes).compile().memory_analysis()

  sparse, dense = memory(sparse_step), memory(dense_step)
  # The measured temp is ~3 MB (two B×E buffers); allow ten.
  assert sparse.temp_size_in_bytes < 10 * batch * dim * 4, sparse
  assert sparse.temp_size_in_bytes < table_bytes / 100
  assert sparse.alias_size_in_bytes == table_bytes  # output written into the donated table.
  # The same analysis does see a dense table gradient, so the bound above is meaningful.
  assert dense.temp_size_in_bytes >= table_bytes, dense


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def _at_step(schedule, step: int) -> float:
  """The schedule at the original's 1-based step (optax count = step − 1)."""
  return float(schedule(step - 1))


def test_schedule_warmup_cosine_min_ratio():
  base, warmup, total = 1e-3, 10, 110
  schedule = optim.make_lr_schedule(base, warmup_steps=warmup, total_steps=total, min_ratio=0.1)
  assert _at_step(schedule, 1) == pytest.approx(base / warmup, rel=1e-6)
  assert _at_step(schedule, warmup - 1) == pytest.approx(base * (warmup - 1) / warmup, rel=1e-6)
  assert _at_step(schedule, warmup) == pytest.approx(base, rel=1e-6)
  assert _at_step(schedule, warmup + 1) == pytest.approx(
      base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 100))), rel=1e-6)
  assert _at_step(schedule, 60) == pytest.approx(base * 0.55, rel=1e-6)  # half-way: cos = 0.
  assert _at_step(schedule, total) == pytest.approx(base * 0.1, rel=1e-6)
  assert _at_step(schedule, total + 50) == pytest.approx(base * 0.1, rel=1e-6)
  # Traced counts give the same values (the schedule runs inside the jitted step).
  counts = jnp.array([0, warmup - 1, warmup, total - 1])
  np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(schedule))(counts)),
                             [_at_step(schedule, int(c) + 1) for c in counts], rtol=1e-7)


def test_schedule_default_is_linear_warmup_then_constant():
  schedule = optim.make_lr_schedule(7e-5, warmup_steps=2000, total_steps=26040)
  assert _at_step(schedule, 1) == pytest.approx(7e-5 / 2000, rel=1e-6)
  assert _at_step(schedule, 1000) == pytest.approx(7e-5 / 2, rel=1e-6)
  for step in (2000, 2001, 13000, 26040):
    assert _at_step(schedule, step) == pytest.approx(7e-5, rel=1e-6)
  no_warmup = optim.make_lr_schedule(1e-2, warmup_steps=0, total_steps=100)
  assert _at_step(no_warmup, 1) == pytest.approx(1e-2, rel=1e-6)


def test_schedule_warm_restarts():
  base, warmup, cycle = 1.0, 4, 20
  schedule = optim.make_lr_schedule(base, warmup_steps=warmup, total_steps=1000, min_ratio=0.1,
                                    restart_every=cycle)
  assert _at_step(schedule, 2) == pytest.approx(0.5)  # warmup is unchanged.
  cosine = lambda j: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * j / cycle))
  for first in (warmup, warmup + cycle, warmup + 3 * cycle):
    assert _at_step(schedule, first) == pytest.approx(base, rel=1e-6)
    assert _at_step(schedule, first + 5) == pytest.approx(cosine(5), rel=1e-6)
    assert _at_step(schedule, first + cycle - 1) == pytest.approx(cosine(cycle - 1), rel=1e-6)


def test_schedule_count_maps_to_original_step_inside_adam_atan2():
  schedule = optim.make_lr_schedule(1e-2, warmup_steps=4, total_steps=10)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  grads = {"w": jnp.array([0.3, 0.0, -1.0])}
  scheduled = optim.adam_atan2(schedule)
  updates, state = scheduled.update(grads, scheduled.init(params), params)
  # First update: count 0 → original step 1 → lr = 1e-2 / 4.
  constant = optim.adam_atan2(2.5e-3)
  want, _ = constant.update(grads, constant.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(want["w"]), rtol=1e-6)
  # Hand value for element 0 at t = 1: m = 0.03, sqrt(v)/sqrt(0.05) = 0.3 → atan2(0.03, 0.3)/0.1.
  lr = 2.5e-3
  expected = 1.0 * (1 - lr * 0.1) - lr / 0.1 * math.atan2(0.1 * 0.3, math.sqrt(0.05 * 0.09 / 0.05))
  assert float(1.0 + updates["w"][0]) == pytest.approx(expected, rel=1e-6)
  # Zero gradient: decay only (new − old in float32 loses ~1e-7 absolute).
  assert float(updates["w"][1]) == pytest.approx(-2.0 * -lr * 0.1, abs=1e-6)
  updates, _ = scheduled.update(grads, state, params)
  assert not np.allclose(np.asarray(updates["w"]), np.asarray(want["w"]))  # step 2 uses 2 × lr.


def test_schedule_rejects_bad_arguments():
  with pytest.raises(ValueError, match="min_ratio=1.5"):
    optim.make_lr_schedule(1e-3, warmup_steps=0, total_steps=10, min_ratio=1.5)
  with pytest.raises(ValueError, match="total_steps=0"):
    optim.make_lr_schedule(1e-3, warmup_steps=0, total_steps=0)
  with pytest.raises(ValueError, match="restart_every=-1"):
    optim.make_lr_schedule(1e-3, warmup_steps=0, total_steps=10, restart_every=-1)


def test_resolve_warmup_steps():
  assert optim.resolve_warmup_steps(2000, steps_per_epoch=1.3, global_batch_size=768) == 2000
  assert optim.resolve_warmup_steps({"steps": 2000}, 1.3, 768) == 2000
  # Sudoku-1k at batch 768: 1000 groups / 768 steps per epoch.
  assert optim.resolve_warmup_steps({"epochs": 5}, 1000 / 768, 768) == math.ceil(5000 / 768)
  assert optim.resolve_warmup_steps({"epochs": 5}, 0.2, 768) == 1  # 5 · 0.2 is not rounded up to 2.
  assert optim.resolve_warmup_steps({"samples": 1_536_000}, 1.3, 768) == 2000
  assert optim.resolve_warmup_steps({"samples": 1_536_001}, 1.3, 768) == 2001
  for bad, message in [({"epochs": 1, "steps": 2}, "exactly one key"), ({"minutes": 3}, "minutes"),
                       ({"steps": -1}, "non-negative"), (True, "bool"), ("2000", "exactly one key")]:
    with pytest.raises(ValueError, match=message):
      optim.resolve_warmup_steps(bad, 1.3, 768)


# ------------------------------------------------------------------------------------------------
# Dense optimiser options
# ------------------------------------------------------------------------------------------------


def test_adamw_option_first_step():
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]])}
  grads = {"w": jnp.array([[0.3, 0.0], [-1.0, 2.0]])}
  lr, weight_decay = 1e-2, 0.1
  optimizer = optim.make_dense_optimizer(lr, name="adamw", weight_decay=weight_decay, eps=1e-8)
  updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
  # t = 1: m̂/(sqrt(v̂)+eps) = g/(|g|+eps); decay on every element.
  g, p = np.asarray(grads["w"]), np.asarray(params["w"])
  want = -lr * (g / (np.abs(g) + 1e-8) + weight_decay * p)
  np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=1e-5)


def test_gradient_clipping_is_applied_before_the_optimizer():
  params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[0.5]])}
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # global norm 5.
  clipped = optim.make_dense_optimizer(1e-2, name="adamw", eps=1.0, grad_clip_norm=1.0)
  plain = optim.make_dense_optimizer(1e-2, name="adamw", eps=1.0)
  got, _ = clipped.update(grads, clipped.init(params), params)
  want, _ = plain.update(jax.tree.map(lambda g: g / 5.0, grads), plain.init(params), params)
  unclipped, _ = plain.update(grads, plain.init(params), params)
  for key in params:
    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-6)
    assert not np.allclose(np.asarray(got[key]), np.asarray(unclipped[key]))


def test_make_dense_optimizer_default_is_adam_atan2_and_rejects_unknown():
  params = {"w": jnp.array([1.0, -1.0])}
  grads = {"w": jnp.array([0.2, -0.7])}
  default = optim.make_dense_optimizer(1e-3)
  reference = optim.adam_atan2(1e-3, 0.9, 0.95, 0.1)
  got, state = default.update(grads, default.init(params), params)
  want, _ = reference.update(grads, reference.init(params), params)
  np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(want["w"]))
  assert isinstance(state, optim.AdamAtan2State)
  with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
    optim.make_dense_optimizer(1e-3, name="sgd")
  with pytest.raises(ValueError, match="needs params"):
    default.update(grads, default.init(params))
