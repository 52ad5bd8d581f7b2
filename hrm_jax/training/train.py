"""`train_and_evaluate(config, workdir)`: the whole training run.

Phases: setup (data, model config, run length, optimisers, mesh) → resume (own checkpoint in workdir, else
`init_from` weights, else from scratch) → loop (one jitted step per batch; metrics fetched only on log steps)
→ evaluation (fast subset often, full set when it improved or at a long interval) → checkpoints (periodic,
on full evaluations, at the end, and on SIGTERM/SIGINT).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import pathlib
import queue
import shlex
import sys
import threading
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline
from hrm_jax.model import hrm
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import LossConfig
from hrm_jax.training import checkpoint as ckpt_lib
from hrm_jax.training import ema as ema_lib
from hrm_jax.training import evaluate as eval_lib
from hrm_jax.training import optim
from hrm_jax.training import reporting
from hrm_jax.training.preemption import PreemptionGuard
from hrm_jax.training.train_step import StepConfig, TrainState, create_train_state, make_train_step
from hrm_jax import config as config_lib

_log = logging.getLogger("hrm_jax.train")


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


@dataclasses.dataclass
class RunPlan:
  total_steps: int
  steps_per_epoch: float
  warmup_steps: int
  epochs: float
  samples: int
  eval_every_steps: int


# ==========================================================================================================
# Setup helpers
# ==========================================================================================================
def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def resolve_data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
  if not config.data_dir:
    raise TrainingError("config.data_dir is empty: pass --config.data_dir=PATH to a dataset built with "
                        "`python -m hrm_jax.data.build ...` (or use configs/demo.py, which builds its own).")
  data_dir = pathlib.Path(config.data_dir).expanduser()
  recipe = config.build_data_if_missing.strip()
  if recipe and not (data_dir / "train" / "dataset.json").exists():
    if jax.process_index() == 0:
      _say(f"No dataset in {data_dir}; building it ({recipe}) ...")
      if recipe == "demo":
        from hrm_jax.data import demo  # pylint: disable=import-outside-toplevel
        demo.ensure_demo_dataset(data_dir)
      else:
        from hrm_jax.data import build  # pylint: disable=import-outside-toplevel
        code = build.main(shlex.split(recipe) + ["--output-dir", str(data_dir), "--quiet"])
        if code:
          raise TrainingError(f"Building the dataset with `{recipe}` failed (exit {code}); see the message "
                              "above, or build it yourself with python -m hrm_jax.data.build.")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("hrm_jax_dataset_built")
  for split in ("train", "test"):
    if not (data_dir / split / "dataset.json").exists():
      raise TrainingError(
          f"No dataset at {data_dir} ({data_dir / split / 'dataset.json'} is missing). Build one with "
          f"`python -m hrm_jax.data.build {{sudoku,maze,arc}} --output-dir {data_dir}`, or fix "
          "--config.data_dir.")
  return data_dir

# Training data is fingerprinted by files up to this size in full, larger ones by evenly spaced blocks.
_FULL_HASH_BYTES = 16 << 20
_SAMPLED_BLOCKS = 256
_BLOCK_BYTES = 64 << 10


def dataset_identity(data_dir: pathlib.Path, meta: data_format.DatasetMetadata) -> dict[str, Any]:
  """What a resumed run must find unchanged in its training data; saved as `dataset` in the run's config.

  The fingerprint covers identifiers.json and every train-split file (name, size, content; files over 16 MiB
  by 256 blocks of 64 KiB, so a start costs milliseconds even for gigabytes). The test split may change.
  """
  digest = hashlib.sha256()
  for path in [data_dir / data_format.IDENTIFIERS_FILE] + sorted((data_dir / "train").iterdir()):
    if not path.is_file():
      continue
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}\n".encode())
    with open(path, "rb") as f:
      if size <= _FULL_HASH_BYTES:
        digest.update(f.read())
        continue
      for block in range(_SAMPLED_BLOCKS):
        f.seek(block * (size - _BLOCK_BYTES) // (_SAMPLED_BLOCKS - 1))
        digest.update(f.read(_BLOCK_BYTES))
  return {"vocab_size": meta.vocab_size, "seq_len": meta.seq_len,
          "num_puzzle_identifiers": meta.num_puzzle_identifiers, "total_groups": meta.total_groups,
          "train_fingerprint": digest.hexdigest()[:16]}


def model_config_from(config: ml_collections.ConfigDict, meta: data_format.DatasetMetadata) -> ModelConfig:
  cfg = ModelConfig.from_dict(dict(config.model.to_dict(), vocab_size=meta.vocab_size, seq_len=meta.seq_len,
                                   num_puzzle_identifiers=meta.num_puzzle_identifiers))
  cfg.check_platform(jax.default_backend())  # e.g. attention_impl='cudnn' on a CPU
  return cfg


def loss_config_from(config: ml_collections.ConfigDict) -> LossConfig:
  loss = config.loss.to_dict()
  if loss["class_weights"] is not None:
    loss["class_weights"] = tuple(float(w) for w in loss["class_weights"])
  return LossConfig(**loss)


def plan_run(config: ml_collections.ConfigDict, meta: data_format.DatasetMetadata) -> RunPlan:
  """Total steps as the original derives them, and warmup resolved to optimiser steps."""
  batch = config.global_batch_size
  steps_per_epoch = pipeline.steps_per_epoch(meta, batch)
  if config.num_steps > 0:
    total = int(config.num_steps)
  else:
    total = int(config.epochs * meta.total_groups * meta.mean_puzzle_examples / batch)
  if total < 1:
    raise TrainingError(f"The run would have {total} steps: epochs={config.epochs} over "
                        f"{meta.total_groups} groups at global_batch_size={batch}. Raise --config.epochs or "
                        "set --config.num_steps.")
  opt = config.optimizer
  given = [(k, v) for k, v in (("steps", opt.warmup_steps), ("epochs", opt.warmup_epochs),
                               ("samples", opt.warmup_samples)) if v]
  if len(given) > 1:
    raise TrainingError(f"Warmup is given in more than one unit {dict(given)}; set only one of "
                        "optimizer.warmup_steps / warmup_epochs / warmup_samples.")
  warmup = optim.resolve_warmup_steps(dict(given) if given else 0, steps_per_epoch, batch)
  eval_every = config.eval.every_steps
  if config.eval.every_epochs > 0:
    eval_every = max(1, round(config.eval.every_epochs * steps_per_epoch))
  return RunPlan(total_steps=total, steps_per_epoch=steps_per_epoch, warmup_steps=warmup,
                 epochs=total / steps_per_epoch, samples=total * batch, eval_every_steps=eval_every)


def make_optimizers(config: ml_collections.ConfigDict, plan: RunPlan):
  """(the run's one optimiser: `optim.hrm_optimizer(dense, sparse_signsgd)`, dense lr, puzzle-table lr schedule)."""
  opt = config.optimizer
  schedule = lambda base: optim.make_lr_schedule(
      base, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps, min_ratio=opt.lr_min_ratio,
      restart_every=opt.restart_every_steps)
  dense = optim.make_dense_optimizer(
      schedule(opt.lr), name=opt.name, b1=opt.beta1, b2=opt.beta2, weight_decay=opt.weight_decay,
      eps=opt.eps, grad_clip_norm=opt.grad_clip_norm or None)
  emb_schedule = schedule(opt.puzzle_emb_lr)
  optimizer = optim.hrm_optimizer(dense, optim.sparse_signsgd(emb_schedule, opt.puzzle_emb_weight_decay))
  return optimizer, schedule(opt.lr), emb_schedule


def state_shardings(mesh: Mesh, abstract_state: TrainState) -> TrainState:
  """Batch-sharded ACT carry (one row per example), everything else replicated."""
  replicated = NamedSharding(mesh, P())
  by_row = NamedSharding(mesh, P("data"))
  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  return shardings.replace(carry=jax.tree.map(lambda _: by_row, abstract_state.carry))


class _Prefetcher:
  """Reads training batches in a background thread, each paired with the iterator state after it.

  The state saved in a checkpoint must be the one after the last batch the model CONSUMED, not after the
  last one read ahead, so every batch carries its own snapshot.
  """

  def __init__(self, iterator, depth: int = 2):
    self._iterator = iterator
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="hrm-prefetch")
    self._thread.start()

  def _run(self):
    try:
      for batch in self._iterator:
        item = (batch, self._iterator.get_state())
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


