"""Tests of the HRM-ACT-v1 model: initialisation, inference loop, gradients, losses, ACT semantics, config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax.convert import torch_checkpoint
from hrm_jax.model import hrm
from hrm_jax.model import layers
from hrm_jax.model import losses
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import LossConfig
from hrm_jax.training import segment as segment_lib

TINY = dict(vocab_size=6, seq_len=5, num_puzzle_identifiers=3, puzzle_emb_ndim=16, hidden_size=16, num_heads=2,
            expansion=2.0, H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, halt_max_steps=4,
            halt_exploration_prob=0.0, forward_dtype="float32")


TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def _tiny(**changes) -> ModelConfig:
  return ModelConfig(**{**TINY, **changes})


# Flax init runs op by op unless jitted, which is slow even for tiny models.
_init_params = jax.jit(hrm.init_params, static_argnums=0)


def _model(cfg: ModelConfig, seed: int = 0, q_std: float = 0.3):
  """Random params (q_head kernel random so Q varies by row), buffers and a non-zero puzzle table."""
  keys = jax.random.split(jax.random.key(seed), 4)
  # Fields that do not change the parameters are normalised so that one compiled init serves them all.
  params = _init_params(cfg.replace(halt_max_steps=4, halt_exploration_prob=0.0, forward_dtype="float32"),
                        keys[0])
  params["q_head"]["kernel"] = q_std * jax.random.normal(keys[1], params["q_head"]["kernel"].shape)
  buffers = hrm.init_buffers(cfg, keys[2])
  table = 0.5 * jax.random.normal(keys[3], (cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim))
  return params, buffers, table


def _batch(cfg: ModelConfig, batch_size: int, seed: int = 0) -> dict:
  keys = jax.random.split(jax.random.key(1000 + seed), 4)
  labels = jax.random.randint(keys[1], (batch_size, cfg.seq_len), 0, cfg.vocab_size)
  labels = jnp.where(jax.random.uniform(keys[2], labels.shape) < 0.2, losses.IGNORE_LABEL_ID, labels)
  return {"inputs": jax.random.randint(keys[0], (batch_size, cfg.seq_len), 0, cfg.vocab_size),
          "labels": labels,
          "puzzle_identifiers": jax.random.randint(keys[3], (batch_size,), 0, cfg.num_puzzle_identifiers)}


def _leaves(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


# ------------------------------------------------------------------------------------------------------
# Initialisation
# ------------------------------------------------------------------------------------------------------
def test_init_follows_the_original_rules():
  cfg = _tiny(hidden_size=256, num_heads=4, expansion=4.0, vocab_size=64, puzzle_emb_ndim=256)
  params = _init_params(cfg, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  np.testing.assert_array_equal(params["q_head"]["kernel"], np.zeros((256, 2)))
  np.testing.assert_array_equal(params["q_head"]["bias"], [-5.0, -5.0])
  table = hrm.init_puzzle_table(cfg)
  assert table.shape == (3, 256) and table.dtype == jnp.float32 and not np.any(table)

  # Truncated LeCun normal for kernels (std 1/sqrt(fan_in)), std 1/sqrt(D) for embeddings; the draw is cut at
  # ±2 of the unit normal before the std correction, so |x| <= 2·std/0.8796 (the original's trunc_normal_init_).
  for array, std in ((params["H_level"]["layers_0"]["mlp"]["gate_up_proj"]["kernel"], 1 / 16),
                     (params["L_level"]["layers_0"]["mlp"]["down_proj"]["kernel"], 1 / np.sqrt(768)),
                     (params["embed_tokens"]["embedding"], 1 / 16)):
    array = np.asarray(array)
    assert abs(array.std() / std - 1) < 0.03, (array.shape, array.std(), std)
    assert np.abs(array).max() <= 2 * std / TRUNC_STD * (1 + 1e-6)
    assert abs(array.mean()) < 0.05 * std

  for dtype in ("float32", "bfloat16"):
    buffers = hrm.init_buffers(cfg.replace(forward_dtype=dtype), jax.random.key(1))
    for name in ("H_init", "L_init"):
      assert buffers[name].dtype == jnp.dtype(dtype) and buffers[name].shape == (256,)
      assert np.abs(np.asarray(buffers[name], np.float32)).max() <= 2 / TRUNC_STD * (1 + 1e-2)
      assert 0.8 < np.asarray(buffers[name], np.float32).std() < 1.2
    assert not np.array_equal(buffers["H_init"], buffers["L_init"])


def test_trunc_normal_has_the_requested_std_and_cut():
  x = np.asarray(layers.trunc_normal_init(0.5)(jax.random.key(0), (400_000,)))
  assert abs(x.std() - 0.5) < 0.003
  # The original's check: requested 0.5 -> max |x| = 2·0.5/0.8796 = 1.1368.
  assert 1.13 < np.abs(x).max() <= 2 * 0.5 / TRUNC_STD * (1 + 1e-6)
  assert not np.any(layers.trunc_normal_init(0.0)(jax.random.key(0), (10,)))


@pytest.mark.parametrize("hidden, expansion, width", [
    (512, 4.0, 1536),  # the original's default: round(1365.33) = 1365 -> 1536
    (64, 4.0, 256),
    (384, 4.0, 1024),
    (96, 2.5, 256),
    (171, 2.25, 256),  # 2.25·171·2/3 = 256.5 rounds half-to-even to 256; half-up would give 512
    (200, 3.0, 512),
])
def test_swiglu_width_rounding(hidden, expansion, width):
  cfg = _tiny(hidden_size=hidden, num_heads=1, expansion=expansion, pos_encodings="learned")
  assert cfg.mlp_width == width


def test_param_shapes_match_the_originals_state_dict():
  for cfg in (_tiny(hidden_size=64, num_heads=4, expansion=4.0, puzzle_emb_ndim=160, H_layers=2),
              _tiny(pos_encodings="learned", puzzle_emb_ndim=0, expansion=2.5, L_layers=3)):
    params = jax.eval_shape(functools.partial(hrm.init_params, cfg), jax.random.key(0))
    table = hrm.init_puzzle_table(cfg) if cfg.puzzle_emb_ndim else None
    params_zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params)
    state = torch_checkpoint.to_state_dict(params_zeros, hrm.init_buffers(cfg, jax.random.key(1)), table, cfg,
                                           prefix="")
    assert {k: v.shape for k, v in state.items()} == torch_checkpoint.expected_shapes(cfg)
    gate_up = params["L_level"]["layers_0"]["mlp"]["gate_up_proj"]["kernel"]
    assert gate_up.shape == (cfg.hidden_size, 2 * cfg.mlp_width)
    assert params["H_level"]["layers_0"]["self_attn"]["qkv_proj"]["kernel"].shape == (
        cfg.hidden_size, 3 * cfg.hidden_size)
  assert "embed_pos" not in jax.eval_shape(functools.partial(hrm.init_params, _tiny()), jax.random.key(0))
  learned = _tiny(pos_encodings="learned", puzzle_emb_ndim=40)  # 40 > D=16: 3 zero-padded prefix slots
  assert learned.puzzle_emb_len == 3
  assert jax.eval_shape(functools.partial(hrm.init_params, learned), jax.random.key(0))[
      "embed_pos"]["embedding"].shape == (8, 16)


# ------------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("cfg", "halt_max_steps"))
def _eval_call(params, buffers, table, carry, batch, cfg, halt_max_steps=None):
  carry = hrm.reset_carry(carry, batch, buffers)
  rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
  return hrm.act_step(params, cfg, carry, rows, training=False, halt_max_steps=halt_max_steps)


def _python_eval_loop(params, buffers, table, cfg, batch, num_segments, halt_max_steps=None):
  """Outputs after each of `num_segments` evaluation calls, as the original's evaluate loop makes them."""
  carry = hrm.initial_carry(cfg, batch["inputs"].shape[0])
  per_segment = []
  for _ in range(num_segments):
    carry, outputs = _eval_call(params, buffers, table, carry, batch, cfg, halt_max_steps)
    per_segment.append((carry, jax.tree.map(np.asarray, outputs)))
  return per_segment


