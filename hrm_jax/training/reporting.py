"""What a training run reports: metric logs, TensorBoard events, status.json, a progress bar.

The training loop calls into this module every step, so everything here is cheap on the host and never
forces a device sync on its own: values are converted to Python floats only when they are written, and the
loop decides when that happens (on its log steps).

Files a run writes (all under its workdir, see BUILD.md "What a run reports"):
  metrics.jsonl   one JSON object per logged step, appended across restarts.
  tb/             TensorBoard event files, written without TensorFlow.
  status.json     a small snapshot of where the run is, replaced atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import os
import pathlib
import secrets
import shutil
import socket
import struct
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TextIO

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------------
# Small helpers shared by the writers.
# --------------------------------------------------------------------------------------------------


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


def _prepare_parent(path: pathlib.Path, what: str) -> None:
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


def _open_for_writing(path: pathlib.Path, mode: str, what: str):
  try:
    return open(path, mode)
  except OSError as e:
    raise OSError(
        f"cannot open the {what} {path} for writing: {e.strerror or e}. "
        "Check the path and its permissions, or choose another workdir."
    ) from e


# --------------------------------------------------------------------------------------------------
# JSONL metrics.
# --------------------------------------------------------------------------------------------------

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
    _prepare_parent(self.path, "metrics log")
    needs_newline = False
    if self.path.exists() and self.path.stat().st_size > 0:
      with open(self.path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        needs_newline = f.read(1) != b"\n"
    self._file = _open_for_writing(self.path, "a", "metrics log")
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


# --------------------------------------------------------------------------------------------------
# TensorBoard event files without TensorFlow.
# --------------------------------------------------------------------------------------------------


def _make_crc32c_table() -> tuple[int, ...]:
  # CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, as used by the TFRecord format.
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
  """CRC-32C of `data`; pass a previous result as `crc` to continue over concatenated data."""
  table = _CRC32C_TABLE
  crc ^= 0xFFFFFFFF
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The TFRecord masked CRC: rotate right by 15 bits and add 0xa282ead8 (mod 2**32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
  """One TFRecord: uint64 length, masked CRC of the length, data, masked CRC of the data (little endian)."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
  value &= 0xFFFFFFFFFFFFFFFF  # int64 fields encode negatives as 10-byte two's complement.
  out = bytearray()
  while True:
    low = value & 0x7F
    value >>= 7
    if value:
      out.append(low | 0x80)
    else:
      out.append(low)
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _float32_bytes(value: float) -> bytes:
  try:
    return struct.pack("<f", value)
  except OverflowError:
    # Finite doubles beyond float32 range saturate, as a float32 cast would.
    return struct.pack("<f", math.copysign(math.inf, value))


def encode_summary_value(tag: str, value: float) -> bytes:
  """Summary.Value{tag=1 (string), simple_value=2 (float)}."""
  return _length_delimited(1, tag.encode("utf-8")) + b"\x15" + _float32_bytes(value)


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 summary_values: Sequence[bytes] = ()) -> bytes:
  """Event{wall_time=1 (double), step=2 (int64), file_version=3 (string) | summary=5 (Summary)}."""
  out = b"\x09" + struct.pack("<d", wall_time)
  if step:  # proto3 leaves default (zero) fields out.
    out += b"\x10" + _varint(step)
  if file_version is not None:
    out += _length_delimited(3, file_version.encode("utf-8"))
  elif summary_values:
    # Summary{value=1 repeated Value}.
    summary = b"".join(_length_delimited(1, v) for v in summary_values)
    out += _length_delimited(5, summary)
  return out


_EVENT_FILE_COUNTER = itertools.count()


