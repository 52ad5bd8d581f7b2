"""Acceptance tests for checkpoints and resume: kill, stop or corrupt a real run, rerun it, get the same bits.

Every test runs the real CLI (`python -m hrm_jax.main`, in subprocesses) or `train_and_evaluate` on a tiny
model and a synthetic dataset with several puzzle ids, and compares the final checkpoints of an interrupted
run with those of one uninterrupted reference run leaf by leaf on raw bits: parameters, optimiser states,
puzzle table, buffers, ACT carry, PRNG key and step, plus the data iterator state and the next batch.

Subprocesses share a persistent XLA compilation cache (in the test's temporary directory), so only the first
run of each model compiles; a cached executable is the same one a fresh compile produces.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import pytest

from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline
from hrm_jax.training import checkpoint as ckpt_lib
from hrm_jax.training import reporting
from hrm_jax.training import train
from hrm_jax.training.train_step import create_train_state

# Orbax coroutines of a failed save complain when garbage-collected, possibly during a later test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOTAL_STEPS = 12  # 2N; about 5 epochs of the tiny dataset, so the data iterator crosses epoch boundaries
KILL_SEED = int(os.environ.get("HRM_KILL_SEED", "20240611"))  # set another to soak-test the kill points
RUN_TIMEOUT_S = 240

# The command every run of the tiny model uses (on top of configs/demo.py:smoke and --config.data_dir).
TINY = {
    "build_data_if_missing": "",
    "model.hidden_size": 16,
    "model.num_heads": 2,
    "model.puzzle_emb_ndim": 16,
    "global_batch_size": 8,
    "num_steps": TOTAL_STEPS,
    "optimizer.warmup_steps": 2,
    "eval.at_start": False,
    "eval.every_steps": 0,  # one full evaluation, at the end
    "eval.batch_size": 8,
    "checkpoint.every_steps": 1,  # async saves back to back: a kill often lands inside one
    "checkpoint.max_to_keep": 100,  # keep every step, so any step can be compared with the reference
    "log.every_steps": 1,
    "log.tensorboard": False,
}

# The original's tiny fixture model (tests/conftest.py original_fixture_dir/float32/model_cfg.json).
FIXTURE_MODEL = {
    "model.hidden_size": 64, "model.num_heads": 4, "model.expansion": 4.0, "model.H_cycles": 2,
    "model.L_cycles": 2, "model.H_layers": 2, "model.L_layers": 2, "model.puzzle_emb_ndim": 64,
    "model.pos_encodings": "rope", "model.halt_max_steps": 4, "model.forward_dtype": "float32",
}


# ==========================================================================================================
# Helpers
# ==========================================================================================================
def write_dataset(path: pathlib.Path, num_identifiers: int, puzzles_per_id: int = 6, vocab: int = 11,
                  seq_len: int = 16, seed: int = 0) -> pathlib.Path:
  """A synthetic dataset in the original's format: ids 1..num_identifiers-1, one example per puzzle."""
  rng = np.random.default_rng(seed)
  for split, per_id in (("train", puzzles_per_id), ("test", 2)):
    count = (num_identifiers - 1) * per_id
    inputs = rng.integers(1, vocab, size=(count, seq_len)).astype(np.uint8)
    labels = (inputs.astype(np.int64) % (vocab - 1) + 1).astype(np.uint8)
    meta = data_format.DatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab, seq_len=seq_len,
        num_puzzle_identifiers=num_identifiers, total_groups=count, mean_puzzle_examples=1.0, sets=["all"])
    data_format.write_split(path, split, meta, {"all": {
        "inputs": inputs, "labels": labels,
        "puzzle_identifiers": np.repeat(np.arange(1, num_identifiers), per_id).astype(np.int32),
        "puzzle_indices": np.arange(count + 1, dtype=np.int32),
        "group_indices": np.arange(count + 1, dtype=np.int32)}})
  data_format.write_identifiers(path, ["<blank>"] + [f"puzzle_{i}" for i in range(1, num_identifiers)])
  return path


def flags(data_dir: pathlib.Path, overrides: dict[str, Any], config_file: str = "configs/demo.py") -> list[str]:
  return [f"--config={config_file}:smoke", f"--config.data_dir={data_dir}"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]


def load_config(data_dir: pathlib.Path, overrides: dict[str, Any],
                config_file: str = "configs/demo.py") -> ml_collections.ConfigDict:
  """The ConfigDict the CLI builds from `flags(data_dir, overrides, config_file)`."""
  spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.update_from_flattened_dict({"data_dir": str(data_dir), **overrides})
  return config