_infer = jax.jit(hrm.infer, static_argnames=("cfg", "halt_on_q", "halt_max_steps"))


def _assert_outputs_close(got, want):
  for key in ("logits", "q_halt_logits", "q_continue_logits"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_infer_equals_a_python_loop_of_act_steps():
  cfg = _tiny()
  params, buffers, table = _model(cfg)
  batch = _batch(cfg, 4)
  loop = _python_eval_loop(params, buffers, table, cfg, batch, cfg.halt_max_steps)
  assert [bool(jnp.any(c.halted)) for c, _ in loop] == [False, False, False, True]
  assert np.all(loop[-1][0].halted)
  result = _infer(params, buffers, cfg=cfg, puzzle_table=table, batch=batch)
  assert int(result["num_segments"]) == cfg.halt_max_steps
  np.testing.assert_array_equal(result["steps"], [cfg.halt_max_steps] * 4)
  _assert_outputs_close(result, loop[-1][1])
  # The segments really iterate: the first segment's logits are different.
  assert np.abs(loop[0][1]["logits"] - loop[-1][1]["logits"]).max() > 1e-3


def test_larger_halt_max_steps_at_inference_runs_more_segments():
  cfg = _tiny()
  params, buffers, table = _model(cfg)
  batch = _batch(cfg, 4)
  loop = _python_eval_loop(params, buffers, table, cfg, batch, 6, halt_max_steps=6)
  result = _infer(params, buffers, cfg=cfg, puzzle_table=table, batch=batch, halt_max_steps=6)
  assert int(result["num_segments"]) == 6
  np.testing.assert_array_equal(result["steps"], [6] * 4)
  _assert_outputs_close(result, loop[-1][1])
  default = _infer(params, buffers, cfg=cfg, puzzle_table=table, batch=batch)
  assert np.abs(default["logits"] - result["logits"]).max() > 1e-3


def test_infer_halt_on_q_stops_when_every_row_prefers_halting():
  cfg = _tiny()
  params, buffers, table = _model(cfg)
  params["q_head"] = {"kernel": jnp.zeros((16, 2)), "bias": jnp.array([1.0, -1.0])}  # q_halt > q_continue
  batch = _batch(cfg, 4)
  result = _infer(params, buffers, cfg=cfg, puzzle_table=table, batch=batch, halt_on_q=True)
  assert int(result["num_segments"]) == 1
  np.testing.assert_array_equal(result["steps"], [1, 1, 1, 1])
  first = _python_eval_loop(params, buffers, table, cfg, batch, 1)[0][1]
  _assert_outputs_close(result, first)
  # Without halt_on_q the same model runs every segment.
  assert int(_infer(params, buffers, cfg=cfg, puzzle_table=table, batch=batch)["num_segments"]) == 4


def test_infer_halt_on_q_stops_each_row_at_its_first_q_halt():
  cfg = _tiny()
  params, buffers, table = _model(cfg, seed=9)
  batch = _batch(cfg, 6, seed=9)
  loop = _python_eval_loop(params, buffers, table, cfg, batch, cfg.halt_max_steps)
  wants_halt = np.stack([out["q_halt_logits"] > out["q_continue_logits"] for _, out in loop])  # [steps, B]
  expected_steps = np.where(wants_halt.any(0), wants_halt.argmax(0) + 1, cfg.halt_max_steps)
  # The case is informative: rows halt at different segments and the loop ends before halt_max_steps.
  assert len(set(expected_steps.tolist())) >= 3 and expected_steps.max() < cfg.halt_max_steps, expected_steps

  result = _infer(params, buffers, cfg=cfg, puzzle_table=table, batch=batch, halt_on_q=True)
  assert int(result["num_segments"]) == expected_steps.max()
  np.testing.assert_array_equal(result["steps"], expected_steps)
  for row, step in enumerate(expected_steps):  # each row keeps the outputs of its halting segment
    _assert_outputs_close({k: v[row] for k, v in result.items() if k in loop[0][1]},
                          {k: v[row] for k, v in loop[step - 1][1].items()})


# ------------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------------
_value_and_grad = jax.jit(segment_lib.segment_value_and_grad,
                          static_argnames=("cfg", "loss_cfg", "global_batch_size"))


def _train_grads(cfg, params, buffers, table, batch, loss_cfg=LossConfig()):
  carry = hrm.reset_carry(hrm.initial_carry(cfg, batch["inputs"].shape[0]), batch, buffers)
  rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
  (loss, (_, outputs, _, _)), grads = _value_and_grad(
      params, rows, cfg=cfg, loss_cfg=loss_cfg, carry=carry, rng=jax.random.key(0),
      global_batch_size=batch["inputs"].shape[0])
  return loss, outputs, grads


def _aimed_lm_head(cfg, params, buffers, table, batch):
  """lm_head kernel giving logits ~1 (columns 0-2, each aimed at one position), ~±1e-8 (column 3), 0 (rest)."""
  carry = hrm.reset_carry(hrm.initial_carry(cfg, batch["inputs"].shape[0]), batch, buffers)
  rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
  (z_H, _), _, _, _ = jax.jit(hrm.segment, static_argnums=1)(params, cfg, carry.z_H, carry.z_L,
                                                             batch["inputs"], rows)
  z_H = np.asarray(z_H, np.float64)[:, cfg.puzzle_emb_len:]
  kernel = np.zeros((cfg.hidden_size, cfg.vocab_size))
  for column, (b, s) in enumerate([(0, 0), (1, 2), (2, 4)]):
    kernel[:, column] = z_H[b, s] / np.dot(z_H[b, s], z_H[b, s])
  kernel[:, 3] = 1e-8 * np.random.default_rng(0).standard_normal(cfg.hidden_size)
  return {**params, "lm_head": {"kernel": jnp.asarray(kernel, jnp.float32)}}


@pytest.mark.parametrize("forward_dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_training_gradients_are_finite_at_the_stablemax_branch_point(forward_dtype):
  cfg = _tiny(forward_dtype=forward_dtype)
  params, buffers, table = _model(cfg)
  batch = _batch(cfg, 3)
  # Random weights first, then logits forced to ~1, ~±1e-8 and exactly 0.
  loss, _, grads = _train_grads(cfg, params, buffers, table, batch)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(_leaves(grads)))
  aimed = _aimed_lm_head(cfg, params, buffers, table, batch)
  loss, outputs, grads = _train_grads(cfg, aimed, buffers, table, batch)
  logits = np.asarray(outputs["logits"], np.float32)
  near_one = logits[[0, 1, 2], [0, 2, 4], [0, 1, 2]]
  assert np.all(np.abs(near_one - 1) < (1e-5 if forward_dtype == "float32" else 1e-2)), near_one
  if forward_dtype == "bfloat16":
    assert np.any(near_one == 1.0)  # exactly on the branch point of the unused 1/(1-x) branch
  assert np.all(logits[..., 4:] == 0) and 0 < np.abs(logits[..., 3]).max() < 1e-6
  assert np.isfinite(float(loss))
  param_grads, row_grads = grads
  assert np.all(np.isfinite(_leaves(param_grads))) and np.all(np.isfinite(np.asarray(row_grads)))
  assert np.abs(_leaves(param_grads)).max() > 0


def test_stablemax_s_gradient_at_the_branch_point():
  grad = jax.vmap(jax.grad(losses.stablemax_s))
  x = jnp.array([0.0, 1e-8, -1e-8, 1.0, -1.0, 3.0], jnp.float32)
  np.testing.assert_allclose(grad(x), [1.0, 1.0, 1.0, 1.0, 0.25, 1.0], rtol=1e-6)
  np.testing.assert_allclose(losses.stablemax_s(x), [1.0, 1.0, 1.0, 2.0, 0.5, 4.0], rtol=1e-6)
  g = jax.grad(lambda v: losses.log_stablemax(v)[1])(jnp.array([1.0, 0.0, -1e-8, 1e-8]))
  assert np.all(np.isfinite(g))
  # The naive two-branch `where` is what this guards against: its gradient at x = 1 is NaN in float32.
  naive = jax.grad(lambda v: jnp.where(v < 0, 1 / (1 - v + 1e-30), v + 1))(jnp.float32(1.0))
  assert np.isnan(naive)


def _np_log_stablemax(x):
  x = np.asarray(x, np.float64)
  s = np.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
  return np.log(s / s.sum(-1, keepdims=True))


def test_stablemax_matches_a_float64_reference():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, 7, 9)).astype(np.float32) * 4
  logits[0, 0] = [0, 1, -1, 1e-8, -1e-8, 50, -50, 0.5, -0.5]
  labels = rng.integers(0, 9, (3, 7))
  labels[1, 3] = losses.IGNORE_LABEL_ID
  np.testing.assert_allclose(losses.log_stablemax(jnp.asarray(logits)), _np_log_stablemax(logits), rtol=2e-6,
                             atol=2e-6)
  want = -np.take_along_axis(_np_log_stablemax(logits), np.where(labels < 0, 0, labels)[..., None], -1)[..., 0]
  want[1, 3] = 0
  got = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
  with jax.enable_x64(True):  # the original computes in float64; so does hrm_jax under jax_enable_x64
    got64 = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(got64, want, rtol=1e-12, atol=1e-12)


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("loss_type, log_probs", [("softmax_cross_entropy", _np_log_softmax),
                                                  ("stablemax_cross_entropy", _np_log_stablemax)])
