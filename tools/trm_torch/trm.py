"""TRM with ACT (models/recursive_reasoning/trm.py of SamsungSAILMontreal/TinyRecursiveModels), in PyTorch.

Module and attribute names are the original's, so `state_dict()` keys equal it. Written from the facts in
../shared/TRM_REFERENCE.md; the building blocks are tools/hrm_torch's (the original's models/layers.py is
HRM's plus the token MLP, which is a SwiGLU over the sequence axis).
"""

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from tools.hrm_torch.hrm_act_v1 import (
    HierarchicalReasoningModel_ACTV1, HierarchicalReasoningModel_ACTV1_Inner, HierarchicalReasoningModel_ACTV1Config,
    HierarchicalReasoningModel_ACTV1Carry, HierarchicalReasoningModel_ACTV1InnerCarry,
    HierarchicalReasoningModel_ACTV1ReasoningModule,
)
from tools.hrm_torch.layers import (
    Attention, CastedEmbedding, CastedLinear, CosSin, RotaryEmbedding, SwiGLU, rms_norm,
    trunc_normal_init_,
)
from tools.hrm_torch.sparse_embedding import CastedSparseEmbedding

Batch = Dict[str, torch.Tensor]

_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

# Same carry layout as HRM's.
TinyRecursiveReasoningModel_ACTV1InnerCarry = HierarchicalReasoningModel_ACTV1InnerCarry  # pylint: disable=invalid-name
TinyRecursiveReasoningModel_ACTV1Carry = HierarchicalReasoningModel_ACTV1Carry  # pylint: disable=invalid-name


@dataclasses.dataclass(frozen=True)
class TinyRecursiveReasoningModel_ACTV1Config(HierarchicalReasoningModel_ACTV1Config):  # pylint: disable=invalid-name
  """The original's pydantic config: HRM's fields (`H_layers` ignored: there is no H network) and TRM's own.

  Unknown keys (e.g. `causal`) are ignored, as there. Checked as loosely as the original: any
  `pos_encodings` other than "rope"/"learned" means none, and no divisibility is asked of `mlp_t` models.
  """

  _NAME = "TRM"

  mlp_t: bool = False
  puzzle_emb_len: int = 16
  no_ACT_continue: bool = True  # pylint: disable=invalid-name

  def validate(self) -> None:
    if self.forward_dtype not in _FLOAT_DTYPES:
      raise ValueError(f"forward_dtype {self.forward_dtype!r} unsupported; use one of {sorted(_FLOAT_DTYPES)}")

  @property
  def torch_dtype(self) -> torch.dtype:
    return _FLOAT_DTYPES[self.forward_dtype]

  @property
  def effective_puzzle_emb_len(self) -> int:
    """P: the configured slots, or ceil(puzzle_emb_ndim / hidden_size) when 0."""
    return self.puzzle_emb_len if self.puzzle_emb_len else -(self.puzzle_emb_ndim // -self.hidden_size)


class TinyRecursiveReasoningModel_ACTV1Block(nn.Module):  # pylint: disable=invalid-name
  """Post-norm layer; attention, or with `mlp_t` a SwiGLU over the positions (normalised over them too)."""

  def __init__(self, config: TinyRecursiveReasoningModel_ACTV1Config):
    super().__init__()
    self.config = config
    if config.mlp_t:
      self.mlp_t = SwiGLU(hidden_size=config.seq_len + config.effective_puzzle_emb_len,
                          expansion=config.expansion)
    else:
      self.self_attn = Attention(hidden_size=config.hidden_size, head_dim=config.hidden_size // config.num_heads,
                                 num_heads=config.num_heads, num_key_value_heads=config.num_heads, causal=False)
    self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
    self.norm_eps = config.rms_norm_eps

  def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
    if self.config.mlp_t:
      hidden_BxDxT = hidden_states.transpose(1, 2)
      hidden_BxDxT = rms_norm(hidden_BxDxT + self.mlp_t(hidden_BxDxT), self.norm_eps)
      hidden_states = hidden_BxDxT.transpose(1, 2)
    else:
      hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states),
                               self.norm_eps)
    return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


TinyRecursiveReasoningModel_ACTV1ReasoningModule = HierarchicalReasoningModel_ACTV1ReasoningModule  # pylint: disable=invalid-name


