"""Building blocks of the original HRM (models/layers.py, models/common.py), in PyTorch.

Parameters are fp32 masters; every op casts them to the activation dtype at use, exactly
where the original does (HRM_REFERENCE.md §1.5).
"""

import math
from typing import Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

CosSin = Tuple[torch.Tensor, torch.Tensor]


def trunc_normal_init_(
    tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0
) -> torch.Tensor:
  """Fills `tensor` in place with a truncated normal whose ACTUAL std is `std`.

  Inverse-CDF sampling (as JAX does): uniform in [erf(l/√2), erf(u/√2)], erfinv, scale, clip.
  The scale is corrected for the truncation so that the resulting std is `std`, not smaller.
  """
  with torch.no_grad():
    if std == 0:
      return tensor.zero_()
    sqrt2 = math.sqrt(2.0)
    erf_lower = math.erf(lower / sqrt2)
    erf_upper = math.erf(upper / sqrt2)
    mass = (erf_upper - erf_lower) / 2
    inv_sqrt_2pi = (2 * math.pi) ** -0.5
    pdf_lower = inv_sqrt_2pi * math.exp(-0.5 * lower**2)
    pdf_upper = inv_sqrt_2pi * math.exp(-0.5 * upper**2)
    truncated_var = (
        1 - (upper * pdf_upper - lower * pdf_lower) / mass - ((pdf_upper - pdf_lower) / mass) ** 2
    )
    compensated_std = std / math.sqrt(truncated_var)
    tensor.uniform_(erf_lower, erf_upper)
    tensor.erfinv_()
    tensor.mul_(sqrt2 * compensated_std)
    tensor.clip_(lower * compensated_std, upper * compensated_std)
  return tensor