class Run:
  """One CLI process; stdout and stderr go to a log file that the test can read while it runs."""

  def __init__(self, env: dict[str, str], workdir: pathlib.Path, data_dir: pathlib.Path,
               overrides: dict[str, Any], script: pathlib.Path | None = None,
               config_file: str = "configs/demo.py"):
    self.workdir = workdir
    workdir.parent.mkdir(parents=True, exist_ok=True)
    self.log_path = workdir.parent / f"{workdir.name}.{time.monotonic_ns()}.log"
    self._log = open(self.log_path, "w")
    program = [str(script)] if script else ["-m", "hrm_jax.main"]
    self.proc = subprocess.Popen(
        [sys.executable] + program + [f"--workdir={workdir}"] + flags(data_dir, overrides, config_file),
        cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
    self.started = time.monotonic()

  @property
  def output(self) -> str:
    return self.log_path.read_text()

  def alive(self) -> bool:
    return self.proc.poll() is None

  def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
      return self.proc.wait(timeout)
    finally:
      self._log.close()

  def kill(self, signum: int = signal.SIGKILL) -> None:
    if self.alive():
      self.proc.send_signal(signum)

  def wait_until(self, condition: Callable[[], Any], what: str, timeout: float = RUN_TIMEOUT_S,
                 poll_s: float = 0.005) -> Any:
    """Polls `condition` until it returns something truthy; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      value = condition()
      if value:
        return value
      if not self.alive():
        raise AssertionError(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.output}")
      time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}:\n{self.output}")


def logged_steps(workdir: pathlib.Path, split: str = "train") -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [r["step"] for r in reporting.read_jsonl(path) if r.get("split") == split]


def train_losses(workdir: pathlib.Path) -> list[tuple[int, float]]:
  return [(r["step"], r["loss"]) for r in reporting.read_jsonl(workdir / "metrics.jsonl")
          if r.get("split") == "train"]


def save_dirs_in_flight(workdir: pathlib.Path) -> list[pathlib.Path]:
  """Orbax's temporary directories of saves not committed yet."""
  return sorted((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def committed_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").exists())


def abstract_state(config: ml_collections.ConfigDict):
  meta = data_format.load_metadata(config.data_dir, "train")
  cfg = train.model_config_from(config, meta)
  dense_opt, _, _ = train.make_optimizers(config, train.plan_run(config, meta))
  return jax.eval_shape(lambda: create_train_state(cfg, dense_opt, config.global_batch_size, config.seed,
                                                   ema=config.ema))


def restore(workdir: pathlib.Path, config: ml_collections.ConfigDict, step: int) -> ckpt_lib.Restored:
  """A checkpoint restored with the Checkpointer (which also checks every leaf's fingerprint)."""
  with ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=1000, async_save=False) as reader:
    return reader.restore(abstract_state(config), step=step)


def flat_leaves(tree) -> dict[str, np.ndarray]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in flat}


def assert_bitwise_equal(got, want, what: str) -> None:
  got, want = flat_leaves(got), flat_leaves(want)
  assert sorted(got) == sorted(want), f"{what}: different leaves"
  for path in want:
    a, b = got[path], want[path]
    assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{what}{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    same_bits = np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))
    assert same_bits, f"{what}{path} differs in {int(np.sum(a != b))} of {a.size} elements"


def next_batch(config: ml_collections.ConfigDict, data_state: dict) -> dict[str, np.ndarray]:
  iterator = pipeline.make_train_iterator(config.data_dir, global_batch_size=config.global_batch_size,
                                          seed=config.seed)
  iterator.set_state(data_state)
  return next(iterator)


def assert_same_run_state(workdir: pathlib.Path, reference: pathlib.Path, config: ml_collections.ConfigDict,
                          step: int = TOTAL_STEPS) -> ckpt_lib.Restored:
  """Checkpoint `step` of `workdir` equals the reference's: every state leaf, data state and next batch."""
  got, want = restore(workdir, config, step), restore(reference, config, step)
  assert int(got.state.step) == step
  assert_bitwise_equal(got.state, want.state, "state")
  # Leaves that must exist for the comparison to mean what it says.
  names = set(flat_leaves(want.state))
  for leaf in (".params", ".opt_state", ".puzzle_table", ".carry", ".rng", ".step", ".buffers"):
    assert any(n.startswith(leaf) for n in names), f"no {leaf} leaves in the saved state"
  assert got.data_state == want.data_state
  assert_bitwise_equal(next_batch(config, got.data_state), next_batch(config, want.data_state), "next batch")
  return got


