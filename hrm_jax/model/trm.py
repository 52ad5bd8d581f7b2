"""TRM (Tiny Recursive Model, SamsungSAILMontreal/TinyRecursiveModels): one small network recursing on a latent
`z` (the code's z_L) and an answer `y` (z_H), with HRM's ACT wrapper, loss head and data.

Same interface as `hrm_jax.model.hrm` (init_params, init_buffers, segment, act_step, infer, ...), so training,
evaluation and conversion run either model; `hrm_jax.model.arch.model_for(cfg)` picks the module. What TRM
shares with HRM is taken from there: the layers (attention, SwiGLU, post-norm block with TRM's `mlp_t`
token-mixing variant), the input embedding and heads, the ACT carry, reset and halting, and the loss.

One segment (`segment`), with n = L_cycles and T = H_cycles:
  T-1 recursions without gradient, then one with gradient, each:  n times z <- net(z, y + x);  y <- net(y, z)
Outputs are read from y: lm_head(y)[:, P:] and q_head(y[:, 0]).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from hrm_jax.model import hrm
from hrm_jax.model import layers
from hrm_jax.model.config import ATTENTION_IMPLS, ModelConfig, swiglu_width

# Shared with HRM unchanged.
DATA_KEYS = hrm.DATA_KEYS
Carry = hrm.Carry
init_buffers = hrm.init_buffers
init_puzzle_table = hrm.init_puzzle_table
gather_puzzle_rows = hrm.gather_puzzle_rows
initial_carry = hrm.initial_carry
reset_carry = hrm.reset_carry
exploration_min_steps = hrm.exploration_min_steps

TRM_FORWARD_DTYPES = ("float32", "bfloat16", "float64")


@dataclasses.dataclass(frozen=True)
class TRMConfig(ModelConfig):
  """The original's `TinyRecursiveReasoningModel_ACTV1Config` (defaults of its config/arch/trm.yaml).

  `pos_encodings`: "rope", "learned", anything else means none (as the original). `H_layers` is ignored (there
  is no H network). `puzzle_emb_len` is the number of prefix slots; 0 means ceil(puzzle_emb_ndim / hidden_size)
  and is resolved on construction, so the field always holds the slots the model uses.
  """

  H_cycles: int = 3
  L_cycles: int = 6
  H_layers: int = 0
  L_layers: int = 2
  mlp_t: bool = False  # token-mixing SwiGLU over the T positions instead of attention
  puzzle_emb_len: int = 16
  no_ACT_continue: bool = True  # halt on q_halt > 0 alone; no target-Q forward and no continue loss
  arch: str = "trm"

  def __post_init__(self):
    if self.puzzle_emb_len == 0:
      object.__setattr__(self, "puzzle_emb_len", -(self.puzzle_emb_ndim // -self.hidden_size))
    problems = []
    if self.arch != "trm":
      problems.append(f"arch={self.arch!r} (TRMConfig is arch 'trm')")
    if self.forward_dtype not in TRM_FORWARD_DTYPES:
      problems.append(f"forward_dtype={self.forward_dtype!r} (choose one of {TRM_FORWARD_DTYPES})")
    if self.attention_impl not in ATTENTION_IMPLS:
      problems.append(f"attention_impl={self.attention_impl!r} (choose one of {ATTENTION_IMPLS})")
    elif self.attention_impl == "cudnn" and self.forward_dtype != "bfloat16":
      problems.append(f"attention_impl='cudnn' needs forward_dtype='bfloat16', not {self.forward_dtype!r}")
    for name in ("vocab_size", "seq_len", "hidden_size", "num_heads", "H_cycles", "L_cycles", "L_layers",
                 "halt_max_steps", "num_puzzle_identifiers"):
      if getattr(self, name) < 1:
        problems.append(f"{name}={getattr(self, name)} must be >= 1")
    if not self.mlp_t:
      if self.hidden_size % self.num_heads:
        problems.append(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
      elif self.head_dim % 2 and self.pos_encodings == "rope":
        problems.append("RoPE needs an even head dimension (hidden_size // num_heads)")
    if self.puzzle_emb_ndim < 0 or self.puzzle_emb_len < 0:
      problems.append(f"puzzle_emb_ndim={self.puzzle_emb_ndim} and puzzle_emb_len={self.puzzle_emb_len} "
                      "must be >= 0")
    elif self.puzzle_emb_ndim == 0 and self.puzzle_emb_len:
      problems.append(f"puzzle_emb_ndim=0 needs puzzle_emb_len=0 (got {self.puzzle_emb_len}; the original "
                      "fails on this with a shape error)")
    elif self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden_size:
      problems.append(f"puzzle_emb_ndim={self.puzzle_emb_ndim} does not fit in puzzle_emb_len="
                      f"{self.puzzle_emb_len} slots of hidden_size={self.hidden_size}")
    if not 0.0 <= self.halt_exploration_prob <= 1.0:
      problems.append(f"halt_exploration_prob={self.halt_exploration_prob} must be in [0, 1]")
    if problems:
      raise ValueError("Invalid TRM model config: " + "; ".join(problems))

  @property
  def token_mlp_width(self) -> int:
    """Width of the `mlp_t` token SwiGLU: the channel rule applied to T."""
    return swiglu_width(self.expansion, self.total_len)


class TRMInner(hrm.HRMInner):
  """The original's `TinyRecursiveReasoningModel_ACTV1_Inner`: HRM's embeddings and heads, one `L_level`."""

  def setup(self):
    self.setup_embeddings_and_heads()
    self.L_level = layers.ReasoningModule(self.config, self.config.L_layers)

  def __call__(self, inputs_BxS, puzzle_rows_BxE, z_H, z_L):
    # Used only by `init`: touches every submodule once so all parameters get created.
    x = self.embed(inputs_BxS, puzzle_rows_BxE)
    z_L = self.L_update(z_L, z_H + x)
    z_H = self.L_update(z_H, z_L)
    return self.heads(z_H)


# --------------------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------------------
def init_params(cfg: TRMConfig, key: jax.Array) -> dict[str, Any]:
  """Fresh parameters with the original's initialisation (Q head weight 0 / bias -5)."""
  inputs = jnp.zeros((1, cfg.seq_len), jnp.int32)
  rows = jnp.zeros((1, cfg.puzzle_emb_ndim), jnp.float32) if cfg.puzzle_emb_ndim else None
  z = jnp.zeros((1, cfg.total_len, cfg.hidden_size), cfg.dtype)
  return TRMInner(cfg).init(key, inputs, rows, z, z)["params"]