def test_label_smoothing_class_weights_and_focal_loss(loss_type, log_probs):
  rng = np.random.default_rng(1)
  vocab = 5
  logits = rng.standard_normal((2, 8, vocab)).astype(np.float32) * 2
  labels = np.where(rng.random((2, 8)) < 0.8, 1, rng.integers(0, vocab, (2, 8)))  # class 1 dominates
  labels[0, 0] = losses.IGNORE_LABEL_ID
  logp = log_probs(logits)
  safe = np.where(labels < 0, 0, labels)
  logp_label = np.take_along_axis(logp, safe[..., None], -1)[..., 0]
  valid = labels != losses.IGNORE_LABEL_ID
  ce = functools.partial(losses.token_cross_entropy, jnp.asarray(logits), jnp.asarray(labels), loss_type=loss_type)
  plain = np.asarray(ce())
  np.testing.assert_allclose(plain, np.where(valid, -logp_label, 0), rtol=1e-5, atol=1e-6)

  # Label smoothing alpha: targets (1 - alpha)·one_hot + alpha / V.
  alpha = 0.2
  targets = (1 - alpha) * np.eye(vocab)[safe] + alpha / vocab
  np.testing.assert_allclose(ce(label_smoothing=alpha), np.where(valid, -(targets * logp).sum(-1), 0),
                             rtol=1e-5, atol=1e-6)

  # Class weights scale each token's loss by its label's weight; the dominant class is downweighted.
  weights = np.array([1.0, 0.1, 1.0, 2.0, 1.0], np.float32)
  weighted = np.asarray(ce(class_weights_V=jnp.asarray(weights)))
  np.testing.assert_allclose(weighted, plain * weights[safe] * valid, rtol=1e-6, atol=1e-7)
  share = lambda loss: loss[labels == 1].sum() / loss.sum()
  assert share(weighted) < share(plain) - 0.2

  # Focal loss: CE·(1 - p_label)^gamma.
  focal = np.asarray(ce(focal_gamma=2.0))
  np.testing.assert_allclose(focal, np.where(valid, -logp_label * (1 - np.exp(logp_label)) ** 2, 0),
                             rtol=1e-5, atol=1e-6)
  easy = valid & (np.exp(logp_label) > 0.5)
  hard = valid & (np.exp(logp_label) < 0.2)
  assert easy.any() and hard.any()
  assert (focal[easy] / plain[easy]).max() < (focal[hard] / plain[hard]).min()

  # The same options flow through act_loss (LossConfig.kwargs) into lm_loss.
  outputs = {"logits": jnp.asarray(logits), "q_halt_logits": jnp.zeros(2)}
  cfg = LossConfig(loss_type=loss_type, class_weights=tuple(weights.tolist()))
  _, metrics = losses.act_loss(outputs, jnp.asarray(labels), jnp.ones(2, bool), jnp.ones(2, jnp.int32),
                               **cfg.kwargs())
  np.testing.assert_allclose(metrics["lm_loss"], (weighted / np.maximum(valid.sum(-1), 1)[:, None]).sum(),
                             rtol=1e-5)