def assert_losses_match_reference(workdir: pathlib.Path, reference: pathlib.Path,
                                  all_steps: bool = True) -> None:
  """Every train loss the run logged (steps replayed after a restart included) equals the reference's."""
  want = dict(train_losses(reference))
  got = train_losses(workdir)
  logged = {s for s, _ in got}
  assert logged == set(want) if all_steps else logged <= set(want)
  for step, loss in got:
    assert loss == want[step], f"step {step}: loss {loss!r} vs reference {want[step]!r}"


# ==========================================================================================================
# Fixtures
# ==========================================================================================================
@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def env(scratch) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              JAX_COMPILATION_CACHE_DIR=str(scratch / "xla_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def data_dir(scratch) -> pathlib.Path:
  """Vocab 11, seq 16, 4 puzzle ids (3 used + blank): 18 training puzzles, 2.25 steps per epoch."""
  return write_dataset(scratch / "data", num_identifiers=4)


@pytest.fixture(scope="module")
def config(data_dir) -> ml_collections.ConfigDict:
  return load_config(data_dir, TINY)


@pytest.fixture(scope="module")
def reference(scratch, env, data_dir) -> pathlib.Path:
  """The uninterrupted run: TOTAL_STEPS steps, a checkpoint after every one."""
  run = Run(env, scratch / "reference", data_dir, TINY)
  try:
    assert run.wait() == 0, run.output
  finally:
    run.kill()  # only if it hung
  assert committed_steps(run.workdir) == list(range(1, TOTAL_STEPS + 1))
  assert logged_steps(run.workdir) == list(range(1, TOTAL_STEPS + 1))
  return run.workdir


@pytest.fixture
def runs():
  """Starts CLI runs and kills whatever is left of them when the test ends."""
  started: list[Run] = []

  def start(*args) -> Run:
    started.append(Run(*args))
    return started[-1]

  yield start
  for run in started:
    run.kill()
    run.wait(60)


# ==========================================================================================================
# 1. SIGKILL at arbitrary moments, once during an async save
# ==========================================================================================================
def test_sigkill_three_times_ends_bitwise_equal_to_uninterrupted_run(reference, runs, env, data_dir, config,
                                                                      tmp_path):
  workdir = tmp_path / "killed"
  kill_three_times_then_finish(lambda: runs(env, workdir, data_dir, TINY), workdir)
  assert_same_run_state(workdir, reference, config)
  assert_losses_match_reference(workdir, reference)


def kill_three_times_then_finish(start: Callable[[], Run], workdir: pathlib.Path) -> None:
  """SIGKILLs runs of `start()` at a random instant, after random steps and during an async save, then runs
  the same command to the end (also used for TRM in trm_resume_test.py)."""
  rng = random.Random(KILL_SEED)
  kills = []

  # Kill 1: a random instant after start (start-up, compilation or the first steps).
  run = start()
  time.sleep(rng.uniform(0.3, 4.5))
  run.kill()
  run.wait()
  kills.append(("timed", run.proc.returncode, committed_steps(workdir)))

  # Kill 2: a random moment after this process has logged a random number of steps (inside the loop).
  logged_before = len(logged_steps(workdir))
  run = start()
  count = rng.randint(2, 5)
  run.wait_until(lambda: len(logged_steps(workdir)) - logged_before >= count, f"{count} more steps")
  time.sleep(rng.uniform(0.0, 0.3))
  run.kill()
  run.wait()
  kills.append(("after step", run.proc.returncode, committed_steps(workdir)))

  # Kill 3: while an async save is in flight, once a random step is committed (so the final run resumes
  # from the middle). A temporary directory that still exists after the process is dead existed at the
  # instant of the kill (only the dead process could have renamed it).
  in_flight = None
  committed_target = rng.randint(4, 9)
  for _ in range(5):
    stale = set(save_dirs_in_flight(workdir))  # left by an earlier kill; the restart removes them
    run = start()
    run.wait_until(lambda: max(committed_steps(workdir), default=0) >= committed_target
                   and set(save_dirs_in_flight(workdir)) - stale,
                   f"a save in flight after step {committed_target}")
    run.kill()
    run.wait()
    left = sorted(set(save_dirs_in_flight(workdir)) - stale)
    kills.append(("during save", run.proc.returncode, committed_steps(workdir)))
    if left:
      in_flight = left[-1]
      break
  assert in_flight is not None, f"no kill landed inside a save: {kills}"
  unfinished = int(in_flight.name.split(".")[0])
  assert unfinished not in committed_steps(workdir)
  assert all(rc == -signal.SIGKILL for _, rc, _ in kills), kills

  # The same command again, to the end.
  run = start()
  assert run.wait() == 0, run.output
  assert f"Finished {TOTAL_STEPS} steps." in run.output
  assert "Resuming run" in run.output
  assert not save_dirs_in_flight(workdir), "the half-written save was not cleaned up"
  assert unfinished in committed_steps(workdir), "the step killed mid-save was not saved again"
  print(f"kills (kind, exit code, committed steps after it): {kills}")


# ==========================================================================================================
# 2. SIGTERM: checkpoint at the next step boundary, exit 0, resume at the following step
# ==========================================================================================================
def test_sigterm_saves_at_step_boundary_and_resumes_there(reference, runs, env, data_dir, config, tmp_path):
  workdir = tmp_path / "sigterm"
  # No periodic saves: the only checkpoint before the end is the one SIGTERM asks for.
  overrides = {**TINY, "checkpoint.every_steps": 1000}
  run = runs(env, workdir, data_dir, overrides)
  run.wait_until(lambda: any(s >= 3 for s in logged_steps(workdir)), "step 3")
  run.kill(signal.SIGTERM)
  assert run.wait() == 0, run.output
  stopped = int(run.output.split("Stopped by SIGTERM at step ")[1].split(";")[0])
  assert 3 <= stopped < TOTAL_STEPS
  assert "Run the same command again to resume exactly here." in run.output
  assert committed_steps(workdir) == [stopped]
  assert max(logged_steps(workdir)) == stopped
  assert json.loads((workdir / "status.json").read_text())["state"] == "stopped"

  # The same command, with safe keys changed (log and eval intervals): allowed, and the same trajectory.
  logged_before = len(logged_steps(workdir))
  run = runs(env, workdir, data_dir, {**overrides, "log.every_steps": 5, "eval.every_steps": 4})
  assert run.wait() == 0, run.output
  assert f"from its checkpoint at step {stopped} " in run.output
  assert logged_steps(workdir)[logged_before] == stopped + 1
  assert_same_run_state(workdir, reference, config)
  assert_losses_match_reference(workdir, reference, all_steps=False)


# ==========================================================================================================
# 3. Corrupt newest checkpoints: warning, resume from the previous good one, same end state
# ==========================================================================================================
def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_corrupt_latest_checkpoints_fall_back_and_end_equal(reference, runs, env, data_dir, config, tmp_path):
  workdir = tmp_path / "corrupt"
  shutil.copytree(reference, workdir)
  newest, second, good = TOTAL_STEPS, TOTAL_STEPS - 1, TOTAL_STEPS - 2
  truncated = _largest_array_file(workdir / "checkpoints" / str(newest))
  with open(truncated, "r+b") as f:
    f.truncate(truncated.stat().st_size // 2)
  _largest_array_file(workdir / "checkpoints" / str(second)).unlink()

  run = runs(env, workdir, data_dir, TINY)
  assert run.wait() == 0, run.output
  for bad in (newest, second):
    assert f"checkpoint step {bad} in {workdir / 'checkpoints'} is corrupt" in run.output
  assert f"resuming from step {good} instead" in run.output
  assert f"from its checkpoint at step {good} " in run.output
  moved = sorted(p.name.split("-")[0] for p in (workdir / "checkpoints" / "corrupt").iterdir())
  assert moved == [str(second), str(newest)]
  assert_same_run_state(workdir, reference, config)


# ==========================================================================================================
# 4. init_from: the original's PyTorch checkpoint, a resized puzzle table, an hrm_jax run directory
# ==========================================================================================================
# With zero learning rates the weights after step 1 are the weights step 1 started from.
FROZEN = {"num_steps": 1, "optimizer.lr": 0.0, "optimizer.puzzle_emb_lr": 0.0, "eval.every_steps": 0}


def _torch_checkpoint(original_fixture_dir) -> pathlib.Path:
  return original_fixture_dir / "float32" / "checkpoint_dir" / "step_0"


def test_init_from_original_pytorch_checkpoint(original_fixture_dir, runs, env, scratch, tmp_path):
  from hrm_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
  source = _torch_checkpoint(original_fixture_dir)
  data_dir = write_dataset(scratch / "data_fixture", num_identifiers=3)  # the fixture's 3 puzzle ids
  overrides = {**TINY, **FIXTURE_MODEL, **FROZEN, "init_from": str(source)}
  run = runs(env, tmp_path / "from_torch", data_dir, overrides)
  assert run.wait() == 0, run.output
  assert f"from the weights in {source}" in run.output
  assert "puzzle table has" not in run.output  # same number of ids: nothing resized

  config = load_config(data_dir, overrides)
  started = restore(run.workdir, config, 1).state
  original = torch_checkpoint.load_original_checkpoint(source, seq_len=16)
  assert_bitwise_equal(started.params, original.params, "params")
  assert_bitwise_equal(started.buffers, original.buffers, "buffers")
  assert_bitwise_equal(started.puzzle_table, np.asarray(original.puzzle_table, np.float32), "puzzle_table")


def test_load_init_weights_resizes_puzzle_table(original_fixture_dir, scratch, capsys):
  from hrm_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
  source = _torch_checkpoint(original_fixture_dir)
  data_dir = write_dataset(scratch / "data_5_ids", num_identifiers=5, puzzles_per_id=3)
  config = load_config(data_dir, {**TINY, **FIXTURE_MODEL})
  meta = data_format.load_metadata(data_dir, "train")
  cfg = train.model_config_from(config, meta)
  dense_opt, _, _ = train.make_optimizers(config, train.plan_run(config, meta))
  # Only shapes and dtypes matter to load_init_weights: zeros avoid compiling the initialisation.
  fresh = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype),
                       jax.eval_shape(lambda: create_train_state(cfg, dense_opt, 8, 0)))
  loaded = train.load_init_weights(str(source), fresh, cfg)
  assert ("init_from: puzzle table has 3 rows, this dataset has 5; copying the first 3 rows and setting the "
          "rest to the mean row") in capsys.readouterr().out
  original = torch_checkpoint.load_original_checkpoint(source, seq_len=16)
  assert_bitwise_equal(loaded.params, original.params, "params")
  table, want = np.asarray(loaded.puzzle_table), np.asarray(original.puzzle_table, np.float32)
  assert table.shape == (5, want.shape[1])
  np.testing.assert_array_equal(table[:3], want)
  np.testing.assert_array_equal(table[3:], np.tile(want.mean(axis=0), (2, 1)))