# --------------------------------------------------------------------------------------------------------
# The recursion
# --------------------------------------------------------------------------------------------------------
def _apply(params, cfg: TRMConfig, method: Callable, *args):
  return TRMInner(cfg).apply({"params": params}, *args, method=method)


def input_embeddings(params, cfg: TRMConfig, inputs_BxS, puzzle_rows_BxE) -> jax.Array:
  with hrm._matmul_precision(cfg):  # pylint: disable=protected-access
    return _apply(params, cfg, TRMInner.embed, inputs_BxS, puzzle_rows_BxE)


def net(params, cfg: TRMConfig, h_BxTxD: jax.Array, injection_BxTxD: jax.Array) -> jax.Array:
  """One call of the network (`L_level`): its blocks applied to h + injection."""
  with hrm._matmul_precision(cfg):  # pylint: disable=protected-access
    return _apply(params, cfg, TRMInner.L_update, h_BxTxD, injection_BxTxD)


def _recursion(params, cfg: TRMConfig, x, z_H, z_L, unroll: bool = False):
  """L_cycles z-updates z <- net(z, y + x), then one y-update y <- net(y, z)."""
  z_update = lambda _, zl: _apply(params, cfg, TRMInner.L_update, zl, z_H + x)
  z_L = jax.lax.fori_loop(0, cfg.L_cycles, z_update, z_L, unroll=unroll)
  z_H = _apply(params, cfg, TRMInner.L_update, z_H, z_L)
  return z_H, z_L


def segment(params, cfg: TRMConfig, z_H, z_L, inputs_BxS, puzzle_rows_BxE):
  """One ACT segment (the original's `Inner.forward`): H_cycles-1 recursions without gradient, one with.

  The gradient flows through the last recursion's L_cycles+1 network calls and through `x` in its
  z-updates; the states entering it are constants. The returned carry is detached.

  Returns ((z_H, z_L), logits_BxSxV, q_halt_B, q_continue_B).
  """
  with hrm._matmul_precision(cfg):  # pylint: disable=protected-access
    x = _apply(params, cfg, TRMInner.embed, inputs_BxS, puzzle_rows_BxE)
    params_ng, x_ng = jax.lax.stop_gradient((params, x))
    z_H, z_L = jax.lax.stop_gradient((z_H, z_L))
    no_grad_recursion = lambda _, c: _recursion(params_ng, cfg, x_ng, *c)
    z_H, z_L = jax.lax.fori_loop(0, cfg.H_cycles - 1, no_grad_recursion, (z_H, z_L))
    # Unrolled: differentiating a rolled loop makes XLA stack its residuals and run the backward as a loop;
    # unrolled, the tiny TRM train step took 146 ms instead of 180 (tools.benchmark --arch trm, 1 CPU thread).
    z_H, z_L = _recursion(params, cfg, x, z_H, z_L, unroll=True)
    logits, q_Bx2 = _apply(params, cfg, TRMInner.heads, z_H)
  new_carry = jax.lax.stop_gradient((z_H, z_L))
  return new_carry, logits, q_Bx2[:, 0], q_Bx2[:, 1]


# --------------------------------------------------------------------------------------------------------
# ACT: HRM's wrapper with TRM's segment (halting on q_halt > 0 when no_ACT_continue)
# --------------------------------------------------------------------------------------------------------
act_step = functools.partial(hrm.act_step, segment_fn=segment)
act_step.__doc__ = "hrm.act_step with TRM's segment: " + (hrm.act_step.__doc__ or "")
infer = functools.partial(hrm.infer, segment_fn=segment)
infer.__doc__ = "hrm.infer with TRM's segment: " + (hrm.infer.__doc__ or "")
