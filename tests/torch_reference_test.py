"""The PyTorch reference (tools/hrm_torch) reproduces the original HRM's fixture; make_fixture works.

Run: python -m pytest -q -s tests/torch_reference_test.py   (-s prints the error tables)
"""

import json
import re
from typing import Dict, Mapping, Tuple

import numpy as np
import pytest
import torch
import yaml

from tools import make_fixture as mf
from tools import tolerance
from tools.hrm_torch import (
    AdamATan2, CastedSparseEmbeddingSignSGD, HierarchicalReasoningModel_ACTV1Config,
    build_loss_head, load_into_loss_head, load_state_dict_file, to_compiled_state_dict,
)

# Tolerances: the one policy of tools/tolerance.py (FACTOR x the spread the reference itself shows under
# rounding variants), as for hrm_jax.
TINY_LEARNED_CFG = {
    "H_cycles": 2, "L_cycles": 2, "H_layers": 1, "L_layers": 1, "hidden_size": 32, "num_heads": 2,
    "expansion": 2.5, "puzzle_emb_ndim": 0, "pos_encodings": "learned", "halt_max_steps": 3,
    "halt_exploration_prob": 0.1, "forward_dtype": "float32", "batch_size": 4, "vocab_size": 7,
    "seq_len": 10, "num_puzzle_identifiers": 1,
}

PUZZLE_FAMILIES = ("grad__puzzle_emb.local_weights", "puzzle_emb_weights_after_signsgd",
                   "trajK_grad__puzzle_emb.local_weights", "trajK_local_ids",
                   "trajK_param__puzzle_emb.weights")


def family(name: str) -> str:
  """'traj2_grad__model.inner.x' -> 'trajK_grad'; 'eval_step3_logits' -> 'eval_stepK_logits'."""
  name = re.sub(r"^(traj|eval_step)\d+_", r"\1K_", name)
  head, _, param = name.partition("__")
  return head + ("__puzzle_emb." + param.split(".", 1)[1] if param.startswith("puzzle_emb") else "")


def compare(mine: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], policy: tolerance.Policy,
            label: str) -> Dict[str, Tuple[float, str]]:
  """Asserts names, dtypes, shapes, exact ints/bools and the policy's tolerances; returns worst errors."""
  assert sorted(mine) == sorted(ref), (set(mine) ^ set(ref))
  worst: Dict[str, Tuple[float, str]] = {}
  failures = []
  for name in ref:
    a, b = np.asarray(mine[name]), np.asarray(ref[name])
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    if b.dtype.kind in "biu":
      assert np.array_equal(a, b), f"{name} differs: {a} vs {b}"
      continue
    err = tolerance.relative_error(a, b, stats="stats__" in name)
    fam = family(name)
    if err >= worst.get(fam, (-1.0, ""))[0]:
      worst[fam] = (err, name)
    if not err <= policy.tolerance(name):
      failures.append(f"{name}: {err:.3e} > {policy.tolerance(name):.1e}")
  print(f"\n{label}: worst max|diff|/max|ref| per family")
  for fam, (err, name) in sorted(worst.items(), key=lambda kv: -kv[1][0]):
    print(f"  {err:.2e}  {fam:45s} ({name})")
  assert not failures, "\n".join(failures)
  return worst


def _load_original(case_dir):
  """Strict load of the original's checkpoint into a fresh ACTLossHead, `_orig_mod.` handled."""
  model_cfg = json.loads((case_dir / "model_cfg.json").read_text())
  head = build_loss_head(model_cfg, "stablemax_cross_entropy")
  state_dict = torch.load(case_dir / "checkpoint_dir" / "step_0", map_location="cpu",
                          weights_only=True)
  assert all(k.startswith("_orig_mod.model.inner.") for k in state_dict)
  head.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state_dict.items()},
                       strict=True)
  return head, model_cfg


@pytest.fixture(scope="module", params=["float32", "float64", pytest.param("bfloat16", marks=pytest.mark.slow)])
def original_case(request, original_fixture_dir):
  case_dir = original_fixture_dir / request.param
  head, model_cfg = _load_original(case_dir)
  with np.load(case_dir / "reference.npz") as npz:
    ref = {k: npz[k] for k in npz.files}
  policy = tolerance.measure(case_dir)  # its plain run is the reference's own result on this fixture
  return request.param, case_dir, head, model_cfg, ref, policy.plain, policy


def test_reproduces_original_reference(original_case):
  dtype, _, _, _, ref, mine, policy = original_case
  compare(mine, ref, policy, f"original {dtype}")
  if dtype == "float64":
    # Same float32 kernels as the original (torch on CPU): bit for bit until the first optimiser update,
    # whose float32 AdamATan2 the reference emulates.
    for name, value in ref.items():
      if not re.match(r"traj[12]_|traj0_param", name):
        np.testing.assert_array_equal(mine[name], value, err_msg=name)