@pytest.mark.slow
def test_init_from_original_resizes_puzzle_table(original_fixture_dir, runs, env, scratch, tmp_path):
  from hrm_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
  source = _torch_checkpoint(original_fixture_dir)
  data_dir = scratch / "data_5_ids"
  if not data_dir.exists():
    write_dataset(data_dir, num_identifiers=5, puzzles_per_id=3)
  overrides = {**TINY, **FIXTURE_MODEL, **FROZEN, "init_from": str(source)}
  run = runs(env, tmp_path / "resized", data_dir, overrides)
  assert run.wait() == 0, run.output
  assert ("init_from: puzzle table has 3 rows, this dataset has 5; copying the first 3 rows and setting the "
          "rest to the mean row") in run.output

  table = np.asarray(restore(run.workdir, load_config(data_dir, overrides), 1).state.puzzle_table)
  original = np.asarray(torch_checkpoint.load_original_checkpoint(source, seq_len=16).puzzle_table, np.float32)
  assert table.shape == (5, original.shape[1])
  np.testing.assert_array_equal(table[:3], original)
  np.testing.assert_array_equal(table[3:], np.tile(original.mean(axis=0), (2, 1)))


def test_init_from_hrm_jax_run_directory(reference, runs, env, data_dir, config, tmp_path):
  overrides = {**TINY, **FROZEN, "init_from": str(reference)}
  workdir = tmp_path / "from_run"
  run = runs(env, workdir, data_dir, overrides)
  assert run.wait() == 0, run.output
  assert f"from the weights in {reference}" in run.output
  started = restore(workdir, load_config(data_dir, overrides), 1).state
  final = restore(reference, config, TOTAL_STEPS).state
  for name in ("params", "buffers", "puzzle_table"):
    assert_bitwise_equal(getattr(started, name), getattr(final, name), name)
  assert int(started.step) == 1  # a new run: step count (and optimiser state) start fresh

  # Resume order: once the run has its own checkpoint, the same command uses it, not init_from (here the
  # 1-step run is finished, so it says so); a longer run resumes it.
  run = runs(env, workdir, data_dir, overrides)
  assert run.wait() == 0, run.output
  assert "is already finished at step 1" in run.output and "from the weights in" not in run.output
  run = runs(env, workdir, data_dir, {**overrides, "num_steps": 2})
  assert run.wait() == 0, run.output
  assert "Resuming run" in run.output and "from the weights in" not in run.output


