"""`train_and_evaluate(config, workdir)`: the whole training run, in five phases.

  setup     lock the workdir (workdir.py), validate the config, read the dataset, plan, optimisers (setup.py)
  resume    own checkpoint in workdir (exactly), else `init_from` weights, else from scratch (resume.py)
  loop      one jitted step per batch; metrics reach the host only on log steps and before saves
  evaluate  fast subset often, the full set when it gained, at a long interval and at the end (policy.py)
  save      periodic, on full evaluations, at the end and on SIGTERM/SIGINT; never weights that are not finite

A NaN/Inf stops the run with its last finite checkpoint; `--config.recover_from_nan=true` resumes that
checkpoint with the optimiser keys in `config.RECOVERY_SAFE_KEYS` changed, and records the change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import queue
import threading
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from hrm_jax import config as config_lib
from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline
from hrm_jax.evaluation import evaluate as eval_lib
from hrm_jax.training import checkpoint as ckpt_lib
from hrm_jax.training import flops as flops_lib
from hrm_jax.training import memory as memory_lib
from hrm_jax.training import reporting
from hrm_jax.training import resume as resume_lib
from hrm_jax.training import setup
from hrm_jax.training import workdir as workdir_lib
from hrm_jax.training.errors import TrainingError
from hrm_jax.training.policy import EvalRecord, divergence
from hrm_jax.training.preemption import PreemptionGuard
from hrm_jax.training.resume import Start
from hrm_jax.training.setup import (  # pylint: disable=unused-import  # re-exported for callers and tests
    Run, RunPlan, dataset_identity, load_init_weights, loss_config_from, make_optimizers, model_config_from,
    plan_run, resolve_data_dir, say as _say, state_shardings)
from hrm_jax.training.train_step import StepConfig, make_train_step

_log = logging.getLogger("hrm_jax.train")


class DivergedError(TrainingError):
  """The loss, a gradient or the weights stopped being finite; the message says how to recover."""


class _Prefetcher:
  """Reads training batches in a background thread, each paired with the iterator state after it.

  The state saved in a checkpoint must be the one after the last batch the model CONSUMED, not after the
  last one read ahead, so every batch carries its own snapshot.
  """

  def __init__(self, iterator, depth: int = 2, put: Callable[[dict], Any] = lambda batch: batch):
    self._iterator = iterator
    self._put = put  # e.g. onto the devices: the copy overlaps the running step
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="hrm-prefetch")
    self._thread.start()

  def _run(self):
    try:
      for batch in self._iterator:
        item = (self._put(batch), self._iterator.get_state())
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(StopIteration())
    except BaseException as e:  # surfaced in the main thread
      self._queue.put(e)

  def __iter__(self) -> Iterator[tuple[dict, Any]]:
    while True:
      item = self._queue.get()
      if isinstance(item, StopIteration):
        return
      if isinstance(item, BaseException):
        raise item
      yield item

  def close(self):
    self._stop.set()
    # Let the thread finish its batch: a daemon thread still inside JAX at interpreter exit can abort it.
    self._thread.join(timeout=30)


# ==========================================================================================================
# Programs and reporters
# ==========================================================================================================
@dataclasses.dataclass(frozen=True)
class Programs:
  train_step: Any
  eval_step: Any
  weights_norm: Any  # state -> float32 global norm of the weights a checkpoint would hold
  flops_per_step: float | None = None  # XLA's count for one train step (global batch), made once


def _compile(run: Run) -> Programs:
  config, replicated = run.config, NamedSharding(run.mesh, P())
  step_cfg = StepConfig(model=run.cfg, loss=run.loss_cfg, global_batch_size=config.global_batch_size,
                        grad_accum_steps=config.grad_accum_steps, ema_rate=config.ema_rate)
  train_step = jax.jit(make_train_step(step_cfg, run.optimizer),
                       in_shardings=(run.shardings, NamedSharding(run.mesh, P("data"))),
                       out_shardings=(run.shardings, replicated), donate_argnums=0)
  eval_cfg = eval_lib.EvalConfig(halt_on_q=config.eval.halt_on_q,
                                 halt_max_steps=config.eval.halt_max_steps or None)
  eval_step = jax.jit(eval_lib.make_eval_step(run.cfg, run.loss_cfg, eval_cfg))
  weights_norm = jax.jit(lambda s: optax.global_norm((s.params, s.buffers, s.puzzle_table)))
  return Programs(train_step=train_step, eval_step=eval_step, weights_norm=weights_norm)


def _check_memory(run: Run, programs: Programs) -> Programs:
  """Memory known before it fails: the train step compiled for the abstract state (no array allocated yet;
  jit reuses this compilation for the first step) against the device's memory; then its FLOPs, counted once."""
  config = run.config
  state_spec = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), run.abstract_state,
                            run.shardings)
  batch_spec = memory_lib.batch_spec(run.cfg.seq_len, config.global_batch_size, NamedSharding(run.mesh, P("data")))
  try:
    memory_lib.check_train_step_fits(programs.train_step, state_spec, batch_spec,
                                     global_batch_size=config.global_batch_size,
                                     grad_accum_steps=config.grad_accum_steps)
  except memory_lib.DoesNotFitError as e:
    raise TrainingError(str(e)) from None
  step_cfg = StepConfig(model=run.cfg, loss=run.loss_cfg, global_batch_size=config.global_batch_size,
                        grad_accum_steps=config.grad_accum_steps, ema_rate=config.ema_rate)
  return dataclasses.replace(
      programs, flops_per_step=flops_lib.train_step_flops(step_cfg, run.optimizer, state_spec, batch_spec))