class TensorBoardWriter:
  """Writes scalar summaries to a TensorBoard event file, hand-encoding the protobufs and TFRecord framing.

  Each writer opens a fresh `events.out.tfevents.<time>.<host>.<pid>.<n>` file in `logdir` (TensorBoard
  merges all files of a folder), so a restarted run simply adds a file. Data is flushed every `flush_secs`
  and on `flush()`/`close()`.
  """

  def __init__(self, logdir: PathLike, *, flush_secs: float = 10.0):
    self.logdir = pathlib.Path(logdir)
    try:
      self.logdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise OSError(
          f"cannot create the TensorBoard folder {self.logdir}: {e.strerror or e}. "
          "Point the run's workdir at a writable folder."
      ) from e
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_EVENT_FILE_COUNTER)}")
    self.path = self.logdir / name
    self._file = _open_for_writing(self.path, "wb", "TensorBoard event file")
    self._flush_secs = flush_secs
    self._last_flush = time.monotonic()
    self._write_event(encode_event(time.time(), 0, file_version="brain.Event:2"))
    self.flush()

  def _write_event(self, event: bytes) -> None:
    if self._file.closed:
      raise ValueError(f"TensorBoardWriter for {self.path} is closed")
    self._file.write(tfrecord_frame(event))
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def scalar(self, tag: str, value: Any, step: int) -> None:
    """Logs one scalar (stored as float32, as TensorBoard does)."""
    self._write_event(encode_event(time.time(), int(step),
                                   summary_values=[encode_summary_value(tag, to_float(value))]))

  def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
    """Logs every scalar in `values` as `prefix/name` in one event; non-scalar entries are skipped."""
    encoded = []
    for name, value in values.items():
      try:
        number = to_float(value)
      except TypeError:
        continue
      tag = f"{prefix}/{name}" if prefix else str(name)
      encoded.append(encode_summary_value(tag, number))
    if encoded:
      self._write_event(encode_event(time.time(), int(step), summary_values=encoded))

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
    """The common writer interface: scalars tagged `split/name`."""
    self.scalars(metrics, step, prefix=split)

  def flush(self) -> None:
    if not self._file.closed:
      self._file.flush()
      self._last_flush = time.monotonic()

  def close(self) -> None:
    if not self._file.closed:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()

  def __enter__(self) -> "TensorBoardWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# --------------------------------------------------------------------------------------------------
# Weights & Biases (optional) and fan-out.
# --------------------------------------------------------------------------------------------------


def wandb_available() -> bool:
  try:
    import wandb  # pylint: disable=import-outside-toplevel,unused-import  # noqa: F401
  except ImportError:
    return False
  return True


class WandbWriter:
  """Logs metrics to Weights & Biases as `split/name`; needs the optional `wandb` package."""

  def __init__(self, project: str, *, name: str | None = None, config: Mapping[str, Any] | None = None,
               run_id: str | None = None, **init_kwargs: Any):
    try:
      import wandb  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          "W&B logging was requested but the `wandb` package is not installed. Install it with "
          "`pip install wandb` (and run `wandb login`), or turn W&B logging off in the config; "
          "metrics.jsonl and TensorBoard logs are written either way."
      ) from e
    self._wandb = wandb
    self._run = wandb.init(project=project, name=name, id=run_id,
                           config=dict(config) if config is not None else None, **init_kwargs)

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
    logged = {}
    for key, value in metrics.items():
      try:
        logged[f"{split}/{key}"] = to_float(value)
      except TypeError:
        continue
    self._run.log(logged, step=int(step))

  def flush(self) -> None:
    pass  # wandb sends in the background.

  def close(self) -> None:
    if self._run is not None:
      self._run.finish()
      self._run = None


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


# --------------------------------------------------------------------------------------------------
# status.json
# --------------------------------------------------------------------------------------------------

RUN_STATES = ("running", "finished", "stopped", "failed")

_STATUS_FIELDS = (
    "step", "total_steps", "epoch", "samples_seen", "samples_per_s", "steps_per_s", "eta_seconds",
    "data_wait_fraction", "last_eval", "best_eval", "latest_checkpoint", "run_id", "state", "message",
    "extra",
)


def _utc_iso(timestamp: float) -> str:
  return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


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