# ==========================================================================================================
# 5. Config changes on resume: model, seed, batch or data refused with the keys named
# ==========================================================================================================
def _copy_checkpoints(reference: pathlib.Path, workdir: pathlib.Path) -> dict[str, float]:
  shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
  return {str(p): p.stat().st_mtime for p in (workdir / "checkpoints").rglob("*")}


def test_resume_refuses_model_seed_and_batch_changes(reference, runs, env, data_dir, tmp_path):
  workdir = tmp_path / "changed"
  before = _copy_checkpoints(reference, workdir)
  run = runs(env, workdir, data_dir,
             {**TINY, "model.hidden_size": 32, "seed": 1, "global_batch_size": 4, "log.every_steps": 7})
  assert run.wait() == 1, run.output
  assert "error: cannot resume: the config differs from the checkpoint's in 3 key(s)" in run.output
  for line in ("model.hidden_size: checkpoint 16 -> now 32", "seed: checkpoint 0 -> now 1",
               "global_batch_size: checkpoint 8 -> now 4"):
    assert line in run.output
  assert "log.every_steps" not in run.output.split("Keys allowed")[0]  # a safe key is not named
  assert "Traceback" not in run.output
  assert {str(p): p.stat().st_mtime for p in (workdir / "checkpoints").rglob("*")} == before


