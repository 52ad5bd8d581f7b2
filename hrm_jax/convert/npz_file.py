"""A portable single-file checkpoint of an hrm_jax model: params, buffers, puzzle table and model config.

Layout of the .npz (no pickles; `np.load` reads it with `allow_pickle=False`):
  params/<flax path joined by '/'>   float32, Flax layout (kernels `[in, out]`)
  buffers/H_init, buffers/L_init     `[D]` in the forward dtype; bfloat16 is stored as its uint16 bit pattern
  puzzle_table                       `[num_puzzle_identifiers, puzzle_emb_ndim]` float32 (puzzle_emb_ndim > 0)
  metadata                           0-d string, JSON: {"format", "model_config", "loss_type"}
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from hrm_jax.convert.torch_checkpoint import CheckpointConversionError
from hrm_jax.model.config import ModelConfig

FORMAT = "hrm_jax.npz/1"


@dataclasses.dataclass
class NpzCheckpoint:
  params: dict[str, Any]
  buffers: dict[str, np.ndarray]
  puzzle_table: np.ndarray | None
  model_config: ModelConfig
  loss_type: str | None


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{name}/"))
    else:
      flat[prefix + name] = np.asarray(value)
  return flat


def save_npz(path: str | os.PathLike, params, buffers, puzzle_table, cfg: ModelConfig,
             loss_type: str | None = None) -> pathlib.Path:
  """Writes the model to `path` exactly (no `.npz` appended), atomically."""
  path = pathlib.Path(path)
  if not path.parent.is_dir():
    raise FileNotFoundError(f"Output directory {path.parent} does not exist; create it first.")
  arrays = _flatten(params, "params/")
  for name in ("H_init", "L_init"):
    value = np.asarray(buffers[name])
    arrays[f"buffers/{name}"] = value.view(np.uint16) if value.dtype == ml_dtypes.bfloat16 else value
  if puzzle_table is not None:
    arrays["puzzle_table"] = np.asarray(puzzle_table, np.float32)
  arrays["metadata"] = np.array(json.dumps(
      {"format": FORMAT, "model_config": cfg.to_dict(), "loss_type": loss_type}))
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
  return path


def load_npz(path: str | os.PathLike) -> NpzCheckpoint:
  """Reads a file written by `save_npz`; every problem raises CheckpointConversionError or FileNotFoundError."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; pass an .npz written by `python -m hrm_jax.convert to-jax`.")
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise CheckpointConversionError(f"Could not read {path} as an .npz file ({type(e).__name__}: {e}); "
                                    "it may be truncated; re-create it with `to-jax`.") from e
  if "metadata" not in arrays:
    raise CheckpointConversionError(
        f"{path} has no `metadata` entry, so it is not an hrm_jax model file; create one with "
        "`python -m hrm_jax.convert to-jax STEP_FILE --output OUT.npz`.")
  try:
    metadata = json.loads(str(arrays.pop("metadata")))
    if metadata.get("format") != FORMAT:
      raise ValueError(f"format {metadata.get('format')!r}, expected {FORMAT!r}")
    cfg = ModelConfig.from_dict(metadata["model_config"])
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointConversionError(f"{path} has invalid metadata: {e}") from e

  params: dict[str, Any] = {}
  buffers: dict[str, np.ndarray] = {}
  puzzle_table = arrays.pop("puzzle_table", None)
  for key, value in arrays.items():
    kind, _, rest = key.partition("/")
    if kind == "params" and rest:
      node = params
      *parents, leaf = rest.split("/")
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = value
    elif kind == "buffers" and rest in ("H_init", "L_init"):
      buffers[rest] = value.view(ml_dtypes.bfloat16) if value.dtype == np.uint16 else value
    else:
      raise CheckpointConversionError(f"{path} has an unexpected entry {key!r}")
  missing = [f"buffers/{n}" for n in ("H_init", "L_init") if n not in buffers]
  if cfg.puzzle_emb_ndim > 0 and puzzle_table is None:
    missing.append("puzzle_table")
  if missing:
    raise CheckpointConversionError(f"{path} lacks {missing}")
  return NpzCheckpoint(params=params, buffers=buffers, puzzle_table=puzzle_table, model_config=cfg,
                       loss_type=metadata.get("loss_type"))
