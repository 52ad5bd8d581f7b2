"""Full-state checkpoints: asynchronous Orbax saves, retention and verified resume.

One checkpoint step holds four Orbax items:

  state       the train-state pytree (params, optimiser states, puzzle table, ACT
              carry, step, PRNG key); arrays in OCDBT/zarr via `StandardSave`.
  data_state  the Grain iterator state (a JSON-able dict or bytes), JSON.
  config      the resolved run config, JSON.
  metadata    run_id and other caller fields, plus what this module adds: config
              hash, metrics, best metric and its step, library versions, wall
              time, the state's leaf specs and a per-leaf fingerprint.

Orbax writes a step into `<dir>/<step>.orbax-checkpoint-tmp` and renames it to
`<dir>/<step>` only after every item (and `commit_success.txt`) is on disk, so a
process killed mid-save leaves a temporary directory that is never listed as a
step. Restore checks the leaf specs against the abstract state, reads every
array and compares the fingerprint; a step that fails is reported, moved to
`<dir>/corrupt/` and the previous step is used instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import time
import warnings
from typing import Any, Mapping, Sequence

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from hrm_jax.training.checkpoint_verify import (  # pylint: disable=unused-import  # some re-exported
    CheckpointError, CheckpointMismatchError, _decode_data_state, _encode_data_state, _fingerprint,
    _is_out_of_memory, _leaf_specs, _library_versions, _metric_value, _with_default_sharding, compare_specs,
    summarize_error)
from hrm_jax.training.resume_check import (  # pylint: disable=unused-import  # re-exported
    ResumeConfigError, _to_json, check_resume_compatible, config_hash)

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ITEM_NAMES = ("state", "data_state", "config", "metadata")
# Written by Orbax into a step directory as the last file before it is committed.
_COMMIT_FILE = "commit_success.txt"
_CORRUPT_SUBDIR = "corrupt"
# File name Orbax's JsonSave uses inside each JSON item directory.
_JSON_FILE = "metadata"


class CheckpointSaveError(CheckpointError):
  """A save failed; earlier checkpoints are untouched."""


class CheckpointCorruptError(CheckpointError):
  """No requested step could be read back intact."""


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `Checkpointer.restore` returns."""
  step: int
  state: Any
  data_state: Any  # dict (or bytes), exactly as passed to `save`.
  config: dict
  metadata: dict


def _chain(error: BaseException | None) -> list[BaseException]:
  chain: list[BaseException] = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _is_primary() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------
# Checkpointer.
# ----------------------------------------------------------------------------


