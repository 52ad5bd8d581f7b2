"""Tests of hrm_jax.convert: original checkpoints <-> hrm_jax pytrees, config inference, errors, and the CLI."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import yaml

from hrm_jax.convert import __main__ as convert_cli
from hrm_jax.convert import npz_file
from hrm_jax.convert import torch_checkpoint as tc
from hrm_jax.model import hrm
from tools import hrm_torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PFX = tc.DEFAULT_PREFIX


def _bits(t: torch.Tensor) -> bytes:
  t = t.detach().contiguous()
  if t.dtype == torch.bfloat16:
    t = t.view(torch.int16)
  return t.numpy().tobytes()


def _assert_bitwise_equal(got: dict, want: dict):
  assert list(got) == list(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype, key
    assert tuple(got[key].shape) == tuple(value.shape), key
    assert _bits(got[key]) == _bits(value), key


def _model_cfg(fixture: pathlib.Path) -> dict:
  return json.loads((fixture / "model_cfg.json").read_text())


def _load(fixture: pathlib.Path) -> tc.ConvertedCheckpoint:
  return tc.load_original_checkpoint(fixture / "checkpoint_dir" / "step_0",
                                     seq_len=_model_cfg(fixture)["seq_len"])


def _original(fixture: pathlib.Path) -> dict:
  return torch.load(fixture / "checkpoint_dir" / "step_0", map_location="cpu", weights_only=True)


def _copy_checkpoint(fixture: pathlib.Path, dest: pathlib.Path, state=None, with_yaml=True) -> pathlib.Path:
  dest.mkdir(parents=True, exist_ok=True)
  if with_yaml:
    shutil.copy(fixture / "checkpoint_dir" / "all_config.yaml", dest / "all_config.yaml")
  torch.save(_original(fixture) if state is None else state, dest / "step_0")
  return dest / "step_0"


@pytest.fixture(params=["float32", "bfloat16"])
def fixture_dir(original_fixture_dir, request):
  return original_fixture_dir / request.param


@pytest.fixture
def f32_fixture(original_fixture_dir):
  return original_fixture_dir / "float32"


def _assert_same_model(a: tc.ConvertedCheckpoint, b: tc.ConvertedCheckpoint):
  assert a.model_config == b.model_config
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a.params, b.params)
  for name in ("H_init", "L_init"):
    assert a.buffers[name].dtype == b.buffers[name].dtype
    np.testing.assert_array_equal(a.buffers[name].view(np.uint8), b.buffers[name].view(np.uint8))
  np.testing.assert_array_equal(a.puzzle_table, b.puzzle_table)


# ------------------------------------------------------------------------------------------------------
# Round trip
# ------------------------------------------------------------------------------------------------------
def test_round_trip_is_bitwise_identical_and_loads_strictly_into_the_original(fixture_dir):
  original = _original(fixture_dir)
  converted = _load(fixture_dir)
  cfg = converted.model_config
  assert converted.prefix == PFX

  # The converted params are exactly the pytree the model creates (same paths, shapes, float32).
  fresh = hrm.init_params(cfg, jax.random.key(0))
  assert jax.tree.structure(fresh) == jax.tree.structure(converted.params)
  jax.tree.map(lambda f, c: (f.shape == c.shape and c.dtype == np.float32) or pytest.fail(str(c.shape)),
               fresh, converted.params)
  assert converted.buffers["H_init"].dtype == cfg.dtype
  assert converted.puzzle_table.dtype == np.float32

  back = tc.to_torch_state_dict(converted.params, converted.buffers, converted.puzzle_table, cfg)
  _assert_bitwise_equal(back, original)
  if cfg.forward_dtype == "bfloat16":
    assert back[PFX + "H_init"].dtype == torch.bfloat16 and back[PFX + "L_init"].dtype == torch.bfloat16

  # pretrain.py saves torch.compile(ACTLossHead(...)).state_dict(); load into exactly that, strictly.
  head = hrm_torch.build_loss_head(_model_cfg(fixture_dir))
  torch.compile(head).load_state_dict(back, strict=True)
  loaded = {PFX + k[len("model.inner."):]: v for k, v in head.state_dict().items()}
  _assert_bitwise_equal(loaded, original)
  # The un-compiled loss head (DISABLE_COMPILE) loads the `model.inner.` variant strictly too.
  head.load_state_dict(tc.to_torch_state_dict(converted.params, converted.buffers, converted.puzzle_table,
                                              cfg, prefix="model.inner."), strict=True)


@pytest.mark.parametrize("prefix", tc.KNOWN_PREFIXES)
def test_every_original_key_prefix_loads(f32_fixture, tmp_path, prefix):
  state = {prefix + k[len(PFX):]: v for k, v in _original(f32_fixture).items()}
  converted = tc.load_original_checkpoint(_copy_checkpoint(f32_fixture, tmp_path, state), seq_len=16)
  assert converted.prefix == prefix
  _assert_same_model(converted, _load(f32_fixture))


def test_mixed_prefixes_are_rejected(f32_fixture, tmp_path):
  state = _original(f32_fixture)
  state["model.inner.extra"] = torch.zeros(2)
  with pytest.raises(tc.CheckpointConversionError, match="model.inner.extra"):
    tc.load_original_checkpoint(_copy_checkpoint(f32_fixture, tmp_path, state), seq_len=16)


def test_safetensors_input_matches_the_torch_file(fixture_dir, tmp_path):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  shutil.copy(fixture_dir / "checkpoint_dir" / "all_config.yaml", tmp_path / "all_config.yaml")
  save_file(_original(fixture_dir), str(tmp_path / "model.safetensors"))
  converted = tc.load_original_checkpoint(tmp_path / "model.safetensors", seq_len=16)
  _assert_same_model(converted, _load(fixture_dir))
  if fixture_dir.name == "bfloat16":
    assert converted.buffers["H_init"].dtype == ml_dtypes.bfloat16


# ------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------
def test_missing_unexpected_and_misshaped_keys_are_listed_in_one_error(f32_fixture, tmp_path):
  state = _original(f32_fixture)
  del state[PFX + "q_head.bias"]
  del state[PFX + "L_level.layers.1.mlp.down_proj.weight"]
  state[PFX + "extra_head.weight"] = torch.zeros(3, 64)
  state[PFX + "lm_head.weight"] = torch.zeros(11, 65)
  with pytest.raises(tc.CheckpointConversionError) as error:
    tc.load_original_checkpoint(_copy_checkpoint(f32_fixture, tmp_path, state), seq_len=16)
  message = str(error.value)
  for expected in ("missing keys (2)", "q_head.bias", "L_level.layers.1.mlp.down_proj.weight",
                   "unexpected keys (1)", "extra_head.weight", "mis-shaped keys (1)",
                   "lm_head.weight: (11, 65) (expected (11, 64))"):
    assert expected in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_checkpoint_file_gives_a_clear_error(f32_fixture, tmp_path, damage):
  data = (f32_fixture / "checkpoint_dir" / "step_0").read_bytes()
  path = tmp_path / "step_0"
  path.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"\x80\x04not a checkpoint" * 50,
                    "empty": b""}[damage])
  with pytest.raises(tc.CheckpointConversionError) as error:
    tc.load_original_checkpoint(path, seq_len=16)
  assert str(path) in str(error.value) and "truncated" in str(error.value)


def test_non_mapping_checkpoint_is_rejected(tmp_path):
  torch.save([torch.zeros(2)], tmp_path / "step_0")
  with pytest.raises(tc.CheckpointConversionError, match="holds a list, not a state_dict"):
    tc.load_original_checkpoint(tmp_path / "step_0", seq_len=16)


class _CodeRunningPayload:
  """Unpickling this object calls open(marker, "w"): a stand-in for arbitrary code in a checkpoint."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_checkpoints_are_loaded_weights_only(tmp_path):
  marker = tmp_path / "code_ran"
  torch.save({PFX + "H_init": torch.zeros(4), PFX + "payload": _CodeRunningPayload(str(marker))},
             tmp_path / "step_0")
  with pytest.raises(tc.CheckpointConversionError, match="weights_only=True"):
    tc.load_original_checkpoint(tmp_path / "step_0", seq_len=16)
  assert not marker.exists()
  # The payload is real: a full unpickle does run it.
  torch.load(tmp_path / "step_0", weights_only=False)
  assert marker.exists()