class StatusFile:
  """Keeps `status.json` up to date: where the run is, how fast it goes, when it will end, how it ended.

  `update(**fields)` merges fields and writes at most every `min_interval_s` seconds (so calling it every
  step costs nothing), always on `force=True` or a change of `state`. Because any call at least
  `min_interval_s` after the last write writes, and `min_interval_s` is capped at 60 s, a loop that calls
  it every step rewrites the file at least once a minute (or once per step, if steps are slower).
  `eta_seconds` is derived from step, total_steps and steps_per_s unless given.
  """

  def __init__(self, path: PathLike, *, run_id: str | None = None, total_steps: int | None = None,
               min_interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
               wall_clock: Callable[[], float] = time.time):
    if not 0 <= min_interval_s <= 60:
      raise ValueError(f"min_interval_s must be within [0, 60] so status.json is refreshed at least "
                       f"once a minute, got {min_interval_s}")
    self.path = pathlib.Path(path)
    _prepare_parent(self.path, "status file")
    self._min_interval_s = min_interval_s
    self._clock = clock
    self._wall_clock = wall_clock
    self._last_write: float | None = None
    self._started_at = wall_clock()
    self._fields: dict[str, Any] = {
        "run_id": run_id, "state": "running", "message": "", "step": 0, "total_steps": total_steps,
        "epoch": None, "samples_seen": 0, "samples_per_s": None, "steps_per_s": None,
        "eta_seconds": None, "data_wait_fraction": None, "last_eval": None, "best_eval": None,
        "latest_checkpoint": None, "extra": {},
    }
    self._eta_given = False
    self.writes = 0  # How many times the file was written; handy for checking the rate limit.

  def update(self, force: bool = False, **fields: Any) -> bool:
    """Merges `fields` into the status and writes the file if due; returns whether it was written."""
    unknown = sorted(set(fields) - set(_STATUS_FIELDS))
    if unknown:
      raise TypeError(f"unknown status field(s) {unknown}; known fields are {list(_STATUS_FIELDS)} "
                      "(put anything else under extra={...})")
    state = fields.get("state")
    if state is not None and state not in RUN_STATES:
      raise ValueError(f"state must be one of {RUN_STATES}, got {state!r}")
    state_changed = state is not None and state != self._fields["state"]
    # Once the caller supplies an ETA it owns the field; otherwise it is derived from the rate.
    self._eta_given = self._eta_given or "eta_seconds" in fields
    self._fields.update(fields)
    now = self._clock()
    due = (self._last_write is None or now - self._last_write >= self._min_interval_s)
    if force or state_changed or due:
      self._write(now)
      return True
    return False

  def record_eval(self, step: int, metrics: Mapping[str, Any], *, metric: str = "exact_accuracy",
                  higher_is_better: bool = True) -> bool:
    """Stores an evaluation as last_eval, updates best_eval by `metric`, writes now; returns whether best."""
    last_eval = {"step": int(step), "metrics": to_jsonable(dict(metrics))}
    best = self._fields["best_eval"]
    is_best = False
    if metric in metrics:
      value = to_float(metrics[metric])
      if math.isfinite(value) and (
          best is None or (value > best["value"] if higher_is_better else value < best["value"])):
        best = {"metric": metric, "value": value, "step": int(step)}
        is_best = True
    self.update(force=True, last_eval=last_eval, best_eval=best)
    return is_best

  def finish(self, state: str = "finished", message: str = "") -> None:
    """Records how the run ended ("finished", "stopped" or "failed") and writes immediately."""
    if state == "running":
      raise ValueError("finish() needs an end state: 'finished', 'stopped' or 'failed'")
    self.update(force=True, state=state, message=message)

  def snapshot(self) -> dict[str, Any]:
    """The JSON object the file would hold right now."""
    fields = self._fields
    now = self._wall_clock()
    eta = fields["eta_seconds"] if self._eta_given else eta_seconds(
        fields["step"], fields["total_steps"], fields["steps_per_s"])
    if fields["state"] == "finished":
      eta = 0.0
    total = fields["total_steps"]
    data = {
        "run_id": fields["run_id"],
        "state": fields["state"],
        "message": fields["message"],
        "step": fields["step"],
        "total_steps": total,
        "progress": (min(fields["step"] / total, 1.0) if total else None),
        "epoch": fields["epoch"],
        "samples_seen": fields["samples_seen"],
        "samples_per_s": fields["samples_per_s"],
        "steps_per_s": fields["steps_per_s"],
        "eta_seconds": eta,
        "eta": format_duration(eta),
        "eta_at": _utc_iso(now + eta) if eta is not None else None,
        "data_wait_fraction": fields["data_wait_fraction"],
        "last_eval": fields["last_eval"],
        "best_eval": fields["best_eval"],
        "latest_checkpoint": (str(fields["latest_checkpoint"])
                              if fields["latest_checkpoint"] is not None else None),
        "started_at": _utc_iso(self._started_at),
        "elapsed_seconds": now - self._started_at,
        "updated_at": _utc_iso(now),
        "extra": fields["extra"],
    }
    return to_jsonable(data)

  def _write(self, now: float) -> None:
    write_json_atomically(self.path, self.snapshot())
    self._last_write = now
    self.writes += 1

  @staticmethod
  def read(path: PathLike) -> dict[str, Any]:
    with open(path) as f:
      return json.load(f)