def load_init_weights(path: str, state: TrainState, cfg: ModelConfig) -> TrainState:
  """Weights-only start from an hrm_jax checkpoint directory or an original PyTorch checkpoint file."""
  source = pathlib.Path(path).expanduser()
  if source.is_dir():
    if (source / "checkpoints").is_dir():
      source = source / "checkpoints"  # a run's workdir
    reader = ckpt_lib.Checkpointer(source, async_save=False)
    try:
      if reader.latest_good_step() is None:
        raise TrainingError(f"init_from={path}: no finished hrm_jax checkpoint in that directory.")
      weights = ema_lib.restore_eval_weights(reader)  # an EMA run's shadow, as the original saves
    finally:
      reader.close()
    params, buffers, table = weights["params"], weights["buffers"], weights["puzzle_table"]
  else:
    from hrm_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
    converted = torch_checkpoint.load_original_checkpoint(source, seq_len=cfg.seq_len)
    for note in converted.notes:
      _say(f"init_from: {note}")
    differing = {k: (getattr(converted.model_config, k), getattr(cfg, k))
                 for k in ("hidden_size", "num_heads", "H_layers", "L_layers", "puzzle_emb_ndim",
                           "pos_encodings", "vocab_size", "expansion")
                 if getattr(converted.model_config, k) != getattr(cfg, k)}
    if differing:
      raise TrainingError(f"init_from={path} does not fit this run's model: "
                          + ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in differing.items())
                          + ". Set the --config.model.* values to the checkpoint's.")
    params, buffers, table = converted.params, converted.buffers, converted.puzzle_table
  expected = jax.tree.map(lambda x: (x.shape, x.dtype), state.params)
  got = jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), params)
  if jax.tree.structure(expected) != jax.tree.structure(got) or jax.tree.leaves(expected) != jax.tree.leaves(got):
    raise TrainingError(f"init_from={path}: parameter shapes differ from this run's model config.")
  new_table = state.puzzle_table
  if table is not None and cfg.puzzle_emb_ndim > 0:
    table = np.asarray(table, np.float32)
    rows = state.puzzle_table.shape[0]
    if table.shape[0] != rows:
      _say(f"init_from: puzzle table has {table.shape[0]} rows, this dataset has {rows}; copying the first "
           f"{min(rows, table.shape[0])} rows" + (" and setting the rest to the mean row" if rows > table.shape[0]
                                                  else ""))
      resized = np.tile(table.mean(axis=0, keepdims=True), (rows, 1))
      resized[:min(rows, table.shape[0])] = table[:rows]
      table = resized
    new_table = jnp.asarray(table)
  params = jax.tree.map(lambda ref, x: jnp.asarray(x, ref.dtype), state.params, params)
  return state.replace(
      params=params,
      # The original registers its EMA after loading: the shadow starts at the loaded weights.
      ema_params=None if state.ema_params is None else jax.tree.map(jnp.copy, params),
      buffers={k: jnp.asarray(buffers[k], state.buffers[k].dtype) for k in state.buffers},
      puzzle_table=new_table)