def test_halting_and_data_flow_match_exactly(original_case):
  _, _, head, _, ref, mine, _ = original_case
  for key in [k for k in ref if re.search(r"_(halted|steps|reset|local_ids)$|_current_", k)]:
    np.testing.assert_array_equal(mine[key], ref[key], err_msg=key)
  pattern, margin = mf.halting_summary(mine, head.model.config.halt_max_steps)
  assert pattern == mf.halting_summary(ref, head.model.config.halt_max_steps)[0]
  assert mf.has_mixed_halting(mine, head.model.config.halt_max_steps)
  assert margin > 0.1  # the fixture's decisions are not knife-edge


def test_state_dict_keys_shapes_dtypes_match_original(original_fixture_dir):
  for dtype in ("float32", "bfloat16", "float64"):
    case_dir = original_fixture_dir / dtype
    expected = json.loads((case_dir / "state_dict_keys.json").read_text())
    head = build_loss_head(json.loads((case_dir / "model_cfg.json").read_text()))
    compiled = to_compiled_state_dict(head)
    assert list(compiled) == list(expected)
    assert {k: [list(v.shape), str(v.dtype)] for k, v in compiled.items()} == expected


def test_fresh_init_matches_original_init(original_fixture_dir):
  """Seed 0 gives the original's init (the fixture deviated only q_head and the puzzle table)."""
  for dtype in ("float32", "bfloat16", "float64"):
    case_dir = original_fixture_dir / dtype
    torch.manual_seed(0)
    head = build_loss_head(json.loads((case_dir / "model_cfg.json").read_text()))
    theirs = load_state_dict_file(case_dir / "checkpoint_dir" / "step_0")
    for key, value in to_compiled_state_dict(head).items():
      if "q_head" in key or "puzzle_emb" in key:
        continue
      assert value.dtype == theirs[key].dtype, key
      # Equal up to 1 ulp (erfinv's vectorised vs scalar paths).
      torch.testing.assert_close(value, theirs[key], rtol=2e-7, atol=1e-7, msg=key)


def test_make_fixture_regenerates_original_float32(original_fixture_dir, tmp_path):
  case_dir = original_fixture_dir / "float32"
  result = mf.make_fixture(
      tmp_path, case_dir / "model_cfg.json", checkpoint=case_dir / "checkpoint_dir" / "step_0",
      batches=mf.batches_from_reference(case_dir / "reference.npz"), data_path="synthetic-tiny")
  with np.load(tmp_path / "reference.npz") as npz:
    written = {k: npz[k] for k in npz.files}
  with np.load(case_dir / "reference.npz") as npz:
    ref = {k: npz[k] for k in npz.files}
  compare(written, ref, tolerance.measure(case_dir), "make_fixture regenerated float32")
  for k, v in result.arrays.items():
    np.testing.assert_array_equal(written[k], v, err_msg=k)
  assert result.halting_pattern == ["HHHH", "...H", "..H."]
  assert result.margin == pytest.approx(0.173, abs=5e-4)

  for name in ("model_cfg.json", "state_dict_keys.json"):
    assert json.loads((tmp_path / name).read_text()) == json.loads((case_dir / name).read_text())
  ours_yaml = yaml.safe_load((tmp_path / "checkpoint_dir" / "all_config.yaml").read_text())
  theirs_yaml = yaml.safe_load((case_dir / "checkpoint_dir" / "all_config.yaml").read_text())
  assert ours_yaml == theirs_yaml
  ours_sd = torch.load(tmp_path / "checkpoint_dir" / "step_0", weights_only=True)
  theirs_sd = torch.load(case_dir / "checkpoint_dir" / "step_0", weights_only=True)
  assert list(ours_sd) == list(theirs_sd)
  for k in theirs_sd:
    assert ours_sd[k].dtype == theirs_sd[k].dtype and torch.equal(ours_sd[k], theirs_sd[k]), k


def _reference_families(original_fixture_dir) -> Dict[str, np.dtype]:
  with np.load(original_fixture_dir / "float32" / "reference.npz") as npz:
    return {family(k): npz[k].dtype for k in npz.files}


