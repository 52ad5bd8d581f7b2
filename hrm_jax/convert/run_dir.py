"""Reads the weights and config of an hrm_jax run's checkpoint, read-only and without the training code.

A run's workdir holds `checkpoints/<step>/` directories written by `hrm_jax.training.checkpoint` (Orbax):
items `state` (the train-state pytree), `config` (the resolved run config, with the dataset's sizes under
`dataset`), `metadata` (metrics, best step, ...), `data_state`, and `commit_success.txt` once the step is
complete. A step killed mid-save is a `<step>.orbax-checkpoint-tmp` directory and is never read.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from hrm_jax.convert.torch_checkpoint import CheckpointConversionError
from hrm_jax.model.config import ModelConfig

COMMIT_FILE = "commit_success.txt"
ITEMS = ("state", "config", "metadata")
DATASET_FIELDS = ("vocab_size", "seq_len", "num_puzzle_identifiers")


@dataclasses.dataclass
class RunCheckpoint:
  params: dict[str, Any]
  buffers: dict[str, np.ndarray]
  puzzle_table: np.ndarray | None
  model_config: ModelConfig
  loss_type: str | None
  step: int
  directory: pathlib.Path
  config: dict[str, Any]
  metadata: dict[str, Any]


def checkpoints_dir(path: str | pathlib.Path) -> pathlib.Path:
  """`path/checkpoints` for a run's workdir, else `path` itself."""
  path = pathlib.Path(path)
  return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def is_run_dir(path: str | pathlib.Path) -> bool:
  path = pathlib.Path(path)
  return path.is_dir() and ((path / "checkpoints").is_dir() or (path / "config.json").is_file()
                            or any(p.name.isdigit() or p.name.endswith(".orbax-checkpoint-tmp")
                                   for p in path.iterdir()))


def _read_json(path: pathlib.Path) -> Any:
  return json.loads(path.read_text())


def _step_problem(step_dir: pathlib.Path) -> str | None:
  if not (step_dir / COMMIT_FILE).is_file():
    return "not committed (a save that did not finish)"
  for item in ITEMS:
    if not (step_dir / item).is_dir():
      return f"item {item}/ is missing"
  try:
    for item in ITEMS[1:]:
      _read_json(step_dir / item / "metadata")
    _read_json(step_dir / "state" / "_METADATA")
  except (OSError, ValueError) as e:
    return f"unreadable metadata ({type(e).__name__}: {e})"
  return None


def good_steps(directory: pathlib.Path) -> tuple[list[int], dict[int, str]]:
  """(complete steps ascending, {incomplete step: why}) in a checkpoints directory."""
  good, bad = [], {}
  for entry in directory.iterdir() if directory.is_dir() else []:
    name = entry.name.split(".")[0]
    if not (entry.is_dir() and name.isdigit()):
      continue
    problem = "half-written (a save was killed)" if entry.name != name else _step_problem(entry)
    if problem is None:
      good.append(int(name))
    else:
      bad[int(name)] = problem
  return sorted(good), bad


def choose_step(directory: pathlib.Path, step: int | None = None) -> int:
  """`step` when it is complete; otherwise the run's best step (full-eval exact accuracy), else its latest."""
  good, bad = good_steps(directory)
  if step is not None:
    if step in good:
      return step
    why = f"step {step} is {bad[step]}" if step in bad else f"there is no step {step}"
    raise CheckpointConversionError(f"{directory}: {why}; complete steps: {good or 'none'}. Pass one of "
                                    "those with --step, or omit --step.")
  if not good:
    detail = "; ".join(f"step {s}: {why}" for s, why in sorted(bad.items()))
    raise CheckpointConversionError(
        f"{directory} holds no complete hrm_jax checkpoint" + (f" ({detail})" if detail else "")
        + "; pass a run's workdir (or its checkpoints/ directory) after at least one checkpoint was saved.")
  best = (_read_json(directory / str(good[-1]) / "metadata" / "metadata").get("best") or {}).get("step")
  return int(best) if best in good else good[-1]


def model_config_from_run_config(config: dict[str, Any], where: str) -> ModelConfig:
  dataset = config.get("dataset") or {}
  missing = [k for k in DATASET_FIELDS if k not in dataset]
  if missing or "model" not in config:
    raise CheckpointConversionError(
        f"{where}: the run's saved config lacks {missing or ['model']}; it was written by an older hrm_jax "
        "that did not record the dataset's sizes. Retrain, or convert with the dataset's sizes by hand.")
  return ModelConfig.from_dict({**config["model"], **{k: dataset[k] for k in DATASET_FIELDS}})


def read_run(path: str | pathlib.Path, step: int | None = None) -> RunCheckpoint:
  """Weights (host numpy) and model config of one complete step of a run (see `choose_step`)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = checkpoints_dir(path)
  chosen = choose_step(directory, step)
  step_dir = directory / str(chosen)
  config = _read_json(step_dir / "config" / "metadata")
  metadata = _read_json(step_dir / "metadata" / "metadata")
  cfg = model_config_from_run_config(config, str(step_dir))
  try:
    with ocp.StandardCheckpointer() as reader:
      state = reader.restore(step_dir / "state")
  except Exception as e:  # Orbax/TensorStore raise many types for damaged files
    raise CheckpointConversionError(
        f"could not read the arrays of {step_dir} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
        "the step is damaged: pass another with --step.") from e
  missing = [k for k in ("params", "buffers") if k not in state]
  if missing:
    raise CheckpointConversionError(f"{step_dir} holds no {missing}; it is not an hrm_jax train state.")
  to_host = lambda tree: {k: to_host(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}
  table = state.get("puzzle_table")
  # An EMA run's weights are its shadow (what it evaluates with, and what the original saves).
  params = state["ema_params"] if config.get("ema") and state.get("ema_params") is not None else state["params"]
  return RunCheckpoint(params=to_host(params), buffers=to_host(state["buffers"]),
                       puzzle_table=None if table is None else np.asarray(table), model_config=cfg,
                       loss_type=(config.get("loss") or {}).get("loss_type"), step=chosen, directory=directory,
                       config=config, metadata=metadata)