# --------------------------------------------------------------------------------------------------
# Step timing.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimingStats:
  """Timing of the steps between two `StepTimer.sync` calls (a window)."""
  steps: int
  samples: int
  wall_s: float             # Window length, excluding time spent in `StepTimer.excluded()`.
  data_wait_s: float        # Host time blocked waiting for batches, whole window.
  data_wait_per_step_s: float
  compute_per_step_s: float  # (wall - data wait) / steps: dispatch + device time not hidden by waiting.
  step_s: float
  steps_per_s: float
  samples_per_s: float
  data_wait_fraction: float
  includes_compile: bool    # The first window holds the jit compilation of the step.


class StepTimer:
  """Splits training time into data wait and compute without a host sync every step.

  How it measures. JAX dispatches a step asynchronously and returns before the device finishes, so timing
  a single call to the step function measures only dispatch. Instead the timer works in windows that end
  at `sync(outputs)`, which the loop calls on its log steps with the metrics it is about to print anyway:
  `sync` blocks until those outputs are ready. Steps are chained through the train state, so when step k's
  metrics are ready every earlier step has finished, and the window's wall time (previous sync → this
  sync) is exactly the time those steps took, end to end. Inside the window the host-side wait for each
  batch is measured directly (`timed(iterator)` or `waiting_for_data()`); compute is the rest:
  `compute = window wall time − data wait`, i.e. dispatch-to-result-ready time not spent waiting for
  data. There are no syncs besides the ones logging already needs.

  Caveat: while the host waits for a batch the device may still be running earlier steps, so
  `data_wait_fraction` is an upper bound on how much the input pipeline stalls the device; near zero means
  the pipeline keeps up, a large value means it is worth profiling.

  Usage:
    for batch in timer.timed(train_iter):
      state, metrics = train_step(state, batch)
      timer.step_done()
      if step % log_every == 0:
        stats = timer.sync(metrics)
  """

  def __init__(self, batch_size: int, *, clock: Callable[[], float] = time.perf_counter,
               block_fn: Callable[[Any], Any] | None = None, ema_weight: float = 0.3):
    self.batch_size = batch_size
    self._clock = clock
    self._block_fn = block_fn
    self._ema_weight = ema_weight
    self._window_start: float | None = None
    self._window_wait = 0.0
    self._window_excluded = 0.0
    self._window_steps = 0
    self._window_samples = 0
    self.windows = 0
    self.total_steps = 0
    self.total_samples = 0
    # Running sums over windows after the first, which is dominated by compilation.
    self._sum_wall = self._sum_wait = 0.0
    self._sum_steps = 0
    self._first: TimingStats | None = None
    self.smoothed_steps_per_s: float | None = None
    self.last: TimingStats | None = None

  def _start_window_if_needed(self) -> None:
    if self._window_start is None:
      self._window_start = self._clock()

  @contextlib.contextmanager
  def waiting_for_data(self) -> Iterator[None]:
    """Wraps the code that fetches the next batch; its duration counts as data wait."""
    self._start_window_if_needed()
    start = self._clock()
    try:
      yield
    finally:
      self._window_wait += self._clock() - start

  @contextlib.contextmanager
  def excluded(self) -> Iterator[None]:
    """Wraps work that is not training (evaluation, checkpointing) so it does not count as step time."""
    start = self._clock()
    try:
      yield
    finally:
      self._window_excluded += self._clock() - start

  def timed(self, iterable: Iterable[Any]) -> Iterator[Any]:
    """Yields the batches of `iterable`, timing each `next()` as data wait."""
    iterator = iter(iterable)
    while True:
      with self.waiting_for_data():
        try:
          batch = next(iterator)
        except StopIteration:
          return
      yield batch

  def step_done(self, num_samples: int | None = None) -> None:
    """Counts one dispatched step of `num_samples` (default: batch_size) samples."""
    self._start_window_if_needed()
    self._window_steps += 1
    self._window_samples += self.batch_size if num_samples is None else num_samples

  def _block(self, outputs: Any) -> None:
    if outputs is None:
      return
    block_fn = self._block_fn
    if block_fn is None:
      import jax  # pylint: disable=import-outside-toplevel
      block_fn = jax.block_until_ready
    block_fn(outputs)

  def sync(self, outputs: Any = None) -> TimingStats | None:
    """Blocks until `outputs` are ready and closes the window; returns its stats (None if no steps)."""
    self._block(outputs)
    now = self._clock()
    if self._window_start is None or self._window_steps == 0:
      self._reset_window(now)
      return None
    wall = max(now - self._window_start - self._window_excluded, 1e-12)
    steps, samples, wait = self._window_steps, self._window_samples, self._window_wait
    stats = TimingStats(
        steps=steps, samples=samples, wall_s=wall, data_wait_s=wait,
        data_wait_per_step_s=wait / steps, compute_per_step_s=max(wall - wait, 0.0) / steps,
        step_s=wall / steps, steps_per_s=steps / wall, samples_per_s=samples / wall,
        data_wait_fraction=min(wait / wall, 1.0), includes_compile=self.windows == 0)
    self.windows += 1
    self.total_steps += steps
    self.total_samples += samples
    if stats.includes_compile:
      self._first = stats
      self.smoothed_steps_per_s = stats.steps_per_s
    else:
      self._sum_wall += wall
      self._sum_wait += wait
      self._sum_steps += steps
      if self.windows == 2:  # Drop the compile window's rate as soon as a clean one exists.
        self.smoothed_steps_per_s = stats.steps_per_s
      else:
        w = self._ema_weight
        self.smoothed_steps_per_s = w * stats.steps_per_s + (1 - w) * self.smoothed_steps_per_s
    self.last = stats
    self._reset_window(now)
    return stats

  def _reset_window(self, now: float) -> None:
    self._window_start = now
    self._window_wait = 0.0
    self._window_excluded = 0.0
    self._window_steps = 0
    self._window_samples = 0

  def _running(self) -> tuple[float, float, int]:
    if self._sum_steps:
      return self._sum_wall, self._sum_wait, self._sum_steps
    if self._first is not None:
      return self._first.wall_s, self._first.data_wait_s, self._first.steps
    return 0.0, 0.0, 0

  @property
  def mean_data_wait_s(self) -> float | None:
    """Mean data wait per step over all windows after the compile window."""
    _, wait, steps = self._running()
    return wait / steps if steps else None

  @property
  def mean_compute_s(self) -> float | None:
    """Mean compute time per step over all windows after the compile window."""
    wall, wait, steps = self._running()
    return max(wall - wait, 0.0) / steps if steps else None

  @property
  def data_wait_fraction(self) -> float | None:
    wall, wait, _ = self._running()
    return min(wait / wall, 1.0) if wall else None

  @property
  def smoothed_samples_per_s(self) -> float | None:
    if self.smoothed_steps_per_s is None:
      return None
    return self.smoothed_steps_per_s * self.batch_size


