"""The console progress display: tqdm's bar on a terminal, plain lines in logs."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

import tqdm

from hrm_jax.training.reporting.values import eta_seconds, format_duration, to_float

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
  """A one-line progress display: step/total, %, steps/s, ETA and a few key metrics.

  On a terminal, tqdm draws the bar and redraws it in place (at most every `redraw_interval_s`); the text
  beside it is `line()`. When the stream is not a TTY (a log file, `nohup`, a cluster job) it prints a
  plain `line()` every `plain_interval_s` instead, so logs hold readable lines rather than carriage-return
  spam. Pass metrics only when they are already on the host (on log steps); the bar keeps showing the
  latest ones. The rate is the given one (e.g. StepTimer's) or, until one is given, its own estimate.
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
    self._interval_s = redraw_interval_s if is_tty else plain_interval_s
    self._metric_keys = metric_keys
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
    self._width = width
    self._bar: tqdm.tqdm | None = None  # Made on the first draw, so nothing is printed before it.

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
    if force or finished or self._last_render is None or now - self._last_render >= self._interval_s:
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
    if self.is_tty and self._bar is None:
      # Redraws are timed here (by `clock`), so tqdm's own timing and rate are not used: it draws the
      # bar, fits the terminal width and keeps messages from breaking the line.
      total = max(self.total_steps, 1)
      self._bar = tqdm.tqdm(total=total, initial=min(self._step, total), desc=self.line(), file=self._stream,
                            ncols=self._width, dynamic_ncols=self._width is None, leave=True,
                            bar_format="[{bar:20}] {desc}", ascii=".#", mininterval=0, miniters=0)
    elif self._bar is not None:
      self._bar.n = min(self._step, self._bar.total)
      self._bar.set_description_str(self.line(), refresh=False)
      self._bar.refresh()
    else:
      self._stream.write(self.line() + "\n")
      self._last_plain_step = self._step
      self._stream.flush()

  def write(self, message: str) -> None:
    """Prints a message (e.g. an eval report) on its own lines without breaking the bar."""
    if self._bar is not None and not self._closed:
      tqdm.tqdm.write(message.rstrip("\n"), file=self._stream)
    else:
      self._stream.write(message.rstrip("\n") + "\n")
    self._stream.flush()

  def close(self) -> None:
    """Draws the final state and ends the line; on non-TTY streams prints the last step if not yet shown."""
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._render(self._clock())
      self._bar.close()
      self._stream.flush()
    elif self._last_plain_step != self._step:
      self._render(self._clock())
