"""Convert between the original's PyTorch checkpoints and hrm_jax's parameter pytrees.

In:  `step_N` files written by the original's pretrain.py (torch.save of a state_dict, keys prefixed
     `_orig_mod.model.inner.`, `model.inner.` or `inner.`) and safetensors files. Torch files are loaded with
     `weights_only=True`, so no pickled code ever runs.
Out: a state_dict that the original's model loads with `strict=True` (keys `_orig_mod.model.inner.*` by default).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Collection, Mapping

import ml_dtypes
import numpy as np
import yaml

from hrm_jax.model.config import ModelConfig

KNOWN_PREFIXES = ("_orig_mod.model.inner.", "model.inner.", "inner.")
DEFAULT_PREFIX = KNOWN_PREFIXES[0]
# Defaults of the original's config/arch/hrm_v1.yaml, used for what shapes cannot tell.
ARCH_DEFAULTS = {"num_heads": 8, "expansion": 4.0, "H_cycles": 2, "L_cycles": 2, "halt_max_steps": 16,
                 "halt_exploration_prob": 0.1, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}
# What shapes cannot tell and a missing all_config.yaml leaves to guesswork (the architecture and its ACT loop).
UNINFERABLE_KEYS = ("num_heads", "expansion", "H_cycles", "L_cycles", "halt_max_steps")
ORIGINAL_ARCH_NAME = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
ORIGINAL_LOSS_NAME = "losses@ACTLossHead"
ALL_CONFIG_FORMAT = "hrm_jax.all_config/1"
# The `arch` block of an all_config.yaml written by hrm_jax: the original's keys, in its layout.
_ARCH_KEYS = ("H_cycles", "H_layers", "L_cycles", "L_layers", "expansion", "forward_dtype", "halt_exploration_prob",
              "halt_max_steps", "hidden_size", "num_heads", "pos_encodings", "puzzle_emb_ndim", "rms_norm_eps",
              "rope_theta")
# Run-config fields that have a counterpart at the top level of the original's all_config.yaml.
_RUN_KEYS = {"data_path": "data_dir", "global_batch_size": "global_batch_size", "epochs": "epochs",
             "lr": "optimizer.lr", "lr_min_ratio": "optimizer.lr_min_ratio",
             "lr_warmup_steps": "optimizer.warmup_steps", "weight_decay": "optimizer.weight_decay",
             "beta1": "optimizer.beta1", "beta2": "optimizer.beta2", "puzzle_emb_lr": "optimizer.puzzle_emb_lr",
             "puzzle_emb_weight_decay": "optimizer.puzzle_emb_weight_decay", "seed": "seed"}
_LAYER_KEY = re.compile(r"^(H|L)_level\.layers\.(\d+)\.(self_attn\.qkv_proj|self_attn\.o_proj|"
                        r"mlp\.gate_up_proj|mlp\.down_proj)\.weight$")


class CheckpointConversionError(ValueError):
  """A checkpoint that does not match the expected HRM layout; the message lists every problem."""


@dataclasses.dataclass
class ConvertedCheckpoint:
  params: dict[str, Any]
  buffers: dict[str, np.ndarray]
  puzzle_table: np.ndarray | None
  model_config: ModelConfig
  loss_type: str | None
  prefix: str
  notes: list[str]


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------
def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a torch `step_N`/`.pt` file (weights only) or a `.safetensors` file into numpy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Checkpoint file {path} does not exist; pass the path of a `step_N` file "
                            "written by the original's pretrain.py, or a .safetensors file.")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointConversionError(f"Could not read safetensors file {path}: {e}") from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading the original's torch checkpoints needs PyTorch: "
                      "pip install torch==2.13.0 (the CPU build is enough).") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise CheckpointConversionError(
        f"Could not load {path} as a PyTorch checkpoint with weights_only=True ({type(e).__name__}: {e}). "
        "The file may be truncated or not a state_dict; re-copy it, or convert it to .safetensors.") from e
  if not isinstance(state, Mapping):
    raise CheckpointConversionError(f"{path} holds a {type(state).__name__}, not a state_dict mapping.")
  return {k: _torch_to_numpy(v) for k, v in state.items()}


def strip_prefix(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
  for prefix in KNOWN_PREFIXES:
    if any(k.startswith(prefix) for k in state):
      if not all(k.startswith(prefix) for k in state):
        others = sorted(k for k in state if not k.startswith(prefix))
        raise CheckpointConversionError(
            f"Mixed key prefixes: expected every key to start with {prefix!r}, but these do not: {others[:10]}")
      return {k[len(prefix):]: v for k, v in state.items()}, prefix
  if "embed_tokens.embedding_weight" in state:
    return dict(state), ""
  raise CheckpointConversionError(
      f"No HRM keys found: expected keys starting with one of {KNOWN_PREFIXES} "
      f"(e.g. '{DEFAULT_PREFIX}embed_tokens.embedding_weight'); got {sorted(state)[:8]}...")


def all_config_for(cfg: ModelConfig, loss_type: str | None = None,
                   run_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """An all_config.yaml in the original's layout, plus an `hrm_jax` block with the complete model config.

  The original reads `arch` (its model and loss) and the top-level training fields, and ignores the
  `hrm_jax` block; hrm_jax reads the block back, so sizes that come from the dataset (vocab_size, seq_len,
  num_puzzle_identifiers) travel with the weights.
  """
  arch: dict[str, Any] = {"name": ORIGINAL_ARCH_NAME,
                          "loss": {"name": ORIGINAL_LOSS_NAME, "loss_type": loss_type or "stablemax_cross_entropy"}}
  arch.update({k: getattr(cfg, k) for k in _ARCH_KEYS})
  if cfg.arch == "trm":
    from hrm_jax.convert import trm_checkpoint  # pylint: disable=import-outside-toplevel
    arch.update(trm_checkpoint.arch_block(cfg))
  out: dict[str, Any] = {"arch": arch}
  for key, dotted in _RUN_KEYS.items():
    node: Any = run_config or {}
    for part in dotted.split("."):
      node = node.get(part) if isinstance(node, Mapping) else None
    if node is not None:
      out[key] = node
  out["hrm_jax"] = {"format": ALL_CONFIG_FORMAT, "model_config": cfg.to_dict()}
  return out


def write_all_config(directory: str | pathlib.Path, cfg: ModelConfig, loss_type: str | None = None,
                     run_config: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes `directory/all_config.yaml`; refuses to replace one that describes another model."""
  path = pathlib.Path(directory) / "all_config.yaml"
  content = all_config_for(cfg, loss_type, run_config)
  if path.is_file():
    existing = load_all_config(path) or {}
    theirs = (existing.get("hrm_jax") or {}).get("model_config") or existing.get("arch")
    ours = content["hrm_jax"]["model_config"] if "hrm_jax" in existing else content["arch"]
    if theirs != ours:
      raise CheckpointConversionError(
          f"{path} already describes another model; write the converted checkpoint into its own directory "
          "(the original expects one all_config.yaml per checkpoint directory).")
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(yaml.safe_dump(content, sort_keys=False))
  tmp.replace(path)
  return path