@pytest.mark.parametrize("change", ["same_shapes_other_content", "more_puzzles"])
def test_resume_refuses_another_dataset(reference, scratch, tmp_path, change):
  # data_dir itself may change (a dataset moved to another disk); its contents may not.
  other = scratch / f"data_{change}"
  if not other.exists():
    write_dataset(other, num_identifiers=4, seed=1, puzzles_per_id=6 if change.startswith("same") else 7)
  workdir = tmp_path / "other_data"
  before = _copy_checkpoints(reference, workdir)
  with pytest.raises(ckpt_lib.ResumeConfigError, match=r"cannot resume") as info:
    train.train_and_evaluate(load_config(other, TINY), workdir)
  assert info.value.keys and all(k.startswith("dataset.") for k in info.value.keys), info.value.keys
  assert "dataset.train_fingerprint" in str(info.value)
  if change == "more_puzzles":
    assert "dataset.total_groups: checkpoint 18 -> now 21" in str(info.value)
  assert {str(p): p.stat().st_mtime for p in (workdir / "checkpoints").rglob("*")} == before

  # The same dataset at another path resumes.
  moved = tmp_path / "moved_data"
  shutil.copytree(reference.parent / "data", moved)
  train.train_and_evaluate(load_config(moved, TINY), workdir)
  assert committed_steps(workdir) == list(range(1, TOTAL_STEPS + 1))


# ==========================================================================================================
# 6. A failed save keeps the earlier checkpoints and says so
# ==========================================================================================================
# The CLI with the commit of step 3 failing as on a full disk: its files are written, the rename never happens.
_DISK_FULL_AT_STEP_3 = textwrap.dedent("""
    import errno, pathlib, sys
    from absl import app
    from orbax.checkpoint._src.path import async_path
    from hrm_jax import main

    rename = async_path.rename

    async def disk_full_at_step_3(src, dst):
      if pathlib.Path(dst).name == "3":
        raise OSError(errno.ENOSPC, "No space left on device")
      return await rename(src, dst)

    async_path.rename = disk_full_at_step_3
    app.run(main.main, flags_parser=main._parse_flags)
""")


def test_failed_save_keeps_earlier_checkpoints(reference, runs, env, data_dir, config, tmp_path):
  script = tmp_path / "disk_full.py"
  script.write_text(_DISK_FULL_AT_STEP_3)
  workdir = tmp_path / "disk_full"
  run = runs(env, workdir, data_dir, TINY, script)
  assert run.wait() == 1, run.output
  assert (f"error: saving checkpoint step 3 to {workdir / 'checkpoints'} failed: No space left on device. "
          "Earlier checkpoints are intact (the latest good step is 2; steps on disk: [1, 2])") in run.output
  assert "rerun the same command to resume" in run.output
  # Orbax's traceback of the failed commit is in run.log; the console holds the one-line error.
  assert "Traceback" not in run.output and "Traceback" in (workdir / "run.log").read_text()
  assert run.output.rstrip().splitlines()[-1].startswith("error: saving checkpoint step 3 ")
  status = json.loads((workdir / "status.json").read_text())
  assert status["state"] == "failed" and "Earlier checkpoints are intact" in status["message"]
  assert committed_steps(workdir) == [1, 2]
  for step in (1, 2):
    assert_same_run_state(workdir, reference, config, step)

  # With the disk fixed, the same command resumes from step 2 and ends as the uninterrupted run.
  run = runs(env, workdir, data_dir, TINY)
  assert run.wait() == 0, run.output
  assert "from its checkpoint at step 2 " in run.output
  assert_same_run_state(workdir, reference, config)


