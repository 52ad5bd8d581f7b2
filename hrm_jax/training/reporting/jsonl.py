"""metrics.jsonl: one JSON object per logged step, appended across restarts."""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Mapping

from hrm_jax.training.reporting.values import PathLike, open_for_writing, prepare_parent, to_jsonable

_RESERVED_JSONL_KEYS = ("step", "time", "split")
JSONL_SPLITS = ("train", "eval", "eval_fast")


class JsonlWriter:
  """Appends one JSON object per call: {"step", "time", "split", **metrics}.

  The file is opened in append mode and flushed after every line, so a restarted run continues the same
  file and a crash loses at most the line being written. A torn last line from a crash is closed with a
  newline before appending, so it cannot glue itself to the next record.
  """

  def __init__(self, path: PathLike):
    self.path = pathlib.Path(path)
    prepare_parent(self.path, "metrics log")
    needs_newline = False
    if self.path.exists() and self.path.stat().st_size > 0:
      with open(self.path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        needs_newline = f.read(1) != b"\n"
    self._file = open_for_writing(self.path, "a", "metrics log")
    if needs_newline:
      self._file.write("\n")
      self._file.flush()

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train", *,
            wall_time: float | None = None) -> None:
    """Appends one line for `step`; `split` is "train", "eval" or "eval_fast" (the training loop's fixed
    evaluation subset); metric values become plain floats."""
    if split not in JSONL_SPLITS:
      raise ValueError(f"split must be 'train' or 'eval' (or 'eval_fast', the fast evaluation subset), got "
                       f"{split!r}")
    clash = [k for k in metrics if k in _RESERVED_JSONL_KEYS]
    if clash:
      raise ValueError(f"metric names {clash} collide with the JSONL record keys {_RESERVED_JSONL_KEYS}")
    record = {"step": int(step), "time": time.time() if wall_time is None else float(wall_time),
              "split": split}
    record.update({str(k): to_jsonable(v) for k, v in metrics.items()})
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()

  def __enter__(self) -> "JsonlWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file, skipping lines that do not parse (a torn line from a crash)."""
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records
