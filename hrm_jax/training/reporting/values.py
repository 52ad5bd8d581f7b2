"""Small conversions and file helpers shared by the report writers: floats, JSON values, durations, paths."""

from __future__ import annotations

import json
import math
import os
import pathlib
import secrets
import time
from typing import Any, Mapping

PathLike = str | os.PathLike


def new_run_id(now: float | None = None) -> str:
  """Returns a short, unique run id that sorts by start time, e.g. '20261123-185301-ab12' (UTC)."""
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
  # Two random bytes separate runs started in the same second; the time prefix keeps ids sortable.
  return f"{stamp}-{secrets.token_hex(2)}"


def to_float(value: Any) -> float:
  """Converts a Python/numpy/jax scalar (or a size-1 array) to a plain float; raises TypeError otherwise."""
  if isinstance(value, (bool, int, float)):
    return float(value)
  size = getattr(value, "size", None)
  if size is not None and size != 1:
    raise TypeError(f"expected a scalar, got an array of shape {getattr(value, 'shape', '?')}")
  try:
    # `.item()` covers numpy and jax scalars/arrays without importing either here.
    item = value.item() if hasattr(value, "item") else value
    return float(item)
  except (TypeError, ValueError) as e:
    raise TypeError(f"expected a number, got {type(value).__name__}: {value!r}") from e


def to_jsonable(value: Any) -> Any:
  """Converts metric values to what strict JSON can hold: plain floats, lists, dicts, strings.

  Non-finite floats become null, because NaN/Infinity are not JSON and would make the whole line
  unreadable to strict parsers (jq, browsers); a diverging run still shows up as null losses.
  """
  if value is None or isinstance(value, (str, bool)):
    return value
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if hasattr(value, "tolist") and getattr(value, "size", 1) != 1:
    return to_jsonable(value.tolist())
  if hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "b":
    return bool(value.item())
  try:
    number = to_float(value)
  except TypeError:
    return str(value)
  return number if math.isfinite(number) else None


def format_duration(seconds: float | None) -> str:
  """Formats a duration for humans: '3d 04h', '1h 02m', '4m 05s', '12s'; '?' when unknown."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  total = int(round(seconds))
  days, rest = divmod(total, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f"{days}d {hours:02d}h"
  if hours:
    return f"{hours}h {minutes:02d}m"
  if minutes:
    return f"{minutes}m {secs:02d}s"
  return f"{secs}s"


def eta_seconds(step: int, total_steps: int | None, steps_per_s: float | None) -> float | None:
  """Seconds left to reach `total_steps` at `steps_per_s`; None when either is unknown or the rate is 0."""
  if total_steps is None:
    return None
  remaining = max(total_steps - step, 0)
  if remaining == 0:
    return 0.0
  if not steps_per_s or steps_per_s <= 0 or not math.isfinite(steps_per_s):
    return None
  return remaining / steps_per_s


def prepare_parent(path: pathlib.Path, what: str) -> None:
  """Creates the parent folder of `path`, turning OS errors into a message that says what to fix."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(
        f"cannot create the folder for the {what} at {path}: {e.strerror or e}. "
        "Point the run's workdir at a writable folder."
    ) from e
  if path.is_dir():
    raise IsADirectoryError(
        f"the {what} path {path} is a folder; give a file path (or remove the folder)."
    )


def open_for_writing(path: pathlib.Path, mode: str, what: str):
  try:
    return open(path, mode)
  except OSError as e:
    raise OSError(
        f"cannot open the {what} {path} for writing: {e.strerror or e}. "
        "Check the path and its permissions, or choose another workdir."
    ) from e


def write_json_atomically(path: pathlib.Path, data: Mapping[str, Any]) -> None:
  """Writes JSON to a temporary file beside `path`, then renames it over `path`.

  Readers (a user's `cat`, a dashboard) therefore see either the old or the new file, never a half-written
  one, even if the run is killed mid-write.
  """
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, allow_nan=False)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
