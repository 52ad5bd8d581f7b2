"""Step timing: data wait vs compute per window between the loop's log-step syncs."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterable, Iterator


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
