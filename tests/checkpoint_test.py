"""Tests for hrm_jax.training.checkpoint and hrm_jax.training.preemption (CPU, tiny states)."""

import errno
import glob
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrm_jax.training import checkpoint as ck
from hrm_jax.training import preemption

# A failed restore leaves Orbax coroutines that complain whenever they are
# garbage-collected, which may be during a later test.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = {"model": {"hidden_size": 16, "H_cycles": 2}, "lr": 1e-4,
          "eval": {"batch_size": 8}, "data_path": "data/sudoku"}


@flax.struct.dataclass
class TrainState:
  params: dict
  opt_state: tuple
  puzzle_opt_state: tuple
  puzzle_table: jax.Array
  carry: dict
  step: jax.Array
  rng: jax.Array
  typed_key: jax.Array


def make_state(seed: int, width: int = 32) -> TrainState:
  """A stand-in train state covering every dtype the real one has."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {
      "embed": jax.random.normal(keys[0], (width, width), jnp.float32),
      "dense": {"kernel": jax.random.normal(keys[1], (width, 8)).astype(jnp.bfloat16)},
  }
  opt_state = optax.adamw(1e-3).init(params)
  puzzle_opt_state = optax.sgd(1e-2, momentum=0.9).init({"table": jnp.zeros((4, 8))})
  return TrainState(
      params=params,
      opt_state=opt_state,
      puzzle_opt_state=puzzle_opt_state,
      puzzle_table=jax.random.normal(keys[2], (64, 8), jnp.float32) + seed,
      carry={"halted_B": jnp.arange(4) % (seed + 2) == 0,
             "steps_B": jnp.arange(4, dtype=jnp.int32) * seed,
             "z_H_BxSxD": jnp.full((4, 3, 8), seed, jnp.bfloat16)},
      step=jnp.int32(seed * 10),
      rng=jax.random.key_data(keys[3]),  # uint32[2]
      typed_key=jax.random.fold_in(jax.random.key(7), seed),
  )


def abstract(state):
  return jax.eval_shape(lambda: state)


def _bits(leaf) -> np.ndarray:
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return np.asarray(leaf).reshape(-1).view(np.uint8)


def assert_bitwise_equal(got, want):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(a), _bits(b))


def save(ckpt, step, state, *, metrics=None, data_state=None, config=CONFIG):
  return ckpt.save(step, state, data_state=data_state or {"next_index": step},
                   config=config, metadata={"run_id": "run-1"}, metrics=metrics)


# ---------------------------------------------------------------------------
# Round trips.
# ---------------------------------------------------------------------------


def test_round_trip_is_bitwise_and_keeps_items(tmp_path):
  state = make_state(3)
  want = jax.tree_util.tree_map(np.array, jax.tree_util.tree_map(
      lambda x: jax.random.key_data(x)
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state))
  with ck.Checkpointer(tmp_path) as ckpt:
    assert save(ckpt, 30, state, metrics={"accuracy": 0.5},
                data_state={"next_index": 7, "epoch": np.int64(2)})
    # The arrays are on the host once save() returns: donating them is safe.
    for leaf in jax.tree_util.tree_leaves(state):
      leaf.delete()
    ckpt.wait()
    assert save(ckpt, 30, make_state(3)) is False  # Already saved.

  with ck.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_good_step() == 30
    target = abstract(make_state(0))
    restored = ckpt.restore(target)
  assert restored.step == 30
  got = jax.tree_util.tree_map(
      lambda x: jax.random.key_data(x)
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, restored.state)
  assert_bitwise_equal(got, want)
  assert isinstance(restored.state, TrainState)
  assert isinstance(restored.state.opt_state[0], optax.ScaleByAdamState)
  assert restored.state.typed_key.dtype == target.typed_key.dtype
  device = jax.local_devices()[0]
  for leaf in jax.tree_util.tree_leaves(restored.state):
    assert leaf.sharding == jax.sharding.SingleDeviceSharding(device)
  assert restored.data_state == {"next_index": 7, "epoch": 2}
  assert restored.config == CONFIG
  meta = restored.metadata
  assert meta["run_id"] == "run-1" and meta["step"] == 30
  assert meta["config_hash"] == ck.config_hash(CONFIG)
  assert meta["metrics"] == {"accuracy": 0.5}
  assert meta["versions"]["jax"] == jax.__version__
  assert abs(meta["wall_time"] - time.time()) < 600


def test_bytes_data_state_and_sync_save(tmp_path):
  grain_state = b'{"version": 2, "last_seen_indices": {"0": 41}}\x00\xff'
  with ck.Checkpointer(tmp_path, async_save=False) as ckpt:
    save(ckpt, 1, make_state(1), data_state=grain_state)
    assert ckpt.steps() == [1]  # Committed before save() returned.
    restored = ckpt.restore(abstract(make_state(1)))
  assert restored.data_state == grain_state


def test_restore_into_mismatched_state_names_leaves(tmp_path):
  with ck.Checkpointer(tmp_path) as ckpt:
    save(ckpt, 1, make_state(1))
    wrong = abstract(make_state(1, width=16))
    wrong = wrong.replace(puzzle_table=jax.ShapeDtypeStruct((64, 8), jnp.bfloat16))
    with pytest.raises(ck.CheckpointMismatchError) as info:
      ckpt.restore(wrong)
    message = str(info.value)
    assert ".puzzle_table: checkpoint float32[64, 8], expected bfloat16[64, 8]" in message
    assert "['embed']: checkpoint float32[32, 32], expected float32[16, 16]" in message
    assert ckpt.steps() == [1]  # A user error is not corruption: nothing moved.
    with pytest.raises(ck.CheckpointError, match="step 5 not found"):
      ckpt.restore(abstract(make_state(1)), step=5)


# ---------------------------------------------------------------------------
# Retention.
# ---------------------------------------------------------------------------


def test_keeps_last_n_plus_best(tmp_path):
  accuracies = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.2, 5: 0.3}
  state = make_state(1, width=4)
  with ck.Checkpointer(tmp_path, max_to_keep=2, best_metric="acc") as ckpt:
    for step, acc in accuracies.items():
      save(ckpt, step, state, metrics={"acc": acc, "loss": 1.0})
    ckpt.wait()
    assert ckpt.steps() == [2, 4, 5]
    assert ckpt.best_step() == 2
    assert ckpt.restore(abstract(state)).metadata["best"] == {
        "metric": "acc", "mode": "max", "value": 0.9, "step": 2}
  # A restarted run still knows the best, and drops it once beaten.
  with ck.Checkpointer(tmp_path, max_to_keep=2, best_metric="acc") as ckpt:
    assert ckpt.best_step() == 2
    save(ckpt, 6, state, metrics={"acc": 0.2})
    save(ckpt, 7, state)  # No metrics: kept only while among the newest.
    ckpt.wait()
    assert ckpt.steps() == [2, 6, 7]
    save(ckpt, 8, state, metrics={"acc": 0.95})
    ckpt.wait()
    assert ckpt.steps() == [7, 8] and ckpt.best_step() == 8


def test_best_mode_min(tmp_path):
  state = make_state(1, width=4)
  with ck.Checkpointer(tmp_path, max_to_keep=1, best_metric="loss",
                       best_mode="min") as ckpt:
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)]:
      save(ckpt, step, state, metrics={"loss": loss})
    ckpt.wait()
    assert ckpt.steps() == [2, 4]


# ---------------------------------------------------------------------------
# Corruption and fallback.
# ---------------------------------------------------------------------------


def _array_files(step_dir):
  return [f for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True)
          if os.path.isfile(f)]


def _corrupt(step_dir: pathlib.Path, kind: str) -> None:
  if kind == "deleted_array_files":
    for f in _array_files(step_dir):
      os.remove(f)
  elif kind == "truncated_array_files":
    for f in _array_files(step_dir):
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif kind == "flipped_bits":
    for f in _array_files(step_dir):
      data = bytearray(pathlib.Path(f).read_bytes())
      for i in range(len(data) // 3, len(data), max(1, len(data) // 7)):
        data[i] ^= 0x10
      pathlib.Path(f).write_bytes(bytes(data))
  elif kind == "one_flipped_bit":
    # In the middle of the largest array file: zstd keeps incompressible data as
    # raw bytes, so only the fingerprint notices.
    path = pathlib.Path(max(_array_files(step_dir), key=os.path.getsize))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
  elif kind == "bad_array_metadata":
    (step_dir / "state" / "_METADATA").write_text("{not json")
  elif kind == "bad_run_metadata":
    (step_dir / "metadata" / "metadata").write_text('{"step": 4')
  elif kind == "missing_item":
    for f in (step_dir / "data_state").iterdir():
      f.unlink()
    (step_dir / "data_state").rmdir()
  else:
    raise ValueError(kind)


@pytest.mark.parametrize("kind", [
    "deleted_array_files", "truncated_array_files", "flipped_bits", "one_flipped_bit",
    "bad_array_metadata", "bad_run_metadata", "missing_item"])
def test_corrupt_latest_falls_back_to_previous(tmp_path, kind):
  old, new = make_state(1), make_state(2)
  with ck.Checkpointer(tmp_path) as ckpt:
    save(ckpt, 10, old)
    save(ckpt, 20, new)
  _corrupt(tmp_path / "20", kind)

  with ck.Checkpointer(tmp_path) as ckpt:
    with pytest.warns(RuntimeWarning,
                      match=r"step 20 in .* is corrupt \(.+\); resuming from step 10"
                      ) as record:
      restored = ckpt.restore(abstract(old))
    if kind == "one_flipped_bit":
      assert "does not match its saved fingerprint" in str(record[0].message)
    assert restored.step == 10
    assert_bitwise_equal(restored.state.params, old.params)
    assert restored.data_state == {"next_index": 10}
    # The bad step is moved aside, so the rerun can write step 20 again.
    assert not (tmp_path / "20").exists()
    assert len(list((tmp_path / "corrupt").iterdir())) == 1
    assert ckpt.latest_good_step() == 10
    assert save(ckpt, 20, new)
    ckpt.wait()
    assert ckpt.restore(abstract(old)).step == 20


def test_corrupt_step_that_cannot_be_moved_is_never_skipped(tmp_path, monkeypatch):
  with ck.Checkpointer(tmp_path) as ckpt:
    save(ckpt, 10, make_state(1))
    save(ckpt, 20, make_state(2))
  _corrupt(tmp_path / "20", "truncated_array_files")
  with ck.Checkpointer(tmp_path) as ckpt:
    def no_rename(self, target):
      raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(type(ckpt.directory), "rename", no_rename)
    with pytest.warns(RuntimeWarning, match="resuming from step 10"):
      assert ckpt.restore(abstract(make_state(1))).step == 10
    assert ckpt.latest_good_step() == 10
    # Saving step 20 again must not be mistaken for "already saved".
    with pytest.raises(ck.CheckpointError, match=r"20 exists but is not a good.*delete"):
      save(ckpt, 20, make_state(2))


def test_no_readable_step_raises_clear_error(tmp_path):
  with ck.Checkpointer(tmp_path) as ckpt:
    save(ckpt, 10, make_state(1))
  _corrupt(tmp_path / "10", "truncated_array_files")
  with ck.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ck.CheckpointCorruptError,
                       match=r"no readable checkpoint .*step 10: .*Fix:"):
      ckpt.restore(abstract(make_state(1)))
    # Nothing to compare against, so nothing is declared corrupt or moved.
    assert (tmp_path / "10").exists() and not (tmp_path / "corrupt").exists()


# ---------------------------------------------------------------------------
# Process killed mid-save.
# ---------------------------------------------------------------------------

_KILL_CHILD = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    from hrm_jax.training import checkpoint as ck
    mode, directory = sys.argv[1], sys.argv[2]

    def state(seed):  # ~64 MB of incompressible floats: the write takes a while.
      return {"table": jax.random.normal(jax.random.key(seed), (4096, 4096)),
              "step": jnp.int32(seed)}

    ckpt = ck.Checkpointer(directory)
    ckpt.save(1, state(1), data_state={"i": 1}, config={}, metadata={})
    ckpt.wait()
    if mode == "before_rename":
      # Hold the final rename of the step directory: every array, item and
      # commit_success.txt is already written, only the commit itself is missing.
      import os
      from orbax.checkpoint._src.path import async_path
      rename = async_path.rename
      async def stalled_rename(src, dst):
        if os.path.basename(str(src)).startswith("2.orbax-checkpoint-tmp"):
          print("COMMITTING", flush=True)
          time.sleep(600)
        return await rename(src, dst)
      async_path.rename = stalled_rename
    ckpt.save(2, state(2), data_state={"i": 2}, config={}, metadata={})
    print("SAVING", flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("mode", ["in_flight", "before_rename"])
def test_kill_during_async_save_leaves_previous_step(tmp_path, mode):
  script = tmp_path / "child.py"
  script.write_text(_KILL_CHILD)
  directory = tmp_path / "ckpt"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  child = subprocess.Popen([sys.executable, str(script), mode, str(directory)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           env=env, text=True)
  try:
    wanted = "SAVING" if mode == "in_flight" else "COMMITTING"
    for line in child.stdout:
      if line.strip() == wanted:
        break
    child.send_signal(signal.SIGKILL)
  finally:
    child.kill()
    child.wait(timeout=60)
  assert child.returncode == -signal.SIGKILL

  # The interrupted step exists only as an uncommitted temporary directory.
  assert not (directory / "2").exists()
  leftovers = glob.glob(f"{directory}/2.orbax-checkpoint-tmp*")
  assert len(leftovers) == 1
  if mode == "before_rename":
    assert os.path.exists(f"{leftovers[0]}/commit_success.txt")
    assert os.path.exists(f"{leftovers[0]}/state/manifest.ocdbt")

  step1 = {"table": jax.random.normal(jax.random.key(1), (4096, 4096)),
           "step": jnp.int32(1)}
  with ck.Checkpointer(directory) as ckpt:  # Start-up removes the leftover.
    assert ckpt.latest_good_step() == 1
    restored = ckpt.restore(abstract(step1))
    assert restored.step == 1 and restored.data_state == {"i": 1}
    assert_bitwise_equal(restored.state, step1)
    assert not glob.glob(f"{directory}/*.orbax-checkpoint-tmp*")
    assert ckpt.save(2, step1, data_state={"i": 2}, config={}, metadata={})
    ckpt.wait()
    assert ckpt.steps() == [1, 2]


def test_leftovers_are_removed_before_the_constructor_returns(tmp_path):
  # Orbax removes them in a background thread; a run that stops before its first save (a refused resume)
  # must not leave that thread running into interpreter shutdown, and a restore must not race it.
  leftover = tmp_path / "7.orbax-checkpoint-tmp-1234567"
  (leftover / "state").mkdir(parents=True)
  (tmp_path / "3").mkdir()  # not a temporary: must survive
  ckpt = ck.Checkpointer(tmp_path)
  try:
    assert not leftover.exists()
    assert (tmp_path / "3").exists()
  finally:
    ckpt.close()


# ---------------------------------------------------------------------------
# Failed saves.
# ---------------------------------------------------------------------------


def _fail_commit(monkeypatch, error):
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top

  async def failing_rename(*args, **kwargs):
    raise error

  monkeypatch.setattr(async_path, "rename", failing_rename)


@pytest.mark.parametrize("async_save", [True, False])
def test_failed_save_keeps_earlier_checkpoints(tmp_path, monkeypatch, async_save):
  first, second = make_state(1), make_state(2)
  with ck.Checkpointer(tmp_path, max_to_keep=2, async_save=async_save) as ckpt:
    save(ckpt, 1, first)
    save(ckpt, 2, second)
    ckpt.wait()
    with monkeypatch.context() as patch:
      _fail_commit(patch, OSError(errno.ENOSPC, "No space left on device"))
      with pytest.raises(ck.CheckpointSaveError) as info:
        save(ckpt, 3, make_state(3))
        ckpt.wait()  # Async: the error surfaces here.
    message = str(info.value)
    assert "saving checkpoint step 3 to" in message
    assert "No space left on device" in message
    assert "Earlier checkpoints are intact (the latest good step is 2" in message
    # Step 3 would have pushed step 1 out; the failure must not delete it.
    assert ckpt.steps() == [1, 2]
    assert ckpt.latest_good_step() == 2
    assert_bitwise_equal(ckpt.restore(abstract(first), step=1).state.params,
                         first.params)
    assert_bitwise_equal(ckpt.restore(abstract(first)).state.params, second.params)
    # Once the disk is fine again the same step saves normally.
    assert save(ckpt, 3, make_state(3))
    ckpt.wait()
    assert ckpt.steps() == [2, 3]


def test_failure_of_earlier_async_save_surfaces_on_next_save(tmp_path, monkeypatch):
  with ck.Checkpointer(tmp_path) as ckpt:
    save(ckpt, 1, make_state(1))
    ckpt.wait()
    with monkeypatch.context() as patch:
      _fail_commit(patch, PermissionError(errno.EACCES, "Permission denied"))
      save(ckpt, 2, make_state(2))
      ckpt._manager._checkpointer._async_manager._thread.join()  # Let it fail.
    with pytest.raises(ck.CheckpointSaveError,
                       match=r"step 2 .*Permission denied.*latest good step is 1"):
      save(ckpt, 3, make_state(3))
    assert ckpt.steps() == [1]


# ---------------------------------------------------------------------------
# Resume compatibility and config hash.
# ---------------------------------------------------------------------------


def test_check_resume_compatible_accepts_safe_changes():
  # The default list is config.RESUME_SAFE_KEYS, in this package's key names.
  new = {"model": {"hidden_size": 16, "H_cycles": 2}, "lr": 1e-4,
         "eval": {"batch_size": 64, "sets": ["test"]}, "data_path": "data/sudoku",
         "log": {"every_steps": 5}, "checkpoint": {"every_steps": 7}, "num_steps": 99}
  ck.check_resume_compatible(CONFIG, new)
  with pytest.raises(ck.ResumeConfigError, match="log_every"):  # the original's names are not special
    ck.check_resume_compatible(CONFIG, {**CONFIG, "log_every": 5})
  ck.check_resume_compatible({"a": (1, 2), "trainer": {"log_every": 1}},
                             {"a": [1, 2], "trainer": {"log_every": 9}},
                             safe_keys=["*.log_every"])


def test_check_resume_compatible_names_every_unsafe_key():
  new = {"model": {"hidden_size": 32, "H_cycles": 2, "L_layers": 4}, "lr": 1e-3,
         "eval": {"batch_size": 64}}
  with pytest.raises(ck.ResumeConfigError) as info:
    ck.check_resume_compatible(CONFIG, new)
  assert info.value.keys == ["data_path", "lr", "model.L_layers", "model.hidden_size"]
  message = str(info.value)
  assert "model.hidden_size: checkpoint 16 -> now 32" in message
  assert "data_path: checkpoint \"data/sudoku\" -> now <absent>" in message
  assert "eval" not in message.split("Keys allowed")[0]
  assert "Fix:" in message
  with pytest.raises(ck.ResumeConfigError, match="lr"):
    ck.check_resume_compatible({"lr": 1}, {"lr": 2}, safe_keys=["lr_schedule"])


def test_config_hash():
  h = ck.config_hash(CONFIG)
  assert len(h) == 16 and int(h, 16) >= 0
  reordered = {"data_path": "data/sudoku", "eval": {"batch_size": 8}, "lr": 1e-4,
               "model": {"H_cycles": 2, "hidden_size": 16}}
  assert ck.config_hash(reordered) == h
  assert ck.config_hash({**CONFIG, "lr": 2e-4}) != h


# ---------------------------------------------------------------------------
# PreemptionGuard.
# ---------------------------------------------------------------------------


def test_preemption_guard_sigterm_sets_flag_and_stops_at_next_step():
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with preemption.PreemptionGuard() as guard:
    assert not guard.should_stop(0)
    os.kill(os.getpid(), signal.SIGTERM)
    # Python runs handlers between bytecodes; give the signal a moment to land.
    deadline = time.time() + 5
    while not guard.stop_requested and time.time() < deadline:
      time.sleep(0.01)
    assert guard.stop_requested and guard.received == ["SIGTERM"]
    assert guard.should_stop(1)
    assert guard.should_stop(2)  # Stays stopped.
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_preemption_guard_request_stop():
  guard = preemption.PreemptionGuard(signals=())
  assert not guard.should_stop(3)
  guard.request_stop()
  assert guard.should_stop(4)


def test_second_sigint_aborts_immediately(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(textwrap.dedent("""
      import os, signal, time
      from hrm_jax.training import preemption
      guard = preemption.PreemptionGuard().install()
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.2)
      print("first", guard.should_stop(1), flush=True)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
      print("survived", flush=True)
  """))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, env=env, timeout=60)
  assert "first True" in result.stdout
  assert "survived" not in result.stdout
  assert result.returncode == -signal.SIGINT


_MULTIPROCESS_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import jax
    process_id, port = int(sys.argv[1]), sys.argv[2]
    service, signum = sys.argv[3] == "1", getattr(signal, sys.argv[4])
    jax.config.update("jax_enable_preemption_service", service)
    jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                               process_id=process_id)
    from hrm_jax.training import preemption
    with preemption.PreemptionGuard() as guard:
      for step in range(400):
        if process_id == 1 and step == 5:
          os.kill(os.getpid(), signum)
        if guard.should_stop(step):
          print("STOP", step, flush=True)
          break
        time.sleep(0.01)
    jax.distributed.shutdown()
""")


@pytest.mark.slow
@pytest.mark.parametrize("service,signame", [
    (True, "SIGTERM"), (True, "SIGINT"), (False, "SIGTERM")])
def test_preemption_guard_multiprocess_agrees_on_step(tmp_path, service, signame):
  """Process 1 alone is signalled; both processes must stop at the same step."""
  script = tmp_path / "child.py"
  script.write_text(_MULTIPROCESS_CHILD)
  with socket.socket() as probe:  # A free port for the coordinator.
    probe.bind(("localhost", 0))
    port = str(probe.getsockname()[1])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  children = [subprocess.Popen(
      [sys.executable, str(script), str(i), port, str(int(service)), signame],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for i in range(2)]
  outputs = [c.communicate(timeout=120)[0] for c in children]
  stops = [[line for line in out.splitlines() if line.startswith("STOP")]
           for out in outputs]
  assert stops[0] and stops[0] == stops[1], outputs
  assert int(stops[0][0].split()[1]) >= 5