def hrm_jax_model_config(all_config: Mapping[str, Any] | None) -> dict[str, Any] | None:
  """The complete model config an hrm_jax-written all_config.yaml carries, or None."""
  block = (all_config or {}).get("hrm_jax") or {}
  if not block:
    return None
  if block.get("format") != ALL_CONFIG_FORMAT or not isinstance(block.get("model_config"), Mapping):
    raise CheckpointConversionError(f"all_config.yaml's hrm_jax block has format {block.get('format')!r}, "
                                    f"expected {ALL_CONFIG_FORMAT!r} with a model_config mapping.")
  return dict(block["model_config"])


def load_all_config(path: str | pathlib.Path) -> dict[str, Any] | None:
  """The original's all_config.yaml (beside a checkpoint file, or the file itself), or None."""
  path = pathlib.Path(path)
  candidate = path if path.suffix in (".yaml", ".yml") else path.parent / "all_config.yaml"
  if not candidate.is_file():
    return None
  try:
    with open(candidate) as f:
      loaded = yaml.safe_load(f)
  except yaml.YAMLError as e:
    raise CheckpointConversionError(f"{candidate} is not valid YAML ({' '.join(str(e).split())}); "
                                    "restore it from the run, or remove it and give the config with --set.") from e
  if loaded is not None and not isinstance(loaded, Mapping):
    raise CheckpointConversionError(f"{candidate} holds a {type(loaded).__name__}, not a mapping of config keys.")
  return loaded


