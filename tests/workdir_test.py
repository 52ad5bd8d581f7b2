"""The workdir one run owns: its lock (across processes, released by SIGKILL), the heartbeat, the probe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hrm_jax.training import reporting
from hrm_jax.training import workdir as workdir_lib
from hrm_jax.training.errors import TrainingError

_HOLD = textwrap.dedent("""
    import pathlib, sys, time
    from hrm_jax.training import workdir
    lock = workdir.RunLock(pathlib.Path(sys.argv[1])).acquire()
    lock.record("run-held-by-child")
    print("HELD", flush=True)
    time.sleep(600)
""")


def test_second_owner_is_refused_naming_pid_and_run_id_until_the_holder_is_killed(tmp_path):
  script = tmp_path / "hold.py"
  script.write_text(_HOLD)
  child = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONPATH=os.getcwd()))
  try:
    assert child.stdout.readline().strip() == "HELD"
    started = time.monotonic()
    with pytest.raises(TrainingError) as info:
      workdir_lib.RunLock(tmp_path).acquire()
    assert time.monotonic() - started < 2  # refuses at once, does not wait
    message = str(info.value)
    assert f"pid {child.pid}" in message and "run run-held-by-child" in message and "--workdir" in message
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  # The kernel released the dead holder's lock; its stale owner file does not matter.
  with workdir_lib.RunLock(tmp_path) as lock:
    assert lock.owner()["pid"] == os.getpid()
  assert not (tmp_path / workdir_lib.OWNER_FILE).exists()


def test_heartbeat_rewrites_status_while_the_main_thread_is_busy(tmp_path):
  status = reporting.StatusFile(tmp_path / "status.json", run_id="r", total_steps=10, min_interval_s=10)
  said = []
  beat = workdir_lib.Heartbeat(status, interval_s=0.1, say_every_s=0.2, say=said.append)
  try:
    beat.update(force=True, step=3)
    first = json.loads((tmp_path / "status.json").read_text())["updated_at"]
    with beat.phase("evaluating"):
      time.sleep(1.5)  # a long evaluation: no update() from the loop
    writes = status.writes
  finally:
    beat.close()
  assert writes >= 5, writes
  assert json.loads((tmp_path / "status.json").read_text())["updated_at"] > first
  assert said and all(line.startswith("  ... still evaluating (") for line in said)


def test_prepare_refuses_a_workdir_below_a_file(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(TrainingError, match="cannot write to the workdir .*a part of the path is a file"):
    workdir_lib.prepare(tmp_path / "file" / "run")