def test_per_class_counts():
  labels = jnp.array([[0, 1, 2, -100], [1, 1, 0, 2]])
  predictions = jnp.array([[0, 2, 2, 1], [1, 0, 0, 2]])
  logits = jax.nn.one_hot(predictions, 3)
  correct, total = losses.per_class_counts(logits, labels, jnp.array([True, True]), 3)
  np.testing.assert_array_equal(total, [2, 3, 2])
  np.testing.assert_array_equal(correct, [2, 1, 2])
  correct, total = losses.per_class_counts(logits, labels, jnp.array([True, False]), 3)
  np.testing.assert_array_equal(total, [1, 1, 1])
  np.testing.assert_array_equal(correct, [1, 0, 1])


# ------------------------------------------------------------------------------------------------------
# The 1-step gradient
# ------------------------------------------------------------------------------------------------------
class _OneStepSetup:
  """A 2x2-cycle segment from H_init/L_init, and the states its no-gradient cycles reach (computed here).

  theta = (params, puzzle_rows): both are differentiated, as in training.
  """

  def __init__(self):
    self.cfg = _tiny(H_cycles=2, L_cycles=2)
    self.cfg_1x1 = self.cfg.replace(H_cycles=1, L_cycles=1)
    params, buffers, table = _model(self.cfg)
    self.theta = (params, table[jnp.array([0, 2, 2])])  # duplicate puzzle ids, as batches have them
    self.inputs = _batch(self.cfg, 3)["inputs"]
    shape = (3, self.cfg.total_len, self.cfg.hidden_size)
    self.z_H0 = jnp.broadcast_to(buffers["H_init"], shape)
    self.z_L0 = jnp.broadcast_to(buffers["L_init"], shape)
    keys = jax.random.split(jax.random.key(5), 2)
    self.weights_logits = jax.random.normal(keys[0], (3, self.cfg.seq_len, self.cfg.vocab_size))
    self.weights_q = jax.random.normal(keys[1], (2, 3))
    self.grads = jax.jit(jax.grad(self.full_2x2))(self.theta)
    self.frozen = jax.jit(self.no_grad_states)(self.theta)
    self.last_jit = jax.jit(self.last_update_only)
    self.grad_last_jit = jax.jit(jax.grad(self.last_update_only))

  def objective(self, out):
    _, logits, q_halt, q_continue = out
    return (jnp.sum(logits * self.weights_logits) + jnp.sum(q_halt * self.weights_q[0])
            + jnp.sum(q_continue * self.weights_q[1]))

  def no_grad_states(self, theta):
    """The 2x2 schedule's first L, L, H, L updates (the original's no_grad part), written out by hand."""
    params, rows = theta
    module = hrm.HRMInner(self.cfg)
    run = lambda method, *args: module.apply({"params": params}, *args, method=method)
    with jax.default_matmul_precision("highest"):
      x = run(hrm.HRMInner.embed, self.inputs, rows)
      z_H, z_L = self.z_H0, self.z_L0
      z_L = run(hrm.HRMInner.L_update, z_L, z_H + x)
      z_L = run(hrm.HRMInner.L_update, z_L, z_H + x)
      z_H = run(hrm.HRMInner.H_update, z_H, z_L)
      z_L = run(hrm.HRMInner.L_update, z_L, z_H + x)
    return z_H, z_L

  def full_2x2(self, theta):
    params, rows = theta
    return self.objective(hrm.segment(params, self.cfg, self.z_H0, self.z_L0, self.inputs, rows))

  def last_update_only(self, theta, states):
    """One L and one H update (H_cycles = L_cycles = 1) from the given states."""
    params, rows = theta
    return self.objective(hrm.segment(params, self.cfg_1x1, *states, self.inputs, rows))