# ------------------------------------------------------------------------------------------------------
# Config inference
# ------------------------------------------------------------------------------------------------------
def test_config_comes_from_shapes_and_all_config_yaml(fixture_dir):
  converted = _load(fixture_dir)
  want = _model_cfg(fixture_dir)
  got = converted.model_config.to_dict()
  for key in ("vocab_size", "seq_len", "num_puzzle_identifiers", "puzzle_emb_ndim", "hidden_size", "num_heads",
              "expansion", "H_cycles", "L_cycles", "H_layers", "L_layers", "pos_encodings", "halt_max_steps",
              "halt_exploration_prob", "forward_dtype"):
    assert got[key] == want[key], key
  assert converted.loss_type == "stablemax_cross_entropy"
  assert not any("H_cycles" in note or "num_heads" in note for note in converted.notes)


def test_without_all_config_yaml_defaults_are_used_and_noted(f32_fixture, tmp_path):
  path = _copy_checkpoint(f32_fixture, tmp_path, with_yaml=False)
  converted = tc.load_original_checkpoint(path, seq_len=16)
  cfg = converted.model_config
  assert "no all_config.yaml" in converted.notes[0]
  assert any(note.startswith("num_heads is not in") for note in converted.notes)
  assert (cfg.num_heads, cfg.H_cycles, cfg.halt_max_steps) == (8, 2, 16)  # the original's hrm_v1.yaml
  assert (cfg.hidden_size, cfg.H_layers, cfg.L_layers, cfg.puzzle_emb_ndim) == (64, 2, 2, 64)  # from shapes
  assert converted.loss_type is None
  overridden = tc.load_original_checkpoint(path, seq_len=16, overrides={"num_heads": 4, "halt_max_steps": 4})
  assert (overridden.model_config.num_heads, overridden.model_config.halt_max_steps) == (4, 4)


