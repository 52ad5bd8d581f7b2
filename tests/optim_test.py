"""Tests of hrm_jax.training.optim against the original's optimiser trajectory and by construction."""

import math
import os
import pathlib
import subprocess
import sys
import textwrap

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


@pytest.mark.parametrize("forward_dtype", FORWARD_DTYPES)
def test_sparse_signsgd_reproduces_original_three_steps(original_fixture_dir, forward_dtype):
  reference, initial = _load_original(original_fixture_dir, forward_dtype)
  table = jnp.asarray(initial["model.inner.puzzle_emb.weights"])
  update = jax.jit(optim.sparse_signsgd_update, donate_argnums=0, static_argnums=(3, 4))
  saw_duplicates = False
  for k in range(3):
    ids = reference[f"traj{k}_local_ids"]
    saw_duplicates |= len(np.unique(ids)) < len(ids)
    previous = np.asarray(table)
    table = update(table, jnp.asarray(ids), jnp.asarray(reference[f"traj{k}_grad__puzzle_emb.local_weights"]),
                   PUZZLE_LR, PUZZLE_WEIGHT_DECAY)
    # Exact gradients in, sign out: bit-identical to the original.
    np.testing.assert_array_equal(np.asarray(table), reference[f"traj{k}_param__puzzle_emb.weights"])
    assert not np.array_equal(np.asarray(table), previous)
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
  got = np.asarray(jax.jit(optim.sparse_signsgd_update, donate_argnums=0)(
      jnp.asarray(table), jnp.asarray(ids), jnp.asarray(grads), jnp.float32(lr), weight_decay))

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
  update = jax.jit(optim.sparse_signsgd_update, donate_argnums=0)
  new_table = update(table, jnp.array([1, 1], jnp.int32), jnp.ones((2, 5)), 0.1, 0.0)
  assert table.is_deleted()  # the donation was accepted, so no second table was allocated.
  np.testing.assert_allclose(np.asarray(new_table[1]), np.arange(5, 10) - 0.1, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new_table[2:]), np.arange(10, 40).reshape(6, 5))


def test_gather_rows_and_grad_feed_the_sparse_update():
  table = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
  ids = jnp.array([2, 5, 2], jnp.int32)
  rows = optim.gather_rows(table, ids)
  np.testing.assert_array_equal(np.asarray(rows), np.asarray(table)[[2, 5, 2]])
  # Gradient w.r.t. the gathered rows, as the original's local_weights.grad.
  row_grads = jax.grad(lambda r: jnp.sum(r * jnp.array([1.0, -1.0, 2.0, 0.0])))(rows)
  new_table = optim.sparse_signsgd_update(table, ids, row_grads, 0.5, 0.0)
  np.testing.assert_allclose(np.asarray(new_table[2] - table[2]), [-0.5, 0.5, -0.5, 0.0])


def test_sparse_update_memory_is_batch_sized_not_table_sized():
  num_rows, dim, batch = 1_000_000, 512, 768
  table_bytes = num_rows * dim * 4

  def sparse_step(table_NxE, ids_B, scale_BxE):
    rows_BxE = optim.gather_rows(table_NxE, ids_B)
    row_grads_BxE = jax.grad(lambda r: jnp.sum(jnp.tanh(r * scale_BxE)))(rows_BxE)
    return optim.sparse_signsgd_update(table_NxE, ids_B, row_grads_BxE, 1e-2, 0.1)

  def dense_step(table_NxE, ids_B, scale_BxE):
    loss = lambda t: jnp.sum(jnp.tanh(optim.gather_rows(t, ids_B) * scale_BxE))
    return table_NxE * (1 - 1e-3) - 1e-2 * jnp.sign(jax.grad(loss)(table_NxE))

  shapes = (jax.ShapeDtypeStruct((num_rows, dim), jnp.float32),
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


def test_all_gather_sparse_grads_under_shard_map_matches_global_update():
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, PartitionSpec as P
      from hrm_jax.training import optim
      assert jax.device_count() == 2
      mesh = Mesh(np.array(jax.devices()), ("data",))
      rng = np.random.default_rng(0)
      table = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
      ids = jnp.array([4, 1, 4, 8, 1, 4], jnp.int32)
      grads = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)

      def per_device(table, ids, grads):
        all_ids, all_grads = optim.all_gather_sparse_grads(ids, grads, "data")
        return optim.sparse_signsgd_update(table, all_ids, all_grads, 0.1, 0.1)

      sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                      out_specs=P(), check_vma=False))(table, ids, grads)
      single = optim.sparse_signsgd_update(table, ids, grads, 0.1, 0.1)
      np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
      local_only = optim.sparse_signsgd_update(table, ids[:3], grads[:3], 0.1, 0.1)
      assert not np.array_equal(np.asarray(sharded), np.asarray(local_only))
      print("OK")
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1], timeout=120)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


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