# --------------------------------------------------------------------------------------------------
# Progress bar.
# --------------------------------------------------------------------------------------------------

# (metric key, short label, shown as a percentage), in display order; the first present key of each
# label wins, so "loss" is preferred over "lm_loss".
DEFAULT_BAR_METRICS = (
    ("loss", "loss", False), ("lm_loss", "loss", False),
    ("exact_accuracy", "exact_acc", True), ("exact_acc", "exact_acc", True),
    ("accuracy", "acc", True),
    ("data_wait_fraction", "data wait", True),
)


def _format_metric(value: float, as_percent: bool) -> str:
  if not math.isfinite(value):
    return str(value)
  if as_percent:
    return f"{100 * value:.1f}%"
  return f"{value:.4g}"


class ProgressBar:
  """A one-line progress bar: step/total, %, steps/s, ETA and a few key metrics. No tqdm.

  On a terminal the line is redrawn in place (at most every `redraw_interval_s`). When the stream is not a
  TTY (a log file, `nohup`, a cluster job) it prints a plain line every `plain_interval_s` instead, so logs
  hold readable lines rather than carriage-return spam. Pass metrics only when they are already on the host
  (on log steps); the bar keeps showing the latest ones.
  """

  def __init__(self, total_steps: int, *, stream: TextIO | None = None, is_tty: bool | None = None,
               plain_interval_s: float = 30.0, redraw_interval_s: float = 0.1,
               initial_step: int = 0, metric_keys: Sequence[tuple[str, str, bool]] = DEFAULT_BAR_METRICS,
               width: int | None = None, clock: Callable[[], float] = time.monotonic):
    self.total_steps = total_steps
    self._stream = stream if stream is not None else sys.stdout
    if is_tty is None:
      isatty = getattr(self._stream, "isatty", None)
      is_tty = bool(isatty and isatty())
    self.is_tty = is_tty
    self._plain_interval_s = plain_interval_s
    self._redraw_interval_s = redraw_interval_s
    self._metric_keys = metric_keys
    self._width = width
    self._clock = clock
    self._step = initial_step
    self._metrics: dict[str, float] = {}
    self._given_rate: float | None = None
    # Own rate estimate: steps over at least a second, smoothed, starting from `initial_step` on resume.
    self._rate_anchor = (clock(), initial_step)
    self._measured_rate: float | None = None
    self._last_render: float | None = None
    self._last_plain_step: int | None = None
    self._closed = False

  @property
  def steps_per_s(self) -> float | None:
    return self._given_rate if self._given_rate is not None else self._measured_rate

  def update(self, step: int, metrics: Mapping[str, Any] | None = None, *,
             steps_per_s: float | None = None, force: bool = False) -> None:
    """Moves the bar to `step`; optionally refreshes metrics and the steps/s figure (e.g. StepTimer's)."""
    now = self._clock()
    self._step = step
    if metrics:
      for key, value in metrics.items():
        try:
          self._metrics[key] = to_float(value)
        except TypeError:
          continue
    if steps_per_s is not None:
      self._given_rate = steps_per_s
    anchor_time, anchor_step = self._rate_anchor
    if now - anchor_time >= 1.0 and step > anchor_step:
      rate = (step - anchor_step) / (now - anchor_time)
      self._measured_rate = rate if self._measured_rate is None else 0.3 * rate + 0.7 * self._measured_rate
      self._rate_anchor = (now, step)
    finished = step >= self.total_steps
    interval = self._redraw_interval_s if self.is_tty else self._plain_interval_s
    if force or finished or self._last_render is None or now - self._last_render >= interval:
      self._render(now)

  def line(self) -> str:
    """The text of the bar (without the drawn bar itself), e.g. for logs."""
    total = max(self.total_steps, 1)
    pct = 100.0 * min(self._step / total, 1.0)
    rate = self.steps_per_s
    parts = [f"step {self._step}/{self.total_steps} ({pct:.1f}%)",
             f"{rate:.2f} steps/s" if rate else "? steps/s",
             f"ETA {format_duration(eta_seconds(self._step, self.total_steps, rate))}"]
    shown = set()
    for key, label, as_percent in self._metric_keys:
      if key in self._metrics and label not in shown:
        shown.add(label)
        parts.append(f"{label} {_format_metric(self._metrics[key], as_percent)}")
    return " | ".join(parts)

  def _render(self, now: float) -> None:
    self._last_render = now
    text = self.line()
    if self.is_tty:
      width = self._width or shutil.get_terminal_size((100, 20)).columns
      bar_width = 20
      filled = int(bar_width * min(self._step / max(self.total_steps, 1), 1.0))
      full = f"[{'#' * filled}{'.' * (bar_width - filled)}] {text}"
      # Never wrap: a wrapped line cannot be redrawn with '\r'.
      self._stream.write("\r" + full[:max(width - 1, 10)] + "\x1b[K")
    else:
      self._stream.write(text + "\n")
      self._last_plain_step = self._step
    self._stream.flush()

  def write(self, message: str) -> None:
    """Prints a message (e.g. an eval report) without breaking the bar."""
    if self.is_tty:
      self._stream.write("\r\x1b[K")
    self._stream.write(message.rstrip("\n") + "\n")
    if self.is_tty and self._last_render is not None and not self._closed:
      self._render(self._clock())
    else:
      self._stream.flush()

  def close(self) -> None:
    """Draws the final state and ends the line; on non-TTY streams prints the last step if not yet shown."""
    if self._closed:
      return
    self._closed = True
    if self.is_tty:
      self._render(self._clock())
      self._stream.write("\n")
      self._stream.flush()
    elif self._last_plain_step != self._step:
      self._render(self._clock())