@pytest.mark.parametrize("arch_change, expected", [
    ({"hidden_size": 128}, "hidden_size: all_config.yaml says 128, the tensors say 64"),
    ({"L_layers": 3}, "L_layers: all_config.yaml says 3, the tensors say 2"),
    ({"pos_encodings": "learned"}, "pos_encodings: all_config.yaml says 'learned', the tensors say 'rope'"),
    ({"expansion": 8}, "expansion=8 implies an MLP width of 512, but gate_up_proj has width 256"),
    ({"num_heads": 6}, "num_heads=6 does not divide hidden_size=64"),
    (None, None),  # control: the unchanged yaml loads
])
def test_disagreeing_all_config_yaml_is_reported(f32_fixture, tmp_path, arch_change, expected):
  path = _copy_checkpoint(f32_fixture, tmp_path)
  if arch_change is None:
    assert tc.load_original_checkpoint(path, seq_len=16).model_config.hidden_size == 64
    return
  config = yaml.safe_load((tmp_path / "all_config.yaml").read_text())
  config["arch"].update(arch_change)
  (tmp_path / "all_config.yaml").write_text(yaml.safe_dump(config))
  with pytest.raises(tc.CheckpointConversionError) as error:
    tc.load_original_checkpoint(path, seq_len=16)
  assert "disagrees" in str(error.value) and expected in str(error.value)


def test_expansion_is_checked_only_up_to_the_rounded_mlp_width(f32_fixture, tmp_path):
  # D=64: expansion 2 and 4 both give width 256, so the shapes cannot tell them apart; the yaml decides.
  path = _copy_checkpoint(f32_fixture, tmp_path)
  config = yaml.safe_load((tmp_path / "all_config.yaml").read_text())
  config["arch"]["expansion"] = 2
  (tmp_path / "all_config.yaml").write_text(yaml.safe_dump(config))
  assert tc.load_original_checkpoint(path, seq_len=16).model_config.expansion == 2


def test_rope_checkpoint_needs_seq_len(f32_fixture):
  with pytest.raises(tc.CheckpointConversionError, match="seq_len cannot be inferred"):
    tc.load_original_checkpoint(f32_fixture / "checkpoint_dir" / "step_0")


LEARNED_CFG = {"batch_size": 3, "seq_len": 5, "vocab_size": 7, "num_puzzle_identifiers": 4,
               "puzzle_emb_ndim": 40, "hidden_size": 16, "num_heads": 2, "expansion": 2.5, "H_cycles": 1,
               "L_cycles": 3, "H_layers": 1, "L_layers": 2, "pos_encodings": "learned", "halt_max_steps": 3,
               "halt_exploration_prob": 0.2, "forward_dtype": "bfloat16"}