def test_make_fixture_learned_positions_without_puzzle_emb(original_fixture_dir, tmp_path):
  result = mf.make_fixture(tmp_path, TINY_LEARNED_CFG, seed=3, loss_type="softmax_cross_entropy")
  arrays = result.arrays
  with np.load(tmp_path / "reference.npz") as npz:
    assert sorted(npz.files) == sorted(arrays)

  ref_families = _reference_families(original_fixture_dir)
  expected = {f for f in ref_families if f not in PUZZLE_FAMILIES}
  got = {family(k) for k in arrays}
  assert got == expected, got ^ expected
  for name, value in arrays.items():
    fam = family(name)
    # Softmax CE keeps its lm loss (and so the total loss) in float32 instead of float64.
    want = np.float32 if fam in ("trajK_loss", "trajK_metric_lm_loss") else ref_families[fam]
    assert value.dtype == want, (name, value.dtype, want)
  for call in range(mf.NUM_TRAJ_CALLS):
    assert f"traj{call}_grad__model.inner.embed_pos.embedding_weight" in arrays
  assert arrays["input_embeddings"].shape == (4, 10, 32)  # no puzzle prefix
  # SwiGLU width: round(2.5*32*2/3) = 53 -> 256.
  assert arrays["grad__model.inner.L_level.layers.0.mlp.down_proj.weight"].shape == (32, 256)
  assert mf.has_mixed_halting(arrays, TINY_LEARNED_CFG["halt_max_steps"])
  assert result.margin >= mf.MIN_HALT_MARGIN
  assert np.all(arrays["labels"][-1] == -100)
  for call in range(mf.NUM_TRAJ_CALLS):
    assert np.isfinite(arrays[f"traj{call}_loss"])

  # The written checkpoint reloads strictly and reproduces the written arrays.
  head = build_loss_head(json.loads((tmp_path / "model_cfg.json").read_text()),
                         "softmax_cross_entropy")
  load_into_loss_head(head, load_state_dict_file(tmp_path / "checkpoint_dir" / "step_0"))
  again = mf.compute_reference(head, mf.batches_from_reference(tmp_path / "reference.npz"))
  for k in arrays:
    np.testing.assert_array_equal(again[k], arrays[k], err_msg=k)
  config = yaml.safe_load((tmp_path / "checkpoint_dir" / "all_config.yaml").read_text())
  assert config["arch"]["loss"]["loss_type"] == "softmax_cross_entropy"
  assert config["arch"]["pos_encodings"] == "learned"


def test_make_fixture_padded_puzzle_prefix_bfloat16(tmp_path):
  """puzzle_emb_ndim not a multiple of D: two prefix slots, the second zero-padded."""
  cfg = dict(TINY_LEARNED_CFG, puzzle_emb_ndim=40, pos_encodings="rope", num_puzzle_identifiers=5)
  result = mf.make_fixture(tmp_path, json.dumps(cfg), seed=1, forward_dtype="bfloat16",
                           verbose=False)
  arrays = result.arrays
  assert arrays["input_embeddings"].shape == (4, 12, 32)
  assert np.all(arrays["input_embeddings"][:, 1, 8:] == 0)
  assert arrays["traj0_grad__puzzle_emb.local_weights"].shape == (4, 40)
  keys = json.loads((tmp_path / "state_dict_keys.json").read_text())
  assert keys["_orig_mod.model.inner.H_init"] == [[32], "torch.bfloat16"]
  assert json.loads((tmp_path / "model_cfg.json").read_text())["forward_dtype"] == "bfloat16"
  # SignSGD only touched the rows whose ids were in each call's batch.
  before = load_state_dict_file(tmp_path / "checkpoint_dir" / "step_0")[
      "_orig_mod.model.inner.puzzle_emb.weights"].numpy()
  after0 = arrays["traj0_param__puzzle_emb.weights"]
  untouched = np.setdiff1d(np.arange(5), arrays["traj0_local_ids"])
  np.testing.assert_array_equal(after0[untouched], before[untouched])
  assert np.all(after0[np.unique(arrays["traj0_local_ids"])] != before[
      np.unique(arrays["traj0_local_ids"])])


def test_adam_atan2_matches_formula():
  torch.manual_seed(0)
  p0 = torch.randn(5, 3)
  grads = [torch.randn(5, 3), torch.randn(5, 3) * 1e-3]
  p = torch.nn.Parameter(p0.clone())
  opt = AdamATan2([p], lr=0.05, betas=(0.9, 0.95), weight_decay=0.1)
  for g in grads:
    p.grad = g.clone()
    opt.step()

  want = p0.double().numpy()
  m = np.zeros_like(want)
  v = np.zeros_like(want)
  for t, g in enumerate(grads, start=1):
    g = g.double().numpy()
    want = want * (1 - 0.05 * 0.1)
    m = 0.9 * m + 0.1 * g
    v = 0.95 * v + 0.05 * g * g
    want = want - 0.05 / (1 - 0.9**t) * np.arctan2(m, np.sqrt(v) / np.sqrt(1 - 0.95**t))
  np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-6, atol=1e-7)