@dataclasses.dataclass
class Reporters:
  writers: Any
  status: workdir_lib.Heartbeat
  progress: reporting.ProgressBar | None
  timer: reporting.StepTimer

  def say(self, message: str) -> None:
    (self.progress.write if self.progress is not None else _say)(message)
    self.status.spoke()

  def close(self) -> None:
    if self.progress is not None:
      self.progress.close()
    try:
      self.writers.close()
    except OSError as e:  # a full disk: never hide the error that ended the run behind this one
      _log.warning("could not finish writing metrics: %s", e)


def _reporters(run: Run, start: Start, step: int, heartbeat: workdir_lib.Heartbeat) -> Reporters:
  config, workdir, is_main = run.config, run.workdir, run.is_main
  writers = reporting.make_writers(workdir, tensorboard=config.log.tensorboard,
                                   wandb_project=config.log.wandb_project or None, run_id=start.run_id,
                                   config=run.config_dict) if is_main else reporting.MultiWriter([])
  # status.json has one writer: other processes (each with its own run id on a fresh start) keep their own.
  path = workdir / ("status.json" if is_main else f".status.process{jax.process_index()}.json")
  status = reporting.StatusFile(path, run_id=start.run_id, total_steps=run.plan.total_steps,
                                min_interval_s=config.log.status_every_s)
  previous = _read_json(path) if start.resumed else {}
  if previous.get("run_id") == start.run_id:  # keep what earlier processes of this run evaluated
    status.update(last_eval=previous.get("last_eval"), best_eval=previous.get("best_eval"))
  progress = reporting.ProgressBar(run.plan.total_steps, initial_step=step,
                                   plain_interval_s=config.log.progress_every_s) if (
      is_main and config.log.progress_bar) else None
  heartbeat.attach(status, interval_s=config.log.status_every_s)
  heartbeat.update(force=True, step=step)
  if is_main:
    (workdir / "config.json").write_text(json.dumps(run.config_dict, indent=1))
  return Reporters(writers=writers, status=heartbeat, progress=progress,
                   timer=reporting.StepTimer(config.global_batch_size))


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


# ==========================================================================================================
# Evaluate
# ==========================================================================================================
def _run_eval(run: Run, programs: Programs, state, subset: int | None,
              save_to: pathlib.Path | None = None) -> dict[str, Any]:
  batches = pipeline.make_eval_batches(run.data_dir, global_batch_size=run.eval_batch_size, subset_size=subset,
                                       process_index=jax.process_index(), process_count=jax.process_count())
  return eval_lib.evaluate(programs.eval_step, state, batches, put_batch=run.to_global,
                           save_predictions_to=save_to)


