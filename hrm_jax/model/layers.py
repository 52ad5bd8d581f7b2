"""Building blocks of HRM: casted dense/embedding layers, RMSNorm, RoPE, attention, SwiGLU, post-norm block.

Parameters are float32 masters; every layer casts its weights to the dtype of its input at the point of use,
as the original's `CastedLinear`/`CastedEmbedding` do. Kernels use the Flax `[in, out]` layout.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.model.config import ModelConfig, swiglu_width

# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it makes the truncated draw have the
# requested std, as the original's `trunc_normal_init_` does.
_TRUNC_NORMAL_STD = 0.87962566103423978

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def trunc_normal_init(std: float) -> Initializer:
  """Normal truncated at ±2 std whose actual std equals `std` (zeros when std == 0)."""

  def init(key, shape, dtype=jnp.float32):
    if std == 0:
      return jnp.zeros(shape, dtype)
    draw = jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)
    return (draw * (std / _TRUNC_NORMAL_STD)).astype(dtype)

  return init


def lecun_trunc_normal_init(key, shape, dtype=jnp.float32):
  """Truncated LeCun normal for an `[in, out]` kernel: std = 1/sqrt(fan_in)."""
  return trunc_normal_init(1.0 / np.sqrt(shape[0]))(key, shape, dtype)


def _accum_dtype(dtype) -> jnp.dtype:
  """float32 for bfloat16/float32 inputs, float64 for float64 (the original's float64 path has no float32 step)."""
  return jnp.promote_types(dtype, jnp.float32)


def _precision(dtype) -> jax.lax.Precision | None:
  # float32 models must not silently run matmuls in TF32 on GPUs (PyTorch does not).
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class CastedDense(nn.Module):
  """y = x @ W (+ b), with W (and b) cast to x.dtype."""

  features: int
  use_bias: bool = False
  kernel_init: Initializer = lecun_trunc_normal_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    y = jnp.dot(x, kernel.astype(x.dtype), precision=_precision(x.dtype))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(x.dtype)
    return y


class CastedEmbed(nn.Module):
  """Embedding lookup with the float32 table cast to `dtype`."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype
  init_std: float

  def setup(self):
    self.embedding = self.param(
        "embedding", trunc_normal_init(self.init_std), (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, ids.astype(jnp.int32), axis=0).astype(self.dtype)


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
  """Parameter-free RMSNorm computed in float32, returned in the input dtype."""
  x32 = x.astype(jnp.float32)
  variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  return (x32 * jax.lax.rsqrt(variance + eps)).astype(x.dtype)


def rope_tables(head_dim: int, num_positions: int, base: float) -> tuple[np.ndarray, np.ndarray]:
  """cos/sin tables `[T, hd]` in float32 (split-halves convention; the puzzle prefix counts as positions)."""
  inv_freq = (1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))
  inv_freq = inv_freq.astype(np.float32)
  freqs_TxHalf = np.outer(np.arange(num_positions, dtype=np.float32), inv_freq).astype(np.float32)
  emb_TxHd = np.concatenate([freqs_TxHalf, freqs_TxHalf], axis=-1)
  return np.cos(emb_TxHd).astype(np.float32), np.sin(emb_TxHd).astype(np.float32)


def apply_rope(x_BxTxNxH: jax.Array, cos_TxH: jax.Array, sin_TxH: jax.Array) -> jax.Array:
  """Rotate-half RoPE in float32, cast back to the input dtype."""
  x32 = x_BxTxNxH.astype(jnp.float32)
  half = x32.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  cos = cos_TxH[None, :, None, :]
  sin = sin_TxH[None, :, None, :]
  return (x32 * cos + rotated * sin).astype(x_BxTxNxH.dtype)


def attention_xla(q_BxTxNxH: jax.Array, k_BxSxNxH: jax.Array, v_BxSxNxH: jax.Array) -> jax.Array:
  """Unmasked softmax attention with flash-attention's rounding: scores and the softmax sum in float32,
  the unnormalised exponentials cast to the value dtype for the PV product, the division in float32.

  In bfloat16 this reproduces the original (flash-attn on GPU, PyTorch's fused CPU kernel) more closely
  than normalising before the cast, as `jax.nn.dot_product_attention` does.
  """
  scale = 1.0 / float(np.sqrt(q_BxTxNxH.shape[-1]))
  precision = _precision(q_BxTxNxH.dtype)
  accum = _accum_dtype(q_BxTxNxH.dtype)
  scores_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxSxNxH, precision=precision,
                              preferred_element_type=accum) * scale
  scores_BxNxTxS = scores_BxNxTxS - jax.lax.stop_gradient(jnp.max(scores_BxNxTxS, axis=-1, keepdims=True))
  exp_BxNxTxS = jnp.exp(scores_BxNxTxS)
  denom_BxNxT = jnp.sum(exp_BxNxTxS, axis=-1)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", exp_BxNxTxS.astype(v_BxSxNxH.dtype), v_BxSxNxH,
                           precision=precision, preferred_element_type=accum)
  out_BxTxNxH = out_BxTxNxH / jnp.transpose(denom_BxNxT, (0, 2, 1))[..., None]
  return out_BxTxNxH.astype(v_BxSxNxH.dtype)


# Keys per block of the blockwise attention: scores are [B, N, T, block] instead of [B, N, T, T].
ATTENTION_BLOCK = 128


def _key_blocks(k_BxSxNxH: jax.Array, v_BxSxNxH: jax.Array, block: int):
  """Keys and values zero-padded to whole blocks, `[nb, B, block, N, H]`, with the real-key mask `[nb, block]`."""
  batch, length, heads, head_dim = k_BxSxNxH.shape
  num_blocks = -(-length // block)
  pad = num_blocks * block - length
  split = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(
      batch, num_blocks, block, heads, head_dim).swapaxes(0, 1)
  valid_KbxK = (np.arange(num_blocks * block) < length).reshape(num_blocks, block)
  return split(k_BxSxNxH), split(v_BxSxNxH), jnp.asarray(valid_KbxK)


def _block_scores(q_BxTxNxH, k_BxKxNxH, valid_K, scale, precision):
  s_BxNxTxK = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxKxNxH, precision=precision,
                         preferred_element_type=jnp.float32) * scale
  return jnp.where(valid_K, s_BxNxTxK, -jnp.inf)


def _blockwise_forward(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, block):
  """Online softmax over key blocks; returns (out `[B, T, N, H]`, log-sum-exp `[B, N, T]` float32)."""
  batch, length, heads, head_dim = q_BxTxNxH.shape
  scale = 1.0 / np.sqrt(head_dim)
  precision = _precision(q_BxTxNxH.dtype)
  k_blocks, v_blocks, valid = _key_blocks(k_BxSxNxH, v_BxSxNxH, block)

  def body(carry, blk):
    max_BxNxT, sum_BxNxT, acc_BxTxNxH = carry
    k_j, v_j, valid_j = blk
    s_BxNxTxK = _block_scores(q_BxTxNxH, k_j, valid_j, scale, precision)
    # Every block holds at least one real key, so the new maximum is finite and exp(-inf - max) = 0.
    new_max = jnp.maximum(max_BxNxT, jnp.max(s_BxNxTxK, axis=-1))
    rescale_BxNxT = jnp.exp(max_BxNxT - new_max)
    exp_BxNxTxK = jnp.exp(s_BxNxTxK - new_max[..., None])
    sum_BxNxT = rescale_BxNxT * sum_BxNxT + jnp.sum(exp_BxNxTxK, axis=-1)
    pv_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", exp_BxNxTxK.astype(v_j.dtype), v_j, precision=precision,
                            preferred_element_type=jnp.float32)
    acc_BxTxNxH = acc_BxTxNxH * jnp.swapaxes(rescale_BxNxT, 1, 2)[..., None] + pv_BxTxNxH
    return (new_max, sum_BxNxT, acc_BxTxNxH), None

  init = (jnp.full((batch, heads, length), -jnp.inf, jnp.float32),
          jnp.zeros((batch, heads, length), jnp.float32),
          jnp.zeros((batch, length, heads, head_dim), jnp.float32))
  (max_BxNxT, sum_BxNxT, acc_BxTxNxH), _ = jax.lax.scan(body, init, (k_blocks, v_blocks, valid))
  out_BxTxNxH = (acc_BxTxNxH / jnp.swapaxes(sum_BxNxT, 1, 2)[..., None]).astype(v_BxSxNxH.dtype)
  return out_BxTxNxH, max_BxNxT + jnp.log(sum_BxNxT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blockwise(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, block):
  return _blockwise_forward(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, block)[0]


def _blockwise_fwd(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, block):
  out_BxTxNxH, lse_BxNxT = _blockwise_forward(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, block)
  return out_BxTxNxH, (q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, out_BxTxNxH, lse_BxNxT)


def _blockwise_bwd(block, residuals, dout_BxTxNxH):
  """Flash-attention's backward: recomputes each block's probabilities from the saved log-sum-exp."""
  q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, out_BxTxNxH, lse_BxNxT = residuals
  length_k = k_BxSxNxH.shape[1]
  scale = 1.0 / np.sqrt(q_BxTxNxH.shape[-1])
  precision = _precision(q_BxTxNxH.dtype)
  k_blocks, v_blocks, valid = _key_blocks(k_BxSxNxH, v_BxSxNxH, block)
  dout = dout_BxTxNxH.astype(v_BxSxNxH.dtype)
  delta_BxNxT = jnp.einsum("btnh,btnh->bnt", dout_BxTxNxH.astype(jnp.float32),
                           out_BxTxNxH.astype(jnp.float32), precision=precision)

  def body(dq_BxTxNxH, blk):
    k_j, v_j, valid_j = blk
    s_BxNxTxK = _block_scores(q_BxTxNxH, k_j, valid_j, scale, precision)
    p_BxNxTxK = jnp.exp(s_BxNxTxK - lse_BxNxT[..., None])
    dv_j = jnp.einsum("bnts,btnh->bsnh", p_BxNxTxK.astype(dout.dtype), dout, precision=precision,
                      preferred_element_type=jnp.float32)
    dp_BxNxTxK = jnp.einsum("btnh,bsnh->bnts", dout, v_j, precision=precision,
                            preferred_element_type=jnp.float32)
    ds_BxNxTxK = (p_BxNxTxK * (dp_BxNxTxK - delta_BxNxT[..., None])).astype(q_BxTxNxH.dtype)
    dq_BxTxNxH = dq_BxTxNxH + scale * jnp.einsum("bnts,bsnh->btnh", ds_BxNxTxK, k_j, precision=precision,
                                                 preferred_element_type=jnp.float32)
    dk_j = scale * jnp.einsum("bnts,btnh->bsnh", ds_BxNxTxK, q_BxTxNxH, precision=precision,
                              preferred_element_type=jnp.float32)
    return dq_BxTxNxH, (dk_j, dv_j)

  dq, (dk_blocks, dv_blocks) = jax.lax.scan(
      body, jnp.zeros(q_BxTxNxH.shape, jnp.float32), (k_blocks, v_blocks, valid))
  merge = lambda x: jnp.swapaxes(x, 0, 1).reshape((x.shape[1], -1) + x.shape[3:])[:, :length_k]
  return (dq.astype(q_BxTxNxH.dtype), merge(dk_blocks).astype(k_BxSxNxH.dtype),
          merge(dv_blocks).astype(v_BxSxNxH.dtype))


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def attention_blockwise(q_BxTxNxH: jax.Array, k_BxSxNxH: jax.Array, v_BxSxNxH: jax.Array,
                        block: int = ATTENTION_BLOCK) -> jax.Array:
  """`attention_xla`'s result without its `[B, N, T, S]` scores: an online softmax over blocks of `block` keys.

  Forward and backward (a custom VJP that recomputes the probabilities block by block from the saved
  log-sum-exp, as flash attention does) keep at most `[B, N, T, block]` float32 at a time, and the gradient
  keeps only q, k, v, the output and `[B, N, T]`, so memory grows linearly with the sequence length.
  """
  return _blockwise(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, min(block, k_BxSxNxH.shape[1]))


def attention(q_BxTxNxH: jax.Array, k_BxSxNxH: jax.Array, v_BxSxNxH: jax.Array, cfg: ModelConfig,
              platform: str | None = None) -> jax.Array:
  """Attention as `cfg.attention_impl` says (resolving "auto" for this platform and length)."""
  impl = cfg.resolved_attention_impl(platform or jax.default_backend(), q_BxTxNxH.shape[1])
  if impl == "xla":
    return attention_xla(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH)
  if impl == "blockwise":
    return attention_blockwise(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH)
  # "cudnn": cuDNN's fused flash attention; "jax": jax.nn's XLA reference (normalises before the cast).
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, is_causal=False,
                                      implementation="cudnn" if impl == "cudnn" else "xla")


class Attention(nn.Module):
  """Non-causal multi-head self-attention with a fused [Q heads | K heads | V heads] projection."""

  config: ModelConfig

  @nn.compact
  def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
    cfg = self.config
    batch, length, _ = h_BxTxD.shape
    qkv = CastedDense(3 * cfg.num_heads * cfg.head_dim, name="qkv_proj")(h_BxTxD)
    qkv_BxTx3NxH = qkv.reshape(batch, length, 3 * cfg.num_heads, cfg.head_dim)
    q, k, v = jnp.split(qkv_BxTx3NxH, 3, axis=2)
    if cfg.pos_encodings == "rope":
      cos, sin = rope_tables(cfg.head_dim, length, cfg.rope_theta)
      q = apply_rope(q, jnp.asarray(cos), jnp.asarray(sin))
      k = apply_rope(k, jnp.asarray(cos), jnp.asarray(sin))
    out_BxTxNxH = attention(q, k, v, cfg)
    out_BxTxD = out_BxTxNxH.reshape(batch, length, cfg.num_heads * cfg.head_dim)
    return CastedDense(cfg.hidden_size, name="o_proj")(out_BxTxD)


class SwiGLU(nn.Module):
  """down(silu(gate) * up) with gate = first half and up = second half of one fused projection."""

  config: ModelConfig
  size: int | None = None  # width of the mixed (last) axis; None: hidden_size

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    size = self.config.hidden_size if self.size is None else self.size
    width = swiglu_width(self.config.expansion, size)
    gate, up = jnp.split(CastedDense(2 * width, name="gate_up_proj")(x), 2, axis=-1)
    # SiLU in float32 with one rounding, as PyTorch computes it for bfloat16 inputs (float64 stays float64).
    activated = jax.nn.silu(gate.astype(_accum_dtype(gate.dtype))).astype(gate.dtype)
    return CastedDense(size, name="down_proj")(activated * up)


class Block(nn.Module):
  """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h)).

  With `config.mlp_t` (TRM's variant) a SwiGLU over the T positions replaces attention, and its norm runs
  over the positions too: the block is then tied to exactly `config.total_len` positions.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
    cfg = self.config
    eps = cfg.rms_norm_eps
    if getattr(cfg, "mlp_t", False):
      h_BxDxT = jnp.swapaxes(h_BxTxD, 1, 2)
      h_BxDxT = rms_norm(h_BxDxT + SwiGLU(cfg, size=cfg.total_len, name="mlp_t")(h_BxDxT), eps)
      h_BxTxD = jnp.swapaxes(h_BxDxT, 1, 2)
    else:
      h_BxTxD = rms_norm(h_BxTxD + Attention(cfg, name="self_attn")(h_BxTxD), eps)
    return rms_norm(h_BxTxD + SwiGLU(cfg, name="mlp")(h_BxTxD), eps)


class ReasoningModule(nn.Module):
  """One recurrent level (H or L): add the injection, then run its blocks."""

  config: ModelConfig
  num_layers: int

  def setup(self):
    self.layers = [Block(self.config) for _ in range(self.num_layers)]

  def __call__(self, h: jax.Array, injection: jax.Array) -> jax.Array:
    h = h + injection
    for layer in self.layers:
      h = layer(h)
    return h
