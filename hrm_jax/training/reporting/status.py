"""status.json: a small snapshot of where the run is, replaced atomically."""

from __future__ import annotations

import datetime
import json
import math
import pathlib
import time
from typing import Any, Callable, Mapping

from hrm_jax.training.reporting.values import (PathLike, eta_seconds, format_duration, prepare_parent,
                                               to_float, to_jsonable, write_json_atomically)

RUN_STATES = ("running", "finished", "stopped", "failed")

_STATUS_FIELDS = (
    "step", "total_steps", "epoch", "samples_seen", "samples_per_s", "steps_per_s", "eta_seconds",
    "data_wait_fraction", "last_eval", "best_eval", "latest_checkpoint", "run_id", "state", "message",
    "extra",
)


def _utc_iso(timestamp: float) -> str:
  return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


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
    prepare_parent(self.path, "status file")
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