def _evaluate(run: Run, programs: Programs, reporters: Reporters, state, step: int, is_last: bool,
              record: EvalRecord) -> tuple[EvalRecord, dict[str, Any] | None]:
  """A fast evaluation and/or a full one as the policy says; returns the new record and the full summary."""
  policy, config = run.eval_policy, run.config
  fast = None
  if policy.runs_fast(is_last):
    fast = _run_eval(run, programs, state, policy.subset_size)
    reporters.writers.write(step, _flat_eval(fast), split="eval_fast")
    reporters.say(f"step {step}: fast eval ({policy.subset_size} examples) exact accuracy "
                  f"{fast['exact_accuracy']:.2%}, token accuracy {fast['accuracy']:.2%}")
  runs_full = policy.runs_full(record, step, is_last, fast["exact_accuracy"] if fast else None)
  if fast is not None:
    record = policy.after_fast(record, fast["exact_accuracy"])
  if not runs_full:
    return record, None
  wants_predictions = config.eval.save_predictions or config.eval.evaluator == "arc"
  save_to = (run.workdir / "predictions" / f"step_{step}.npz") if wants_predictions else None
  full = _run_eval(run, programs, state, config.eval.full_max_examples or None, save_to)
  if config.eval.evaluator == "arc" and run.is_main:
    full.update(_arc_metrics(save_to, run.data_dir))
  reporters.writers.write(step, _flat_eval(full), split="eval")
  reporters.status.record_eval(step, full)
  reporters.say(reporting.format_eval_report(full, step=step))
  return policy.after_full(record, step, full["exact_accuracy"]), full


# ==========================================================================================================
# Save
# ==========================================================================================================
@dataclasses.dataclass
class Watch:
  """Finite-ness the loop has seen: the last step whose fetched metrics were finite."""
  last_finite_step: int


def _fetch_metrics(run: Run, checkpointer, metrics, step: int, watch: Watch,
                   state=None, programs: Programs | None = None) -> dict[str, float]:
  """Brings the step's metrics to the host; with `state`, also its weights' norm. Stops a diverged run."""
  host = {k: float(v) for k, v in jax.device_get(metrics).items()}
  norm = float(programs.weights_norm(state)) if state is not None else None
  what = divergence(host, norm)
  if what is None:
    watch.last_finite_step = step
    return host
  checkpointer.wait()  # a save still in flight may be the last good checkpoint
  good = checkpointer.latest_good_step()
  first_bad = watch.last_finite_step + 1
  at = f"step {step}" if first_bad >= step else f"a step from {first_bad} to {step}"
  lr, clip = run.config.optimizer.lr, run.config.optimizer.grad_clip_norm
  if good is None:
    fix = (f"nothing was saved, so rerun with a lower --config.optimizer.lr (now {lr:g}) or "
           "--config.optimizer.grad_clip_norm=1.0 to start again")
  else:
    fix = (f"the last finite checkpoint is step {good} in {checkpointer.directory}. Recover: rerun the same "
           f"command with --config.recover_from_nan=true and a lower --config.optimizer.lr (now {lr:g}) or "
           f"--config.optimizer.grad_clip_norm=1.0 (now {clip:g}); it resumes step {good}")
  raise DivergedError(f"the run diverged at {at} ({what}); nothing was saved after it and {fix}.")


def _save(run: Run, checkpointer, reporters: Reporters, start: Start, state, step: int, data_state,
          record: EvalRecord, last_full: dict[str, Any] | None, *, full_now: bool, finished: bool,
          early_stopped: bool) -> None:
  metadata = {**start.metadata, **record.to_metadata(), "run_id": start.run_id,
              "total_steps": run.plan.total_steps, "finished": finished, "early_stopped": early_stopped,
              "last_eval": {k: v for k, v in (last_full or {}).items() if isinstance(v, (int, float, str))}}
  metrics = {"exact_accuracy": last_full["exact_accuracy"]} if full_now else None
  with reporters.timer.excluded(), reporters.status.phase("saving"):
    checkpointer.save(step, state, data_state=data_state, config=run.config_dict, metadata=metadata,
                      metrics=metrics)
  reporters.status.update(force=True, latest_checkpoint=str(checkpointer.directory / str(step)))