@pytest.fixture(scope="module")
def one_step():
  return _OneStepSetup()


def test_one_step_gradient_flows_only_through_the_last_updates(one_step):
  s = one_step
  grads_last = s.grad_last_jit(s.theta, s.frozen)
  # The same value, and the gradient of only the last L and H update from the frozen no-grad states.
  np.testing.assert_allclose(jax.jit(s.full_2x2)(s.theta), s.last_jit(s.theta, s.frozen), rtol=1e-5)
  a, b = _leaves(s.grads), _leaves(grads_last)
  assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
  assert np.abs(np.asarray(s.grads[1])).max() > 0  # the puzzle rows get gradient (via the last L injection)
  # H_cycles=L_cycles=1 from the same start (no no-grad cycles) gives a different gradient.
  grads_1x1 = _leaves(s.grad_last_jit(s.theta, (s.z_H0, s.z_L0)))
  assert np.abs(a - grads_1x1).max() > 0.1 * np.abs(a).max()


def test_one_step_gradient_matches_finite_differences_of_the_last_update(one_step):
  s = one_step
  keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(s.theta))))
  direction = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape), s.theta)
  norm = np.sqrt(np.sum(_leaves(direction) ** 2))
  direction = jax.tree.map(lambda x: x / norm, direction)
  directional = float(np.dot(_leaves(s.grads), _leaves(direction)))
  eps = 0.05
  shifted = lambda sign: jax.tree.map(lambda p, d: p + sign * eps * d, s.theta, direction)

  fd_last = (float(s.last_jit(shifted(1), s.frozen)) - float(s.last_jit(shifted(-1), s.frozen))) / (2 * eps)
  assert abs(fd_last - directional) <= 2e-3 * abs(directional), (fd_last, directional)
  # Differentiating through every cycle (what the model must NOT do) gives a clearly different number.
  through_all = jax.jit(lambda theta: s.last_update_only(theta, s.no_grad_states(theta)))
  fd_all = (float(through_all(shifted(1))) - float(through_all(shifted(-1)))) / (2 * eps)
  assert abs(fd_all - directional) > 0.2 * abs(directional), (fd_all, directional)