class TinyRecursiveReasoningModel_ACTV1_Inner(HierarchicalReasoningModel_ACTV1_Inner):  # pylint: disable=invalid-name
  """One segment: H_cycles-1 recursions without grad, one with; each n z-updates then one y-update.

  Embeddings and carry handling are HRM's (inherited); only the modules and the recursion differ.
  """

  def __init__(self, config: TinyRecursiveReasoningModel_ACTV1Config):  # pylint: disable=super-init-not-called
    nn.Module.__init__(self)
    self.config = config
    self.forward_dtype = config.torch_dtype
    self.embed_scale = math.sqrt(config.hidden_size)
    embed_init_std = 1.0 / self.embed_scale

    # Construction order follows the original so that one torch seed gives the same init.
    self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size, init_std=embed_init_std,
                                        cast_to=self.forward_dtype)
    self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
    self.q_head = CastedLinear(config.hidden_size, 2, bias=True)

    self.puzzle_emb_len = config.effective_puzzle_emb_len
    if config.puzzle_emb_ndim > 0:
      self.puzzle_emb = CastedSparseEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim,
                                              batch_size=config.batch_size, init_std=0,
                                              cast_to=self.forward_dtype)
    total_len = config.seq_len + self.puzzle_emb_len
    if config.pos_encodings == "rope":
      self.rotary_emb = RotaryEmbedding(dim=config.hidden_size // config.num_heads,
                                        max_position_embeddings=total_len, base=config.rope_theta)
    elif config.pos_encodings == "learned":
      self.embed_pos = CastedEmbedding(total_len, config.hidden_size, init_std=embed_init_std,
                                       cast_to=self.forward_dtype)

    self.L_level = TinyRecursiveReasoningModel_ACTV1ReasoningModule(  # pylint: disable=invalid-name
        [TinyRecursiveReasoningModel_ACTV1Block(config) for _ in range(config.L_layers)])

    self.register_buffer("H_init", trunc_normal_init_(
        torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1), persistent=True)
    self.register_buffer("L_init", trunc_normal_init_(
        torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1), persistent=True)
    with torch.no_grad():
      self.q_head.weight.zero_()
      self.q_head.bias.fill_(-5)

  def forward(self, carry: TinyRecursiveReasoningModel_ACTV1InnerCarry, batch: Batch):
    cos_sin = self.rotary_emb() if hasattr(self, "rotary_emb") else None
    x_BxTxD = self._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    z_H, z_L = carry.z_H, carry.z_L
    with torch.no_grad():
      for _ in range(self.config.H_cycles - 1):
        for _ in range(self.config.L_cycles):
          z_L = self.L_level(z_L, z_H + x_BxTxD, cos_sin=cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin=cos_sin)
    for _ in range(self.config.L_cycles):
      z_L = self.L_level(z_L, z_H + x_BxTxD, cos_sin=cos_sin)
    z_H = self.L_level(z_H, z_L, cos_sin=cos_sin)

    new_carry = TinyRecursiveReasoningModel_ACTV1InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
    logits_BxSxV = self.lm_head(z_H)[:, self.puzzle_emb_len:]
    q_Bx2 = self.q_head(z_H[:, 0]).to(torch.float32)
    return new_carry, logits_BxSxV, (q_Bx2[..., 0], q_Bx2[..., 1])


class TinyRecursiveReasoningModel_ACTV1(HierarchicalReasoningModel_ACTV1):  # pylint: disable=invalid-name
  """ACT wrapper: HRM's reset and data swap; halting on q_halt > 0 (no_ACT_continue), no target-Q forward.

  no_ACT_continue=False raises in the original's training (it unpacks 3 outputs into 5); here it is HRM's
  rule (q_halt > q_continue with the bootstrapped target), as hrm_jax implements it.
  """

  def __init__(self, config_dict: Mapping[str, Any]):  # pylint: disable=super-init-not-called
    nn.Module.__init__(self)
    self.config = TinyRecursiveReasoningModel_ACTV1Config.from_dict(config_dict)
    self.inner = TinyRecursiveReasoningModel_ACTV1_Inner(self.config)

  def forward(self, carry: TinyRecursiveReasoningModel_ACTV1Carry, batch: Batch
              ) -> Tuple[TinyRecursiveReasoningModel_ACTV1Carry, Dict[str, torch.Tensor]]:
    new_inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
    new_steps_B = torch.where(carry.halted, 0, carry.steps)
    new_current_data = {
        k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
        for k, v in carry.current_data.items()}
    new_inner_carry, logits_BxSxV, (q_halt_B, q_continue_B) = self.inner(new_inner_carry, new_current_data)
    outputs = {"logits": logits_BxSxV, "q_halt_logits": q_halt_B, "q_continue_logits": q_continue_B}

    with torch.no_grad():
      new_steps_B = new_steps_B + 1
      is_last_step_B = new_steps_B >= self.config.halt_max_steps
      halted_B = is_last_step_B
      if self.training and self.config.halt_max_steps > 1:
        if self.config.no_ACT_continue:
          halted_B = halted_B | (q_halt_B > 0)
        else:
          halted_B = halted_B | (q_halt_B > q_continue_B)
        min_halt_steps_B = ((torch.rand_like(q_halt_B) < self.config.halt_exploration_prob)
                            * torch.randint_like(new_steps_B, low=2, high=self.config.halt_max_steps + 1))
        halted_B = halted_B & (new_steps_B >= min_halt_steps_B)
        if not self.config.no_ACT_continue:
          next_q_halt_B, next_q_continue_B = self.inner(new_inner_carry, new_current_data)[-1]
          outputs["target_q_continue"] = torch.sigmoid(
              torch.where(is_last_step_B, next_q_halt_B, torch.maximum(next_q_halt_B, next_q_continue_B)))
    return TinyRecursiveReasoningModel_ACTV1Carry(new_inner_carry, new_steps_B, halted_B, new_current_data), \
        outputs