def test_learned_positions_multi_slot_prefix_round_trip(tmp_path):
  torch.manual_seed(0)
  head = hrm_torch.build_loss_head(LEARNED_CFG, "softmax_cross_entropy")
  with torch.no_grad():
    head.model.inner.puzzle_emb.weights.normal_()
  state = hrm_torch.to_compiled_state_dict(head)
  torch.save(state, tmp_path / "step_0")
  arch = {k: v for k, v in LEARNED_CFG.items() if k not in ("batch_size", "seq_len", "vocab_size",
                                                            "num_puzzle_identifiers")}
  arch["loss"] = {"loss_type": "softmax_cross_entropy"}
  (tmp_path / "all_config.yaml").write_text(yaml.safe_dump({"arch": arch}))

  converted = tc.load_original_checkpoint(tmp_path / "step_0")  # seq_len from the position table
  cfg = converted.model_config
  assert (cfg.seq_len, cfg.puzzle_emb_len, cfg.total_len, cfg.mlp_width) == (5, 3, 8, 256)
  assert (cfg.H_cycles, cfg.L_cycles, cfg.expansion, cfg.halt_exploration_prob) == (1, 3, 2.5, 0.2)
  assert converted.loss_type == "softmax_cross_entropy"
  assert converted.params["embed_pos"]["embedding"].shape == (8, 16)
  _assert_bitwise_equal(
      tc.to_torch_state_dict(converted.params, converted.buffers, converted.puzzle_table, cfg), state)
  with pytest.raises(tc.CheckpointConversionError, match="fits seq_len=5"):
    tc.load_original_checkpoint(tmp_path / "step_0", seq_len=6)


# ------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------
def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "hrm_jax.convert", *map(str, args)], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_round_trip_is_bitwise_identical(original_fixture_dir, tmp_path):
  fixture = original_fixture_dir / "bfloat16"
  step = fixture / "checkpoint_dir" / "step_0"
  result = _run_cli("to-jax", step, "--output", tmp_path / "model.npz", "--seq-len", 16,
                    "--set", "attention_impl=auto")
  assert result.returncode == 0, result.stderr
  # all_config.yaml lacks rope_theta / rms_norm_eps: the original's code defaults, used without a note.
  assert '"hidden_size": 64' in result.stdout and "note:" not in result.stdout

  model = npz_file.load_npz(tmp_path / "model.npz")
  assert model.model_config == _load(fixture).model_config.replace(attention_impl="auto")
  assert model.loss_type == "stablemax_cross_entropy"
  assert model.buffers["H_init"].dtype == ml_dtypes.bfloat16

  result = _run_cli("to-torch", tmp_path / "model.npz", "--output", tmp_path / "step_0")
  assert result.returncode == 0, result.stderr
  _assert_bitwise_equal(torch.load(tmp_path / "step_0", weights_only=True), _original(fixture))


def test_cli_user_errors_are_one_line_without_traceback(f32_fixture, tmp_path):
  result = _run_cli("to-jax", tmp_path / "missing_step", "--output", tmp_path / "x.npz")
  assert result.returncode == 1
  assert result.stderr.startswith("error: Checkpoint file") and result.stderr.count("\n") == 1
  assert "Traceback" not in result.stderr


def _cli(capsys, *args):
  code = convert_cli.main([str(a) for a in args])
  captured = capsys.readouterr()
  return code, captured.err