# ---------------------------------------------------------------------------------------------------------
# Inferring the model config
# ---------------------------------------------------------------------------------------------------------
def infer_model_config(state: Mapping[str, np.ndarray], all_config: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
  """Model config from tensor shapes, plus all_config.yaml's `arch` block for what shapes cannot tell.

  Shapes decide sizes; a disagreeing yaml value is an error. Returns (fields, notes). `seq_len` is only
  known from shapes with learned positions; otherwise the caller supplies it from the dataset.
  """
  notes: list[str] = []
  if "embed_tokens.embedding_weight" not in state:
    raise CheckpointConversionError("Missing key 'embed_tokens.embedding_weight': not an HRM checkpoint.")
  vocab_size, hidden = state["embed_tokens.embedding_weight"].shape
  layer_ids = {"H": set(), "L": set()}
  for key in state:
    match = _LAYER_KEY.match(key)
    if match:
      layer_ids[match.group(1)].add(int(match.group(2)))
  fields: dict[str, Any] = {
      "vocab_size": int(vocab_size), "hidden_size": int(hidden),
      "H_layers": len(layer_ids["H"]), "L_layers": len(layer_ids["L"]),
      "pos_encodings": "learned" if "embed_pos.embedding_weight" in state else "rope",
      "forward_dtype": {np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.float64): "float64"}.get(
          np.dtype(state.get("H_init", np.zeros(1, np.float32)).dtype), "float32"),
  }
  if "puzzle_emb.weights" in state:
    num_ids, ndim = state["puzzle_emb.weights"].shape
    fields.update(num_puzzle_identifiers=int(num_ids), puzzle_emb_ndim=int(ndim))
  else:
    fields.update(num_puzzle_identifiers=1, puzzle_emb_ndim=0)
  if fields["pos_encodings"] == "learned":
    prefix_len = -(fields["puzzle_emb_ndim"] // -hidden)
    fields["seq_len"] = int(state["embed_pos.embedding_weight"].shape[0]) - prefix_len
  mlp_key = "H_level.layers.0.mlp.gate_up_proj.weight"
  mlp_width = state[mlp_key].shape[0] // 2 if mlp_key in state else None

  block = hrm_jax_model_config(all_config)
  arch = dict((all_config or {}).get("arch") or {})
  if block:
    arch.update({k: v for k, v in block.items() if k in ARCH_DEFAULTS})
  # With an all_config.yaml, a key it leaves out is the original's own code default (its config class):
  # only the keys no config class fixes get a note.
  disagreements = resolve_arch_fields(
      fields, arch, overrides, ARCH_DEFAULTS, notes,
      ("hidden_size", "H_layers", "L_layers", "puzzle_emb_ndim", "pos_encodings", "forward_dtype"),
      noted=UNINFERABLE_KEYS if all_config is not None else None)
  if mlp_width is not None:
    implied = ModelConfig(vocab_size=1, seq_len=1, hidden_size=int(hidden), num_heads=1,
                          expansion=float(fields["expansion"]), pos_encodings="learned").mlp_width
    if implied != mlp_width:
      disagreements.append(f"expansion={fields['expansion']} implies an MLP width of {implied}, but "
                           f"gate_up_proj has width {mlp_width}")
  if hidden % int(fields["num_heads"]):
    disagreements.append(f"num_heads={fields['num_heads']} does not divide hidden_size={hidden}")
  if block:
    if fields["puzzle_emb_ndim"] == 0 and "num_puzzle_identifiers" in block:
      fields["num_puzzle_identifiers"] = block["num_puzzle_identifiers"]  # no table: only the config knows
    for key, value in block.items():
      if key in ARCH_DEFAULTS or (overrides and key in overrides):
        continue
      if key in fields and str(fields[key]) != str(value):
        disagreements.append(f"{key}: all_config.yaml's hrm_jax block says {value!r}, the tensors say {fields[key]!r}")
      fields.setdefault(key, value)
  disagreements += apply_overrides(fields, overrides, ARCH_DEFAULTS)
  if disagreements:
    raise CheckpointConversionError("The checkpoint disagrees with its config:\n  " + "\n  ".join(disagreements))
  return fields, notes


def resolve_arch_fields(fields: dict[str, Any], arch: Mapping[str, Any], overrides: Mapping[str, Any] | None,
                        defaults: Mapping[str, Any], notes: list[str], shape_keys: tuple[str, ...],
                        noted: Collection[str] | None = None) -> list[str]:
  """Completes `fields` (from shapes) with what shapes cannot tell; returns the disagreements found.

  The yaml's `shape_keys` must agree with the tensors; each of `defaults` comes from `overrides`, else the
  yaml, else the original's default, with a note unless `noted` is given and leaves the key out.
  """
  disagreements = [f"{key}: all_config.yaml says {arch[key]!r}, the tensors say {fields[key]!r}"
                   for key in shape_keys if key in arch and str(arch[key]) != str(fields[key])]
  for key, default in defaults.items():
    if overrides and key in overrides:
      fields[key] = overrides[key]
    elif key in arch:
      fields[key] = arch[key]
    else:
      fields[key] = default
      if noted is None or key in noted:
        notes.append(f"{key} is not in the checkpoint's shapes or an all_config.yaml; using the original's "
                     f"default {default!r} (override it if the run used another value)")
  return disagreements


def apply_overrides(fields: dict[str, Any], overrides: Mapping[str, Any] | None,
                    resolved: Collection[str]) -> list[str]:
  """Adds the overrides not in `resolved`; returns those that contradict what the checkpoint has."""
  disagreements = []
  for key, value in (overrides or {}).items():
    if key not in resolved:
      if key in fields and str(fields[key]) != str(value):
        disagreements.append(f"{key}: requested {value!r}, the checkpoint has {fields[key]!r}")
      fields.setdefault(key, value)
  return disagreements


def loss_type_from_all_config(all_config: Mapping[str, Any] | None) -> str | None:
  loss = ((all_config or {}).get("arch") or {}).get("loss") or {}
  return loss.get("loss_type")


# ---------------------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------------------
def _layout(cfg: ModelConfig):
  """(expected_shapes, param_path) of the config's architecture (TRM's live in trm_checkpoint)."""
  if cfg.arch == "trm":
    from hrm_jax.convert import trm_checkpoint  # pylint: disable=import-outside-toplevel
    return trm_checkpoint.expected_shapes, trm_checkpoint.param_path
  return hrm_expected_shapes, _param_path


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every original state_dict key (without prefix) and its shape for `cfg` (HRM or TRM)."""
  return _layout(cfg)[0](cfg)


def hrm_expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every original HRM state_dict key (without prefix) and its shape for `cfg`."""
  d = cfg.hidden_size
  shapes = {"H_init": (d,), "L_init": (d,), "embed_tokens.embedding_weight": (cfg.vocab_size, d),
            "lm_head.weight": (cfg.vocab_size, d), "q_head.weight": (2, d), "q_head.bias": (2,)}
  if cfg.puzzle_emb_ndim > 0:
    shapes["puzzle_emb.weights"] = (cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim)
  if cfg.pos_encodings == "learned":
    shapes["embed_pos.embedding_weight"] = (cfg.total_len, d)
  for level, count in (("H", cfg.H_layers), ("L", cfg.L_layers)):
    for i in range(count):
      shapes.update(block_shapes(cfg, f"{level}_level.layers.{i}."))
  return shapes


def block_shapes(cfg: ModelConfig, base: str, attention: bool = True) -> dict[str, tuple[int, ...]]:
  """The original block's keys below `base` and their shapes: self_attn (unless not `attention`), then mlp."""
  d, width = cfg.hidden_size, cfg.mlp_width
  shapes = {}
  if attention:
    shapes[base + "self_attn.qkv_proj.weight"] = (3 * cfg.num_heads * cfg.head_dim, d)
    shapes[base + "self_attn.o_proj.weight"] = (d, cfg.num_heads * cfg.head_dim)
  shapes[base + "mlp.gate_up_proj.weight"] = (2 * width, d)
  shapes[base + "mlp.down_proj.weight"] = (d, width)
  return shapes


def _param_path(key: str) -> tuple[tuple[str, ...], bool] | None:
  """Flax param path of an original key and whether the weight is transposed; None for non-params."""
  simple = {"embed_tokens.embedding_weight": (("embed_tokens", "embedding"), False),
            "embed_pos.embedding_weight": (("embed_pos", "embedding"), False),
            "lm_head.weight": (("lm_head", "kernel"), True),
            "q_head.weight": (("q_head", "kernel"), True),
            "q_head.bias": (("q_head", "bias"), False)}
  if key in simple:
    return simple[key]
  match = _LAYER_KEY.match(key)
  if match:
    level, index, proj = match.groups()
    sub, name = proj.split(".")
    return (f"{level}_level", f"layers_{index}", sub, name, "kernel"), True
  return None


def validate_keys(state: Mapping[str, np.ndarray], cfg: ModelConfig) -> None:
  expected = expected_shapes(cfg)
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(set(state) - set(expected))
  misshaped = sorted(f"{k}: {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
                     if k in state and tuple(state[k].shape) != expected[k])
  if missing or unexpected or misshaped:
    lines = []
    if missing:
      lines.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
      lines.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if misshaped:
      lines.append(f"mis-shaped keys ({len(misshaped)}): {misshaped}")
    raise CheckpointConversionError(
        "The checkpoint does not match the model config "
        f"(hidden_size={cfg.hidden_size}, H_layers={cfg.H_layers}, L_layers={cfg.L_layers}, "
        f"puzzle_emb_ndim={cfg.puzzle_emb_ndim}, pos_encodings={cfg.pos_encodings}):\n  " + "\n  ".join(lines))


def from_state_dict(state: Mapping[str, np.ndarray], cfg: ModelConfig):
  """(params, buffers, puzzle_table) from an un-prefixed original state_dict; validates every key."""
  validate_keys(state, cfg)
  params: dict[str, Any] = {}
  param_path = _layout(cfg)[1]
  for key, value in state.items():
    mapped = param_path(key)
    if mapped is None:
      continue
    path, transpose = mapped
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    array = np.asarray(value, np.float32)
    node[path[-1]] = np.ascontiguousarray(array.T) if transpose else array
  buffers = {name: np.asarray(state[name]).astype(cfg.dtype) for name in ("H_init", "L_init")}
  table = np.asarray(state["puzzle_emb.weights"], np.float32) if cfg.puzzle_emb_ndim > 0 else None
  return params, buffers, table


def to_state_dict(params, buffers, puzzle_table, cfg: ModelConfig, prefix: str = DEFAULT_PREFIX,
                  params_only: bool = False) -> dict[str, np.ndarray]:
  """The original's state_dict (numpy arrays; bf16 buffers stay bf16) in the original's key order.

  params_only=True gives just the dense parameters (any pytree shaped like `params`, e.g. gradients).
  """
  out: dict[str, np.ndarray] = {}
  shapes, param_path = _layout(cfg)
  for key in shapes(cfg):
    if params_only and param_path(key) is None:
      continue
    if key in ("H_init", "L_init"):
      value = np.asarray(buffers[key])
    elif key == "puzzle_emb.weights":
      value = np.asarray(puzzle_table, np.float32)
    else:
      path, transpose = param_path(key)
      node = params
      for part in path:
        node = node[part]
      value = np.asarray(node, np.float32)
      value = np.ascontiguousarray(value.T) if transpose else value
    out[prefix + key] = value
  return out


def numpy_to_torch(state: Mapping[str, np.ndarray]):
  """A numpy state_dict as torch tensors (needs PyTorch); bfloat16 stays bfloat16."""
  import torch  # pylint: disable=g-import-not-at-top
  result = {}
  for key, value in state.items():
    if value.dtype == ml_dtypes.bfloat16:
      result[key] = torch.from_numpy(value.view(np.int16).copy()).view(torch.bfloat16)
    else:
      result[key] = torch.from_numpy(np.array(value))
  return result


def to_torch_state_dict(params, buffers, puzzle_table, cfg: ModelConfig, prefix: str = DEFAULT_PREFIX):
  """Like `to_state_dict`, as torch tensors (needs PyTorch)."""
  return numpy_to_torch(to_state_dict(params, buffers, puzzle_table, cfg, prefix))


def load_original_checkpoint(path: str | pathlib.Path, *, overrides: Mapping[str, Any] | None = None,
                             seq_len: int | None = None, require_config: bool = False) -> ConvertedCheckpoint:
  """Loads an original checkpoint file (+ its all_config.yaml when beside it) into hrm_jax pytrees.

  require_config=True refuses a file without an all_config.yaml unless `overrides` give every field that
  the tensors cannot tell (UNINFERABLE_KEYS), instead of falling back to the original's defaults.
  """
  raw = load_state_dict(path)
  state, prefix = strip_prefix(raw)
  all_config = load_all_config(path)
  if require_config and all_config is None:
    unknown = [k for k in UNINFERABLE_KEYS if k not in (overrides or {})]
    if unknown:
      raise CheckpointConversionError(
          f"{path} has no all_config.yaml beside it, and its tensors cannot tell {', '.join(unknown)}. Copy "
          "the run's all_config.yaml next to it, or give them: " + " ".join(f"--set {k}=..." for k in unknown)
          + " (or --original-defaults to assume the original's config/arch/hrm_v1.yaml values).")
  from hrm_jax.convert import trm_checkpoint  # pylint: disable=import-outside-toplevel
  infer = trm_checkpoint.infer_model_config if trm_checkpoint.is_trm(state, all_config) else infer_model_config
  fields, notes = infer(state, all_config, overrides)
  if all_config is None:
    notes.insert(0, f"no all_config.yaml beside {path}: config inferred from tensor shapes and defaults")
  if "seq_len" not in fields:
    if seq_len is None:
      raise CheckpointConversionError(
          "seq_len cannot be inferred from a RoPE checkpoint; pass seq_len (it comes from the dataset).")
    fields["seq_len"] = seq_len
  elif seq_len is not None and seq_len != fields["seq_len"]:
    where = "the learned position table fits" if "embed_pos.embedding_weight" in state else \
        "all_config.yaml's hrm_jax block says the model was trained with"
    raise CheckpointConversionError(f"seq_len={seq_len} requested, but {where} seq_len={fields['seq_len']}")
  cfg = ModelConfig.from_dict(fields)
  params, buffers, table = from_state_dict(state, cfg)
  return ConvertedCheckpoint(params=params, buffers=buffers, puzzle_table=table, model_config=cfg,
                             loss_type=loss_type_from_all_config(all_config), prefix=prefix, notes=notes)