# ------------------------------------------------------------------------------------------------------
# ACT semantics
# ------------------------------------------------------------------------------------------------------
def test_reset_carry_resets_halted_rows_and_keeps_the_others():
  cfg = _tiny()
  _, buffers, _ = _model(cfg)
  old, new = _batch(cfg, 4, seed=1), _batch(cfg, 4, seed=2)
  shape = (4, cfg.total_len, cfg.hidden_size)
  carry = hrm.Carry(z_H=jnp.full(shape, 7.0), z_L=jnp.full(shape, -7.0), steps=jnp.array([3, 1, 2, 4]),
                    halted=jnp.array([True, False, True, False]), current_data=old)
  reset = hrm.reset_carry(carry, new, buffers)
  for row, halted in enumerate([True, False, True, False]):
    source = new if halted else old
    for key in hrm.DATA_KEYS:
      np.testing.assert_array_equal(reset.current_data[key][row], source[key][row])
    np.testing.assert_array_equal(reset.z_H[row], np.broadcast_to(buffers["H_init"], shape[1:]) if halted
                                  else np.full(shape[1:], 7.0))
    np.testing.assert_array_equal(reset.z_L[row], np.broadcast_to(buffers["L_init"], shape[1:]) if halted
                                  else np.full(shape[1:], -7.0))
  np.testing.assert_array_equal(reset.steps, [0, 1, 0, 4])