# ==========================================================================================================
# Loop
# ==========================================================================================================
def _log_step(run: Run, reporters: Reporters, host: dict[str, float], step: int, stats,
              flops_per_step: float | None = None) -> None:
  gbs = run.config.global_batch_size
  host["lr"] = float(run.lr_schedule(step - 1))
  if stats is not None:
    host.update(steps_per_s=stats.steps_per_s, samples_per_s=stats.samples_per_s,
                data_wait_fraction=stats.data_wait_fraction, compute_s_per_step=stats.compute_per_step_s)
    host.update(flops_lib.log_fields(flops_per_step, stats.steps_per_s, jax.device_count()))
  reporters.writers.write(step, host, split="train")
  rate = reporters.timer.smoothed_steps_per_s
  reporters.status.update(step=step, epoch=step / run.plan.steps_per_epoch, samples_seen=step * gbs,
                          steps_per_s=rate, samples_per_s=(rate or 0) * gbs or None,
                          data_wait_fraction=stats.data_wait_fraction if stats else None)
  if reporters.progress is not None:
    shown = {"loss": host["loss"], "exact_acc": host.get("exact_accuracy", 0.0)}
    if stats is not None:
      shown["data_wait_fraction"] = stats.data_wait_fraction
    reporters.progress.update(step, shown, steps_per_s=rate)
  reporters.status.spoke()  # a log step: the console or metrics moved on


def _train_loop(run: Run, programs: Programs, checkpointer, reporters: Reporters, start: Start,
                guard: PreemptionGuard) -> tuple[str, str, dict[str, Any] | None]:
  """Trains to the end, an early stop or a stop signal; returns (end state, message, last full summary)."""
  config, plan, timer = run.config, run.plan, reporters.timer
  state, record, last_full = start.state, start.record, None
  step = first = int(jax.device_get(state.step))
  watch = Watch(last_finite_step=step)
  if config.eval.at_start and step == 0:
    with reporters.status.phase("evaluating"):
      summary = _run_eval(run, programs, state, None)
    reporters.writers.write(0, _flat_eval(summary), split="eval")
    reporters.status.record_eval(0, summary)
    _say("Before training: " + reporting.format_eval_report(summary, step=0))
  prefetcher = _Prefetcher(start.train_iter, put=run.to_global)  # batches reach the devices ahead
  batches = iter(prefetcher)
  pending_log: list[tuple[int, Any]] = []

  def flush_log() -> None:
    """Logs the pending log step, one step late: waits for that step only, not the one dispatched after it."""
    if pending_log:
      log_step, log_metrics = pending_log.pop()
      stats = timer.sync(log_metrics)
      host = _fetch_metrics(run, checkpointer, log_metrics, log_step, watch)
      _log_step(run, reporters, host, log_step, stats, programs.flops_per_step)

  try:
    while step < plan.total_steps:
      with timer.waiting_for_data():
        batch, data_state = next(batches)
      with reporters.status.phase("compiling") if step == first else contextlib.nullcontext():
        state, metrics = programs.train_step(state, batch)
      # Metrics of a log step are fetched after the next step is dispatched, so the device never waits on
      # the host's logging (before step_done: that timing window ends at the logged step). Evaluations and
      # saves flush them first.
      flush_log()
      timer.step_done()
      step += 1
      is_last = step == plan.total_steps
      if step % config.log.every_steps == 0 or is_last or step == first + 1:
        pending_log.append((step, metrics))
      full = None
      if run.eval_policy.due(step, is_last):
        flush_log()
        with timer.excluded(), reporters.status.phase("evaluating"):
          record, full = _evaluate(run, programs, reporters, state, step, is_last, record)
        last_full = full or last_full
      early = full is not None and run.eval_policy.stops_early(record)
      stopping = guard.should_stop(step)
      if run.checkpoint_policy.due(step, is_last=is_last, full_eval=full is not None,
                                   stopping=stopping or early):
        flush_log()
        _fetch_metrics(run, checkpointer, metrics, step, watch, state, programs)
        _save(run, checkpointer, reporters, start, state, step, data_state, record, last_full,
              full_now=full is not None, finished=is_last or early, early_stopped=early)
      if stopping:
        signal_name = guard.received[0] if guard.received else "a signal"
        return "stopped", (f"Stopped by {signal_name} at step {step}; checkpoint saved in "
                           f"{checkpointer.directory}. Run the same command again to resume exactly here."), last_full
      if early:
        return "finished", (f"Early stop at step {step}: {record.evals_without_improvement} full evaluations "
                            f"without a better exact accuracy (best {record.best_exact:.2%} at step "
                            f"{record.best_step})."), last_full
    flush_log()
  except StopIteration:
    raise TrainingError("The training data ran out; this should not happen with an endless iterator. Check "
                        "the dataset's train split.") from None
  finally:
    prefetcher.close()
  return "finished", f"Finished {plan.total_steps:,} steps.{_last_and_best(last_full, record)}", last_full


