"""Numerical parity of hrm_jax with the original HRM (shared fixtures) and with the torch reference (any config).

The shared fixtures were made by the original sapientinc/HRM code; `tools.make_fixture` writes fixtures of the
same layout for any config with the PyTorch re-implementation in tools/hrm_torch. `tools.parity` recomputes
every array with hrm_jax and compares, with the tolerances of tools/tolerance.py (the same policy here: no test
has limits of its own).
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tools import make_fixture
from tools import parity
from tools import tolerance

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
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


_BASE64 = {**_BASE, "forward_dtype": "float64"}
FLOAT64_CONFIGS = {
    # Learned positions, no puzzle embedding, odd cycle and layer counts, expansion 2.5, softmax loss.
    "f64_learned_nopuzzle_softmax": ({**_BASE64, "pos_encodings": "learned", "puzzle_emb_ndim": 0, "H_cycles": 3,
                                      "L_cycles": 1, "H_layers": 1, "L_layers": 3, "expansion": 2.5,
                                      "halt_max_steps": 3}, "softmax_cross_entropy"),
    # A 3-slot zero-padded prefix (80 = 2.5·D) with duplicate ids (6 rows, 3 ids), odd counts, stablemax.
    "f64_rope_prefix3_dup": ({**_BASE64, "batch_size": 6, "num_puzzle_identifiers": 3, "pos_encodings": "rope",
                              "puzzle_emb_ndim": 80, "H_cycles": 1, "L_cycles": 3, "H_layers": 3, "L_layers": 1,
                              "expansion": 2.5, "halt_max_steps": 3}, "stablemax_cross_entropy"),
}
ALL_CONFIGS = {**RANDOM_CONFIGS, **SLOW_CONFIGS, **FLOAT64_CONFIGS}

_POLICIES: dict[pathlib.Path, tolerance.Policy] = {}


def _policy(fixture: pathlib.Path) -> tolerance.Policy:
  """The fixture's measured tolerance policy (the torch reference under rounding variants), once per session."""
  if fixture not in _POLICIES:
    _POLICIES[fixture] = tolerance.measure(fixture)
  return _POLICIES[fixture]


def _worst(results) -> dict[str, float]:
  worst = {}
  for r in results:
    if r.kind != "exact":
      worst[r.kind] = max(worst.get(r.kind, 0.0), r.error)
  return worst


def _assert_parity(results, unknown):
  """Every array passes the policy's tolerance, bookkeeping arrays match exactly, every family is there."""
  assert not unknown, unknown
  failed = [r for r in results if not r.passed]
  assert not failed, parity.format_report(failed, [])
  worst = _worst(results)
  assert set(worst) == {"output", "grad", "param"}, worst
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


def _assert_float64_exceptions_named(results, policy):
  """float64: an array beyond 1e-9 is allowed only with the original's float32 step that explains it."""
  for r in results:
    if r.kind != "exact" and r.error > tolerance.FLOAT64_TARGET:
      assert policy.explanation(r.name), r
      assert "float32 in the original" in r.note, r
  by_name = {r.name: r for r in results}
  # The embeddings have no float32 step before them: they must agree to float64 precision.
  assert by_name["input_embeddings"].error <= tolerance.FLOAT64_TARGET


# ------------------------------------------------------------------------------------------------------
# The original's fixtures
# ------------------------------------------------------------------------------------------------------
def test_parity_with_the_original_float32(original_fixture_dir):
  fixture = original_fixture_dir / "float32"
  results, unknown = parity.run_parity(fixture, _policy(fixture))
  _assert_parity(results, unknown)
  names = {r.name for r in results}
  assert "puzzle_emb_weights_after_signsgd" in names and "traj2_param__puzzle_emb.weights" in names
  assert len(results) == 403


def test_parity_with_the_original_float64(original_fixture_dir):
  fixture = original_fixture_dir / "float64"
  policy = _policy(fixture)
  results, unknown = parity.run_parity(fixture, policy)
  _assert_parity(results, unknown)
  _assert_float64_exceptions_named(results, policy)
  assert len(results) == 403


@pytest.mark.slow
def test_parity_with_the_original_bfloat16(original_fixture_dir):
  fixture = original_fixture_dir / "bfloat16"
  results, unknown = parity.run_parity(fixture, _policy(fixture))
  assert not unknown, unknown
  failed = [r for r in results if not r.passed]
  assert not failed, parity.format_report(failed, [])
  assert len(results) == 403
  for r in results:
    if EXACT_NAME.match(r.name):
      assert r.kind == "exact" and r.error == 0, r


# ------------------------------------------------------------------------------------------------------
# The policy: rounding moves results and the check still passes; a semantic slip fails it
# ------------------------------------------------------------------------------------------------------
def _reference_under(fixture: pathlib.Path, dest: pathlib.Path, variant: str) -> pathlib.Path:
  """A copy of `fixture` whose reference arrays come from the torch reference under a rounding variant:
  what the same checkpoint gives on a machine that rounds differently."""
  import torch  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from tools.hrm_torch import build_loss_head, load_into_loss_head, load_state_dict_file
  from tools.hrm_torch import variants  # pylint: disable=import-outside-toplevel
  shutil.copytree(fixture, dest)
  with np.load(fixture / "reference.npz") as npz:
    arrays = {k: npz[k] for k in npz.files}
  model_cfg = __import__("json").loads((fixture / "model_cfg.json").read_text())
  with variants.rounding_variant(variant):
    torch.manual_seed(0)
    head = build_loss_head(model_cfg, "stablemax_cross_entropy")
    load_into_loss_head(head, load_state_dict_file(fixture / "checkpoint_dir" / "step_0"))
    moved = make_fixture.compute_reference(head, make_fixture.batches_from_reference(fixture / "reference.npz"))
  np.savez(dest / "reference.npz", **{k: moved.get(k, v) for k, v in arrays.items()})
  return dest