def _finite(metrics: dict[str, float]) -> bool:
  return all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm") if k in metrics)


# ==========================================================================================================
# The run
# ==========================================================================================================
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the last full evaluation's summary."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)

  # ---------------------------------------------------------------------------------------------- setup
  if config.distributed:
    jax.distributed.initialize()
  process_index, process_count = jax.process_index(), jax.process_count()
  data_dir = resolve_data_dir(config)
  train_meta = data_format.load_metadata(data_dir, "train")
  cfg = model_config_from(config, train_meta)
  loss_cfg = loss_config_from(config)
  plan = plan_run(config, train_meta)
  gbs = config.global_batch_size
  num_devices = jax.device_count()
  if gbs % num_devices or (gbs // config.grad_accum_steps) * config.grad_accum_steps != gbs:
    raise TrainingError(f"global_batch_size={gbs} must be divisible by the {num_devices} devices and by "
                        f"grad_accum_steps={config.grad_accum_steps}.")
  if config.eval.evaluator not in ("exact", "arc"):
    raise TrainingError(f"eval.evaluator={config.eval.evaluator!r} is not one of 'exact', 'arc'.")
  eval_bs = config.eval.batch_size or gbs
  if eval_bs % num_devices:
    raise TrainingError(f"eval.batch_size={eval_bs} must be divisible by the {num_devices} devices.")
  optimizer, lr_schedule, _ = make_optimizers(config, plan)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())

  def to_global(local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}

  init_fn = lambda: create_train_state(cfg, optimizer, gbs, config.seed, ema=config.ema)
  abstract_state = jax.eval_shape(init_fn)
  shardings = state_shardings(mesh, abstract_state)
  config_dict = json.loads(config.to_json_best_effort())
  # Derived, not a setting: data_dir may change on resume (a dataset moved), the training data may not.
  config_dict["dataset"] = dataset_identity(data_dir, train_meta)
  depth = f"TRM, {cfg.L_layers}" if cfg.arch == "trm" else f"{cfg.H_layers}+{cfg.L_layers}"
  _say(f"hrm_jax: {depth} layers, hidden {cfg.hidden_size}, {cfg.forward_dtype}, "
       f"{sum(x.size for x in jax.tree.leaves(abstract_state.params)):,} parameters "
       f"(+ puzzle table {cfg.num_puzzle_identifiers}x{cfg.puzzle_emb_ndim}); {num_devices} device(s), "
       f"{process_count} process(es)")
  _say(f"Run length: {plan.total_steps:,} optimiser steps = {plan.epochs:,.2f} epochs = {plan.samples:,} "
       f"samples (global batch {gbs}; 1 epoch = {plan.steps_per_epoch:,.2f} steps); warmup "
       f"{plan.warmup_steps:,} steps; evaluation every {plan.eval_every_steps:,} steps")

  # ---------------------------------------------------------------------------------------------- resume
  # Order: (1) a checkpoint of this run in workdir resumes it exactly; (2) else init_from loads weights only;
  # (3) else start from scratch.
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep,
                                       best_metric="exact_accuracy", best_mode="max",
                                       async_save=config.checkpoint.async_save)
  # Until the loop's own cleanup takes over, an error must still close the checkpointer (its async
  # threads would otherwise die noisily at interpreter exit).
  try:
    train_iter = pipeline.make_train_iterator(
        data_dir, global_batch_size=gbs, seed=config.seed, process_index=process_index,
        process_count=process_count, worker_count=config.data_workers)
    run_id = reporting.new_run_id()
    best_exact, best_step = None, None
    resumed_metadata: dict[str, Any] = {}
    resume_step = checkpointer.latest_good_step()
    if resume_step is not None:
      # Refuse a resume that changes what is trained before touching any array.
      saved_config = checkpointer.saved_config(resume_step)
      saved_config.setdefault("dataset", config_dict["dataset"])  # saved before datasets were recorded
      try:
        ckpt_lib.check_resume_compatible(saved_config, config_dict, config_lib.RESUME_SAFE_KEYS)
      except ckpt_lib.ResumeConfigError as e:
        if not any(k.startswith("dataset.") for k in e.keys):
          raise
        raise ckpt_lib.ResumeConfigError(
            f"{e}\nThe dataset.* keys describe the training data in {data_dir}, not settings: point "
            "--config.data_dir at the dataset this run was trained on.", e.keys) from None
      saved_total = (saved_config.get("num_steps"), saved_config.get("epochs"))
      if saved_total != (config.num_steps, config.epochs) and config.optimizer.lr_min_ratio != 1.0:
        _say("Note: the run length changed since the checkpoint, and the cosine schedule (lr_min_ratio "
             f"{config.optimizer.lr_min_ratio}) is stretched to the new length, so this run will not match an "
             "uninterrupted run of either length.")
      abstract_with_shardings = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
      restored = checkpointer.restore(abstract_with_shardings)
      state = restored.state
      try:
        train_iter.set_state(restored.data_state)
      except ValueError as e:  # a checkpoint from before datasets were recorded, on other data
        raise TrainingError(f"{e} (data_dir={data_dir})") from None
      resumed_metadata = restored.metadata
      run_id = restored.metadata.get("run_id", run_id)
      best_exact = restored.metadata.get("best_exact_accuracy")
      best_step = restored.metadata.get("best_step")
      _say(f"Resuming run {run_id} from its checkpoint at step {restored.step} in {checkpointer.directory}")
    else:
      state = jax.jit(init_fn, out_shardings=shardings)()
      if config.init_from:
        state = load_init_weights(config.init_from, jax.device_get(state), cfg)
        state = jax.device_put(state, shardings)
        _say(f"Started run {run_id} from the weights in {config.init_from} (optimiser state fresh)")
      else:
        _say(f"Started run {run_id} from scratch (seed {config.seed})")
    start_step = int(jax.device_get(state.step))

    # ---------------------------------------------------------------------------------------------- compile
    step_cfg = StepConfig(model=cfg, loss=loss_cfg, global_batch_size=gbs,
                          grad_accum_steps=config.grad_accum_steps, ema_rate=config.ema_rate)
    train_step = jax.jit(make_train_step(step_cfg, optimizer),
                         in_shardings=(shardings, batch_sharding), out_shardings=(shardings, replicated),
                         donate_argnums=0)
    eval_cfg = eval_lib.EvalConfig(halt_on_q=config.eval.halt_on_q,
                                   halt_max_steps=config.eval.halt_max_steps or None)
    eval_step = jax.jit(eval_lib.make_eval_step(cfg, loss_cfg, eval_cfg))

    def run_eval(subset: int | None, save_to: pathlib.Path | None = None) -> dict[str, Any]:
      batches = pipeline.make_eval_batches(data_dir, global_batch_size=eval_bs, subset_size=subset,
                                           process_index=process_index, process_count=process_count)
      return eval_lib.evaluate(eval_step, state, batches, put_batch=to_global, save_predictions_to=save_to)

    # ---------------------------------------------------------------------------------------------- reporting
    is_main = process_index == 0
    writers = reporting.make_writers(workdir, tensorboard=config.log.tensorboard,
                                     wandb_project=config.log.wandb_project or None, run_id=run_id,
                                     config=config_dict) if is_main else reporting.MultiWriter([])
    # status.json has one writer: other processes (each with its own run id on a fresh start) keep their own file.
    status = reporting.StatusFile(workdir / ("status.json" if is_main else f".status.process{process_index}.json"),
                                  run_id=run_id, total_steps=plan.total_steps)
    progress = reporting.ProgressBar(plan.total_steps, initial_step=start_step) if (
        is_main and config.log.progress_bar) else None
    timer = reporting.StepTimer(gbs)
    if is_main:
      (workdir / "config.json").write_text(json.dumps(config_dict, indent=1))

    last_saved_step = start_step if resume_step is not None else -1

    def save_checkpoint(step: int, data_state, metrics=None) -> None:
      nonlocal last_saved_step
      if step == last_saved_step:
        return
      last_saved_step = step
      metadata = {"run_id": run_id, "best_exact_accuracy": best_exact, "best_step": best_step,
                  "total_steps": plan.total_steps, "best_fast_exact_accuracy": best_fast,
                  "last_full_step": last_full_step, "evals_without_improvement": evals_without_improvement}
      with timer.excluded():
        checkpointer.save(step, state, data_state=data_state, config=config_dict, metadata=metadata,
                          metrics=metrics)
      status.update(force=True, latest_checkpoint=str(checkpointer.directory / str(step)))

  except BaseException:
    checkpointer.close()
    raise

  # ---------------------------------------------------------------------------------------------- loop
  guard = PreemptionGuard().install()
  prefetcher = _Prefetcher(train_iter)
  batches = iter(prefetcher)
  last_full: dict[str, Any] | None = None
  # Saved with every checkpoint, so that a resumed run evaluates, and stops early, at the same steps as an
  # uninterrupted one.
  best_fast = resumed_metadata.get("best_fast_exact_accuracy", -1.0)
  last_full_step = resumed_metadata.get("last_full_step", start_step)
  evals_without_improvement = resumed_metadata.get("evals_without_improvement", 0)
  data_state = None
  last_metrics = None
  step = start_step
  end_state, end_message = "finished", f"Finished {plan.total_steps:,} steps."

  def fetch_finite_metrics(step: int) -> dict[str, float]:
    """The latest step's metrics on the host; a NaN/Inf loss or gradient ends the run before any save."""
    host = {k: float(v) for k, v in jax.device_get(last_metrics).items()}
    if not _finite(host):
      checkpointer.wait()  # a save still in flight may be the last good checkpoint
      good = checkpointer.latest_good_step()
      raise TrainingError(
          f"The loss became NaN/Inf at or before step {step} (loss={host.get('loss')}, grad_norm="
          f"{host.get('grad_norm')}). Nothing was saved after it; the last good checkpoint is "
          f"{'step ' + str(good) if good is not None else 'none'} in {checkpointer.directory}. Lower "
          "--config.optimizer.lr or set --config.optimizer.grad_clip_norm, then run the same command "
          "to resume from it.")
    return host

  try:
    if config.eval.at_start and start_step == 0:
      start_eval = run_eval(None)
      writers.write(0, _flat_eval(start_eval), split="eval")
      status.record_eval(0, start_eval)
      _say("Before training: " + reporting.format_eval_report(start_eval, step=0))
    while step < plan.total_steps:
      with timer.waiting_for_data():
        try:
          batch, data_state = next(batches)
        except StopIteration:
          raise TrainingError("The training data ran out; this should not happen with an endless "
                              "iterator. Check the dataset's train split.") from None
      state, last_metrics = train_step(state, to_global(batch))
      timer.step_done()
      step += 1
      is_last = step == plan.total_steps

      # -- logging: the only place train metrics are fetched (a host sync every log.every_steps) --------
      if step % config.log.every_steps == 0 or is_last or step == start_step + 1:
        stats = timer.sync(last_metrics)
        host = fetch_finite_metrics(step)
        host["lr"] = float(lr_schedule(step - 1))
        if stats is not None:
          host.update(steps_per_s=stats.steps_per_s, samples_per_s=stats.samples_per_s,
                      data_wait_fraction=stats.data_wait_fraction, compute_s_per_step=stats.compute_per_step_s)
        writers.write(step, host, split="train")
        epoch = step / plan.steps_per_epoch
        status.update(step=step, epoch=epoch, samples_seen=step * gbs,
                      steps_per_s=timer.smoothed_steps_per_s,
                      samples_per_s=(timer.smoothed_steps_per_s or 0) * gbs or None,
                      data_wait_fraction=stats.data_wait_fraction if stats else None)
        if progress is not None:
          shown = {"loss": host["loss"], "exact_acc": host.get("exact_accuracy", 0.0)}
          if stats is not None:
            shown["data_wait_fraction"] = stats.data_wait_fraction
          progress.update(step, shown, steps_per_s=timer.smoothed_steps_per_s)

      # -- evaluation ------------------------------------------------------------------------------------
      stop_early = False
      if (plan.eval_every_steps and step % plan.eval_every_steps == 0) or is_last:
        with timer.excluded():
          subset = config.eval.subset_size or None
          fast = run_eval(subset) if subset and not is_last else None
          run_full = (fast is None or is_last
                      or (config.eval.full_every_steps and step - last_full_step >= config.eval.full_every_steps)
                      or fast["exact_accuracy"] >= best_fast + config.eval.full_on_improvement)
          if fast is not None:
            writers.write(step, _flat_eval(fast), split="eval_fast")
            best_fast = max(best_fast, fast["exact_accuracy"])
            if progress is not None:
              progress.write(f"step {step}: fast eval ({subset} examples) exact accuracy "
                             f"{fast['exact_accuracy']:.2%}, token accuracy {fast['accuracy']:.2%}")
          if run_full:
            wants_predictions = config.eval.save_predictions or config.eval.evaluator == "arc"
            save_to = (workdir / "predictions" / f"step_{step}.npz") if wants_predictions else None
            full = run_eval(None, save_to)
            if config.eval.evaluator == "arc" and is_main:
              full.update(_arc_metrics(save_to, data_dir))
            last_full, last_full_step = full, step
            writers.write(step, _flat_eval(full), split="eval")
            status.record_eval(step, full)
            if best_exact is None or full["exact_accuracy"] > best_exact:
              best_exact, best_step = full["exact_accuracy"], step
              evals_without_improvement = 0
            else:
              evals_without_improvement += 1
            report = reporting.format_eval_report(full, step=step)
            (progress.write if progress is not None else _say)(report)
            if config.eval.early_stop_patience and evals_without_improvement >= config.eval.early_stop_patience:
              stop_early = True
              end_state, end_message = "finished", (
                  f"Early stop at step {step}: {evals_without_improvement} full evaluations without a better "
                  f"exact accuracy (best {best_exact:.2%} at step {best_step}).")
        if run_full:
          fetch_finite_metrics(step)
          save_checkpoint(step, data_state, {"exact_accuracy": last_full["exact_accuracy"]})

      # -- checkpoints and preemption --------------------------------------------------------------------
      preempted = guard.should_stop(step)
      if preempted or stop_early or is_last or step % config.checkpoint.every_steps == 0:
        fetch_finite_metrics(step)
        save_checkpoint(step, data_state)
      if preempted:
        end_state = "stopped"
        signal_name = guard.received[0] if guard.received else "a signal"  # not the list's repr
        end_message = (f"Stopped by {signal_name} at step {step}; checkpoint saved in "
                       f"{checkpointer.directory}. Run the same command again to resume exactly here.")
        break
      if stop_early:
        break
  except BaseException as e:
    end_state, end_message = "failed", f"{type(e).__name__}: {e}"
    raise
  finally:
    prefetcher.close()
    guard.close()
    try:
      checkpointer.wait()
    finally:
      checkpointer.close()
      if progress is not None:
        progress.close()
      status.update(step=step)
      status.finish(end_state, end_message)
      writers.close()
    _say(end_message)
  return last_full or {}


def _arc_metrics(predictions_path: pathlib.Path, data_dir: pathlib.Path) -> dict[str, float]:
  from hrm_jax.training import arc_eval  # pylint: disable=import-outside-toplevel
  with np.load(predictions_path) as npz:
    predictions = {k: npz[k] for k in npz.files}
  return arc_eval.arc_pass_at_k(predictions, data_format.load_identifiers(data_dir))


def _flat_eval(summary: dict[str, Any]) -> dict[str, float]:
  flat = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
  for cls, acc in summary.get("per_class_accuracy", {}).items():
    flat[f"class_accuracy/{cls}"] = acc
  return flat
