"""Stop training cleanly on SIGTERM/SIGINT at a step boundary all processes agree on.

Usage in the train loop:

  with PreemptionGuard() as guard:
    for step in range(start, num_steps):
      state = train_step(state, batch)
      if guard.should_stop(step):  # Every process, every step.
        checkpointer.save(step, state, ..., force=True)
        break

Single process: a handler sets a flag; `should_stop` returns it.

Several processes (`jax.distributed` initialised): every process must stop at
the same step, or the collective save would hang. Two ways to agree:

* JAX preemption service (default on; works on CPU too): JAX's coordination
  client owns SIGTERM and, when any process gets it, picks a common step;
  `multihost_utils.reached_preemption_sync_point(step)` turns True there on every
  process. The guard leaves SIGTERM to JAX and turns its own SIGINT into a
  SIGTERM for JAX, so Ctrl-C takes the same path.
* Without it (`jax_enable_preemption_service=False`): the guard handles both
  signals and ORs the flag over processes with `multihost_utils.process_allgather`
  every `sync_every` steps (one tiny collective per check).

A second SIGINT aborts at once (default action, no clean-up): the last
committed checkpoint stays valid because Orbax commits steps atomically.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import types
from typing import Any, Sequence

_log = logging.getLogger(__name__)


def _process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top  # Keep import of this module cheap.
  return jax.process_count()


def _preemption_service_on() -> bool:
  """Whether JAX's preemption sync manager runs: jax.distributed initialised with the service enabled."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class PreemptionGuard:
  """Catches SIGTERM/SIGINT and tells the loop when to save and stop.

  Args:
    signals: signals to treat as a stop request.
    sync_every: multi-process without the JAX preemption service only: steps
      between flag all-reduces (every process must use the same value).
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
               *, sync_every: int = 1):
    if sync_every < 1:
      raise ValueError(f"sync_every must be >= 1, got {sync_every}.")
    self._signals = tuple(signals)
    self._sync_every = sync_every
    self._old_handlers: dict[int, Any] = {}
    self._flag = threading.Event()
    self._received: list[str] = []
    self._stop_step: int | None = None
    self._mode: str | None = None

  # -- installation ----------------------------------------------------------

  def install(self) -> "PreemptionGuard":
    """Installs the handlers (main thread only); returns self."""
    if self._old_handlers:
      return self
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("PreemptionGuard must be installed from the main thread"
                         " (Python only delivers signals there).")
    self._mode = self._pick_mode()
    for signum in self._signals:
      if signum == signal.SIGTERM and self._mode == "jax":
        continue  # JAX's preemption notifier owns SIGTERM.
      self._old_handlers[signum] = signal.signal(signum, self._handle)
    return self

  def close(self) -> None:
    """Restores the handlers that were installed before."""
    for signum, old in self._old_handlers.items():
      # None means the old handler was not set from Python; the default is the
      # closest thing we can put back.
      signal.signal(signum, old if old is not None else signal.SIG_DFL)
    self._old_handlers.clear()

  def __enter__(self) -> "PreemptionGuard":
    return self.install()

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _pick_mode(self) -> str:
    if _process_count() == 1:
      return "local"
    return "jax" if _preemption_service_on() else "allgather"

  # -- signals ---------------------------------------------------------------

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    self._received.append(name)
    if signum == signal.SIGINT:
      # From now on Ctrl-C kills the process outright, even inside a blocking call.
      signal.signal(signal.SIGINT, signal.SIG_DFL)
    if self._flag.is_set():
      return
    self._flag.set()
    _log.warning(
        "%s received: will save a checkpoint and stop at the next step boundary"
        "%s.", name,
        "; press Ctrl-C again to abort immediately (the last committed checkpoint"
        " stays valid)" if signum == signal.SIGINT else "")
    if self._mode == "jax" and signum != signal.SIGTERM:
      # Route through JAX's notifier so every process agrees on the stop step.
      os.kill(os.getpid(), signal.SIGTERM)

  def request_stop(self) -> None:
    """Asks for a stop as if a signal had arrived (e.g. a wall-clock budget)."""
    if self._mode is None:
      self._mode = self._pick_mode()
    if self._mode == "jax":
      os.kill(os.getpid(), signal.SIGTERM)
    self._flag.set()

  @property
  def stop_requested(self) -> bool:
    """Whether this process received a stop signal (not yet agreed on)."""
    return self._flag.is_set()

  @property
  def received(self) -> list[str]:
    """Names of the signals received, in order."""
    return list(self._received)

  # -- step boundary ---------------------------------------------------------

  def should_stop(self, step: int) -> bool:
    """True from the agreed step on; call at every step boundary on every process."""
    if self._stop_step is not None:
      return step >= self._stop_step
    if self._mode is None:  # Not installed: only request_stop() can trigger.
      self._mode = self._pick_mode()
    mode = self._mode
    if mode == "local":
      stop = self._flag.is_set()
    elif mode == "jax":
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      stop = bool(multihost_utils.reached_preemption_sync_point(int(step)))
    else:
      stop = step % self._sync_every == 0 and self._any_process_flagged(int(step))
    if stop:
      self._stop_step = int(step)
      _log.warning("stopping at step %d (%s).", step,
                   ", ".join(self._received) or "signal on another process")
    return stop

  def _any_process_flagged(self, step: int) -> bool:
    """ORs the flag over processes with one small all-gather (every process calls it at the same steps)."""
    del step
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self._flag.is_set()))
    return bool(np.any(flags))

