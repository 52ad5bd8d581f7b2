"""Numerical parity of hrm_jax's TRM with the original TinyRecursiveModels (shared fixtures) and with the PyTorch
TRM reference in tools/trm_torch (any config).

The shared fixtures were made by the original code; `tools.trm_torch.make_fixture` writes fixtures of the same
layout for any config. `tools.parity` recomputes every array with hrm_jax and compares.
"""

import pathlib

import numpy as np
import pytest

from tools import make_fixture as hrm_fixture
from tools import parity
from tools import tolerance
from tools.hrm_torch import variants
from tools.trm_torch import make_fixture

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRM_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "trm_original" / "tiny"

_BASE = {"batch_size": 4, "vocab_size": 7, "seq_len": 10, "num_puzzle_identifiers": 1, "hidden_size": 32,
         "num_heads": 2, "H_layers": 0, "halt_exploration_prob": 0.1, "forward_dtype": "float32",
         "no_ACT_continue": True}
RANDOM_CONFIGS = {
    # README's Sudoku recipe in small: token MLP, no positions; 3-slot prefix holding one 32-wide vector,
    # 3 ids over 6 rows (duplicates), odd H_cycles. (The original's fixture covers attention + RoPE.)
    "mlp_t_prefix3_h3l1": {**_BASE, "batch_size": 6, "num_puzzle_identifiers": 3, "mlp_t": True,
                           "pos_encodings": "none", "puzzle_emb_ndim": 32, "puzzle_emb_len": 3, "H_cycles": 3,
                           "L_cycles": 1, "L_layers": 1, "expansion": 2, "halt_max_steps": 3},
}
SLOW_CONFIGS = {
    # Attention with RoPE, a one-slot prefix (puzzle_emb_len 0 = ceil(ndim/D)), no no-grad part, 3 layers.
    "rope_prefix1_h1l3": {**_BASE, "num_puzzle_identifiers": 2, "mlp_t": False, "pos_encodings": "rope",
                          "puzzle_emb_ndim": 32, "puzzle_emb_len": 0, "H_cycles": 1, "L_cycles": 3,
                          "L_layers": 3, "expansion": 4, "halt_max_steps": 3},
    # Learned positions without a puzzle table.
    "learned_nopuzzle_h2l2": {**_BASE, "mlp_t": False, "pos_encodings": "learned", "puzzle_emb_ndim": 0,
                              "puzzle_emb_len": 0, "H_cycles": 2, "L_cycles": 2, "L_layers": 2,
                              "expansion": 2.5, "halt_max_steps": 4},
    # Token MLP with learned positions over a 2-slot prefix narrower than one slot.
    "mlp_t_learned_prefix2_h3l3": {**_BASE, "hidden_size": 16, "num_puzzle_identifiers": 2, "mlp_t": True,
                                   "pos_encodings": "learned", "puzzle_emb_ndim": 10, "puzzle_emb_len": 2,
                                   "H_cycles": 3, "L_cycles": 3, "L_layers": 2, "expansion": 3,
                                   "halt_max_steps": 3},
    # Attention without positional encoding ("none"), five recursions of one z-update.
    "attn_nopos_prefix2_h5l1": {**_BASE, "num_heads": 4, "num_puzzle_identifiers": 3, "mlp_t": False,
                                "pos_encodings": "none", "puzzle_emb_ndim": 64, "puzzle_emb_len": 2,
                                "H_cycles": 5, "L_cycles": 1, "L_layers": 2, "expansion": 1.5,
                                "halt_max_steps": 3},
}


def _assert_float32_parity(results, unknown):
  """Every array passes tools.parity's measured policy (tools.tolerance: 12x the torch reference's spread
  under rounding variants), and every kind of array is checked."""
  assert not unknown, unknown
  failed = [r for r in results if not r.passed]
  assert not failed, parity.format_report(failed, [])
  kinds = {r.kind for r in results if r.kind != "exact" and not r.kind.startswith("stats:")}
  assert kinds == {"output", "grad", "param"}, kinds
  names = {r.name for r in results}
  for required in ("input_embeddings", "inner_step1_trace", "inner_step1_zH", "eval_step0_logits",
                   "eval_step0_preds", "train_loss", "traj2_loss", "traj2_current_inputs", "traj2_preds",
                   "ema_eval_step0_logits"):
    assert required in names, required
  assert any(n.startswith("traj2_ema__") for n in names) and any(n.startswith("traj2_param__") for n in names)
  assert not any("target_q_continue" in n or "q_continue_loss" in n for n in names)  # no_ACT_continue
  for r in results:
    if r.name.endswith(("_halted", "_steps", "_reset", "_local_ids", "eval_num_steps")):
      assert r.kind == "exact" and r.error == 0 and r.tolerance == 0, r
  return names