def test_rounding_moved_by_another_machines_spread_still_passes(original_fixture_dir, tmp_path):
  # The tiny fixture as a machine that rounds every step differently would have made it (a dither seed the
  # policy never measured with): the results move, by about the spread, and parity must still pass.
  fixture = original_fixture_dir / "float32"
  moved = _reference_under(fixture, tmp_path / "moved", "dither:7")
  with np.load(fixture / "reference.npz") as a, np.load(moved / "reference.npz") as b:
    shift = max(tolerance.relative_error(b[k], a[k]) for k in a.files if a[k].dtype.kind == "f")
  assert shift > 1e-6  # the rounding really moved (as far as the original on another CPU moves)
  results, unknown = parity.run_parity(moved, _policy(fixture))
  _assert_parity(results, unknown)


def _planted_slips():
  """name -> context manager planting a real semantic mistake in hrm_jax."""
  from hrm_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
  from hrm_jax.model import layers  # pylint: disable=import-outside-toplevel

  def no_sqrt_d_scale(mp):
    attention = layers.attention_xla
    mp.setattr(layers, "attention_xla",
               lambda q, k, v: attention(q * np.float32(np.sqrt(q.shape[-1])), k, v))

  def transposed_o_proj(mp):
    load = torch_checkpoint.from_state_dict

    def from_state_dict(state, cfg):
      params, buffers, table = load(state, cfg)
      for level in ("H_level", "L_level"):
        layer0 = params[level]["layers_0"]["self_attn"]["o_proj"]
        layer0["kernel"] = np.ascontiguousarray(layer0["kernel"].T)
      return params, buffers, table
    mp.setattr(torch_checkpoint, "from_state_dict", from_state_dict)

  return {"no_sqrt_d_scale": no_sqrt_d_scale, "transposed_o_proj": transposed_o_proj}


@pytest.mark.parametrize("slip", sorted(_planted_slips()))
def test_a_planted_semantic_slip_fails_the_check(original_fixture_dir, monkeypatch, slip):
  fixture = original_fixture_dir / "float32"
  policy = _policy(fixture)
  _planted_slips()[slip](monkeypatch)
  jax.clear_caches()  # jitted functions traced by earlier tests would otherwise keep the correct code
  try:
    results, _ = parity.run_parity(fixture, policy)
  finally:
    monkeypatch.undo()
    jax.clear_caches()
  failed = {r.name for r in results if not r.passed}
  assert {"inner_step1_zH", "inner_step1_logits", "eval_step0_logits"} <= failed, sorted(failed)
  by_name = {r.name: r for r in results}
  # Far outside rounding: at least 10x the tolerance on the first segment's carry.
  assert by_name["inner_step1_zH"].error > 10 * by_name["inner_step1_zH"].tolerance
  assert re.search(r"^inner_step1_zH .*\bFAIL\b", parity.format_report(results, []), re.M)


# ------------------------------------------------------------------------------------------------------
# Random configs through the torch reference
# ------------------------------------------------------------------------------------------------------
def _make(tmp_path_factory, name):
  model_cfg, loss_type = ALL_CONFIGS[name]
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


@pytest.mark.parametrize("name", sorted(FLOAT64_CONFIGS))
def test_float64_parity_on_random_configs(tmp_path_factory, name):
  _check_random_fixture(_make(tmp_path_factory, name), name)


def _check_random_fixture(fixture: pathlib.Path, name: str):
  model_cfg, loss_type = ALL_CONFIGS[name]
  assert f"loss_type: {loss_type}" in (fixture / "checkpoint_dir" / "all_config.yaml").read_text()
  policy = _policy(fixture)
  results, unknown = parity.run_parity(fixture, policy)
  _assert_parity(results, unknown)
  if model_cfg["forward_dtype"] == "float64":
    _assert_float64_exceptions_named(results, policy)
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
  # 1e-3 relative: ~50x the tolerance of a second evaluation segment (trajectory calls after an optimiser
  # update are held less tightly: AdamATan2 turns near-zero gradients into steps of either sign).
  arrays["eval_step1_logits"] = arrays["eval_step1_logits"] * np.float32(1.001)
  np.savez(dest / "reference.npz", **arrays)
  return dest


def test_parity_cli_exit_status(random_fixtures, tmp_path, capsys):
  # `python -m tools.parity` is `sys.exit(main())`; main() is called in-process to reuse compiled code.
  good = random_fixtures["learned_nopuzzle_h1"]
  assert parity.main([str(good)]) == 0
  assert "0 failed" in capsys.readouterr().out

  assert parity.main([str(_corrupt(good, tmp_path / "corrupted")), "--failures-only"]) == 1
  out = capsys.readouterr().out
  failing = [line.split()[0] for line in out.splitlines() if re.search(r"\bFAIL\b", line)]
  assert failing == ["eval_step1_logits"], out
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
  assert re.search(r"^eval_step1_logits .*\bFAIL\b", result.stdout, re.M) and "1 failed" in result.stdout
  result = run(random_fixtures["learned_nopuzzle_h1"])
  assert result.returncode == 0, result.stdout + result.stderr