# ==========================================================================================================
# Early stopping counts evaluations across restarts
# ==========================================================================================================
def test_early_stop_after_kill_stops_where_uninterrupted_run_stops(reference, runs, env, data_dir, config,
                                                                   tmp_path):
  # Full evaluations at steps 2, 4, 6, ...; on this data the exact accuracy stays 0, so the uninterrupted
  # run has its best at step 2 and stops at step 8, after 3 evaluations without a better one.
  overrides = {**TINY, "eval.every_steps": 2, "eval.full_every_steps": 2, "eval.early_stop_patience": 3}
  workdir = tmp_path / "early_stop"
  run = runs(env, workdir, data_dir, overrides)
  # Killed once step 5 is committed: its checkpoint was taken after one evaluation without improvement.
  run.wait_until(lambda: 5 in committed_steps(workdir), "checkpoint 5")
  run.kill()
  run.wait()
  assert max(committed_steps(workdir)) < 8

  run = runs(env, workdir, data_dir, overrides)
  assert run.wait() == 0, run.output
  assert "Early stop at step 8: 3 full evaluations without a better exact accuracy" in run.output
  assert max(committed_steps(workdir)) == 8
  assert {r["exact_accuracy"] for r in reporting.read_jsonl(workdir / "metrics.jsonl")
          if r["split"] == "eval"} == {0.0}
  assert_same_run_state(workdir, reference, config, step=8)


# ==========================================================================================================
# 7. One live run owns a workdir
# ==========================================================================================================
def test_second_run_on_a_live_workdir_refuses_and_the_first_ends_equal_to_a_lone_run(reference, runs, env,
                                                                                    data_dir, config, tmp_path):
  workdir = tmp_path / "shared"
  first = runs(env, workdir, data_dir, TINY)
  owner_file = workdir / ".lock.owner.json"
  owner = first.wait_until(lambda: owner_file.exists() and json.loads(owner_file.read_text()).get("run_id")
                           and json.loads(owner_file.read_text()), "the first run to own the workdir")
  # Paused while the second run starts, so the first is still live (and holds the lock) however fast it
  # would otherwise finish its 12 tiny steps; a stopped process keeps its lock.
  os.kill(first.proc.pid, signal.SIGSTOP)
  try:
    second = runs(env, workdir, data_dir, TINY)
    assert second.wait(60) == 1, second.output
    assert first.alive(), "the second run must not have disturbed the first"
  finally:
    os.kill(first.proc.pid, signal.SIGCONT)
  (line,) = [l for l in second.output.splitlines() if l.startswith("error:")]
  assert f"is in use by run {owner['run_id']}, pid {first.proc.pid}" in line, line
  assert "Traceback" not in second.output
  assert first.wait() == 0, first.output
  assert_same_run_state(workdir, reference, config)
  assert_losses_match_reference(workdir, reference)  # metrics.jsonl holds the first run's lines only


# ==========================================================================================================
# 8. Unreadable metadata counts as a corrupt step; with no usable step the run refuses
# ==========================================================================================================
def _tree_snapshot(directory: pathlib.Path) -> dict[str, tuple[float, bytes]]:
  return {str(p): (p.stat().st_mtime, p.read_bytes()) for p in directory.rglob("*") if p.is_file()}


def test_unreadable_metadata_in_every_step_is_refused_and_nothing_is_overwritten(reference, runs, env,
                                                                                 data_dir, tmp_path):
  workdir = tmp_path / "bad_metadata"
  shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
  for step in committed_steps(workdir):
    (workdir / "checkpoints" / str(step) / "metadata" / "metadata").write_bytes(b"\x80\x81 not json")
  before = _tree_snapshot(workdir / "checkpoints")
  run = runs(env, workdir, data_dir, TINY)
  assert run.wait() == 1, run.output
  (line,) = [l for l in run.output.splitlines() if l.startswith("error:")]
  assert line.startswith(f"error: no usable checkpoint in {workdir / 'checkpoints'}: step 1: ")
  for step in range(1, TOTAL_STEPS + 1):
    assert f"step {step}: {workdir / 'checkpoints' / str(step) / 'metadata' / 'metadata'} is unreadable" in line
  assert "Nothing was changed" in line and "Traceback" not in run.output
  assert _tree_snapshot(workdir / "checkpoints") == before
  assert not (workdir / "metrics.jsonl").exists()  # never started training from scratch


