"""The TRM side of the checkpoint converter: TinyRecursiveModels' state_dict layout and config inference.

Reading files, key prefixes (`_orig_mod.model.inner.`, `model.inner.`, `inner.`), validation messages and
writing are `torch_checkpoint`'s; this module says which keys a TRM has (one `L_level`, `self_attn` or `mlp_t`
per layer) and how its config follows from shapes and all_config.yaml. A TRM checkpoint of an `ema=True` run
holds the EMA weights (the original saves its EMA copy); nothing in the file tells the two apart.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from hrm_jax.convert import torch_checkpoint
from hrm_jax.model.config import swiglu_width
from hrm_jax.model.trm import TRMConfig

# Defaults of the original's config/arch/trm.yaml, used for what shapes cannot tell.
ARCH_DEFAULTS = {"num_heads": 8, "expansion": 4.0, "H_cycles": 3, "L_cycles": 6, "halt_max_steps": 16,
                 "halt_exploration_prob": 0.1, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
                 "no_ACT_continue": True}
_LAYER_KEY = re.compile(r"^L_level\.layers\.(\d+)\.(self_attn|mlp_t|mlp)\.(qkv_proj|o_proj|gate_up_proj|"
                        r"down_proj)\.weight$")
_DTYPES = {np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.float32): "float32",
           np.dtype(np.float64): "float64"}


ORIGINAL_ARCH_NAME = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"


def arch_block(cfg: TRMConfig) -> dict[str, Any]:
  """What a TRM adds to (or changes in) the `arch` block of an all_config.yaml that hrm_jax writes."""
  return {"name": ORIGINAL_ARCH_NAME, "mlp_t": cfg.mlp_t, "puzzle_emb_len": cfg.puzzle_emb_len,
          "no_ACT_continue": cfg.no_ACT_continue}


def is_trm(state: Mapping[str, np.ndarray], all_config: Mapping[str, Any] | None) -> bool:
  """A TRM checkpoint: all_config.yaml names the trm arch, or there is an L_level but no H_level."""
  block = torch_checkpoint.hrm_jax_model_config(all_config)
  if block:
    return block.get("arch") == "trm"
  name = str(((all_config or {}).get("arch") or {}).get("name", ""))
  if name:
    return ".trm@" in name or name.startswith("trm")
  return (not any(k.startswith("H_level.") for k in state)) and any(k.startswith("L_level.") for k in state)


def infer_model_config(state: Mapping[str, np.ndarray], all_config: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
  """TRM config fields from tensor shapes and all_config.yaml's `arch` block; returns (fields, notes).

  Shapes decide sizes (vocab, hidden, layers, puzzle table, mlp_t and its T = seq_len + P, learned positions);
  a disagreeing yaml value is an error. seq_len is known from shapes only with mlp_t or learned positions.
  """
  notes: list[str] = []
  if "embed_tokens.embedding_weight" not in state:
    raise torch_checkpoint.CheckpointConversionError(
        "Missing key 'embed_tokens.embedding_weight': not a TRM checkpoint.")
  vocab_size, hidden = state["embed_tokens.embedding_weight"].shape
  layers = {int(m.group(1)) for m in map(_LAYER_KEY.match, state) if m}
  mlp_t = any(".mlp_t." in k for k in state)
  h_init = state.get("H_init", np.zeros(1, np.float32))
  fields: dict[str, Any] = {
      "arch": "trm", "vocab_size": int(vocab_size), "hidden_size": int(hidden), "L_layers": len(layers),
      "mlp_t": mlp_t, "forward_dtype": _DTYPES.get(np.dtype(h_init.dtype), str(h_init.dtype)),
  }
  if "puzzle_emb.weights" in state:
    num_ids, ndim = state["puzzle_emb.weights"].shape
    fields.update(num_puzzle_identifiers=int(num_ids), puzzle_emb_ndim=int(ndim))
  else:
    fields.update(num_puzzle_identifiers=1, puzzle_emb_ndim=0)

  arch = dict((all_config or {}).get("arch") or {})
  block = torch_checkpoint.hrm_jax_model_config(all_config) or {}  # written by hrm_jax: the whole config
  arch.update({k: v for k, v in block.items() if k in ARCH_DEFAULTS or k in ("puzzle_emb_len", "pos_encodings")})
  if fields["puzzle_emb_ndim"] == 0 and "num_puzzle_identifiers" in block:
    fields["num_puzzle_identifiers"] = block["num_puzzle_identifiers"]  # no table: only the config knows
  total_len = None
  if "embed_pos.embedding_weight" in state:
    fields["pos_encodings"] = "learned"
    total_len = int(state["embed_pos.embedding_weight"].shape[0])
  elif "pos_encodings" in arch and arch["pos_encodings"] != "learned":
    fields["pos_encodings"] = arch["pos_encodings"]
  else:
    fields["pos_encodings"] = "rope"
    notes.append("pos_encodings (rope or none) is not in the checkpoint's shapes or an all_config.yaml; "
                 "using the original's default 'rope' (override it if the run used none)")
  if mlp_t:
    total_len_t = int(state["L_level.layers.0.mlp_t.gate_up_proj.weight"].shape[1])
    if total_len is not None and total_len != total_len_t:
      raise torch_checkpoint.CheckpointConversionError(
          f"embed_pos has {total_len} positions but mlp_t mixes {total_len_t}")
    total_len = total_len_t

  disagreements = []
  if "puzzle_emb_len" in arch:
    fields["puzzle_emb_len"] = int(arch["puzzle_emb_len"])
  elif overrides and "puzzle_emb_len" in overrides:
    fields["puzzle_emb_len"] = int(overrides["puzzle_emb_len"])
  else:
    fields["puzzle_emb_len"] = 16 if fields["puzzle_emb_ndim"] else 0
    notes.append(f"puzzle_emb_len is not in an all_config.yaml; using the original's default "
                 f"{fields['puzzle_emb_len']} (override it if the run used another value)")
  if fields["puzzle_emb_len"] == 0:
    fields["puzzle_emb_len"] = -(fields["puzzle_emb_ndim"] // -int(hidden))
  if total_len is not None:
    fields["seq_len"] = total_len - fields["puzzle_emb_len"]
  elif "seq_len" in block:
    fields["seq_len"] = int(block["seq_len"])

  rest = {k: v for k, v in (overrides or {}).items() if k != "puzzle_emb_len"}
  disagreements += torch_checkpoint.resolve_arch_fields(
      fields, arch, rest, ARCH_DEFAULTS, notes, ("hidden_size", "L_layers", "puzzle_emb_ndim", "forward_dtype", "mlp_t"))
  disagreements += torch_checkpoint.apply_overrides(fields, rest, ARCH_DEFAULTS)
  if "pos_encodings" in arch and (arch["pos_encodings"] == "learned") != (fields["pos_encodings"] == "learned"):
    disagreements.append(f"pos_encodings: all_config.yaml says {arch['pos_encodings']!r}, the tensors say "
                         f"{fields['pos_encodings']!r}")
  if "L_level.layers.0.mlp.gate_up_proj.weight" in state:
    width = state["L_level.layers.0.mlp.gate_up_proj.weight"].shape[0] // 2
    implied = swiglu_width(float(fields["expansion"]), int(hidden))
    if implied != width:
      disagreements.append(f"expansion={fields['expansion']} implies an MLP width of {implied}, but "
                           f"gate_up_proj has width {width}")
  if not mlp_t and hidden % int(fields["num_heads"]):
    disagreements.append(f"num_heads={fields['num_heads']} does not divide hidden_size={hidden}")
  if disagreements:
    raise torch_checkpoint.CheckpointConversionError(
        "The checkpoint disagrees with its config:\n  " + "\n  ".join(disagreements))
  return fields, notes


def expected_shapes(cfg: TRMConfig) -> dict[str, tuple[int, ...]]:
  """Every original TRM state_dict key (without prefix) and its shape, in the original's order."""
  shapes = {k: v for k, v in torch_checkpoint.hrm_expected_shapes(cfg).items()
            if not k.startswith(("H_level.", "L_level."))}
  t = cfg.total_len
  for i in range(cfg.L_layers):
    base = f"L_level.layers.{i}."
    if cfg.mlp_t:
      token_width = swiglu_width(cfg.expansion, t)
      shapes[base + "mlp_t.gate_up_proj.weight"] = (2 * token_width, t)
      shapes[base + "mlp_t.down_proj.weight"] = (t, token_width)
    shapes.update(torch_checkpoint.block_shapes(cfg, base, attention=not cfg.mlp_t))
  return shapes


def param_path(key: str) -> tuple[tuple[str, ...], bool] | None:
  """Flax param path of an original TRM key and whether the weight is transposed; None for non-params."""
  match = _LAYER_KEY.match(key)
  if match:
    index, sub, name = match.groups()
    return ("L_level", f"layers_{index}", sub, name, "kernel"), True
  return torch_checkpoint._param_path(key)  # pylint: disable=protected-access
