"""Model configuration of HRM-ACT-v1 (the original's `HierarchicalReasoningModel_ACTV1Config`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

POS_ENCODINGS = ("rope", "learned")
FORWARD_DTYPES = ("float32", "bfloat16", "float64")  # float64 needs jax_enable_x64 (see `needs_x64`)
LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")
ATTENTION_IMPLS = ("auto", "xla", "blockwise", "cudnn", "jax")
# "auto" uses the blockwise attention from this many positions on (below it the scores are small and the
# one-shot "xla" path, the parity reference, is as fast).
BLOCKWISE_MIN_LEN = 256
ARCHS = ("hrm_v1", "trm")  # hrm_v1: this class; trm: hrm_jax.model.trm.TRMConfig


def swiglu_width(expansion: float, size: int) -> int:
  """SwiGLU width: 2/3·expansion·size rounded half-to-even, then up to a multiple of 256."""
  return 256 * math.ceil(round(expansion * size * 2 / 3) / 256)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static hyper-parameters of HRM-ACT-v1; data-dependent sizes come from the dataset."""

  vocab_size: int
  seq_len: int
  num_puzzle_identifiers: int = 1
  puzzle_emb_ndim: int = 0  # 0 disables the puzzle-embedding prefix.
  hidden_size: int = 512
  num_heads: int = 8
  expansion: float = 4.0
  H_cycles: int = 2
  L_cycles: int = 2
  H_layers: int = 4
  L_layers: int = 4
  pos_encodings: str = "rope"
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  halt_max_steps: int = 16
  halt_exploration_prob: float = 0.1
  forward_dtype: str = "bfloat16"
  # Not in the original: how attention is computed. "xla": one-shot [B, N, T, T] scores with flash-attention's
  # rounding (the parity reference); "blockwise": online softmax over key blocks, memory linear in T (any
  # platform); "cudnn": cuDNN flash attention (GPU, bfloat16); "jax": jax.nn.dot_product_attention's XLA path;
  # "auto": cudnn on GPU in bfloat16, else blockwise from BLOCKWISE_MIN_LEN positions on, else xla.
  attention_impl: str = "xla"
  arch: str = "hrm_v1"  # which model; "trm" configs are hrm_jax.model.trm.TRMConfig

  def __post_init__(self):
    problems = []
    if self.arch != "hrm_v1":
      problems.append(f"arch={self.arch!r} (this config class is HRM's; build other archs with "
                      "ModelConfig.from_dict({..., 'arch': ...}))")
    if self.pos_encodings not in POS_ENCODINGS:
      problems.append(f"pos_encodings={self.pos_encodings!r} (choose one of {POS_ENCODINGS})")
    if self.forward_dtype not in FORWARD_DTYPES:
      problems.append(f"forward_dtype={self.forward_dtype!r} (choose one of {FORWARD_DTYPES})")
    if self.attention_impl not in ATTENTION_IMPLS:
      problems.append(f"attention_impl={self.attention_impl!r} (choose one of {ATTENTION_IMPLS})")
    elif self.attention_impl == "cudnn" and self.forward_dtype != "bfloat16":
      problems.append(f"attention_impl='cudnn' needs forward_dtype='bfloat16', not {self.forward_dtype!r} "
                      "(use attention_impl='blockwise' or 'auto' for float32)")
    if self.hidden_size % self.num_heads:
      problems.append(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
    elif (self.hidden_size // self.num_heads) % 2 and self.pos_encodings == "rope":
      problems.append("RoPE needs an even head dimension (hidden_size // num_heads)")
    for name in ("vocab_size", "seq_len", "hidden_size", "num_heads", "H_cycles", "L_cycles",
                 "H_layers", "L_layers", "halt_max_steps", "num_puzzle_identifiers"):
      if getattr(self, name) < 1:
        problems.append(f"{name}={getattr(self, name)} must be >= 1")
    if self.puzzle_emb_ndim < 0:
      problems.append(f"puzzle_emb_ndim={self.puzzle_emb_ndim} must be >= 0")
    if not 0.0 <= self.halt_exploration_prob <= 1.0:
      problems.append(f"halt_exploration_prob={self.halt_exploration_prob} must be in [0, 1]")
    if problems:
      raise ValueError("Invalid model config: " + "; ".join(problems))

  def check_platform(self, platform: str) -> None:
    """Raises ValueError (one line) when `attention_impl` cannot run on `platform` ("cpu", "gpu", "tpu")."""
    if self.attention_impl == "cudnn" and platform != "gpu":
      raise ValueError(f"Invalid model config: attention_impl='cudnn' needs a CUDA GPU, but JAX runs on "
                       f"{platform}; use attention_impl='auto' (or 'blockwise')")

  def resolved_attention_impl(self, platform: str, length: int) -> str:
    """The attention implementation actually used at `length` positions on `platform`."""
    self.check_platform(platform)
    if self.attention_impl != "auto":
      return self.attention_impl
    if platform == "gpu" and self.forward_dtype == "bfloat16" and self.head_dim % 8 == 0 and self.head_dim <= 128:
      return "cudnn"
    if self.forward_dtype == "float64":
      return "xla"  # the only implementation with float64 scores (the original's float64 path)
    return "blockwise" if length >= BLOCKWISE_MIN_LEN else "xla"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def puzzle_emb_len(self) -> int:
    """P: number of prefix slots holding the zero-padded puzzle embedding."""
    return -(self.puzzle_emb_ndim // -self.hidden_size)

  @property
  def total_len(self) -> int:
    """T = P + S positions seen by the transformer."""
    return self.seq_len + self.puzzle_emb_len

  @property
  def mlp_width(self) -> int:
    """Width of the channel SwiGLU (see `swiglu_width`)."""
    return swiglu_width(self.expansion, self.hidden_size)

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.forward_dtype)

  @property
  def needs_x64(self) -> bool:
    """float64 forward runs need `jax.config.update("jax_enable_x64", True)` before any JAX computation."""
    return self.forward_dtype == "float64"

  def check_x64(self) -> None:
    """Raises when the config needs x64 but JAX would silently compute float64 arrays in float32."""
    if self.needs_x64 and not jax.config.jax_enable_x64:
      raise ValueError("forward_dtype='float64' needs 64-bit JAX: call "
                       "jax.config.update('jax_enable_x64', True) at start-up (hrm_jax.main and "
                       "tools.parity do this for float64 configs)")

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """The config of `values["arch"]` (default hrm_v1) from a dict such as `to_dict()` wrote."""
    arch = values.get("arch", "hrm_v1")
    if arch not in ARCHS:
      raise ValueError(f"Unknown model arch {arch!r}; choose one of {ARCHS}")
    if cls is ModelConfig and arch == "trm":
      from hrm_jax.model.trm import TRMConfig  # pylint: disable=import-outside-toplevel
      return TRMConfig.from_dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"Unknown model config keys {unknown}; valid keys are {sorted(known)}")
    return cls(**dict(values))