def _last_and_best(last: dict[str, Any] | None, record) -> str:
  """The last full evaluation beside the best checkpoint's (the checkpointer keeps the best by exact accuracy)."""
  if last is None:
    return ""
  line = (f" Last evaluation (step {record.last_full_step}): {last['exact_accuracy']:.2%} exact, "
          f"{last['accuracy']:.2%} token accuracy.")
  if record.best_exact is not None and record.best_step is not None:
    line += f" Best checkpoint (step {record.best_step}): {record.best_exact:.2%} exact."
  return line


# ==========================================================================================================
# The run
# ==========================================================================================================
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the last full evaluation's summary."""
  found = config_lib.problems(config)
  if found:
    raise TrainingError(f"bad config: {'; '.join(found)}")
  if config.distributed and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  workdir = workdir_lib.prepare(workdir)
  # The processes of one multi-host run share the workdir: process 0 owns it for all of them.
  primary = jax.process_index() == 0
  heartbeat = workdir_lib.Heartbeat(say_every_s=config.log.progress_every_s if primary else 0.0, say=_say)
  with workdir_lib.RunLock(workdir, enabled=primary) as lock, workdir_lib.library_log(
      workdir, workdir_lib.LOG_FILE if primary else f"run.process{jax.process_index()}.log"), contextlib.closing(
          heartbeat), heartbeat.phase("starting"):
    run = setup.build_run(config, workdir)
    with ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep,
                               best_metric="exact_accuracy", best_mode="max",
                               async_save=config.checkpoint.async_save) as checkpointer:
      summary = resume_lib.finished_summary(run, checkpointer)
      if summary is not None:
        return summary
      train_iter = pipeline.make_train_iterator(
          run.data_dir, global_batch_size=config.global_batch_size, seed=config.seed,
          process_index=jax.process_index(), process_count=jax.process_count(), worker_count=config.data_workers)
      programs = _check_memory(run, _compile(run))  # before resume allocates the state
      start = resume_lib.resume(run, checkpointer, train_iter)
      lock.record(start.run_id)
      reporters = _reporters(run, start, int(jax.device_get(start.state.step)), heartbeat)
      end_state, message, last_full = "failed", "", None
      try:
        with PreemptionGuard() as guard, heartbeat.phase("training"):
          end_state, message, last_full = _train_loop(run, programs, checkpointer, reporters, start, guard)
        with heartbeat.phase("saving"):
          checkpointer.wait()
      except BaseException as e:
        message = f"{type(e).__name__}: {e}"
        raise
      finally:
        reporters.status.finish(end_state, message)
        reporters.close()
      _say(message)
  return last_full or {}


def _arc_metrics(predictions_path: pathlib.Path, data_dir: pathlib.Path) -> dict[str, float]:
  from hrm_jax.evaluation import arc_eval  # pylint: disable=import-outside-toplevel
  with np.load(predictions_path) as npz:
    predictions = {k: npz[k] for k in npz.files}
  return arc_eval.arc_pass_at_k(predictions, data_format.load_identifiers(data_dir))


def _flat_eval(summary: dict[str, Any]) -> dict[str, float]:
  flat = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
  for cls, acc in summary.get("per_class_accuracy", {}).items():
    flat[f"class_accuracy/{cls}"] = acc
  return flat
