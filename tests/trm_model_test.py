"""TRM's config, recursion schedule, EMA train step and checkpoint conversion, on tiny configs."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from hrm_jax.convert import torch_checkpoint
from hrm_jax.convert import trm_checkpoint
from hrm_jax.model import arch
from hrm_jax.model import hrm
from hrm_jax.model import trm
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import LossConfig
from hrm_jax.training import ema as ema_lib
from hrm_jax.training import optim
from hrm_jax.training import train_step as train_step_lib

TRM_FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "trm_original" / "tiny"
TINY = dict(arch="trm", vocab_size=7, seq_len=6, num_puzzle_identifiers=3, puzzle_emb_ndim=16, hidden_size=16,
            num_heads=2, expansion=2.0, H_cycles=3, L_cycles=2, L_layers=2, puzzle_emb_len=2,
            halt_max_steps=3, halt_exploration_prob=0.0, forward_dtype="float32")


def _cfg(**changes):
  return ModelConfig.from_dict({**TINY, **changes})


def test_config_dispatch_defaults_and_checks():
  cfg = _cfg()
  assert isinstance(cfg, trm.TRMConfig) and arch.model_for(cfg) is trm
  assert arch.model_for(ModelConfig(vocab_size=3, seq_len=4)) is hrm
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg
  assert cfg.total_len == 6 + 2
  assert _cfg(puzzle_emb_len=0).puzzle_emb_len == 1  # 0 = ceil(ndim / D), resolved
  assert _cfg(pos_encodings="none").pos_encodings == "none"  # anything but rope/learned: none
  defaults = trm.TRMConfig(vocab_size=11, seq_len=81, puzzle_emb_ndim=512)
  assert (defaults.H_cycles, defaults.L_cycles, defaults.L_layers, defaults.puzzle_emb_len,
          defaults.no_ACT_continue, defaults.mlp_t) == (3, 6, 2, 16, True, False)
  assert defaults.replace(mlp_t=True).token_mlp_width == 512  # T = 97 -> round(258.67) -> 512
  with pytest.raises(ValueError, match="puzzle_emb_ndim=0 needs puzzle_emb_len=0"):
    _cfg(puzzle_emb_ndim=0)
  with pytest.raises(ValueError, match="does not fit in puzzle_emb_len=2"):
    _cfg(puzzle_emb_ndim=40)
  with pytest.raises(ValueError, match="Unknown model arch 'hrm_v2'"):
    ModelConfig.from_dict({**TINY, "arch": "hrm_v2"})
  with pytest.raises(ValueError, match="Unknown model config keys"):
    ModelConfig.from_dict({**TINY, "mlp_tt": True})


def test_parameter_count_of_the_readme_sudoku_models():
  # TRM_REFERENCE.md §1 (measured on the original): attention 6,828,034; mlp_t 5,028,866 (puzzle table excluded).
  count = lambda cfg: sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(lambda: trm.init_params(cfg, jax.random.key(0)))))
  sudoku = trm.TRMConfig(vocab_size=11, seq_len=81, puzzle_emb_ndim=512)
  assert count(sudoku) == 6_828_034
  assert count(sudoku.replace(mlp_t=True, pos_encodings="none")) == 5_028_866


def _segment_loss(params, cfg, z_H, z_L, inputs, rows):
  (_, _), logits, q_halt, _ = trm.segment(params, cfg, z_H, z_L, inputs, rows)
  return jnp.sum(logits ** 2) + jnp.sum(q_halt)


def test_only_the_last_recursion_is_differentiated():
  """Gradients of a 3-recursion segment equal those of one recursion started where the first two (no-grad)
  ones end: nothing flows back through the no-grad part, and the carry gets no gradient."""
  cfg = _cfg()
  params = trm.init_params(cfg, jax.random.key(0))
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
  buffers = trm.init_buffers(cfg, jax.random.key(2))
  inputs = jax.random.randint(jax.random.key(3), (2, cfg.seq_len), 0, cfg.vocab_size)
  rows = jax.random.normal(jax.random.key(4), (2, cfg.puzzle_emb_ndim))
  shape = (2, cfg.total_len, cfg.hidden_size)
  z_H, z_L = jnp.broadcast_to(buffers["H_init"], shape), jnp.broadcast_to(buffers["L_init"], shape)

  x = trm.input_embeddings(params, cfg, inputs, rows)
  zh, zl = z_H, z_L
  for _ in range(cfg.H_cycles - 1):
    for _ in range(cfg.L_cycles):
      zl = trm.net(params, cfg, zl, zh + x)
    zh = trm.net(params, cfg, zh, zl)
  one = cfg.replace(H_cycles=1)
  want = jax.grad(_segment_loss, argnums=(0, 2, 3, 5))(params, one, zh, zl, inputs, rows)
  got = jax.grad(_segment_loss, argnums=(0, 2, 3, 5))(params, cfg, z_H, z_L, inputs, rows)
  # Compared relative to each tensor's largest entry: the two programs round differently (measured up to
  # 5e-6 here), while gradient leaking through the no-grad recursions would change them at order 1.
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = max(float(jnp.max(jnp.abs(w))), 1e-30)
    assert float(jnp.max(jnp.abs(g - w))) <= 1e-4 * scale
  assert float(jnp.max(jnp.abs(got[1]))) == 0.0 and float(jnp.max(jnp.abs(got[2]))) == 0.0
  assert float(jnp.max(jnp.abs(got[3]))) > 0  # the puzzle rows do get gradient (through x)


def test_training_halts_on_q_halt_alone_without_a_target():
  cfg = _cfg(halt_max_steps=4)
  params = trm.init_params(cfg, jax.random.key(0))
  params["q_head"]["bias"] = jnp.array([0.5, 9.0])  # q_halt > 0 everywhere; q_continue larger still
  batch = {"inputs": jnp.zeros((3, cfg.seq_len), jnp.int32), "labels": jnp.ones((3, cfg.seq_len), jnp.int32),
           "puzzle_identifiers": jnp.zeros((3,), jnp.int32)}
  carry = trm.reset_carry(trm.initial_carry(cfg, 3), batch, trm.init_buffers(cfg, jax.random.key(1)))
  rows = trm.gather_puzzle_rows(cfg, trm.init_puzzle_table(cfg), carry.current_data["puzzle_identifiers"])
  new_carry, outputs = trm.act_step(params, cfg, carry, rows, training=True)
  assert bool(jnp.all(new_carry.halted)) and "target_q_continue" not in outputs
  hrm_like, outputs = trm.act_step(params, cfg.replace(no_ACT_continue=False), carry, rows, training=True)
  assert not bool(jnp.any(hrm_like.halted)) and "target_q_continue" in outputs  # q_halt < q_continue


def test_train_step_updates_the_ema_and_evaluation_uses_it():
  cfg = _cfg()
  opt = optim.hrm_optimizer(optax.sgd(0.1), optim.sparse_signsgd(0.01, 0.1))
  state = train_step_lib.create_train_state(cfg, opt, batch_size=4, seed=0, ema=True)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state.params, state.ema_params))
  step_cfg = train_step_lib.StepConfig(model=cfg, loss=LossConfig(), global_batch_size=4, ema_rate=0.75)
  step = jax.jit(train_step_lib.make_train_step(step_cfg, opt))
  batch = {"inputs": jnp.ones((4, cfg.seq_len), jnp.int32), "labels": jnp.full((4, cfg.seq_len), 2, jnp.int32),
           "puzzle_identifiers": jnp.arange(4, dtype=jnp.int32) % 3}
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  for p0, p1, e1 in zip(*(jax.tree.leaves(t) for t in (state.params, new.params, new.ema_params))):
    np.testing.assert_array_equal(e1, 0.25 * p1 + 0.75 * p0)
  assert any(not bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(new.params),
                                                              jax.tree.leaves(new.ema_params)))
  assert ema_lib.eval_params(new) is new.ema_params
  plain = train_step_lib.create_train_state(cfg, opt, batch_size=4, seed=0)
  assert plain.ema_params is None and ema_lib.eval_params(plain) is plain.params


# ------------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------------
def test_converter_round_trips_the_original_checkpoint_bit_for_bit():
  path = TRM_FIXTURE / "float32" / "checkpoint_dir" / "step_0"
  converted = torch_checkpoint.load_original_checkpoint(path, seq_len=16)
  cfg = converted.model_config
  assert (cfg.arch, cfg.puzzle_emb_len, cfg.H_cycles, cfg.L_cycles, cfg.L_layers, cfg.mlp_t) == \
      ("trm", 2, 2, 2, 2, False)
  back = torch_checkpoint.to_torch_state_dict(converted.params, converted.buffers, converted.puzzle_table, cfg)
  original = torch.load(path, map_location="cpu", weights_only=True)
  assert list(back) == list(original)  # same keys, same order
  for key, tensor in original.items():
    assert torch.equal(back[key], tensor), key


@pytest.mark.parametrize("mlp_t,pos", [(True, "none"), (False, "learned")])
def test_converter_infers_t_from_mlp_t_or_learned_positions(mlp_t, pos):
  cfg = _cfg(mlp_t=mlp_t, pos_encodings=pos)
  params = trm.init_params(cfg, jax.random.key(0))
  state = torch_checkpoint.to_state_dict(params, trm.init_buffers(cfg, jax.random.key(1)),
                                         trm.init_puzzle_table(cfg), cfg, prefix="")
  assert any(".mlp_t." in k for k in state) == mlp_t and ("embed_pos.embedding_weight" in state) == (pos == "learned")
  all_config = {"arch": {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
                         "puzzle_emb_len": 2, "H_cycles": 3, "L_cycles": 2, "num_heads": 2, "expansion": 2.0,
                         "halt_max_steps": 3, "pos_encodings": pos}}
  fields, _ = trm_checkpoint.infer_model_config(state, all_config)
  assert fields["seq_len"] == cfg.seq_len and fields["mlp_t"] == mlp_t
  again = ModelConfig.from_dict({**fields, "halt_exploration_prob": 0.0, "forward_dtype": "float32"})
  params_back, _, _ = torch_checkpoint.from_state_dict(state, again)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, params_back))


def test_converter_refuses_mismatches_with_one_clear_message():
  cfg = _cfg()
  state = torch_checkpoint.to_state_dict(trm.init_params(cfg, jax.random.key(0)),
                                         trm.init_buffers(cfg, jax.random.key(1)), trm.init_puzzle_table(cfg),
                                         cfg, prefix="")
  with pytest.raises(torch_checkpoint.CheckpointConversionError, match=r"mlp_t: all_config.yaml says True"):
    trm_checkpoint.infer_model_config(state, {"arch": {"name": "x.trm@Y", "mlp_t": True}})
  broken = dict(state)
  broken.pop("L_level.layers.1.mlp.down_proj.weight")
  with pytest.raises(torch_checkpoint.CheckpointConversionError,
                     match=r"missing keys \(1\): \['L_level.layers.1.mlp.down_proj.weight'\]"):
    torch_checkpoint.from_state_dict(broken, cfg)
  assert trm_checkpoint.is_trm(state, None) and not trm_checkpoint.is_trm(
      {"H_level.layers.0.mlp.down_proj.weight": None, **state}, None)


@pytest.mark.parametrize("variant", ["", "attn", "smoke", "attn,smoke"])
def test_trm_task_configs_build_valid_trm_models(variant):
  import importlib  # pylint: disable=import-outside-toplevel
  from hrm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  for name in ("trm_sudoku", "trm_maze", "trm_arc1", "trm_arc2", "trm_demo"):
    if variant and (("attn" in variant and name != "trm_sudoku") or (name == "trm_demo" and variant != "smoke")):
      continue
    c = importlib.import_module(f"configs.{name}").get_config(variant)
    assert config_lib.problems(c) == [] and c.ema and c.model.arch == "trm"
    cfg = ModelConfig.from_dict(dict(c.model.to_dict(), vocab_size=11, seq_len=81, num_puzzle_identifiers=2))
    assert isinstance(cfg, trm.TRMConfig)
    if name == "trm_sudoku" and "smoke" not in variant:
      assert (cfg.mlp_t, cfg.pos_encodings) == ((False, "rope") if variant == "attn" else (True, "none"))
  bad = importlib.import_module("configs.trm_demo").get_config("")
  bad.ema_rate = 1.0
  assert any("ema_rate=1.0" in p for p in config_lib.problems(bad))
