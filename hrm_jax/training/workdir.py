"""The run directory one live run owns: its lock, the status heartbeat, and the library log file.

* `prepare(workdir)` creates the folder and proves it writable (a read-only disk, a path below a file or a
  full disk is one `TrainingError`, before anything else is started).
* `RunLock` holds an OS lock on `<workdir>/.lock` (`filelock`: `flock(2)` on Unix, released by the kernel on
  any exit, SIGKILL included) and records who holds it in `<workdir>/.lock.owner.json`; a second run on the
  same workdir refuses at once, naming the holder's pid and run id.
* `Heartbeat` rewrites status.json from a background thread at least every `interval_s` seconds while the
  process lives (through evaluation, saving and compilation too), and prints a line while a long phase runs.
* `library_log(workdir)` sends Python logging (Orbax, absl, JAX: their tracebacks included) to
  `<workdir>/run.log`; only this package's warnings reach the console, one line each.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator

import filelock

from hrm_jax.training.errors import TrainingError

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner.json"
LOG_FILE = "run.log"


def _os_problem(error: OSError) -> str:
  if error.errno == errno.ENOSPC:
    return "the disk is full (no space left on device)"
  if error.errno in (errno.EROFS,):
    return "it is on a read-only file system"
  if error.errno in (errno.EACCES, errno.EPERM):
    return "permission denied"
  if error.errno in (errno.ENOTDIR, errno.EEXIST):
    return "a part of the path is a file, not a folder"
  return error.strerror or str(error)


def prepare(workdir: str | os.PathLike) -> pathlib.Path:
  """Creates `workdir` and checks a file can be written there; returns its absolute path."""
  path = pathlib.Path(workdir).expanduser().absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{os.getpid()}"
    with open(probe, "w") as f:
      f.write("x" * 4096)  # a full disk often still accepts an empty file
      f.flush()
      os.fsync(f.fileno())
    probe.unlink()
  except OSError as e:
    raise TrainingError(f"cannot write to the workdir {path}: {_os_problem(e)}. Fix: free space or pass "
                        "--workdir=DIR on a writable disk.") from None
  return path


class RunLock:
  """Exclusive ownership of a workdir by this process (see the module docstring)."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self._workdir = workdir
    self._enabled = enabled  # False on the other processes of a multi-host run: process 0 holds it
    self._lock = filelock.FileLock(str(workdir / LOCK_FILE), timeout=0)

  def acquire(self) -> "RunLock":
    if not self._enabled:
      return self
    try:
      self._lock.acquire()
    except filelock.Timeout:
      owner = self.owner()
      who = (f"run {owner.get('run_id') or '(starting)'}, pid {owner.get('pid')} on {owner.get('host')}, "
             f"since {owner.get('since')}" if owner else "another process")
      raise TrainingError(f"the workdir {self._workdir} is in use by {who}. Fix: wait for that run to end "
                          f"(or stop it: kill {owner.get('pid', 'PID')}), or pass another --workdir.") from None
    except OSError as e:
      raise TrainingError(f"cannot lock the workdir {self._workdir}: {_os_problem(e)}. Fix: pass "
                          "--workdir=DIR on a writable local disk.") from None
    self.record(run_id=None)
    return self

  def record(self, run_id: str | None) -> None:
    """Writes who holds the lock (pid, host, run id); called again once the run id is known."""
    if not self._enabled:
      return
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = self._workdir / f"{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(owner))
    os.replace(tmp, self._workdir / OWNER_FILE)

  def owner(self) -> dict[str, Any]:
    try:
      return json.loads((self._workdir / OWNER_FILE).read_text())
    except (OSError, ValueError):
      return {}

  def release(self) -> None:
    if self._lock.is_locked:
      with contextlib.suppress(OSError):
        (self._workdir / OWNER_FILE).unlink()
      self._lock.release()

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