# ==========================================================================================================
# 9. NaN/Inf: stop with the last finite checkpoint; the printed recovery trains past the divergence
# ==========================================================================================================
def test_nan_recovery_advice_followed_trains_past_the_divergence(reference, runs, env, data_dir, config,
                                                                 tmp_path):
  workdir = tmp_path / "diverged"
  shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
  for step in range(7, TOTAL_STEPS + 1):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  # lr 1e30 from step 6 on: step 7's update blows the weights up (their float32 norm is inf) while step 7's
  # loss, computed before the update, is still finite. Changing lr needs the recovery flag.
  refused = runs(env, workdir, data_dir, {**TINY, "optimizer.lr": 1e30})
  assert refused.wait() == 1 and "add --config.recover_from_nan=true" in refused.output, refused.output
  blow_up = runs(env, workdir, data_dir, {**TINY, "optimizer.lr": 1e30, "recover_from_nan": True})
  assert blow_up.wait() == 1, blow_up.output
  (line,) = [l for l in blow_up.output.splitlines() if l.startswith("error:")]
  assert "the run diverged at step 7 (weights' global norm=inf)" in line, line
  assert "the last finite checkpoint is step 6" in line and "it resumes step 6" in line
  assert committed_steps(workdir) == list(range(1, 7))  # nothing saved after the divergence
  assert_same_run_state(workdir, reference, config, step=6)

  # The advice: the same command with --config.recover_from_nan=true and a lower --config.optimizer.lr.
  advice = line.split("Recover: rerun the same command with ")[1]
  assert advice.startswith("--config.recover_from_nan=true and a lower --config.optimizer.lr (now 1e+30)")
  # Checkpoint 6 was saved with lr 1e-3: the lower lr is its own; the clipping is new (and changes the
  # optimiser state's tree, which the recovery adapts).
  fixed = {**TINY, "optimizer.lr": 1e-3, "optimizer.grad_clip_norm": 1.0}
  recovered = runs(env, workdir, data_dir, {**fixed, "recover_from_nan": True})
  assert recovered.wait() == 0, recovered.output
  assert "Recovering run" in recovered.output and "optimizer.grad_clip_norm 0.0 -> 1.0" in recovered.output
  assert committed_steps(workdir) == list(range(1, TOTAL_STEPS + 1))
  assert all(math.isfinite(loss) for _, loss in train_losses(workdir))
  final = restore(workdir, load_config(data_dir, fixed), TOTAL_STEPS)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(final.state.params))
  assert final.metadata["recoveries"] == [{"from_step": 6, "changed": {"optimizer.grad_clip_norm": [0.0, 1.0]}}]
  # Once recovered, the plain command (the new settings, no flag) is this run's command.
  again = runs(env, workdir, data_dir, fixed)
  assert again.wait() == 0 and "already finished at step 12" in again.output, again.output


# ==========================================================================================================
# 10. A full disk during a save (a real tmpfs where this process may mount one)
# ==========================================================================================================
@pytest.fixture
def small_tmpfs(tmp_path, reference):
  """A tmpfs with room for about three of the reference's checkpoints (4 KiB pages per file)."""
  step_kib = sum(-(-p.stat().st_size // 4096) * 4 for p in (reference / "checkpoints" / "1").rglob("*")
                 if p.is_file())
  mount_point = tmp_path / "tmpfs"
  mount_point.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(3.5 * step_kib) + 64}k", "tmpfs",
                     str(mount_point)], capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root in a container); the stubbed-rename test covers it")
  yield mount_point
  subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_tmpfs_during_a_save_keeps_earlier_checkpoints(reference, runs, env, data_dir, config,
                                                            small_tmpfs):
  workdir = small_tmpfs / "run"
  run = runs(env, workdir, data_dir, TINY)
  assert run.wait() == 1, run.output
  saved = committed_steps(workdir)
  assert 1 <= len(saved) < TOTAL_STEPS, (saved, run.output)
  errors = [l for l in run.output.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "failed: No space left on device" in errors[0], run.output
  assert "Earlier checkpoints are intact" in errors[0]
  assert "Traceback" not in run.output  # Orbax's tracebacks went to run.log
  for step in saved:
    assert_same_run_state(workdir, reference, config, step)
  # With room again, the same command resumes and ends as the uninterrupted run.
  subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
  run = runs(env, workdir, data_dir, TINY)
  assert run.wait() == 0, run.output
  assert_same_run_state(workdir, reference, config)