class Checkpointer:
  """Saves and restores full train states with Orbax; see the module docstring.

  Retention keeps the newest `max_to_keep` finished steps plus, when
  `best_metric` is set, the step with the best value of `metrics[best_metric]`
  (`best_mode` "max" or "min") even when it is older. Not thread-safe; one
  instance per run directory (an evaluator reading the same directory must not
  create one: it would clean up the trainer's in-flight temporary directories).
  """

  def __init__(self, directory: str | epath.PathLike, *, max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True, verify: bool = True, read_only: bool = False):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
    self._directory = epath.Path(directory).expanduser()
    if "://" not in str(directory):
      # Orbax's tensorstore writer needs absolute local paths.
      self._directory = epath.Path(os.path.abspath(self._directory))
    if self._directory.exists() and not self._directory.is_dir():
      raise CheckpointError(
          f"checkpoint directory {self._directory} exists but is not a directory;"
          " pass a directory path (it is created if missing).")
    self._best_metric = best_metric
    self._best_mode = best_mode
    self._verify = verify
    self._pending_step: int | None = None
    self._bad_steps: dict[int, str] = {}
    self._closed = False

    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric is not None:
      worst = -math.inf if best_mode == "max" else math.inf
      # A step whose metrics lack the key (an older run tracked another metric)
      # ranks last instead of breaking retention.
      best_fn = lambda metrics: float(metrics.get(best_metric, worst))
      # Steps saved without the metric are left to LatestN.
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn,  # Makes Orbax store `metrics` per step for BestN.
        best_mode=best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        read_only=read_only,
        # Leftovers of killed saves are removed below, before the manager starts (Orbax's own clean-up runs
        # in a thread that only its first save awaits).
        cleanup_tmp_directories=False,
        create=not read_only,
    )
    try:
      if not read_only:
        self._remove_unfinished_saves()
      self._manager = ocp.CheckpointManager(self._directory, options=options)
    except OSError as e:
      raise CheckpointError(
          f"cannot open checkpoint directory {self._directory}: {e}. Fix: check"
          " that the path is writable (or choose another checkpoint directory)."
      ) from e
    self._best = self._load_best()

  def _remove_unfinished_saves(self) -> None:
    """Deletes `<step>.orbax-checkpoint-tmp*` folders of saves a killed process never committed.

    Safe because one run owns the workdir (train.py holds its lock) and this runs before any save.
    """
    if _is_primary() and self._directory.exists():
      for temporary in ocp.utils.tmp_checkpoints(self._directory):
        shutil.rmtree(os.fspath(temporary.get()), ignore_errors=True)
    _sync("hrm_jax_checkpoint_cleanup")

  # -- queries ---------------------------------------------------------------

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def steps(self) -> list[int]:
    """Committed steps on disk (ascending), excluding ones found corrupt."""
    if not self._directory.exists():
      return []
    found = []
    for path in self._directory.iterdir():
      if path.name.isdigit() and path.is_dir() and (path / _COMMIT_FILE).exists():
        found.append(int(path.name))
    return sorted(s for s in found if s not in self._bad_steps)

  def latest_good_step(self) -> int | None:
    """Newest committed step whose items are present and whose metadata parses.

    A step killed mid-save is never committed and so never returned. Array
    contents are only checked by `restore` (reading them is as costly as
    restoring); `restore` falls back past a step whose arrays are damaged.
    """
    for step in reversed(self.steps()):
      problem = self._quick_check(step)
      if problem is None:
        return step
      _log.warning("checkpoint step %d in %s is unusable (%s); skipping it.",
                   step, self._directory, problem)
    return None

  def best_step(self) -> int | None:
    """Step with the best `best_metric` among kept steps (None if untracked)."""
    return self._best[1] if self._best else None

  # -- save ------------------------------------------------------------------

  def save(self, step: int, state: Any, *, data_state: Any,
           config: Mapping[str, Any], metadata: Mapping[str, Any],
           metrics: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Starts an asynchronous save of `step`; returns False if it is already saved.

    The arrays are copied to host memory before this returns, so the caller may
    donate or overwrite `state` right away. Errors of an earlier in-flight save
    surface here (or in `wait`) as CheckpointSaveError. `force=True` allows
    saving a step older than the newest one on disk.
    """
    self._check_open()
    step = int(step)
    self.wait()
    on_disk = self.steps()
    if step in on_disk:
      _log.info("checkpoint step %d already exists in %s; not saving it again.",
                step, self._directory)
      return False
    if (self._directory / str(step)).exists():
      raise CheckpointError(
          f"{self._directory / str(step)} exists but is not a good checkpoint"
          f" ({self._bad_steps.get(step, 'not committed')}). Fix: delete that"
          " directory, then rerun.")
    if on_disk and step < on_disk[-1] and not force:
      raise CheckpointError(
          f"cannot save step {step}: {self._directory} already holds newer step"
          f" {on_disk[-1]} from an earlier run. Fix: resume from it (restore"
          " before training), or use a fresh checkpoint directory.")

    config_json = _to_json(config, "config")
    metrics_json = _to_json(dict(metrics), "metrics") if metrics else None
    value = _metric_value(metrics_json, self._best_metric)
    if self._best_metric is not None and metrics_json is not None and value is None:
      _log.warning("metrics for step %d have no finite %r; this step is kept"
                   " only while it is among the newest.", step, self._best_metric)
    best = self._best
    if value is not None and (best is None or self._better(value, best[0])):
      best = (value, step)

    meta = dict(_to_json(dict(metadata), "metadata"))
    meta.update({
        "format_version": FORMAT_VERSION,
        "step": step,
        "config_hash": config_hash(config_json),
        "metrics": metrics_json,
        "best": None if best is None else {
            "metric": self._best_metric, "mode": self._best_mode,
            "value": best[0], "step": best[1]},
        "versions": _library_versions(),
        "wall_time": time.time(),
        "wall_time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "process_count": jax.process_count(),
        "leaves": _leaf_specs(state),
        "fingerprint": _fingerprint(state) if self._verify else None,
    })
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_state=ocp.args.JsonSave(_encode_data_state(data_state)),
        config=ocp.args.JsonSave(config_json),
        metadata=ocp.args.JsonSave(meta),
    )
    orbax_metrics = {self._best_metric: value} if value is not None else None
    try:
      self._manager.save(step, args=args, metrics=orbax_metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    self._pending_step = step
    self._best = best
    return True

  def wait(self) -> None:
    """Blocks until in-flight saves are committed; raises CheckpointSaveError."""
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    # Orbax dropped the failed step (and the steps it meant to delete) from its
    # in-memory list; nothing was deleted on disk, so re-read the directory.
    try:
      self._manager.reload()
    except Exception:  # pylint: disable=broad-except
      pass
    self._best = self._load_best()
    latest = self.latest_good_step()
    which = f"step {step}" if step is not None else "a step"
    kept = (f"the latest good step is {latest}" if latest is not None
            else "there is no earlier checkpoint")
    text = " ".join(str(e) for e in _chain(error))
    disk_full = "No space left on device" in text or "os_error_code='28'" in text
    cause = "No space left on device" if disk_full else summarize_error(error)
    fix = ("free disk space or fix write permission on the directory"
           if disk_full or isinstance(error, OSError) else "see the log")
    return CheckpointSaveError(
        f"saving checkpoint {which} to {self._directory} failed: {cause}. Earlier checkpoints are intact"
        f" ({kept}; steps on disk: {self.steps()}). Fix: {fix}, then rerun the same command to resume; the"
        " partial write is removed on the next start.")

  # -- restore ---------------------------------------------------------------

  def restore(self, abstract_state: Any, step: int | None = None) -> Restored:
    """Restores `step` (default: newest good step) into `abstract_state`'s layout.

    `abstract_state` is a pytree of arrays or ShapeDtypeStructs (e.g. from
    `jax.eval_shape`); leaves without a sharding are placed on the first local
    device. Restored arrays match its dtypes, shapes and shardings bit for bit.
    With `step=None` a corrupt newest step is reported, moved to `<dir>/corrupt/`
    and the previous step restored.
    """
    self._check_open()
    self.wait()
    target = _with_default_sharding(abstract_state)
    expected_specs = _leaf_specs(target)
    if step is not None:
      if int(step) not in self.steps():
        raise CheckpointError(
            f"checkpoint step {step} not found in {self._directory} (finished"
            f" steps: {self.steps()}). Fix: pass one of those steps or step=None.")
      candidates = [int(step)]
    else:
      candidates = list(reversed(self.steps()))
      if not candidates:
        raise CheckpointError(
            f"no finished checkpoint in {self._directory}. Fix: start from"
            " scratch (check `latest_good_step()` first) or pass the directory of"
            " the run to resume.")

    # A step counts as corrupt only when an older step then restores into the
    # same target; only then is it moved aside. If every step fails, the cause
    # may as well be the target or the machine, so nothing is touched.
    failures: list[tuple[int, str]] = []
    for candidate in candidates:
      problem = self._quick_check(candidate)
      restored = None
      if problem is None:
        try:
          restored = self._restore_step(candidate, target, expected_specs)
        except CheckpointMismatchError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          if _is_out_of_memory(e):
            raise CheckpointError(
                f"restoring checkpoint step {candidate} from {self._directory} ran"
                f" out of memory: {summarize_error(e)}. Fix: free device/host"
                " memory (restore before building other large arrays) or shard"
                " the abstract state over more devices.") from e
          problem = summarize_error(e)
      if restored is None:
        failures.append((candidate, problem))
        if step is not None:
          break
        continue
      if failures:
        moved = self._quarantine([s for s, _ in failures])
        for bad, why in failures:
          warning = (f"checkpoint step {bad} in {self._directory} is corrupt"
                     f" ({why}); resuming from step {candidate} instead.")
          if bad in moved:
            warning += (f" The bad step was moved to {moved[bad]} so this run can"
                        " save it again; delete it when no longer needed.")
          _log.warning(warning)
          warnings.warn(warning, RuntimeWarning, stacklevel=2)
        self._manager.reload()
      return restored

    details = "; ".join(f"step {s}: {why}" for s, why in failures)
    raise CheckpointCorruptError(
        f"no readable checkpoint in {self._directory} ({details}). Fix: if every"
        " step fails the same way, check the abstract state's shardings and the"
        " devices first; otherwise restore the directory from a backup, or move"
        " it away and start from scratch.")

  def restore_weights(self, step: int | None = None,
                      keys: Sequence[str] = ("params", "buffers", "puzzle_table")) -> dict[str, Any]:
    """The named top-level entries of a saved state, without a target (a weights-only start).

    Unlike `restore`, shapes come from the checkpoint itself, so the caller may use weights of a run
    with another batch size or dataset. Returns host numpy trees.
    """
    self._check_open()
    self.wait()
    step = self.latest_good_step() if step is None else int(step)
    if step is None:
      raise CheckpointError(f"no finished checkpoint in {self._directory} to take weights from.")
    result = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = result.state
    missing = [k for k in keys if k not in state]
    if missing:
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self._directory} has no {missing} (it holds {sorted(state)}).")
    return {k: jax.tree_util.tree_map(np.asarray, state[k]) for k in keys}

  def _restore_step(self, step: int, target: Any, expected_specs: list) -> Restored:
    meta = self._read_json(step, "metadata")
    saved_specs = meta.get("leaves")
    if saved_specs is not None:
      compare_specs(self._directory, step, saved_specs, expected_specs)
    result = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data_state=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore(),
        metadata=ocp.args.JsonRestore(),
    ))
    state = result.state
    got = jax.tree_util.tree_leaves(state)
    want = jax.tree_util.tree_leaves(target)
    for leaf, spec in zip(got, want):
      if leaf.shape != spec.shape or leaf.dtype != spec.dtype:
        raise CheckpointMismatchError(
            f"step {step} restored a {leaf.dtype}{list(leaf.shape)} array where"
            f" {spec.dtype}{list(spec.shape)} was requested.")
    if self._verify and meta.get("fingerprint") is not None:
      actual = _fingerprint(state)
      for (path, _, _), saved, now in zip(expected_specs, meta["fingerprint"], actual):
        if saved != now:
          raise ValueError(f"array {path} does not match its saved fingerprint"
                           " (data changed on disk)")
    return Restored(step=step, state=state,
                    data_state=_decode_data_state(result.data_state),
                    config=result.config, metadata=result.metadata)

  # -- integrity helpers -----------------------------------------------------

  def saved_config(self, step: int) -> dict:
    """The config a step was saved with (cheap: reads one small JSON item)."""
    return self._read_json(int(step), "config")

  def saved_metadata(self, step: int) -> dict:
    """The metadata a step was saved with (run id, evaluation record, ...); one small JSON item."""
    return self._read_json(int(step), "metadata")

  def _read_json(self, step: int, item: str) -> Any:
    path = self._directory / str(step) / item / _JSON_FILE
    return json.loads(path.read_text())

  def _quick_check(self, step: int) -> str | None:
    """Cheap structural check of a committed step; returns the problem or None."""
    if step in self._bad_steps:
      return self._bad_steps[step]
    step_dir = self._directory / str(step)
    for item in ITEM_NAMES:
      if not (step_dir / item).is_dir():
        return f"item directory {step_dir / item} is missing"
    for path in [step_dir / "state" / "_METADATA"] + [step_dir / item / _JSON_FILE for item in ITEM_NAMES[1:]]:
      try:
        json.loads(path.read_text())
      except FileNotFoundError:
        return f"{path} is missing"
      except Exception as e:  # pylint: disable=broad-except  # any damage: bad bytes, bad JSON, no permission
        return f"{path} is unreadable ({summarize_error(e)})"
    return None

  def step_problems(self) -> dict[int, str]:
    """Every committed step that cannot be used and why (a cheap check of its metadata and config)."""
    return {step: problem for step in self.steps()
            if (problem := self._quick_check(step)) is not None}

  def _quarantine(self, steps: Sequence[int]) -> dict[int, epath.Path]:
    """Moves bad step directories to <dir>/corrupt/ so the steps can be re-saved."""
    moved = {}
    if _is_primary():
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
      for step in steps:
        source = self._directory / str(step)
        dest = self._directory / _CORRUPT_SUBDIR / f"{step}-{stamp}"
        try:
          dest.parent.mkdir(parents=True, exist_ok=True)
          source.rename(dest)
          moved[step] = dest
        except OSError as e:
          _log.error("could not move corrupt step %s to %s: %s; delete it by hand"
                     " before step %d is saved again.", source, dest, e, step)
    _sync("hrm_jax_checkpoint_quarantine")
    for step in steps:
      if (self._directory / str(step)).exists():
        # Still in place: never offer it again, and make `save` refuse to skip it.
        self._bad_steps[step] = "corrupt; could not be moved aside"
      else:
        moved.setdefault(step, self._directory / _CORRUPT_SUBDIR)  # Other hosts.
    return moved

  def _load_best(self) -> tuple[float, int] | None:
    if self._best_metric is None:
      return None
    best = None
    for step in self.steps():
      try:
        metrics = self._read_json(step, "metadata").get("metrics")
      except (OSError, ValueError):
        continue
      value = _metric_value(metrics, self._best_metric)
      if value is not None and (best is None or self._better(value, best[0])):
        best = (value, step)
    return best

  def _better(self, a: float, b: float) -> bool:
    return a > b if self._best_mode == "max" else a < b

  # -- lifecycle -------------------------------------------------------------

  def _check_open(self) -> None:
    if self._closed:
      raise CheckpointError("this Checkpointer is closed; create a new one.")

  def close(self) -> None:
    """Waits for in-flight saves (raising their errors) and releases Orbax."""
    if self._closed:
      return
    try:
      self.wait()
    finally:
      self._closed = True
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