class Heartbeat:
  """Serialises every use of a `reporting.StatusFile` and rewrites it every `interval_s` from a thread.

  `phase(name)` names what the run is doing (starting, compiling, training, evaluating, saving; phases nest).
  Whenever the console has been quiet for `say_every_s` seconds (0: never) the heartbeat prints
  `  ... still <phase> (N s)`; the loop calls `spoke()` when it printed a line itself. `status` may be
  attached later (`attach`), so the start-up phases are covered before the run id is known.
  """

  def __init__(self, status=None, *, interval_s: float = 10.0, say_every_s: float = 0.0,
               say: Callable[[str], None] = print):
    self._status = status
    self._interval_s = interval_s
    self._say_every_s = say_every_s
    self._say = say
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._phases: list[tuple[str, float]] = []
    self._last_said = time.monotonic()
    self.failures = 0
    self._thread = threading.Thread(target=self._run, daemon=True, name="hrm-heartbeat")
    self._thread.start()

  def attach(self, status, interval_s: float | None = None) -> None:
    with self._lock:
      self._status = status
      self._interval_s = interval_s or self._interval_s

  def _run(self) -> None:
    last_beat = time.monotonic()
    while not self._stop.wait(min(self._interval_s, self._say_every_s or self._interval_s, 1.0)):
      now = time.monotonic()
      if now - last_beat >= self._interval_s:
        last_beat = now
        self.update(force=True)
      phases = list(self._phases)
      if phases and self._say_every_s and now - self._last_said >= self._say_every_s:
        self._last_said = now
        name, since = phases[-1]
        self._say(f"  ... still {name} ({now - since:.0f} s)")

  def spoke(self) -> None:
    self._last_said = time.monotonic()

  def update(self, force: bool = False, **fields) -> None:
    self._call("update", force=force, **fields)

  def record_eval(self, step: int, summary: dict[str, Any]) -> None:
    self._call("record_eval", step, summary)

  def finish(self, state: str, message: str) -> None:
    self._call("finish", state, message)

  def _call(self, method: str, *args, **kwargs) -> None:
    with self._lock:
      if self._status is None:
        return
      try:
        getattr(self._status, method)(*args, **kwargs)
      except OSError as e:  # a full disk must not end the run here; the next save says so
        self.failures += 1
        logging.getLogger(__name__).warning("could not write %s: %s", self._status.path, e)

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    self._phases.append((name, time.monotonic()))
    try:
      yield
    finally:
      self._phases.pop()

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


class _QuietFileHandler(logging.FileHandler):
  """A log file that never complains on the console: a full disk must not print logging's own traceback."""

  def handleError(self, record: logging.LogRecord) -> None:
    del record

  def close(self) -> None:
    with contextlib.suppress(OSError):
      super().close()


class _OneLine(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    return f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}"


@contextlib.contextmanager
def library_log(workdir: pathlib.Path, name: str = LOG_FILE) -> Iterator[pathlib.Path | None]:
  """Python logging to `<workdir>/run.log` (everything, with tracebacks); hrm_jax warnings also to stderr.

  absl's own stderr handler is detached meanwhile, so a library that logs a traceback (Orbax on a failed
  save) leaves it in the file; the console keeps the run's own lines and its one `error:` line.
  """
  root = logging.getLogger()
  try:
    file_handler: logging.Handler | None = _QuietFileHandler(workdir / name)
  except OSError:
    file_handler = None
  console = logging.StreamHandler()
  console.setLevel(logging.WARNING)
  console.setFormatter(_OneLine())
  console.addFilter(lambda record: record.name.startswith("hrm_jax") and not record.exc_info)
  # warnings.warn() of this package (e.g. a corrupt checkpoint step) reach the console via its loggers.
  detached = [h for h in root.handlers if type(h).__name__ == "ABSLHandler"]
  for handler in detached:
    root.removeHandler(handler)
  if file_handler is not None:
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
  root.addHandler(console)
  logging.captureWarnings(True)  # libraries' warnings (torch, orbax) go to the file too
  # Errors raised in library threads and callbacks (TensorStore's, after a failed save) go there too.
  library = logging.getLogger("library")
  hooks = sys.excepthook, sys.unraisablehook, threading.excepthook
  sys.excepthook = lambda *info: library.error("uncaught error", exc_info=info)
  sys.unraisablehook = lambda u: library.error("unraisable error in %r", u.object,
                                               exc_info=(u.exc_type, u.exc_value, u.exc_traceback))
  threading.excepthook = lambda a: library.error("error in thread %s", a.thread,
                                                 exc_info=(a.exc_type, a.exc_value, a.exc_traceback))
  try:
    yield workdir / name if file_handler is not None else None
  finally:
    sys.excepthook, sys.unraisablehook, threading.excepthook = hooks
    logging.captureWarnings(False)
    root.removeHandler(console)
    if file_handler is not None:
      root.removeHandler(file_handler)
      file_handler.close()
    for handler in detached:
      root.addHandler(handler)
