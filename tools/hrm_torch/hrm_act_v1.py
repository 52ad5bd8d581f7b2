"""HRM with ACT (models/hrm/hrm_act_v1.py): inner recurrent model and the ACT wrapper.

Module and attribute names are the original's, so `state_dict()` keys are identical to it.
"""

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from tools.hrm_torch.layers import (
    Attention, CastedEmbedding, CastedLinear, CosSin, RotaryEmbedding, SwiGLU, rms_norm,
    trunc_normal_init_,
)
from tools.hrm_torch.sparse_embedding import CastedSparseEmbedding

Batch = Dict[str, torch.Tensor]

_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class HierarchicalReasoningModel_ACTV1Config:  # pylint: disable=invalid-name
  """The original's pydantic config as a validated dataclass; unknown keys are ignored, as there."""

  _NAME = "HRM"  # in error messages (a class attribute, not a field)

  batch_size: int
  seq_len: int
  num_puzzle_identifiers: int
  vocab_size: int
  H_cycles: int  # pylint: disable=invalid-name
  L_cycles: int  # pylint: disable=invalid-name
  H_layers: int  # pylint: disable=invalid-name
  L_layers: int  # pylint: disable=invalid-name
  hidden_size: int
  expansion: float
  num_heads: int
  pos_encodings: str
  halt_max_steps: int
  halt_exploration_prob: float
  puzzle_emb_ndim: int = 0
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  forward_dtype: str = "bfloat16"

  @classmethod
  def from_dict(cls, config_dict: Mapping[str, Any]) -> "HierarchicalReasoningModel_ACTV1Config":
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and name not in config_dict
    ]
    if missing:
      raise ValueError(f"{cls._NAME} config is missing required field(s) {missing}; add them to the config")
    kwargs = {}
    for name, f in fields.items():
      if name not in config_dict:
        continue
      value = config_dict[name]
      try:
        kwargs[name] = f.type(value) if f.type in (int, float, str) else value
      except (TypeError, ValueError) as e:
        raise ValueError(f"{cls._NAME} config field {name!r}={value!r} is not a valid {f.type}") from e
      if f.type is int and isinstance(value, float) and value != int(value):
        raise ValueError(f"{cls._NAME} config field {name!r}={value!r} must be an integer")
    config = cls(**kwargs)
    config.validate()
    return config

  def validate(self) -> None:
    if self.forward_dtype not in _FLOAT_DTYPES:
      raise ValueError(
          f"forward_dtype {self.forward_dtype!r} unsupported; use one of {sorted(_FLOAT_DTYPES)}"
      )
    if self.pos_encodings not in ("rope", "learned"):
      raise ValueError(f"pos_encodings {self.pos_encodings!r} unsupported; use 'rope' or 'learned'")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
      )
    for name in ("batch_size", "seq_len", "num_puzzle_identifiers", "vocab_size", "H_cycles",
                 "L_cycles", "H_layers", "L_layers", "hidden_size", "num_heads", "halt_max_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"HRM config field {name!r} must be >= 1, got {getattr(self, name)}")
    if self.puzzle_emb_ndim < 0:
      raise ValueError(f"puzzle_emb_ndim must be >= 0, got {self.puzzle_emb_ndim}")
    if (self.hidden_size // self.num_heads) % 2 and self.pos_encodings == "rope":
      raise ValueError("RoPE needs an even head dim (hidden_size // num_heads)")

  @property
  def torch_dtype(self) -> torch.dtype:
    return _FLOAT_DTYPES[self.forward_dtype]

  @property
  def puzzle_emb_len(self) -> int:
    """P = ceil(puzzle_emb_ndim / hidden_size) prefix slots."""
    return -(self.puzzle_emb_ndim // -self.hidden_size)


@dataclasses.dataclass
class HierarchicalReasoningModel_ACTV1InnerCarry:  # pylint: disable=invalid-name
  z_H: torch.Tensor  # pylint: disable=invalid-name
  z_L: torch.Tensor  # pylint: disable=invalid-name


@dataclasses.dataclass
class HierarchicalReasoningModel_ACTV1Carry:  # pylint: disable=invalid-name
  inner_carry: HierarchicalReasoningModel_ACTV1InnerCarry
  steps: torch.Tensor
  halted: torch.Tensor
  current_data: Batch


class HierarchicalReasoningModel_ACTV1Block(nn.Module):  # pylint: disable=invalid-name
  """Post-norm transformer layer: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

  def __init__(self, config: HierarchicalReasoningModel_ACTV1Config):
    super().__init__()
    self.self_attn = Attention(
        hidden_size=config.hidden_size,
        head_dim=config.hidden_size // config.num_heads,
        num_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        causal=False,
    )
    self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
    self.norm_eps = config.rms_norm_eps

  def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
    hidden_states = rms_norm(
        hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states), self.norm_eps
    )
    return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class HierarchicalReasoningModel_ACTV1ReasoningModule(nn.Module):  # pylint: disable=invalid-name
  """Adds the injection once, then runs its blocks in sequence."""

  def __init__(self, layers):
    super().__init__()
    self.layers = nn.ModuleList(layers)

  def forward(
      self, hidden_states: torch.Tensor, input_injection: torch.Tensor, cos_sin: Optional[CosSin]
  ) -> torch.Tensor:
    hidden_states = hidden_states + input_injection
    for layer in self.layers:
      hidden_states = layer(cos_sin=cos_sin, hidden_states=hidden_states)
    return hidden_states


class HierarchicalReasoningModel_ACTV1_Inner(nn.Module):  # pylint: disable=invalid-name
  """One ACT segment: H_cycles×L_cycles no-grad updates, then a 1-step-gradient L and H update."""

  def __init__(self, config: HierarchicalReasoningModel_ACTV1Config):
    super().__init__()
    self.config = config
    self.forward_dtype = config.torch_dtype
    self.embed_scale = math.sqrt(config.hidden_size)
    embed_init_std = 1.0 / self.embed_scale

    # Construction order follows the original so that one torch seed gives the same init.
    self.embed_tokens = CastedEmbedding(
        config.vocab_size, config.hidden_size, init_std=embed_init_std, cast_to=self.forward_dtype
    )
    self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
    self.q_head = CastedLinear(config.hidden_size, 2, bias=True)

    self.puzzle_emb_len = config.puzzle_emb_len
    if config.puzzle_emb_ndim > 0:
      self.puzzle_emb = CastedSparseEmbedding(
          config.num_puzzle_identifiers, config.puzzle_emb_ndim, batch_size=config.batch_size,
          init_std=0, cast_to=self.forward_dtype,
      )

    total_len = config.seq_len + self.puzzle_emb_len
    if config.pos_encodings == "rope":
      self.rotary_emb = RotaryEmbedding(
          dim=config.hidden_size // config.num_heads, max_position_embeddings=total_len,
          base=config.rope_theta,
      )
    else:
      self.embed_pos = CastedEmbedding(
          total_len, config.hidden_size, init_std=embed_init_std, cast_to=self.forward_dtype
      )

    self.H_level = HierarchicalReasoningModel_ACTV1ReasoningModule(  # pylint: disable=invalid-name
        [HierarchicalReasoningModel_ACTV1Block(config) for _ in range(config.H_layers)]
    )
    self.L_level = HierarchicalReasoningModel_ACTV1ReasoningModule(  # pylint: disable=invalid-name
        [HierarchicalReasoningModel_ACTV1Block(config) for _ in range(config.L_layers)]
    )

    # Drawn directly in the forward dtype and stored in it (bf16 by default).
    self.register_buffer(
        "H_init",
        trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1),
        persistent=True,
    )
    self.register_buffer(
        "L_init",
        trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1),
        persistent=True,
    )

    # Q ≈ sigmoid(-5) at start: halting is learned from scratch during bootstrapping.
    with torch.no_grad():
      self.q_head.weight.zero_()
      self.q_head.bias.fill_(-5)

  def _input_embeddings(self, inputs_BxS: torch.Tensor, puzzle_ids_B: torch.Tensor) -> torch.Tensor:
    embedding_BxTxD = self.embed_tokens(inputs_BxS.to(torch.int32))
    if self.config.puzzle_emb_ndim > 0:
      puzzle_BxE = self.puzzle_emb(puzzle_ids_B)
      pad_count = self.puzzle_emb_len * self.config.hidden_size - puzzle_BxE.shape[-1]
      if pad_count > 0:
        puzzle_BxE = F.pad(puzzle_BxE, (0, pad_count))
      embedding_BxTxD = torch.cat(
          (puzzle_BxE.view(-1, self.puzzle_emb_len, self.config.hidden_size), embedding_BxTxD),
          dim=-2,
      )
    if self.config.pos_encodings == "learned":
      # 1/sqrt(2) keeps the variance of token+position at that of either alone.
      embedding_BxTxD = 0.707106781 * (
          embedding_BxTxD + self.embed_pos.embedding_weight.to(self.forward_dtype)
      )
    return self.embed_scale * embedding_BxTxD

  def empty_carry(self, batch_size: int) -> HierarchicalReasoningModel_ACTV1InnerCarry:
    shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
    return HierarchicalReasoningModel_ACTV1InnerCarry(
        z_H=torch.empty(shape, dtype=self.forward_dtype),
        z_L=torch.empty(shape, dtype=self.forward_dtype),
    )

  def reset_carry(
      self, reset_B: torch.Tensor, carry: HierarchicalReasoningModel_ACTV1InnerCarry
  ) -> HierarchicalReasoningModel_ACTV1InnerCarry:
    reset_Bx1x1 = reset_B.view(-1, 1, 1)
    return HierarchicalReasoningModel_ACTV1InnerCarry(
        z_H=torch.where(reset_Bx1x1, self.H_init, carry.z_H),
        z_L=torch.where(reset_Bx1x1, self.L_init, carry.z_L),
    )

  def forward(
      self, carry: HierarchicalReasoningModel_ACTV1InnerCarry, batch: Batch
  ) -> Tuple[HierarchicalReasoningModel_ACTV1InnerCarry, torch.Tensor,
             Tuple[torch.Tensor, torch.Tensor]]:
    cos_sin = self.rotary_emb() if hasattr(self, "rotary_emb") else None
    x_BxTxD = self._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])

    with torch.no_grad():
      z_H, z_L = carry.z_H, carry.z_L
      for h_step in range(self.config.H_cycles):
        for l_step in range(self.config.L_cycles):
          is_final_pair = (h_step == self.config.H_cycles - 1 and
                           l_step == self.config.L_cycles - 1)
          if not is_final_pair:
            z_L = self.L_level(z_L, z_H + x_BxTxD, cos_sin=cos_sin)
        if h_step != self.config.H_cycles - 1:
          z_H = self.H_level(z_H, z_L, cos_sin=cos_sin)
    assert not z_H.requires_grad and not z_L.requires_grad

    # 1-step gradient: only the last L and H updates are differentiated.
    z_L = self.L_level(z_L, z_H + x_BxTxD, cos_sin=cos_sin)
    z_H = self.H_level(z_H, z_L, cos_sin=cos_sin)

    new_carry = HierarchicalReasoningModel_ACTV1InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
    logits_BxSxV = self.lm_head(z_H)[:, self.puzzle_emb_len:]
    q_Bx2 = self.q_head(z_H[:, 0]).to(torch.float32)
    return new_carry, logits_BxSxV, (q_Bx2[..., 0], q_Bx2[..., 1])


class HierarchicalReasoningModel_ACTV1(nn.Module):  # pylint: disable=invalid-name
  """ACT wrapper: resets halted rows, swaps in their new data, decides halting, builds Q targets."""

  def __init__(self, config_dict: Mapping[str, Any]):
    super().__init__()
    self.config = HierarchicalReasoningModel_ACTV1Config.from_dict(config_dict)
    self.inner = HierarchicalReasoningModel_ACTV1_Inner(self.config)

  @property
  def puzzle_emb(self) -> CastedSparseEmbedding:
    return self.inner.puzzle_emb

  def initial_carry(self, batch: Batch) -> HierarchicalReasoningModel_ACTV1Carry:
    batch_size = batch["inputs"].shape[0]
    # Every row starts halted, so the garbage z's and data are replaced on the first call.
    return HierarchicalReasoningModel_ACTV1Carry(
        inner_carry=self.inner.empty_carry(batch_size),
        steps=torch.zeros((batch_size,), dtype=torch.int32),
        halted=torch.ones((batch_size,), dtype=torch.bool),
        current_data={k: torch.empty_like(v) for k, v in batch.items()},
    )

  def forward(
      self, carry: HierarchicalReasoningModel_ACTV1Carry, batch: Batch
  ) -> Tuple[HierarchicalReasoningModel_ACTV1Carry, Dict[str, torch.Tensor]]:
    new_inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
    new_steps_B = torch.where(carry.halted, 0, carry.steps)
    new_current_data = {
        k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
        for k, v in carry.current_data.items()
    }

    new_inner_carry, logits_BxSxV, (q_halt_B, q_continue_B) = self.inner(
        new_inner_carry, new_current_data
    )
    outputs = {
        "logits": logits_BxSxV,
        "q_halt_logits": q_halt_B,
        "q_continue_logits": q_continue_B,
    }

    with torch.no_grad():
      new_steps_B = new_steps_B + 1
      is_last_step_B = new_steps_B >= self.config.halt_max_steps
      halted_B = is_last_step_B

      # Eval always runs halt_max_steps segments so a batch finishes together.
      if self.training and self.config.halt_max_steps > 1:
        halted_B = halted_B | (q_halt_B > q_continue_B)
        min_halt_steps_B = (
            (torch.rand_like(q_halt_B) < self.config.halt_exploration_prob)
            * torch.randint_like(new_steps_B, low=2, high=self.config.halt_max_steps + 1)
        )
        halted_B = halted_B & (new_steps_B >= min_halt_steps_B)

        # Bootstrapped target from the next segment; no replay buffer or target network.
        next_q_halt_B, next_q_continue_B = self.inner(new_inner_carry, new_current_data)[-1]
        outputs["target_q_continue"] = torch.sigmoid(
            torch.where(is_last_step_B, next_q_halt_B,
                        torch.maximum(next_q_halt_B, next_q_continue_B))
        )

    return HierarchicalReasoningModel_ACTV1Carry(
        new_inner_carry, new_steps_B, halted_B, new_current_data
    ), outputs