# --------------------------------------------------------------------------------------------------
# Evaluation report.
# --------------------------------------------------------------------------------------------------

_EXACT_KEYS = ("exact_accuracy", "exact_acc")
_TOKEN_KEYS = ("accuracy", "token_accuracy", "token_acc")
_HALT_KEYS = ("steps", "mean_steps", "halt_steps", "mean_halting_steps")
_PER_CLASS_KEY = "per_class_accuracy"
_PER_CLASS_PREFIXES = ("per_class_accuracy/", "class_accuracy/")


def _pct(value: Any) -> str:
  number = to_float(value)
  return f"{100 * number:.2f}%" if math.isfinite(number) else str(number)


def _first_key(metrics: Mapping[str, Any], keys: Sequence[str]) -> str | None:
  return next((k for k in keys if k in metrics), None)


def _format_flat_eval(metrics: Mapping[str, Any], indent: str) -> list[str]:
  metrics = {(k[len("eval/"):] if k.startswith("eval/") else k): v for k, v in metrics.items()}
  used: set[str] = set()
  lines = []
  count = metrics.get("count")
  if count is not None:
    used.add("count")
  exact_key = _first_key(metrics, _EXACT_KEYS)
  if exact_key is not None:
    used.add(exact_key)
    headline = f"EXACT ACCURACY  {_pct(metrics[exact_key])}"
    if count is not None:
      n = to_float(count)
      headline += f"  ({round(to_float(metrics[exact_key]) * n):d} / {n:.0f} examples)"
  else:
    headline = "EXACT ACCURACY  n/a (no exact_accuracy in the metrics)"
  lines.append(indent + headline)
  token_key = _first_key(metrics, _TOKEN_KEYS)
  if token_key is not None:
    used.add(token_key)
    lines.append(f"{indent}token accuracy  {_pct(metrics[token_key])}")
  per_class: dict[str, Any] = {}
  if _PER_CLASS_KEY in metrics:
    used.add(_PER_CLASS_KEY)
    raw = metrics[_PER_CLASS_KEY]
    if isinstance(raw, Mapping):
      per_class.update({str(k): v for k, v in raw.items()})
    else:
      values = raw.tolist() if hasattr(raw, "tolist") else list(raw)
      per_class.update({str(i): v for i, v in enumerate(values)})
  for key in metrics:
    for prefix in _PER_CLASS_PREFIXES:
      if key.startswith(prefix):
        used.add(key)
        per_class[key[len(prefix):]] = metrics[key]
  if per_class:
    lines.append(f"{indent}per-class accuracy:")
    name_width = max(len(name) for name in per_class)
    for name, value in per_class.items():
      lines.append(f"{indent}  {name:<{name_width}}  {_pct(value)}")
  halt_key = _first_key(metrics, _HALT_KEYS)
  if halt_key is not None:
    used.add(halt_key)
    lines.append(f"{indent}mean halting steps  {to_float(metrics[halt_key]):.2f}")
  losses = [k for k in metrics if k.endswith("loss") and k not in used]
  if losses:
    used.update(losses)
    lines.append(indent + "losses  " + "  ".join(
        f"{k} {to_float(metrics[k]):.4f}" for k in sorted(losses)))
  other = []
  for key in sorted(k for k in metrics if k not in used):
    try:
      value = to_float(metrics[key])
    except TypeError:
      continue
    shown = _pct(value) if "acc" in key else f"{value:.4g}"
    other.append(f"{key} {shown}")
  if other:
    lines.append(indent + "other  " + "  ".join(other))
  return lines


def format_eval_report(metrics: Mapping[str, Any], *, step: int | None = None) -> str:
  """A readable multi-line evaluation summary with exact accuracy as the headline.

  Then token accuracy, per-class accuracy (`per_class_accuracy` as a dict or sequence, or
  `per_class_accuracy/<name>` keys), mean halting steps (`steps`), losses (keys ending in `loss`) and
  anything else. Accepts flat metrics or the original's nested `{set_name: {metric: value}}`.
  """
  title = "Evaluation" + (f" at step {step}" if step is not None else "")
  lines = [title]
  nested = bool(metrics) and all(isinstance(v, Mapping) for v in metrics.values()) and (
      _PER_CLASS_KEY not in metrics)
  if nested:
    for set_name, set_metrics in metrics.items():
      lines.append(f"  [{set_name}]")
      lines.extend(_format_flat_eval(set_metrics, "    "))
  else:
    lines.extend(_format_flat_eval(metrics, "  "))
  return "\n".join(lines)
