"""Acceptance tests of the train step and evaluation: the original's trajectory, accumulation, memory.

Every test runs the real jitted `make_train_step` (or `evaluate`) on a tiny config on CPU.
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline
from hrm_jax.model import hrm
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import IGNORE_LABEL_ID, LossConfig
from hrm_jax.evaluation import evaluate as eval_lib
from hrm_jax.training import optim
from hrm_jax.training.segment import segment_value_and_grad
from hrm_jax.training.train_step import StepConfig, TrainState, create_train_state, make_train_step
from tools import parity
from tools import tolerance

import tiny_data

# The original's trajectory settings (fixture all_config.yaml): AdamATan2 lr 1e-3, betas 0.9/0.95, wd 0.1,
# SignSGD lr 1e-2, wd 0.1, constant lr (no warmup), loss / global batch.
ADAM_LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 0.1
PUZZLE_LR, PUZZLE_WEIGHT_DECAY = 1e-2, 0.1
TRAJ_CALLS = 3
# Tolerances: tools/tolerance.py's measured policy for the fixture (the one tools.parity uses).


def _constant(lr: float) -> optax.Schedule:
  return optim.make_lr_schedule(lr, warmup_steps=0, total_steps=TRAJ_CALLS)


def _optimizer(dense_opt) -> optax.GradientTransformation:
  """The run's one optimiser: `dense_opt` plus the original's SignSGD (constant lr) on the puzzle rows."""
  return optim.hrm_optimizer(dense_opt, optim.sparse_signsgd(_constant(PUZZLE_LR), PUZZLE_WEIGHT_DECAY))


def _jit_step(step_cfg: StepConfig, optimizer):
  return jax.jit(make_train_step(step_cfg, optimizer), donate_argnums=0)


def _rel_error(ours, ref, ignore=None) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  diff = np.abs(ours - ref)
  if ignore is not None:
    diff = np.where(ignore, 0.0, diff)
  return float(diff.max() / max(np.abs(ref).max(), 1e-30))


# ==========================================================================================================
# The real train step reproduces the original's three-call training trajectory.
# ==========================================================================================================
def test_train_step_reproduces_original_trajectory(original_fixture_dir):
  pytest.importorskip("torch")  # reads the original's checkpoint file
  fixture = original_fixture_dir / "float32"
  reference = dict(np.load(fixture / "reference.npz"))
  policy = tolerance.measure(fixture)
  from hrm_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
  converted = torch_checkpoint.load_original_checkpoint(fixture / "checkpoint_dir" / "step_0", seq_len=16)
  cfg = converted.model_config.replace(halt_exploration_prob=0.0)
  assert cfg.forward_dtype == "float32" and cfg.puzzle_emb_ndim == 64
  batch_size = int(reference["traj0_batch_inputs"].shape[0])

  optimizer = _optimizer(optim.adam_atan2(_constant(ADAM_LR), b1=BETAS[0], b2=BETAS[1],
                                          weight_decay=WEIGHT_DECAY))
  params = jax.tree.map(jnp.asarray, converted.params)
  table = jnp.asarray(converted.puzzle_table)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(optim.WithPuzzleEmb(params, table)),
      puzzle_table=table, buffers=jax.tree.map(jnp.asarray, converted.buffers),
      carry=hrm.initial_carry(cfg, batch_size), rng=jax.random.key_data(jax.random.key(0)))
  loss_cfg = LossConfig(loss_type=converted.loss_type)
  step_cfg = StepConfig(model=cfg, loss=loss_cfg, global_batch_size=batch_size)
  train_step = _jit_step(step_cfg, optimizer)

  # Our own gradients (same code as inside the step) only to find sign-ambiguous elements (tools/parity.py).
  @jax.jit
  def our_grads(state, batch):
    carry = hrm.reset_carry(state.carry, batch, state.buffers)
    rows = hrm.gather_puzzle_rows(cfg, state.puzzle_table, carry.current_data["puzzle_identifiers"])
    _, grads = segment_value_and_grad(state.params, rows, cfg=cfg, loss_cfg=loss_cfg, carry=carry, rng=None,
                                      global_batch_size=batch_size)
    return grads, carry.current_data["puzzle_identifiers"]

  params_start = torch_checkpoint.to_state_dict(converted.params, None, None, cfg, prefix="model.inner.",
                                                params_only=True)
  ambiguous_dense: dict[str, np.ndarray] = {}
  ambiguous_table = np.zeros(converted.puzzle_table.shape, bool)
  worst, num_ambiguous = 0.0, 0
  for k in range(TRAJ_CALLS):
    p = f"traj{k}_"
    batch = {key: jnp.asarray(reference[p + "batch_" + key]) for key in hrm.DATA_KEYS}
    np.testing.assert_array_equal(np.asarray(state.carry.halted), reference[p + "reset"])
    (grads, row_grads), ids = jax.device_get(our_grads(state, batch))
    table_before = np.asarray(state.puzzle_table)

    state, metrics = train_step(state, batch)

    # Carry: exactly the original's halting decisions, step counts and data.
    np.testing.assert_array_equal(np.asarray(state.carry.halted), reference[p + "halted"])
    np.testing.assert_array_equal(np.asarray(state.carry.steps), reference[p + "steps"])
    for key in hrm.DATA_KEYS:
      np.testing.assert_array_equal(np.asarray(state.carry.current_data[key]), reference[p + "current_" + key])
    assert int(state.step) == k + 1
    # Reported metrics: loss / B, and the global gradient norm from the original's whole-tensor stats.
    assert _rel_error(metrics["loss"], reference[p + "loss"] / batch_size) <= policy.tolerance(p + "loss")
    ref_norm = math.sqrt(sum(float(reference[key][1]) for key in reference if key.startswith(p + "gradstats__")))
    norm_tol = max(policy.tolerance(key) for key in reference if key.startswith(p + "gradstats__"))
    assert abs(float(metrics["grad_norm"]) - ref_norm) <= norm_tol * ref_norm

    # Puzzle table after SignSGD (whole table).
    amb, _ = parity._signsgd_ambiguity(reference, p + "grad__puzzle_emb.local_weights", np.asarray(ids),
                                       row_grads, table_before,
                                       policy.tolerance(p + "grad__puzzle_emb.local_weights"), PUZZLE_LR,
                                       PUZZLE_WEIGHT_DECAY, 1)
    ambiguous_table |= amb
    ref_table = reference[p + "param__puzzle_emb.weights"]
    table_err = _rel_error(state.puzzle_table, ref_table, ambiguous_table)
    assert table_err <= policy.tolerance(p + "param__puzzle_emb.weights"), (k, table_err)
    table_bound = (2 * PUZZLE_LR + np.abs(converted.puzzle_table) * PUZZLE_LR * PUZZLE_WEIGHT_DECAY) * (k + 1)
    assert np.all(np.abs(np.asarray(state.puzzle_table) - ref_table)[ambiguous_table]
                  <= table_bound[ambiguous_table] + 1e-12)
    worst = max(worst, table_err)

    # Dense parameters after AdamATan2 (the fixture's kept rows of all 20 tensors).
    ours = torch_checkpoint.to_state_dict(jax.device_get(state.params), None, None, cfg,
                                          prefix="model.inner.", params_only=True)
    our_grads_orig = torch_checkpoint.to_state_dict(grads, None, None, cfg, prefix="model.inner.",
                                                    params_only=True)
    max_step = sum(ADAM_LR / (1 - BETAS[0] ** (t + 1)) * np.pi / 2 for t in range(k + 1))
    checked = 0
    for key, value in ours.items():
      rows_kept = reference[f"traj_rows__{key}"]
      flips = parity._sign_flips(our_grads_orig[key][rows_kept], reference[p + "grad__" + key],
                                 policy.tolerance(p + "grad__" + key))
      ambiguous_dense[key] = ambiguous_dense.get(key, np.zeros_like(flips)) | flips
      ignore = ambiguous_dense[key]
      ref_value = reference[p + "param__" + key]
      err = _rel_error(value[rows_kept], ref_value, ignore)
      assert err <= policy.tolerance(p + "param__" + key), (k, key, err)
      # An excluded element still moved no further than AdamATan2 can move it.
      start = params_start[key][rows_kept]
      bound = 2 * max_step + np.abs(start) * ADAM_LR * WEIGHT_DECAY * (k + 1)
      assert np.all(np.abs(value[rows_kept] - ref_value)[ignore] <= bound[ignore] + 1e-12)
      worst = max(worst, err)
      checked += 1
    assert checked == 20
    num_ambiguous = int(ambiguous_table.sum()) + sum(int(m.sum()) for m in ambiguous_dense.values())
  print(f"trajectory: worst parameter relative error {worst:.2e}; {num_ambiguous} sign-ambiguous elements")


# ==========================================================================================================
# Gradient accumulation: 4 micro-batches give the 4x batch's update, exploration draws included.
# ==========================================================================================================
def _tiny_config(**changes) -> ModelConfig:
  base = dict(vocab_size=7, seq_len=8, num_puzzle_identifiers=5, puzzle_emb_ndim=32, hidden_size=32, num_heads=2,
              H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=3, halt_exploration_prob=0.0,
              forward_dtype="float32")
  return ModelConfig(**{**base, **changes})


def _batches(cfg: ModelConfig, batch_size: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return [{"inputs": rng.integers(1, cfg.vocab_size, (batch_size, cfg.seq_len), dtype=np.int32),
           "labels": rng.integers(1, cfg.vocab_size, (batch_size, cfg.seq_len), dtype=np.int32),
           "puzzle_identifiers": rng.integers(0, cfg.num_puzzle_identifiers, (batch_size,), dtype=np.int32)}
          for _ in range(count)]


def _fresh_state(cfg: ModelConfig, optimizer, batch_size: int, rng_seed: int = 0) -> TrainState:
  """create_train_state, with a Q head and puzzle table that make Q-halting and exploration matter."""
  state = create_train_state(cfg, optimizer, batch_size, seed=3)
  rng = np.random.default_rng(7)
  q_head = {"kernel": jnp.asarray(0.3 * rng.normal(size=state.params["q_head"]["kernel"].shape), jnp.float32),
            "bias": jnp.asarray([0.3, -0.2], jnp.float32)}
  table = jnp.asarray(0.5 * rng.normal(size=state.puzzle_table.shape), jnp.float32)
  return state.replace(params={**state.params, "q_head": q_head}, puzzle_table=table,
                       rng=jax.random.key_data(jax.random.key(rng_seed)))


def _run_steps(train_step, state: TrainState, batches):
  history = []
  for batch in batches:
    state, metrics = train_step(state, batch)
    history.append(jax.device_get((state.carry.halted, state.carry.steps, metrics)))
  return jax.device_get(state), history


def test_grad_accumulation_matches_full_batch_with_exploration():
  cfg = _tiny_config(halt_exploration_prob=0.5)
  batch_size = 8
  batches = _batches(cfg, batch_size, count=4)
  optimizer = _optimizer(optim.adam_atan2(ADAM_LR, weight_decay=WEIGHT_DECAY))

  def jitted_step(grad_accum_steps):
    step_cfg = StepConfig(model=cfg, loss=LossConfig(), global_batch_size=batch_size,
                          grad_accum_steps=grad_accum_steps)
    return _jit_step(step_cfg, optimizer)

  full_step = jitted_step(1)
  full, full_history = _run_steps(full_step, _fresh_state(cfg, optimizer, batch_size), batches)
  accum, accum_history = _run_steps(jitted_step(4), _fresh_state(cfg, optimizer, batch_size), batches)

  # Carry: identical halting decisions, step counts, data and (to float rounding) inner state.
  for (halted_f, steps_f, metrics_f), (halted_a, steps_a, metrics_a) in zip(full_history, accum_history):
    np.testing.assert_array_equal(halted_a, halted_f)
    np.testing.assert_array_equal(steps_a, steps_f)
    for name in ("loss", "lm_loss", "halted_rows", "exact_accuracy", "grad_norm"):
      np.testing.assert_allclose(metrics_a[name], metrics_f[name], rtol=1e-5)
  for key in hrm.DATA_KEYS:
    np.testing.assert_array_equal(accum.carry.current_data[key], full.carry.current_data[key])
  for field in ("z_H", "z_L"):
    assert _rel_error(getattr(accum.carry, field), getattr(full.carry, field)) <= 1e-5
  # Parameters, optimiser moments and the puzzle table (measured: <= 3e-6 apart, float summation order).
  for ours, ref in zip(jax.tree.leaves(accum.params), jax.tree.leaves(full.params)):
    assert _rel_error(ours, ref) <= 1e-5
  for ours, ref in zip(jax.tree.leaves(accum.opt_state), jax.tree.leaves(full.opt_state)):
    assert _rel_error(ours, ref) <= 1e-5
  assert _rel_error(accum.puzzle_table, full.puzzle_table) <= 1e-5
  np.testing.assert_array_equal(accum.rng, full.rng)

  # The exploration draws do decide halting here: other draws (another rng) halt the rows differently, so
  # micro-batches drawing their own would have been caught above.
  _, other_draws_history = _run_steps(full_step, _fresh_state(cfg, optimizer, batch_size, rng_seed=1), batches)
  assert any(not np.array_equal(a[1], b[1]) for a, b in zip(full_history, other_draws_history))


# ==========================================================================================================
# A 1,000,000 x 512 puzzle table: the train step's memory is nowhere near a dense table gradient.
# ==========================================================================================================
def _train_step_memory(num_rows: int, dim: int, batch_size: int):
  """Memory analysis of the jitted, donated train step, lowered from shapes only (nothing allocated)."""
  cfg = _tiny_config(num_puzzle_identifiers=num_rows, puzzle_emb_ndim=dim, hidden_size=64, num_heads=4,
                     halt_exploration_prob=0.1)
  optimizer = _optimizer(optim.adam_atan2(ADAM_LR, weight_decay=WEIGHT_DECAY))
  step_cfg = StepConfig(model=cfg, loss=LossConfig(), global_batch_size=batch_size)
  abstract_state = jax.eval_shape(lambda: create_train_state(cfg, optimizer, batch_size, seed=0))
  assert abstract_state.puzzle_table.shape == (num_rows, dim)
  abstract_batch = {"inputs": jax.ShapeDtypeStruct((batch_size, cfg.seq_len), jnp.int32),
                    "labels": jax.ShapeDtypeStruct((batch_size, cfg.seq_len), jnp.int32),
                    "puzzle_identifiers": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  step = _jit_step(step_cfg, optimizer)
  return step.lower(abstract_state, abstract_batch).compile().memory_analysis()


def test_train_step_memory_with_million_row_puzzle_table():
  num_rows, dim, batch_size = 1_000_000, 512, 64
  table_bytes = num_rows * dim * 4  # 2.05 GB: what a dense float32 gradient of the table alone would take
  memory = _train_step_memory(num_rows, dim, batch_size)
  print(f"1M x 512 table train step (batch {batch_size}): temp {memory.temp_size_in_bytes / 1e6:.1f} MB, "
        f"argument {memory.argument_size_in_bytes / 1e9:.2f} GB, aliased "
        f"{memory.alias_size_in_bytes / 1e9:.2f} GB")
  # Measured 21.2 MB, the same as with a 1000-row table: all of it is the model's activations.
  assert memory.temp_size_in_bytes < table_bytes / 50, memory
  # The donated table is updated in place: the new table is written into the old one's buffer.
  assert memory.alias_size_in_bytes >= table_bytes, memory


# ==========================================================================================================
# Evaluation covers every test example once; its exact accuracy is what the saved predictions say.
# ==========================================================================================================
def _numpy_exact_accuracy(preds_NxS: np.ndarray, labels_NxS: np.ndarray) -> float:
  supervised = labels_NxS != IGNORE_LABEL_ID
  solved = np.all((preds_NxS == labels_NxS) | ~supervised, axis=-1) & supervised.any(axis=-1)
  return float(solved.sum() / supervised.any(axis=-1).sum())


def test_evaluate_covers_every_example_once_and_exact_accuracy_matches_predictions(tmp_path):
  eval_batch = 16
  data_dir = tiny_data.write_tiny_dataset(tmp_path / "data")
  meta = data_format.load_metadata(data_dir, "test")
  cfg = _tiny_config(vocab_size=meta.vocab_size, seq_len=meta.seq_len,
                     num_puzzle_identifiers=meta.num_puzzle_identifiers, halt_max_steps=2)
  state = _fresh_state(cfg, _optimizer(optim.adam_atan2(ADAM_LR)), eval_batch)
  eval_step = jax.jit(eval_lib.make_eval_step(cfg, LossConfig(), eval_lib.EvalConfig()))

  def run(save_to: pathlib.Path):
    batches = list(pipeline.make_eval_batches(data_dir, global_batch_size=eval_batch))
    summary = eval_lib.evaluate(eval_step, state, batches, save_predictions_to=save_to)
    with np.load(save_to) as saved:
      return summary, batches, {k: saved[k] for k in saved.files}

  # Pass 1 learns what the (untrained) model predicts; pass 2 relabels the test split so that exactly the
  # examples with index % 3 == 0 are solved, and every other one is wrong in its first token.
  _, _, first = run(tmp_path / "first.npz")
  split_sizes = tiny_data.TEST_SET_SIZES
  total = sum(split_sizes.values())
  offsets = np.cumsum([0] + list(split_sizes.values()))
  labels_by_set, solved = {}, []
  for (name, size), start in zip(split_sizes.items(), offsets):
    preds = first["preds"][start:start + size]
    labels = preds.copy()
    wrong = np.arange(size) % 3 != 0
    labels[wrong, 0] = preds[wrong, 0] % (tiny_data.VOCAB_SIZE - 1) + 1  # another non-ignored token
    labels_by_set[name] = labels
    solved.append(~wrong)
  written = tiny_data.write_eval_split(data_dir, labels_by_set)
  summary, batches, saved = run(tmp_path / "second.npz")

  # Coverage: 37 + 29 examples in batches of 16 per set (3 + 2 batches, the last of each padded).
  assert len(batches) == 5
  assert [int(b["valid"].sum()) for b in batches] == [16, 16, 5, 16, 13]
  assert summary["count"] == total
  np.testing.assert_array_equal(saved["inputs"], np.concatenate([written[n]["inputs"] for n in split_sizes]))
  np.testing.assert_array_equal(saved["puzzle_identifiers"],
                                np.concatenate([written[n]["puzzle_identifiers"] for n in split_sizes]))
  # Predictions are deterministic (same model, same inputs), so the relabelling did what it meant to.
  np.testing.assert_array_equal(saved["preds"], first["preds"])
  np.testing.assert_array_equal(saved["steps"], np.full(total, cfg.halt_max_steps))

  # Exact accuracy: the summary equals numpy on the saved predictions, and the designed share of solved rows.
  expected = float(np.concatenate(solved).mean())
  assert 0.2 < expected < 0.5
  assert summary["exact_accuracy"] == pytest.approx(_numpy_exact_accuracy(saved["preds"], saved["labels"]),
                                                    abs=1e-12)
  assert summary["exact_accuracy"] == pytest.approx(expected, abs=1e-12)
  supervised = saved["labels"] != IGNORE_LABEL_ID
  token_accuracy = np.mean(np.sum((saved["preds"] == saved["labels"]) & supervised, -1) / supervised.sum(-1))
  assert summary["accuracy"] == pytest.approx(token_accuracy, rel=1e-6)
