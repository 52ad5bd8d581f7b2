"""The resume phase: the run's own checkpoint in its workdir (exactly), else `init_from` weights, else scratch.

Also: refusing a resume that changes what is trained (with `recover_from_nan`, the optimiser keys that tame a
diverged run may change, and the change is recorded), and recognising a run that is already finished.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from hrm_jax import config as config_lib
from hrm_jax.training import checkpoint as ckpt_lib
from hrm_jax.training import optim
from hrm_jax.training import reporting
from hrm_jax.training.errors import TrainingError
from hrm_jax.training.policy import EvalRecord
from hrm_jax.training.setup import Run, load_init_weights, make_optimizers, say, state_shardings
from hrm_jax.training.train_step import create_train_state


@dataclasses.dataclass
class Start:
  """Where the run begins: its state and data position, its id, and what the checkpoint remembered."""
  state: Any
  train_iter: Any
  run_id: str
  record: EvalRecord
  resumed: bool
  metadata: dict[str, Any]  # carried into every later checkpoint's metadata (recoveries, last_eval)


def check_resume_config(run: Run, saved: dict[str, Any]) -> dict[str, list]:
  """Refuses a resume that changes what is trained; returns the recovery keys that changed (old, new)."""
  saved.setdefault("dataset", run.config_dict["dataset"])  # saved before datasets were recorded
  recovering = run.config.recover_from_nan
  safe = config_lib.RESUME_SAFE_KEYS + (config_lib.RECOVERY_SAFE_KEYS if recovering else ())
  try:
    ckpt_lib.check_resume_compatible(saved, run.config_dict, safe)
  except ckpt_lib.ResumeConfigError as e:
    hint = ""
    if any(k.startswith("dataset.") for k in e.keys):
      hint = (f"\nThe dataset.* keys describe the training data in {run.data_dir}, not settings: point "
              "--config.data_dir at the dataset this run was trained on.")
    elif any(k in config_lib.RECOVERY_SAFE_KEYS for k in e.keys):
      hint = ("\nAfter a NaN/Inf stop, add --config.recover_from_nan=true to change "
              f"{', '.join(config_lib.RECOVERY_SAFE_KEYS)}.")
    raise ckpt_lib.ResumeConfigError(f"{e}{hint}", e.keys) from None
  if (saved.get("num_steps"), saved.get("epochs")) != (run.config.num_steps, run.config.epochs) and (
      run.config.optimizer.lr_min_ratio != 1.0):
    say("Note: the run length changed since the checkpoint, and the cosine schedule (lr_min_ratio "
         f"{run.config.optimizer.lr_min_ratio}) is stretched to the new length, so this run will not match an "
         "uninterrupted run of either length.")
  changed = {}
  for key in config_lib.RECOVERY_SAFE_KEYS if recovering else ():
    group, name = key.split(".")
    old, new = saved.get(group, {}).get(name), run.config_dict[group][name]
    if old != new:
      changed[key] = [old, new]
  return changed


def _restore_target(run: Run, saved_clip: float) -> Any:
  """The abstract state in the checkpoint's layout: clipping on or off changes the optimiser state's tree."""
  state = run.abstract_state
  if bool(saved_clip) != bool(run.config.optimizer.grad_clip_norm):
    optimizer, _, _ = make_optimizers(run.config, run.plan, grad_clip_norm=saved_clip)
    opt_state = jax.eval_shape(lambda s: optimizer.init(optim.WithPuzzleEmb(s.params, s.puzzle_table)), state)
    state = state.replace(opt_state=opt_state)
  shardings = state_shardings(run.mesh, state)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)


def _adapt_opt_state(opt_state: optim.WithPuzzleEmb, saved_clip: float, clip: float) -> optim.WithPuzzleEmb:
  """Clipping switched on (off) wraps (unwraps) the dense state in optax.chain's (EmptyState(), ...)."""
  if bool(saved_clip) == bool(clip):
    return opt_state
  dense = (optax.EmptyState(), opt_state.dense) if clip else opt_state.dense[1]
  return opt_state._replace(dense=dense)