def test_cli_error_messages(f32_fixture, tmp_path, capsys):
  step = f32_fixture / "checkpoint_dir" / "step_0"
  out = tmp_path / "m.npz"
  cases = [
      (("to-jax", step, "--output", out), "seq_len cannot be inferred"),
      (("to-jax", step, "--output", out), "Use --seq-len N."),
      (("to-jax", step, "--output", out, "--seq-len", 16, "--set", "hidden_size=32"),
       "hidden_size: requested 32, the checkpoint has 64"),
      (("to-jax", step, "--output", out, "--seq-len", 16, "--set", "num_heads"), "is not key=value"),
      (("to-jax", step, "--output", out, "--seq-len", 16, "--set", "colour=red"), "Unknown model config keys"),
      (("to-jax", step, "--output", tmp_path / "no_dir" / "m.npz", "--seq-len", 16), "does not exist"),
      (("to-torch", tmp_path / "none.npz", "--output", tmp_path / "step_0"), "does not exist"),
  ]
  for args, expected in cases:
    code, err = _cli(capsys, *args)
    assert code == 1, args
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, (args, err)
  assert not out.exists()

  truncated = tmp_path / "step_1"
  truncated.write_bytes(step.read_bytes()[:1000])
  code, err = _cli(capsys, "to-jax", truncated, "--output", out, "--seq-len", 16)
  assert code == 1 and "truncated" in err

  (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
  code, err = _cli(capsys, "to-torch", tmp_path / "garbage.npz", "--output", tmp_path / "step_0")
  assert code == 1 and "Could not read" in err

  converted = _load(f32_fixture)
  params = dict(converted.params)
  del params["lm_head"]
  npz_file.save_npz(out, params, converted.buffers, converted.puzzle_table, converted.model_config)
  code, err = _cli(capsys, "to-torch", out, "--output", tmp_path / "step_0")
  assert code == 1 and "lacks the parameter 'lm_head'" in err
  assert not (tmp_path / "step_0").exists()

  params = jax.tree.map(np.asarray, converted.params)
  params["q_head"]["bias"] = np.zeros(3, np.float32)
  npz_file.save_npz(out, params, converted.buffers, converted.puzzle_table, converted.model_config)
  code, err = _cli(capsys, "to-torch", out, "--output", tmp_path / "step_0")
  assert code == 1 and "q_head.bias: (3,) (expected (2,))" in err


def test_to_torch_from_an_hrm_jax_run_directory(f32_fixture, tmp_path):
  """A run's checkpoint converts to a state_dict the original loads strictly, bit for bit."""
  from hrm_jax.model.losses import LossConfig  # pylint: disable=g-import-not-at-top
  from hrm_jax.training import checkpoint, optim  # pylint: disable=g-import-not-at-top
  from hrm_jax.training.train_step import create_train_state  # pylint: disable=g-import-not-at-top
  converted = _load(f32_fixture)
  cfg = converted.model_config
  state = create_train_state(cfg, optim.hrm_optimizer(optim.adam_atan2(1e-3), optim.sparse_signsgd(1e-2, 0.1)),
                             batch_size=4, seed=0)
  state = state.replace(params=jax.tree.map(jax.numpy.asarray, converted.params),
                        buffers=jax.tree.map(jax.numpy.asarray, converted.buffers),
                        puzzle_table=jax.numpy.asarray(converted.puzzle_table))
  model_fields = {k: v for k, v in cfg.to_dict().items()
                  if k not in ("vocab_size", "seq_len", "num_puzzle_identifiers")}
  config = {"model": model_fields, "loss": {"loss_type": LossConfig().loss_type},
            "dataset": {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
                        "num_puzzle_identifiers": cfg.num_puzzle_identifiers}}
  with checkpoint.Checkpointer(tmp_path / "run" / "checkpoints", async_save=False) as ckpt:
    ckpt.save(7, state, data_state={}, config=config, metadata={"run_id": "test"})
  output = tmp_path / "step_7"
  assert convert_cli.main(["to-torch", str(tmp_path / "run"), "--output", str(output)]) == 0
  written = torch.load(output, map_location="cpu", weights_only=True)
  _assert_bitwise_equal(written, _original(f32_fixture))
  head = hrm_torch.build_loss_head(_model_cfg(f32_fixture))
  hrm_torch.load_into_loss_head(head, written)


def test_to_torch_from_a_directory_without_checkpoints_is_a_one_line_error(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert convert_cli.main(["to-torch", str(tmp_path / "empty"), "--output", str(tmp_path / "x")]) == 1
  assert "not an hrm_jax run" in capsys.readouterr().err
  (tmp_path / "killed" / "checkpoints" / "5.orbax-checkpoint-tmp").mkdir(parents=True)
  assert convert_cli.main(["to-torch", str(tmp_path / "killed"), "--output", str(tmp_path / "x")]) == 1
  err = capsys.readouterr().err
  assert "holds no complete hrm_jax checkpoint (step 5: half-written" in err and err.count("\n") == 1


def test_to_jax_without_all_config_yaml_refuses_to_guess_the_architecture(f32_fixture, tmp_path, capsys):
  step = _copy_checkpoint(f32_fixture, tmp_path / "bare", with_yaml=False)
  out = tmp_path / "m.npz"
  code, err = _cli(capsys, "to-jax", step, "--output", out, "--seq-len", 16)
  assert code == 1 and err.count("\n") == 1 and not out.exists()
  assert "no all_config.yaml beside it" in err and "num_heads, expansion, H_cycles, L_cycles, halt_max_steps" in err
  given = ["--set", "num_heads=4", "--set", "expansion=4", "--set", "H_cycles=2", "--set", "L_cycles=2",
           "--set", "halt_max_steps=4"]
  code, err = _cli(capsys, "to-jax", step, "--output", out, "--seq-len", 16, *given)
  assert code == 0, err
  assert npz_file.load_npz(out).model_config == _load(f32_fixture).model_config
  code, err = _cli(capsys, "to-jax", step, "--output", out, "--seq-len", 16, "--original-defaults")
  assert code == 0 and npz_file.load_npz(out).model_config.num_heads == 8  # asked for: the original's default


def test_to_torch_writes_an_all_config_yaml_the_original_builds_its_model_from(f32_fixture, tmp_path, capsys):
  converted = _load(f32_fixture)
  npz_file.save_npz(tmp_path / "m.npz", converted.params, converted.buffers, converted.puzzle_table,
                    converted.model_config, converted.loss_type)
  (tmp_path / "out").mkdir()
  code, err = _cli(capsys, "to-torch", tmp_path / "m.npz", "--output", tmp_path / "out" / "step_0")
  assert code == 0, err
  written = yaml.safe_load((tmp_path / "out" / "all_config.yaml").read_text())
  arch = written["arch"]
  assert arch["name"] == tc.ORIGINAL_ARCH_NAME and arch["loss"]["loss_type"] == "stablemax_cross_entropy"
  assert written["hrm_jax"]["model_config"] == converted.model_config.to_dict()
  # The original's pretrain.py: arch extras + the dataset's sizes + batch size -> the model config.
  cfg = converted.model_config
  model_cfg = {**{k: v for k, v in arch.items() if k not in ("name", "loss")}, "batch_size": 4,
               "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
               "num_puzzle_identifiers": cfg.num_puzzle_identifiers, "causal": False}
  assert {k: model_cfg[k] for k in _model_cfg(f32_fixture)} == _model_cfg(f32_fixture)
  head = hrm_torch.build_loss_head(model_cfg)
  hrm_torch.load_into_loss_head(head, torch.load(tmp_path / "out" / "step_0", weights_only=True))
  # ... and converting back needs no flag.
  code, err = _cli(capsys, "to-jax", tmp_path / "out" / "step_0", "--output", tmp_path / "back.npz")
  assert code == 0, err
  assert npz_file.load_npz(tmp_path / "back.npz").model_config == cfg
  # Another model's all_config.yaml in the output directory is not overwritten.
  npz_file.save_npz(tmp_path / "other.npz", converted.params, converted.buffers, converted.puzzle_table,
                    cfg.replace(halt_max_steps=8), converted.loss_type)
  code, err = _cli(capsys, "to-torch", tmp_path / "other.npz", "--output", tmp_path / "out" / "step_1")
  assert code == 1 and "already describes another model" in err and not (tmp_path / "out" / "step_1").exists()


def test_a_demo_run_round_trips_through_torch_with_identical_predictions_and_no_flags(tmp_path_factory, tmp_path,
                                                                                        capsys):
  import demo_run  # pylint: disable=import-outside-toplevel
  from hrm_jax import evaluate as evaluate_cli  # pylint: disable=import-outside-toplevel
  workdir, data = demo_run.trained_demo(tmp_path_factory)
  (tmp_path / "torch").mkdir()
  step_file = tmp_path / "torch" / "step_500"
  assert convert_cli.main(["to-torch", str(workdir), "--output", str(step_file)]) == 0
  assert convert_cli.main(["to-jax", str(step_file), "--output", str(tmp_path / "back.npz")]) == 0
  assert "note:" not in capsys.readouterr().out  # nothing guessed
  for name, checkpoint in (("run", workdir), ("npz", tmp_path / "back.npz"), ("torch", step_file)):
    code = evaluate_cli.main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / name),
                              "--no-progress", "--batch-size", "256"])
    assert code == 0, capsys.readouterr().err
  reference = np.load(tmp_path / "run" / "predictions.npz")
  for name in ("npz", "torch"):
    got = np.load(tmp_path / name / "predictions.npz")
    for key in reference.files:
      np.testing.assert_array_equal(got[key], reference[key], err_msg=f"{name}: {key}")
    assert json.loads((tmp_path / name / "report.json").read_text())["model_config"] == \
        json.loads((tmp_path / "run" / "report.json").read_text())["model_config"]