def test_training_act_steps_replace_only_halted_rows():
  cfg = _tiny(halt_max_steps=2)
  params, buffers, table = _model(cfg)
  first, second = _batch(cfg, 4, seed=1), _batch(cfg, 4, seed=2)

  @jax.jit
  def train_call(carry, batch):
    carry = hrm.reset_carry(carry, batch, buffers)
    rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
    return hrm.act_step(params, cfg, carry, rows, training=True)

  carry, outputs = train_call(hrm.initial_carry(cfg, 4), first)
  np.testing.assert_array_equal(carry.halted, outputs["q_halt_logits"] > outputs["q_continue_logits"])
  halted = np.asarray(carry.halted)
  assert halted.any() and not halted.all(), halted  # seed chosen for a mixed pattern
  np.testing.assert_array_equal(carry.steps, [1] * 4)
  carry, _ = train_call(carry, second)
  for key in hrm.DATA_KEYS:
    want = np.where(halted.reshape((4,) + (1,) * (first[key].ndim - 1)), second[key], first[key])
    np.testing.assert_array_equal(carry.current_data[key], want)
  np.testing.assert_array_equal(carry.steps, np.where(halted, 1, 2))
  assert np.all(np.asarray(carry.halted)[~halted])  # step 2 = halt_max_steps