def test_sign_sgd_sums_duplicates_and_skips_absent_rows():
  cfg = dict(TINY_LEARNED_CFG, puzzle_emb_ndim=2, hidden_size=2, num_heads=1,
             num_puzzle_identifiers=4, pos_encodings="rope")
  head = build_loss_head(cfg)
  emb = head.model.inner.puzzle_emb
  with torch.no_grad():
    emb.weights.copy_(torch.tensor([[1.0, -1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]))
  emb.local_ids.copy_(torch.tensor([1, 3, 1, 3], dtype=torch.int32))
  # id 1: rows sum to (+1, -2); id 3: (-3, +0.5) — per-row signs alone would disagree.
  emb.local_weights.grad = torch.tensor([[3.0, -1.0], [-1.0, 1.0], [-2.0, -1.0], [-2.0, -0.5]])
  opt = CastedSparseEmbeddingSignSGD(emb.buffers(), lr=0.1, weight_decay=0.5)
  opt.step()
  decay = 1 - 0.1 * 0.5
  want = torch.tensor([[1.0, -1.0], [2 * decay - 0.1, 2 * decay + 0.1], [3.0, 3.0],
                       [4 * decay + 0.1, 4 * decay - 0.1]])
  torch.testing.assert_close(emb.weights, want)


def test_loader_rejects_mismatched_checkpoint(original_fixture_dir):
  cfg = json.loads((original_fixture_dir / "float32" / "model_cfg.json").read_text())
  state_dict = load_state_dict_file(original_fixture_dir / "float32" / "checkpoint_dir" / "step_0")
  head = build_loss_head(dict(cfg, pos_encodings="learned"))
  with pytest.raises(ValueError, match="missing keys .*embed_pos"):
    load_into_loss_head(head, state_dict)
  head = build_loss_head(dict(cfg, hidden_size=32))
  with pytest.raises(ValueError, match="shapes differ"):
    load_into_loss_head(head, state_dict)
  with pytest.raises(ValueError, match="unrecognised HRM checkpoint keys"):
    load_into_loss_head(head, {"encoder.weight": torch.zeros(1)})
  # The DISABLE_COMPILE layout loads too.
  head = build_loss_head(cfg)
  load_into_loss_head(head, {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()})


def test_cli_reports_user_errors(tmp_path, capsys):
  assert mf.main([str(tmp_path), "--config", '{"hidden_size": 8}']) == 2
  assert "missing required field" in capsys.readouterr().err
  assert mf.main([str(tmp_path), "--config", "not json {"]) == 2
  assert "neither an existing file nor a JSON object" in capsys.readouterr().err
  bad_pos = json.dumps(dict(TINY_LEARNED_CFG, pos_encodings="alibi"))
  assert mf.main([str(tmp_path), "--config", bad_pos]) == 2
  assert "pos_encodings 'alibi' unsupported" in capsys.readouterr().err
  assert mf.main([str(tmp_path), "--config", json.dumps(TINY_LEARNED_CFG),
                  "--checkpoint", str(tmp_path / "nope")]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert not (tmp_path / "reference.npz").exists()


def test_cli_writes_fixture(tmp_path, capsys):
  cfg_path = tmp_path / "cfg.json"
  cfg_path.write_text(json.dumps(dict(TINY_LEARNED_CFG, L_cycles=1)))
  out = tmp_path / "fx"
  assert mf.main([str(out), "--config", str(cfg_path), "--seed", "2"]) == 0
  printed = capsys.readouterr().out
  assert "margin" in printed and "no mixed halting" not in printed
  for name in ("checkpoint_dir/step_0", "checkpoint_dir/all_config.yaml", "model_cfg.json",
               "state_dict_keys.json", "reference.npz"):
    assert (out / name).is_file(), name
  with np.load(out / "reference.npz") as npz:
    assert int(npz["eval_num_steps"]) == 3
    assert npz["traj_seed"] > 2


def test_config_validation():
  with pytest.raises(ValueError, match="divisible by num_heads"):
    HierarchicalReasoningModel_ACTV1Config.from_dict(dict(TINY_LEARNED_CFG, num_heads=3))
  with pytest.raises(ValueError, match="forward_dtype"):
    HierarchicalReasoningModel_ACTV1Config.from_dict(dict(TINY_LEARNED_CFG, forward_dtype="int8"))
  cfg = HierarchicalReasoningModel_ACTV1Config.from_dict(dict(TINY_LEARNED_CFG, causal=False))
  assert cfg.expansion == 2.5 and cfg.puzzle_emb_len == 0