def resume(run: Run, checkpointer: ckpt_lib.Checkpointer, train_iter) -> Start:
  problems = checkpointer.step_problems()
  step = checkpointer.latest_good_step()
  if step is None and problems:
    raise ckpt_lib.CheckpointCorruptError(
        f"no usable checkpoint in {checkpointer.directory}: "
        + "; ".join(f"step {s}: {why}" for s, why in sorted(problems.items()))
        + ". Nothing was changed. Fix: restore those files from a backup, or move the checkpoints folder away "
        "to start this run again from scratch.")
  if step is None:
    return fresh_start(run, train_iter)
  saved = checkpointer.saved_config(step)
  changed = check_resume_config(run, saved)
  saved_clip = saved.get("optimizer", {}).get("grad_clip_norm", 0.0)
  restored = checkpointer.restore(_restore_target(run, saved_clip))
  state = restored.state.replace(
      opt_state=_adapt_opt_state(restored.state.opt_state, saved_clip, run.config.optimizer.grad_clip_norm))
  state = jax.device_put(state, run.shardings)
  try:
    train_iter.set_state(restored.data_state)
  except ValueError as e:  # a checkpoint from before datasets were recorded, on other data
    raise TrainingError(f"{e} (data_dir={run.data_dir})") from None
  metadata = dict(restored.metadata)
  run_id = metadata.get("run_id") or reporting.new_run_id()
  if run.config.recover_from_nan:
    recovery = {"from_step": restored.step, "changed": changed}
    metadata["recoveries"] = list(metadata.get("recoveries") or []) + [recovery]
    say(f"Recovering run {run_id} from step {restored.step} with "
         + (", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "the checkpoint's own optimiser "
            "settings"))
  say(f"Resuming run {run_id} from its checkpoint at step {restored.step} in {checkpointer.directory}")
  return Start(state=state, train_iter=train_iter, run_id=run_id, resumed=True, metadata=metadata,
               record=EvalRecord.from_metadata(metadata, restored.step))


def fresh_start(run: Run, train_iter) -> Start:
  config = run.config
  state = jax.jit(lambda: create_train_state(run.cfg, run.optimizer, config.global_batch_size, config.seed,
                                             ema=config.ema),
                  out_shardings=run.shardings)()
  run_id = reporting.new_run_id()
  if config.init_from:
    state = jax.device_put(load_init_weights(config.init_from, jax.device_get(state), run.cfg), run.shardings)
    say(f"Started run {run_id} from the weights in {config.init_from} (optimiser state fresh)")
  else:
    say(f"Started run {run_id} from scratch (seed {config.seed})")
  return Start(state=state, train_iter=train_iter, run_id=run_id, record=EvalRecord(), resumed=False,
               metadata={})


def finished_summary(run: Run, checkpointer: ckpt_lib.Checkpointer) -> dict[str, Any] | None:
  """The result of this run if its newest checkpoint (verified) ends it; then nothing else is touched."""
  step = checkpointer.latest_good_step()
  if step is None:
    return None
  metadata = checkpointer.saved_metadata(step)
  if not metadata.get("finished") or (step < run.plan.total_steps and not metadata.get("early_stopped")):
    return None
  saved = checkpointer.saved_config(step)
  check_resume_config(run, saved)
  # Only an intact final checkpoint ends the run: a damaged one is moved aside and the run resumes before it.
  target = _restore_target(run, saved.get("optimizer", {}).get("grad_clip_norm", 0.0))
  if checkpointer.restore(target).step != step:
    return None
  summary = metadata.get("last_eval") or {}
  say(f"Run {metadata.get('run_id')} in {run.workdir} is already finished at step {step}"
       + (f": {reporting.format_eval_report(summary, step=metadata.get('last_full_step'))}" if summary else ".")
       + "\nRaise --config.num_steps to train it further, or pass another --workdir for a new run.")
  return summary