def round_up_to_multiple(value: int, multiple: int) -> int:
  return -(value // -multiple) * multiple


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
  """SwiGLU width: 2/3 of expansion*D, Python (half-to-even) round, up to a multiple of 256."""
  return round_up_to_multiple(round(expansion * hidden_size * 2 / 3), 256)


def rms_norm(hidden_BxTxD: torch.Tensor, eps: float) -> torch.Tensor:
  """Parameter-free RMSNorm, computed in fp32 and cast back to the input dtype."""
  input_dtype = hidden_BxTxD.dtype
  hidden_f32 = hidden_BxTxD.to(torch.float32)
  variance_BxTx1 = hidden_f32.square().mean(-1, keepdim=True)
  return (hidden_f32 * torch.rsqrt(variance_BxTx1 + eps)).to(input_dtype)


def rotate_half(x_BxTxNxH: torch.Tensor) -> torch.Tensor:
  half = x_BxTxNxH.shape[-1] // 2
  return torch.cat((-x_BxTxNxH[..., half:], x_BxTxNxH[..., :half]), dim=-1)


def apply_rotary_pos_emb(
    q_BxTxNxH: torch.Tensor, k_BxTxNxH: torch.Tensor, cos_TxH: torch.Tensor, sin_TxH: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
  """Split-halves RoPE; q and k go up to the tables' fp32 and back to their own dtype."""
  orig_dtype = q_BxTxNxH.dtype
  q = q_BxTxNxH.to(cos_TxH.dtype)
  k = k_BxTxNxH.to(cos_TxH.dtype)
  cos_Tx1xH = cos_TxH.unsqueeze(-2)
  sin_Tx1xH = sin_TxH.unsqueeze(-2)
  q_rot = (q * cos_Tx1xH) + (rotate_half(q) * sin_Tx1xH)
  k_rot = (k * cos_Tx1xH) + (rotate_half(k) * sin_Tx1xH)
  return q_rot.to(orig_dtype), k_rot.to(orig_dtype)


class CastedLinear(nn.Module):
  """Linear layer computing in the input's dtype; truncated LeCun-normal weight, zero bias."""

  def __init__(self, in_features: int, out_features: int, bias: bool):
    super().__init__()
    self.weight = nn.Parameter(
        trunc_normal_init_(torch.empty((out_features, in_features)), std=1.0 / (in_features**0.5))
    )
    self.bias = nn.Parameter(torch.zeros((out_features,))) if bias else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    bias = self.bias.to(x.dtype) if self.bias is not None else None
    return F.linear(x, self.weight.to(x.dtype), bias=bias)


class CastedEmbedding(nn.Module):
  """Embedding table kept in fp32, looked up after casting to `cast_to`."""

  def __init__(
      self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype
  ):
    super().__init__()
    self.cast_to = cast_to
    self.embedding_weight = nn.Parameter(
        trunc_normal_init_(torch.empty((num_embeddings, embedding_dim)), std=init_std)
    )

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
  """fp32 cos/sin tables [T, hd] (non-persistent, so absent from the state dict)."""

  def __init__(self, dim: int, max_position_embeddings: int, base: float):
    super().__init__()
    inv_freq_H2 = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    positions_T = torch.arange(max_position_embeddings, dtype=torch.float32)
    freqs_TxH2 = torch.outer(positions_T, inv_freq_H2)
    emb_TxH = torch.cat((freqs_TxH2, freqs_TxH2), dim=-1)
    self.register_buffer("cos_cached", emb_TxH.cos(), persistent=False)
    self.register_buffer("sin_cached", emb_TxH.sin(), persistent=False)

  def forward(self) -> CosSin:
    return self.cos_cached, self.sin_cached


class Attention(nn.Module):
  """Unmasked multi-head self-attention with a fused [Q heads | K heads | V heads] projection."""

  def __init__(
      self, hidden_size: int, head_dim: int, num_heads: int, num_key_value_heads: int,
      causal: bool = False,
  ):
    super().__init__()
    self.hidden_size = hidden_size
    self.head_dim = head_dim
    self.output_size = head_dim * num_heads
    self.num_heads = num_heads
    self.num_key_value_heads = num_key_value_heads
    self.causal = causal
    self.qkv_proj = CastedLinear(
        hidden_size, (num_heads + 2 * num_key_value_heads) * head_dim, bias=False
    )
    self.o_proj = CastedLinear(self.output_size, hidden_size, bias=False)

  def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
    batch_size, seq_len, _ = hidden_states.shape
    qkv_BxTxN3xH = self.qkv_proj(hidden_states).view(
        batch_size, seq_len, self.num_heads + 2 * self.num_key_value_heads, self.head_dim
    )
    num_q, num_kv = self.num_heads, self.num_key_value_heads
    query_BxTxNxH = qkv_BxTxN3xH[:, :, :num_q]
    key_BxTxNxH = qkv_BxTxN3xH[:, :, num_q:num_q + num_kv]
    value_BxTxNxH = qkv_BxTxN3xH[:, :, num_q + num_kv:]
    if cos_sin is not None:
      cos_TxH, sin_TxH = cos_sin
      query_BxTxNxH, key_BxTxNxH = apply_rotary_pos_emb(
          query_BxTxNxH, key_BxTxNxH, cos_TxH, sin_TxH)
    # flash_attn_func works on [B, T, N, H]; SDPA wants [B, N, T, H]. Same math, scale 1/sqrt(hd).
    attn_BxNxTxH = F.scaled_dot_product_attention(
        query_BxTxNxH.transpose(1, 2), key_BxTxNxH.transpose(1, 2), value_BxTxNxH.transpose(1, 2),
        is_causal=self.causal,
    )
    attn_BxTxD = attn_BxNxTxH.transpose(1, 2).contiguous().view(
        batch_size, seq_len, self.output_size)
    return self.o_proj(attn_BxTxD)


class SwiGLU(nn.Module):
  """down(silu(gate) * up) with gate = first half of gate_up_proj's output."""

  def __init__(self, hidden_size: int, expansion: float):
    super().__init__()
    inter = swiglu_intermediate_size(hidden_size, expansion)
    self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
    self.down_proj = CastedLinear(inter, hidden_size, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    return self.down_proj(F.silu(gate) * up)
