"""Blockwise attention equals the one-shot parity path, keeps memory linear in T; impl choice and refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax.model import layers
from hrm_jax.model.config import BLOCKWISE_MIN_LEN, ModelConfig

# Measured on this CPU (float32 vs a float64 reference, 6 shapes x seeds): the blockwise path's error is at
# most ~3x the one-shot path's own, and both sit on the reference, so their distance is at most ~4x the
# one-shot path's measured error. The tolerance is that measured spread times 4.
SPREAD_FACTOR = 4.0


def _inputs(shape, seed, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v, w = (np.asarray(jax.random.normal(key, shape, jnp.float32) * 2) for key in keys)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), w


def _out_and_grads(fn, q, k, v, w):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(w.dtype) * w)
  both = jax.jit(lambda q, k, v: (fn(q, k, v),) + jax.grad(loss, argnums=(0, 1, 2))(q, k, v))
  return [np.asarray(x, np.float64) for x in both(q, k, v)]


def _reference64(q, k, v, w):
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(x, np.float32), jnp.float64) for x in (q, k, v, w)]
    return _out_and_grads(layers.attention_xla, *args)


def _max_abs(a, b):
  return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("length, block", [(82, 32), (257, 64)])
def test_blockwise_equals_xla_in_float32(length, block):
  q, k, v, w = _inputs((1, length, 2, 16), seed=length)
  reference = _reference64(q, k, v, w)
  one_shot = _out_and_grads(layers.attention_xla, q, k, v, w)
  blockwise = _out_and_grads(lambda *a: layers.attention_blockwise(*a, block=block), q, k, v, w)
  for name, ref, xla, blk in zip(("out", "dq", "dk", "dv"), reference, one_shot, blockwise):
    spread = _max_abs(xla, ref)  # the parity path's own float32 rounding error
    assert 0 < spread < 1e-4, name
    assert _max_abs(blk, xla) <= SPREAD_FACTOR * spread, name


def test_blockwise_equals_xla_in_bfloat16():
  q, k, v, w = _inputs((1, 300, 2, 16), seed=3, dtype=jnp.bfloat16)
  reference = _reference64(q, k, v, w)
  one_shot = _out_and_grads(layers.attention_xla, q, k, v, w)
  blockwise = _out_and_grads(layers.attention_blockwise, q, k, v, w)
  for name, ref, xla, blk in zip(("out", "dq", "dk", "dv"), reference, one_shot, blockwise):
    spread = _max_abs(xla, ref)
    assert _max_abs(blk, xla) <= SPREAD_FACTOR * spread, name
    assert _max_abs(blk, ref) <= SPREAD_FACTOR * spread, name


def _grad_temp_bytes(fn, length):
  x = jax.ShapeDtypeStruct((2, length, 4, 32), jnp.float32)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
  return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_gradient_memory_grows_linearly():
  blockwise = _grad_temp_bytes(layers.attention_blockwise, 1024) / _grad_temp_bytes(layers.attention_blockwise, 512)
  one_shot = _grad_temp_bytes(layers.attention_xla, 1024) / _grad_temp_bytes(layers.attention_xla, 512)
  assert blockwise <= 2.3  # linear: 2x (plus block padding)
  assert one_shot >= 3.5  # the [B, N, T, T] scores of the parity path: 4x


def _cfg(**changes):
  return ModelConfig(**dict(dict(vocab_size=11, seq_len=81, hidden_size=64, num_heads=4), **changes))


def test_auto_picks_per_platform_dtype_and_length():
  bf16, f32 = _cfg(attention_impl="auto"), _cfg(attention_impl="auto", forward_dtype="float32")
  assert bf16.resolved_attention_impl("gpu", 82) == "cudnn"
  assert f32.resolved_attention_impl("gpu", 82) == "xla"
  assert f32.resolved_attention_impl("gpu", 901) == "blockwise"
  assert bf16.resolved_attention_impl("cpu", BLOCKWISE_MIN_LEN - 1) == "xla"
  assert bf16.resolved_attention_impl("cpu", 901) == "blockwise"
  assert _cfg(attention_impl="xla").resolved_attention_impl("gpu", 901) == "xla"


def test_cudnn_refused_with_float32_and_off_gpu():
  with pytest.raises(ValueError, match="attention_impl='cudnn' needs forward_dtype='bfloat16'"):
    _cfg(attention_impl="cudnn", forward_dtype="float32")
  with pytest.raises(ValueError, match="attention_impl='cudnn' needs a CUDA GPU, but JAX runs on cpu"):
    _cfg(attention_impl="cudnn").check_platform("cpu")
  _cfg(attention_impl="cudnn").check_platform("gpu")


def test_model_output_same_with_blockwise_and_xla():
  from hrm_jax.model import hrm  # pylint: disable=import-outside-toplevel
  cfg = _cfg(seq_len=40, hidden_size=32, forward_dtype="float32", H_layers=1, L_layers=1)
  params = hrm.init_params(cfg, jax.random.key(0))
  z_BxTxD = jax.random.normal(jax.random.key(1), (2, cfg.total_len, cfg.hidden_size))
  run = lambda c: jax.jit(lambda z: hrm.HRMInner(c).apply({"params": params}, z, z,
                                                          method=hrm.HRMInner.H_update))(z_BxTxD)
  xla, blockwise = run(cfg), run(cfg.replace(attention_impl="blockwise"))
  nudged = run(cfg.replace(attention_impl="jax"))  # an equally valid float32 order of the same sums
  spread = _max_abs(np.asarray(xla, np.float64), np.asarray(nudged, np.float64))
  assert spread > 0
  assert _max_abs(np.asarray(blockwise, np.float64), np.asarray(xla, np.float64)) <= SPREAD_FACTOR * spread