# ------------------------------------------------------------------------------------------------------
# The original's fixtures
# ------------------------------------------------------------------------------------------------------
def test_trm_parity_with_the_original_float32():
  results, unknown = parity.run_parity(TRM_FIXTURES / "float32")
  names = _assert_float32_parity(results, unknown)
  assert "puzzle_emb_weights_after_signsgd" in names and "traj2_param__puzzle_emb.weights" in names
  assert len(results) == 428


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_trm_parity_with_the_original_other_dtypes(dtype):
  results, unknown = parity.run_parity(TRM_FIXTURES / dtype)
  assert not unknown, unknown
  failed = [r for r in results if not r.passed]
  assert not failed, parity.format_report(failed, [])
  assert len(results) == 428
  if dtype == "float64":
    policy = tolerance.measure(TRM_FIXTURES / dtype)
    for r in results:  # beyond 1e-9 only where a float32 step of the original explains it
      if r.kind != "exact" and r.error > tolerance.FLOAT64_TARGET:
        assert policy.explanation(r.name), r
    assert {r.name: r for r in results}["input_embeddings"].error <= tolerance.FLOAT64_TARGET


def test_tolerance_policy_measures_the_trm_reference():
  """The TRM fixture's policy comes from tools/trm_torch under the rounding variants: TRM-only arrays
  (trace, EMA shadow, EMA eval loop) have measured spreads, nonzero and growing along the recurrence."""
  policy = tolerance.measure(TRM_FIXTURES / "float32")
  for name in ("inner_step1_trace", "traj2_ema__model.inner.lm_head.weight", "ema_eval_step0_logits"):
    assert name in policy.spreads and policy.spreads[name].value > 0, name
    assert set(policy.spreads[name].by_variant) == set(variants.VARIANTS), name
  assert policy.spreads["eval_step3_logits"].value > policy.spreads["eval_step0_logits"].value


def test_torch_reference_reproduces_the_original_fixture(tmp_path):
  """tools/trm_torch, run on the original's step_0 and batches, gives the original's arrays: every forward
  array bit for bit, and the trajectory (whose AdamATan2 is a re-implementation) to float32 rounding."""
  fixture = TRM_FIXTURES / "float32"
  arrays = make_fixture.make_fixture(
      tmp_path, fixture / "model_cfg.json", checkpoint=fixture / "checkpoint_dir" / "step_0",
      batches=hrm_fixture.batches_from_reference(fixture / "reference.npz"), verbose=False)
  with np.load(fixture / "reference.npz") as ref:
    assert set(ref.files) <= set(arrays)
    for name in ref.files:
      if name.startswith(("input_embeddings", "inner_step1", "eval_step", "train_", "grad__")) \
          or name.startswith(("traj0_logits", "traj0_zH", "traj0_loss")) or ref[name].dtype.kind in "biu":
        np.testing.assert_array_equal(arrays[name], ref[name], err_msg=name)
      else:
        scale = max(float(np.max(np.abs(ref[name]))), 1e-30)
        assert float(np.max(np.abs(arrays[name] - ref[name]))) / scale < 5e-5, name


# ------------------------------------------------------------------------------------------------------
# Random configs through the torch reference
# ------------------------------------------------------------------------------------------------------
def _make(tmp_path_factory, name):
  out = tmp_path_factory.mktemp(name)
  make_fixture.make_fixture(out, {**RANDOM_CONFIGS, **SLOW_CONFIGS}[name], seed=0, verbose=False)
  return out


@pytest.mark.parametrize("name", sorted(RANDOM_CONFIGS))
def test_trm_parity_on_random_configs(tmp_path_factory, name):
  _check_random_fixture(_make(tmp_path_factory, name), name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_CONFIGS))
def test_trm_parity_on_more_random_configs(tmp_path_factory, name):
  _check_random_fixture(_make(tmp_path_factory, name), name)


def _check_random_fixture(fixture: pathlib.Path, name: str):
  model_cfg = {**RANDOM_CONFIGS, **SLOW_CONFIGS}[name]
  results, unknown = parity.run_parity(fixture)
  names = _assert_float32_parity(results, unknown)
  grads = {n for n in names if n.startswith("grad__")}
  if model_cfg["mlp_t"]:
    assert any(".mlp_t." in n for n in grads) and not any("self_attn" in n for n in grads)
  else:
    assert any("self_attn" in n for n in grads) and not any(".mlp_t." in n for n in grads)
  assert len({n.split(".layers.")[1].split(".")[0] for n in grads if ".layers." in n}) == model_cfg["L_layers"]
  with np.load(fixture / "reference.npz") as ref:
    calls = model_cfg["H_cycles"] * (model_cfg["L_cycles"] + 1)
    prefix = model_cfg["puzzle_emb_len"] or -(model_cfg["puzzle_emb_ndim"] // -model_cfg["hidden_size"])
    assert ref["inner_step1_trace"].shape == (calls, model_cfg["batch_size"], model_cfg["seq_len"] + prefix,
                                              model_cfg["hidden_size"])
  if model_cfg["puzzle_emb_ndim"] > 0:
    assert "traj2_param__puzzle_emb.weights" in names
  else:
    assert not any("puzzle_emb" in n for n in names)
  if model_cfg["pos_encodings"] == "learned":
    assert "grad__model.inner.embed_pos.embedding_weight" in names