def test_exploration_with_probability_one_forces_at_least_two_segments():
  cfg = _tiny(halt_max_steps=4, halt_exploration_prob=1.0)
  params, buffers, table = _model(cfg)
  params["q_head"] = {"kernel": jnp.zeros((16, 2)), "bias": jnp.array([5.0, -5.0])}  # Q always says halt
  batch = _batch(cfg, 64)

  @jax.jit
  def train_call(carry, rng):
    rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
    return hrm.act_step(params, cfg, carry, rows, training=True, rng=rng)

  carry = hrm.reset_carry(hrm.initial_carry(cfg, 64), batch, buffers)
  halted_per_step = []
  for step in range(4):
    carry, outputs = train_call(carry, jax.random.key(step))
    halted_per_step.append(np.asarray(carry.halted))
    assert np.all(outputs["q_halt_logits"] > outputs["q_continue_logits"])  # without exploration: halt now
  assert not halted_per_step[0].any()  # min_halt_steps is drawn from [2, halt_max_steps]
  assert 0 < halted_per_step[1].sum() < 64  # ... so at step 2 only the rows that drew 2 halt
  assert halted_per_step[3].all()


# ------------------------------------------------------------------------------------------------------
# Config validation
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, field", [
    ({"pos_encodings": "alibi"}, "pos_encodings='alibi'"),
    ({"forward_dtype": "float16"}, "forward_dtype='float16'"),
    ({"hidden_size": 30, "num_heads": 4}, "hidden_size=30 is not divisible by num_heads=4"),
    ({"attention_impl": "flash"}, "attention_impl='flash'"),
    ({"H_cycles": 0}, "H_cycles=0"),
    ({"halt_exploration_prob": 1.5}, "halt_exploration_prob=1.5"),
])
def test_invalid_config_names_the_field(changes, field):
  with pytest.raises(ValueError, match="Invalid model config") as error:
    _tiny(**changes)
  assert field in str(error.value)


def test_unknown_config_key_is_rejected():
  with pytest.raises(ValueError, match=r"Unknown model config keys \['hiden_size'\]"):
    ModelConfig.from_dict({**TINY, "hiden_size": 8})


# ------------------------------------------------------------------------------------------------------
# forward_dtype float64 (the original's float64 path)
# ------------------------------------------------------------------------------------------------------
def test_float64_without_x64_is_refused_with_the_fix():
  cfg = _tiny(forward_dtype="float64")
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="jax_enable_x64"):
      hrm.init_params(cfg, jax.random.key(0))


def test_float64_computes_in_float64_except_where_the_original_uses_float32():
  cfg = _tiny(forward_dtype="float64")
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, 3, 8)) for _ in range(3))
    got = np.asarray(layers.attention_xla(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)))
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), v)
    assert got.dtype == np.float64 and np.max(np.abs(got - want)) < 1e-13  # no float32 step in attention

    params, buffers, table = _model(cfg)
    batch = _batch(cfg, 3)
    rows = hrm.gather_puzzle_rows(cfg, table, batch["puzzle_identifiers"])
    carry = hrm.reset_carry(hrm.initial_carry(cfg, 3), batch, buffers)
    (z_H, z_L), logits, q_halt, _ = hrm.segment(params, cfg, carry.z_H, carry.z_L, batch["inputs"], rows)
    assert z_H.dtype == z_L.dtype == logits.dtype == jnp.float64 and q_halt.dtype == jnp.float32
    # rms_norm runs in float32 in the original, so the carry holds float32 values; the logits do not.
    z = np.asarray(z_H)
    np.testing.assert_array_equal(z.astype(np.float32).astype(np.float64), z)
    logits = np.asarray(logits)
    assert np.any(logits.astype(np.float32).astype(np.float64) != logits)
