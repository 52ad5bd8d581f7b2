"""TensorBoard scalars, written by `tensorboardX` (pure Python; no TensorFlow)."""

from __future__ import annotations

import functools
import itertools
import os
import pathlib
import sys
import time
import types
from typing import Any, Mapping

from hrm_jax.training.reporting.values import PathLike, to_float

_EVENT_FILE_COUNTER = itertools.count()


# Optional imports tensorboardX makes at import time for features scalars never use: PyTorch tensors
# (`writer.py`: `try: import torch`, for a type alias) and S3 event files (`record_writer.py`: `try: import
# boto3`). Installed, they cost seconds of start-up and hundreds of MB.
_UNUSED_OPTIONAL_IMPORTS = ("torch", "boto3")


@functools.cache
def _tensorboardx() -> types.SimpleNamespace:
  """tensorboardX's event writer and protos, imported on first use without its unused optional imports.

  Those not already loaded are hidden for the duration of the import (tensorboardX then takes its
  without-them path) and importable again afterwards.
  """
  hidden = [name for name in _UNUSED_OPTIONAL_IMPORTS if name not in sys.modules]
  for name in hidden:
    sys.modules[name] = None  # `import name` raises ImportError while this is in place.
  try:
    from tensorboardX import event_file_writer  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
  finally:
    for name in hidden:
      if sys.modules.get(name, ...) is None:
        del sys.modules[name]
  return types.SimpleNamespace(EventsWriter=event_file_writer.EventsWriter, Event=event_pb2.Event,
                               Summary=summary_pb2.Summary)


class TensorBoardWriter:
  """Writes scalar summaries to a TensorBoard event file.

  Each writer opens a fresh `events.out.tfevents.<time>.<host>.<pid>.<n>` file in `logdir` (TensorBoard
  merges all files of a folder), so a restarted run simply adds a file. Events are written synchronously
  (tensorboardX's `EventsWriter`, no background thread) and flushed every `flush_secs` and on
  `flush()`/`close()`. Values are stored as float32, as TensorBoard does.
  """

  def __init__(self, logdir: PathLike, *, flush_secs: float = 10.0):
    self.logdir = pathlib.Path(logdir)
    # The pid and a per-process counter keep files of writers opened in the same second apart.
    suffix = f".{os.getpid()}.{next(_EVENT_FILE_COUNTER)}"
    try:
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._events = _tensorboardx().EventsWriter(str(self.logdir / "events"), filename_suffix=suffix)
    except OSError as e:
      raise OSError(
          f"cannot create the TensorBoard folder or event file in {self.logdir}: {e.strerror or e}. "
          "Point the run's workdir at a writable folder."
      ) from e
    self.path = next(self.logdir.glob(f"events.out.tfevents.*{suffix}"))
    self._closed = False
    self._flush_secs = flush_secs
    self._last_flush = time.monotonic()
    self.flush()

  def scalar(self, tag: str, value: Any, step: int) -> None:
    """Logs one scalar."""
    self.scalars({tag: value}, step)

  def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
    """Logs every scalar in `values` as `prefix/name` in one event; non-scalar entries are skipped."""
    if self._closed:
      raise ValueError(f"TensorBoardWriter for {self.path} is closed")
    tbx = _tensorboardx()
    summary = tbx.Summary()
    for name, value in values.items():
      try:
        number = to_float(value)
      except TypeError:
        continue
      summary.value.add(tag=f"{prefix}/{name}" if prefix else str(name), simple_value=number)
    if not summary.value:
      return
    self._events.write_event(tbx.Event(wall_time=time.time(), step=int(step), summary=summary))
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
    """The common writer interface: scalars tagged `split/name`."""
    self.scalars(metrics, step, prefix=split)

  def flush(self) -> None:
    if not self._closed:
      self._events.flush()
      self._last_flush = time.monotonic()

  def close(self) -> None:
    if not self._closed:
      self._events.close()
      self._closed = True

  def __enter__(self) -> "TensorBoardWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
