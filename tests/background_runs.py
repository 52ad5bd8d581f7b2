"""Subprocesses started early and awaited later, so that several runs share the machine's cores (test helper).

Each run writes its stdout and stderr to files, has a deadline counted from its start, and is killed (by
its own pid) when the deadline passes, when a run it belongs with fails, or when the fixture ends.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def cpu_env(num_devices: int = 1) -> dict[str, str]:
  """JAX on CPU with `num_devices` devices, the checkout importable, and fast (LLVM -O0) compilation.

  Optimisation level 0 roughly halves XLA's compile time on a busy CPU; runs compared with each other all
  use it, and it changes no message, exit code or file.
  """
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  if num_devices > 1:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={num_devices}"
  return env


@dataclasses.dataclass
class Result:
  returncode: int | None  # None: killed at its deadline
  stdout: str
  stderr: str


class Run:
  """One `[prefix...] python <args>` process in the checkout, output to `<log_dir>/<name>.{out,err}`."""

  def __init__(self, name: str, args: list[str], log_dir: pathlib.Path, env: dict[str, str],
               timeout_s: float, prefix: tuple[str, ...] = ()):
    self.name = name
    log_dir.mkdir(parents=True, exist_ok=True)
    self._out, self._err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    self._deadline = time.monotonic() + timeout_s
    self.timeout_s = timeout_s
    with open(self._out, "w") as out, open(self._err, "w") as err:
      self._proc = subprocess.Popen([*prefix, sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=out,
                                    stderr=err)
    self._result: Result | None = None

  def wait(self) -> Result:
    if self._result is None:
      code = None
      try:
        code = self._proc.wait(timeout=max(0.0, self._deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        self.kill()
      self._result = Result(code, self._out.read_text(), self._err.read_text())
    return self._result

  def kill(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()

  def describe(self) -> str:
    result = self.wait()
    status = (f"killed after {self.timeout_s:.0f} s" if result.returncode is None
              else f"exit {result.returncode}")
    return (f"--- {self.name} ({status})\nstdout tail:\n{result.stdout[-2000:]}\n"
            f"stderr tail:\n{result.stderr[-3000:]}")


def wait_all(runs: list[Run]) -> list[Result]:
  """Waits for runs that belong together (e.g. the processes of one job); kills the rest if one fails."""
  for run in runs:
    if run.wait().returncode != 0:
      for other in runs:
        other.kill()
  return [run.wait() for run in runs]
