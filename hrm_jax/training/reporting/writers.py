"""The writer interface (`write(step, metrics, split)`, `flush()`, `close()`), fan-out and the standard set."""

from __future__ import annotations

import pathlib
from typing import Any, Iterable, Mapping

from hrm_jax.training.reporting.jsonl import JsonlWriter
from hrm_jax.training.reporting.tensorboard import TensorBoardWriter
from hrm_jax.training.reporting.values import PathLike
from hrm_jax.training.reporting.wandb_writer import WandbWriter


class MultiWriter:
  """Fans `write`, `flush` and `close` out to several writers.

  Every writer is called even if an earlier one fails; the first error is raised afterwards, so one broken
  sink (say, a full disk under tb/) never silently stops the others.
  """

  def __init__(self, writers: Iterable[Any]):
    self.writers = list(writers)

  def _call_all(self, method: str, *args: Any, **kwargs: Any) -> None:
    first_error = None
    for writer in self.writers:
      try:
        getattr(writer, method)(*args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        first_error = first_error or e
    if first_error is not None:
      raise first_error

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
    self._call_all("write", step, metrics, split)

  def flush(self) -> None:
    self._call_all("flush")

  def close(self) -> None:
    self._call_all("close")

  def __enter__(self) -> "MultiWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def make_writers(workdir: PathLike, *, tensorboard: bool = True, wandb_project: str | None = None,
                 run_id: str | None = None, config: Mapping[str, Any] | None = None) -> MultiWriter:
  """The standard set: `workdir/metrics.jsonl`, `workdir/tb/` and, if a project is named, W&B."""
  workdir = pathlib.Path(workdir)
  writers: list[Any] = [JsonlWriter(workdir / "metrics.jsonl")]
  if tensorboard:
    writers.append(TensorBoardWriter(workdir / "tb"))
  if wandb_project:
    writers.append(WandbWriter(wandb_project, name=run_id, run_id=run_id, config=config))
  return MultiWriter(writers)
