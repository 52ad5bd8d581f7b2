"""One loader for every model file hrm_jax reads: a run's workdir, an hrm_jax `.npz`, an original `step_N`.

Each carries its own model config (the run's saved config; the .npz's metadata; the all_config.yaml beside
a step_N file, which `convert to-torch` writes), so no flag is needed to rebuild the architecture. Every
loaded model is checked against its config key by key and shape by shape before it is used.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import numpy as np

from hrm_jax.convert import npz_file
from hrm_jax.convert import run_dir
from hrm_jax.convert import torch_checkpoint
from hrm_jax.convert.torch_checkpoint import CheckpointConversionError
from hrm_jax.model.config import ModelConfig

# Fields a caller may change on a model whose config is recorded: they change how it runs, not what it is.
RUNTIME_KEYS = ("attention_impl", "halt_max_steps")


@dataclasses.dataclass
class LoadedModel:
  params: dict[str, Any]
  buffers: dict[str, np.ndarray]
  puzzle_table: np.ndarray | None
  model_config: ModelConfig
  loss_type: str | None
  source: str  # what was read, for messages and reports
  kind: str  # "run" | "npz" | "torch"
  step: int | None = None
  run_config: dict[str, Any] | None = None
  notes: list[str] = dataclasses.field(default_factory=list)


def _check_overrides(cfg: ModelConfig, overrides: Mapping[str, Any] | None, source: str) -> ModelConfig:
  if not overrides:
    return cfg
  fields = cfg.to_dict()
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise CheckpointConversionError(f"--set {unknown[0]}: not a model config key (keys: {sorted(fields)}).")
  clashes = [f"{k}: {source} records {fields[k]!r}, --set gives {v!r}" for k, v in overrides.items()
             if k not in RUNTIME_KEYS and str(fields[k]) != str(v)]
  if clashes:
    raise CheckpointConversionError("the flags contradict the model file's own config (" + "; ".join(clashes)
                                    + "); drop those --set flags.")
  return cfg.replace(**{k: overrides[k] for k in overrides if k in RUNTIME_KEYS})


def check_weights(params, buffers, puzzle_table, cfg: ModelConfig, source: str) -> None:
  """Raises CheckpointConversionError naming every key or shape that does not fit `cfg`."""
  try:
    state = torch_checkpoint.to_state_dict(params, buffers, puzzle_table, cfg, prefix="")
  except (KeyError, TypeError) as e:
    raise CheckpointConversionError(f"{source} lacks the parameter {e} that its model config needs "
                                    f"(hidden_size={cfg.hidden_size}, H_layers={cfg.H_layers}, "
                                    f"L_layers={cfg.L_layers}); the file does not match its config.") from e
  torch_checkpoint.validate_keys(state, cfg)


def load_model(path: str | pathlib.Path, *, step: int | None = None, overrides: Mapping[str, Any] | None = None,
               seq_len: int | None = None, original_defaults: bool = False) -> LoadedModel:
  """Reads `path` (run workdir or checkpoints dir, `.npz`, or original `step_N`/`.safetensors`).

  `step` picks a run's checkpoint (default: its best, else latest). `overrides` (model config fields) may
  only fill what an original checkpoint without all_config.yaml lacks, or change RUNTIME_KEYS; `seq_len`
  (from a dataset) is checked against the model's. `original_defaults` lets a bare step_N use the
  original's default architecture fields.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointConversionError(f"{path} does not exist; pass an hrm_jax run's workdir, an .npz model "
                                    "file, or an original step_N checkpoint.")
  if path.is_dir():
    if not run_dir.is_run_dir(path):
      raise CheckpointConversionError(f"{path} is a directory but not an hrm_jax run (no checkpoints/ inside); "
                                      "pass a run's workdir, or the step_N file of an original checkpoint.")
    run = run_dir.read_run(path, step)
    source = f"{run.directory / str(run.step)}"
    cfg = _check_overrides(run.model_config, overrides, source)
    model = LoadedModel(run.params, run.buffers, run.puzzle_table, cfg, run.loss_type, source, "run",
                        step=run.step, run_config=run.config)
  elif step is not None:
    raise CheckpointConversionError(f"--step chooses a checkpoint of a run directory; {path} is one file.")
  elif path.suffix == ".npz":
    npz = npz_file.load_npz(path)
    cfg = _check_overrides(npz.model_config, overrides, str(path))
    model = LoadedModel(npz.params, npz.buffers, npz.puzzle_table, cfg, npz.loss_type, str(path), "npz")
  else:
    converted = torch_checkpoint.load_original_checkpoint(path, overrides=overrides, seq_len=seq_len,
                                                          require_config=not original_defaults)
    model = LoadedModel(converted.params, converted.buffers, converted.puzzle_table, converted.model_config,
                        converted.loss_type, str(path), "torch", notes=list(converted.notes))
  check_weights(model.params, model.buffers, model.puzzle_table, model.model_config, model.source)
  if seq_len is not None and model.model_config.seq_len != seq_len:
    raise CheckpointConversionError(
        f"{model.source} was trained on sequences of {model.model_config.seq_len} tokens, the data has "
        f"{seq_len}; use the dataset the model was trained on (or a model trained on this one).")
  return model