# ------------------------------------------------------------------------------------------------
# Gradient accumulation
# ------------------------------------------------------------------------------------------------


def _mlp_problem(global_batch=16):
  rng = np.random.default_rng(3)
  params = {"w1": jnp.asarray(rng.normal(size=(5, 8)) / 2, jnp.float32),
            "b1": jnp.zeros((8,), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(8, 3)) / 3, jnp.float32)}
  batch = {"x": jnp.asarray(rng.normal(size=(global_batch, 5)), jnp.float32),
           "y": jnp.asarray(rng.integers(0, 3, size=(global_batch,)), jnp.int32)}

  def per_example_loss(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])

  return params, batch, per_example_loss


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_accumulated_update_equals_large_batch_update(reduce):
  global_batch, num_micro = 16, 4
  params, batch, per_example_loss = _mlp_problem(global_batch)

  def hrm_loss(params, batch):  # HRM: sum of per-example losses / GLOBAL batch size.
    losses = per_example_loss(params, batch)
    return jnp.sum(losses) / global_batch, losses

  def micro_mean_loss(params, batch):
    losses = per_example_loss(params, batch)
    return jnp.mean(losses), losses

  loss_fn = hrm_loss if reduce == "sum" else micro_mean_loss
  grad_fn = lambda p, b: jax.grad(loss_fn, has_aux=True)(p, b)
  big_grads, big_losses = jax.grad(hrm_loss, has_aux=True)(params, batch)
  micro = optim.split_microbatches(batch, num_micro)
  acc_grads, losses_MxB = jax.jit(
      lambda p, m: optim.accumulate_gradients(grad_fn, p, m, reduce=reduce))(params, micro)
  assert losses_MxB.shape == (num_micro, global_batch // num_micro)
  np.testing.assert_allclose(np.asarray(losses_MxB).reshape(-1), np.asarray(big_losses), rtol=1e-6)

  optimizer = optim.adam_atan2(1e-2)
  state = optimizer.init(params)
  for key in params:
    scale = np.abs(np.asarray(big_grads[key])).max()
    np.testing.assert_allclose(np.asarray(acc_grads[key]), np.asarray(big_grads[key]),
                               rtol=0, atol=1e-6 * scale)
  big_params = optax.apply_updates(params, optimizer.update(big_grads, state, params)[0])
  acc_params = optax.apply_updates(params, optimizer.update(acc_grads, state, params)[0])
  for key in params:
    np.testing.assert_allclose(np.asarray(acc_params[key]), np.asarray(big_params[key]),
                               rtol=1e-6, atol=1e-7)
  # A single micro-batch's gradient is not the large-batch one (the test can tell them apart).
  single, _ = grad_fn(params, jax.tree.map(lambda x: x[0], micro))
  assert not np.allclose(np.asarray(single["w1"]), np.asarray(big_grads["w1"]), atol=1e-3)


def test_accumulation_rejects_bad_arguments():
  params, batch, _ = _mlp_problem()
  with pytest.raises(ValueError, match="not divisible by num_microbatches=3"):
    optim.split_microbatches(batch, 3)
  with pytest.raises(ValueError, match="reduce='avg'"):
    optim.accumulate_gradients(lambda p, b: (p, None), params,
                               optim.split_microbatches(batch, 4), reduce="avg")
