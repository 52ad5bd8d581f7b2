"""Numerical parity of hrm_jax with the original HRM (shared fixtures) and with the torch reference (any config).

The shared fixtures were made by the original sapientinc/HRM code; `tools.make_fixture` writes fixtures of the
same layout for any config with the PyTorch re-implementation in tools/hrm_torch. `tools.parity` recomputes
every array with hrm_jax and compares.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tools import make_fixture
from tools import parity

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOAT32_LIMITS = {"output": 1e-5, "grad": 1e-4, "param": 1e-5}
# Arrays that must match exactly: ACT bookkeeping and the data each row works on.
EXACT_NAME = re.compile(r".*(_halted|_steps|_current_(inputs|labels|puzzle_identifiers)|_reset|_local_ids|"
                        r"eval_num_steps)$")

_BASE = {"batch_size": 4, "vocab_size": 7, "seq_len": 10, "num_puzzle_identifiers": 1, "hidden_size": 32,
         "num_heads": 2, "halt_exploration_prob": 0.1, "forward_dtype": "float32"}
RANDOM_CONFIGS = {
    # Learned positions, no puzzle embedding, H_cycles=1, non-integer expansion, softmax loss.
    "learned_nopuzzle_h1": ({**_BASE, "pos_encodings": "learned", "puzzle_emb_ndim": 0, "H_cycles": 1,
                             "L_cycles": 3, "H_layers": 1, "L_layers": 2, "expansion": 2.5, "halt_max_steps": 3},
                            "softmax_cross_entropy"),
    # A 3-slot zero-padded puzzle prefix (80 = 2.5·D) with duplicate ids (6 rows, 3 ids), L_cycles=1.
    "rope_prefix3_l1": ({**_BASE, "batch_size": 6, "num_puzzle_identifiers": 3, "pos_encodings": "rope",
                         "puzzle_emb_ndim": 80, "H_cycles": 3, "L_cycles": 1, "H_layers": 2, "L_layers": 1,
                         "expansion": 4, "halt_max_steps": 3}, "stablemax_cross_entropy"),
}
SLOW_CONFIGS = {
    # Learned positions covering a 3-slot prefix; 2 ids for 4 rows.
    "learned_prefix3": ({**_BASE, "hidden_size": 16, "num_puzzle_identifiers": 2, "pos_encodings": "learned",
                         "puzzle_emb_ndim": 40, "H_cycles": 2, "L_cycles": 2, "H_layers": 1, "L_layers": 1,
                         "expansion": 3, "halt_max_steps": 3}, "stablemax_cross_entropy"),
    # One H and one L cycle (only the 1-step-gradient updates), one-slot prefix, 4 heads.
    "rope_prefix1_h1l1": ({**_BASE, "num_heads": 4, "num_puzzle_identifiers": 3, "pos_encodings": "rope",
                           "puzzle_emb_ndim": 32, "H_cycles": 1, "L_cycles": 1, "H_layers": 2, "L_layers": 2,
                           "expansion": 1.5, "halt_max_steps": 2}, "stablemax_cross_entropy"),
    # A prefix narrower than D (zero-padded to one slot) and a deeper schedule. Kept to 3 segments: float32
    # rounding differences grow ~3x per segment of this depth (two float32 hrm_jax variants drift 1e-4 apart
    # by segment 5, as far as from the reference), and the float32 tolerance does not scale with depth.
    "rope_narrow_prefix_deep": ({**_BASE, "hidden_size": 24, "num_heads": 3, "num_puzzle_identifiers": 2,
                                 "pos_encodings": "rope", "puzzle_emb_ndim": 10, "H_cycles": 2, "L_cycles": 3,
                                 "H_layers": 1, "L_layers": 2, "expansion": 2, "halt_max_steps": 3},
                                "stablemax_cross_entropy"),
    # Softmax with learned positions and a deep L level, no puzzle embedding. (Softmax together with a
    # puzzle prefix in float32 cannot be made: the torch reference (following the original) calls .view() on the
    # non-contiguous logits slice there and raises.)
    "learned_softmax_deep": ({**_BASE, "pos_encodings": "learned", "puzzle_emb_ndim": 0, "H_cycles": 2,
                              "L_cycles": 2, "H_layers": 2, "L_layers": 3, "expansion": 4, "halt_max_steps": 4},
                             "softmax_cross_entropy"),
}


def _worst(results) -> dict[str, float]:
  worst = {}
  for r in results:
    if r.kind != "exact":
      worst[r.kind] = max(worst.get(r.kind, 0.0), r.error)
  return worst


def _assert_float32_parity(results, unknown):
  assert not unknown, unknown
  failed = [r for r in results if not r.passed]
  assert not failed, parity.format_report(failed, [])
  worst = _worst(results)
  assert set(worst) == set(FLOAT32_LIMITS), worst
  for kind, limit in FLOAT32_LIMITS.items():
    assert worst[kind] <= limit, (kind, worst[kind])
  exact = [r for r in results if EXACT_NAME.match(r.name)]
  assert len(exact) >= 15
  for r in exact:
    assert r.kind == "exact" and r.error == 0 and r.tolerance == 0, r
  names = {r.name for r in results}
  for required in ("input_embeddings", "inner_step1_zH", "eval_step0_logits", "train_loss", "traj2_loss",
                   "traj2_current_inputs", "traj2_target_q_continue"):
    assert required in names, required
  assert any(n.startswith("grad__") for n in names) and any(n.startswith("traj2_param__") for n in names)
  return worst


# ------------------------------------------------------------------------------------------------------
# The original's fixtures
# ------------------------------------------------------------------------------------------------------
def test_parity_with_the_original_float32(original_fixture_dir):
  results, unknown = parity.run_parity(original_fixture_dir / "float32")
  _assert_float32_parity(results, unknown)
  names = {r.name for r in results}
  assert "puzzle_emb_weights_after_signsgd" in names and "traj2_param__puzzle_emb.weights" in names
  assert len(results) == 403


def test_parity_with_the_original_bfloat16(original_fixture_dir):
  # ~25 s of CPU (three bf16 computations: ours and two variants that measure the bf16 noise floor).
  results, unknown = parity.run_parity(original_fixture_dir / "bfloat16")
  assert not unknown, unknown
  failed = [r for r in results if not r.passed]
  assert not failed, parity.format_report(failed, [])
  assert len(results) == 403
  for r in results:
    if EXACT_NAME.match(r.name):
      assert r.kind == "exact" and r.error == 0, r


# ------------------------------------------------------------------------------------------------------
# Random configs through the torch reference
# ------------------------------------------------------------------------------------------------------
def _make(tmp_path_factory, name):
  model_cfg, loss_type = {**RANDOM_CONFIGS, **SLOW_CONFIGS}[name]
  out = tmp_path_factory.mktemp(name)
  make_fixture.make_fixture(out, model_cfg, seed=0, loss_type=loss_type, verbose=False)
  return out


@pytest.fixture(scope="module")
def random_fixtures(tmp_path_factory):
  return {name: _make(tmp_path_factory, name) for name in RANDOM_CONFIGS}


@pytest.mark.parametrize("name", sorted(RANDOM_CONFIGS))
def test_parity_on_random_configs(random_fixtures, name):
  _check_random_fixture(random_fixtures[name], name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_CONFIGS))
def test_parity_on_more_random_configs(tmp_path_factory, name):
  _check_random_fixture(_make(tmp_path_factory, name), name)


def _check_random_fixture(fixture: pathlib.Path, name: str):
  model_cfg, loss_type = {**RANDOM_CONFIGS, **SLOW_CONFIGS}[name]
  assert f"loss_type: {loss_type}" in (fixture / "checkpoint_dir" / "all_config.yaml").read_text()
  results, unknown = parity.run_parity(fixture)
  _assert_float32_parity(results, unknown)
  names = {r.name for r in results}
  with np.load(fixture / "reference.npz") as ref:
    if model_cfg["puzzle_emb_ndim"] > 0:
      assert "traj2_param__puzzle_emb.weights" in names
      ids = [ref["puzzle_identifiers"]] + [ref[f"traj{k}_local_ids"] for k in range(3)]
      if model_cfg["batch_size"] > model_cfg["num_puzzle_identifiers"]:  # duplicates in every batch
        assert all(len(set(i.tolist())) < len(i) for i in ids)
    else:
      assert not any("puzzle_emb" in n for n in names)
    if model_cfg["pos_encodings"] == "learned":
      assert "grad__model.inner.embed_pos.embedding_weight" in names


# ------------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------------
def _corrupt(fixture: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  shutil.copytree(fixture, dest)
  with np.load(dest / "reference.npz") as npz:
    arrays = {k: npz[k] for k in npz.files}
  arrays["traj1_zH"] = arrays["traj1_zH"] * np.float32(1.001)  # 1e-3 relative: 100x the tolerance
  np.savez(dest / "reference.npz", **arrays)
  return dest


def test_parity_cli_exit_status(random_fixtures, tmp_path, capsys):
  # `python -m tools.parity` is `sys.exit(main())`; main() is called in-process to reuse compiled code.
  good = random_fixtures["learned_nopuzzle_h1"]
  assert parity.main([str(good)]) == 0
  assert "0 failed" in capsys.readouterr().out

  assert parity.main([str(_corrupt(good, tmp_path / "corrupted")), "--failures-only"]) == 1
  out = capsys.readouterr().out
  assert [line.split()[0] for line in out.splitlines() if re.search(r"\bFAIL\b", line)] == ["traj1_zH"], out
  assert "1 failed" in out

  assert parity.main([str(tmp_path / "nowhere")]) == 2
  assert "is not a parity fixture directory" in capsys.readouterr().err


@pytest.mark.slow
def test_parity_cli_subprocess_exit_status(random_fixtures, tmp_path):
  corrupted = _corrupt(random_fixtures["learned_nopuzzle_h1"], tmp_path / "corrupted")
  run = lambda path: subprocess.run([sys.executable, "-m", "tools.parity", str(path)], cwd=REPO_ROOT,
                                    env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                                    timeout=600)
  result = run(corrupted)
  assert result.returncode == 1, result.stdout + result.stderr
  assert re.search(r"^traj1_zH .*\bFAIL\b", result.stdout, re.M) and "1 failed" in result.stdout
  result = run(random_fixtures["learned_nopuzzle_h1"])
  assert result.returncode == 0, result.stdout + result.stderr
