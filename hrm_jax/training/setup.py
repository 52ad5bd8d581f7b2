"""Setup of a run from its config: dataset, model and loss configs, run length, optimisers, initial weights.

Each function either returns what the run needs or raises a `TrainingError` naming the problem and the fix,
before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shlex
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline
from hrm_jax.model.config import ModelConfig
from hrm_jax.model.losses import LossConfig
from hrm_jax.training import checkpoint as ckpt_lib
from hrm_jax.training import ema as ema_lib
from hrm_jax.training import optim
from hrm_jax.training.errors import TrainingError
from hrm_jax.training.policy import CheckpointPolicy, EvalPolicy
from hrm_jax.training.train_step import TrainState, create_train_state


@dataclasses.dataclass
class RunPlan:
  total_steps: int
  steps_per_epoch: float
  warmup_steps: int
  epochs: float
  samples: int
  eval_every_steps: int


def say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def resolve_data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
  if not config.data_dir:
    raise TrainingError("config.data_dir is empty: pass --config.data_dir=PATH to a dataset built with "
                        "`python -m hrm_jax.data.build ...` (or use configs/demo.py, which builds its own).")
  data_dir = pathlib.Path(config.data_dir).expanduser()
  if data_dir.exists() and not data_dir.is_dir():
    raise TrainingError(f"data_dir={data_dir} is a file, not a dataset folder: pass --config.data_dir=PATH to "
                        "the folder holding train/, test/ and identifiers.json.")
  recipe = config.build_data_if_missing.strip()
  if recipe and not (data_dir / "train" / "dataset.json").exists():
    if jax.process_index() == 0:
      say(f"No dataset in {data_dir}; building it ({recipe}) ...")
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
  try:
    cfg = ModelConfig.from_dict(dict(config.model.to_dict(), vocab_size=meta.vocab_size, seq_len=meta.seq_len,
                                     num_puzzle_identifiers=meta.num_puzzle_identifiers))
    cfg.check_platform(jax.default_backend())  # e.g. attention_impl='cudnn' on a CPU
  except ValueError as e:
    raise TrainingError(" ".join(str(e).split())) from None
  return cfg


def loss_config_from(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> LossConfig:
  loss = config.loss.to_dict()
  if loss["class_weights"] is not None:
    loss["class_weights"] = tuple(float(w) for w in loss["class_weights"])
    if vocab_size is not None and len(loss["class_weights"]) != vocab_size:
      raise TrainingError(f"loss.class_weights has {len(loss['class_weights'])} weights, the dataset has "
                          f"{vocab_size} token ids: give exactly one weight per token id.")
  return LossConfig(**loss)


def plan_run(config: ml_collections.ConfigDict, meta: data_format.DatasetMetadata) -> RunPlan:
  """Total steps as the original derives them, and warmup resolved to optimiser steps."""
  batch = config.global_batch_size
  if meta.total_groups < 1 or meta.mean_puzzle_examples <= 0:
    raise TrainingError(f"the training split of {config.data_dir} is empty ({meta.total_groups} groups); "
                        "rebuild the dataset with python -m hrm_jax.data.build or fix --config.data_dir.")
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
  # warmup_epochs or warmup_samples, when set, replace warmup_steps (config.problems refuses both at once).
  if opt.warmup_epochs > 0:
    warmup = optim.resolve_warmup_steps({"epochs": opt.warmup_epochs}, steps_per_epoch, batch)
  elif opt.warmup_samples > 0:
    warmup = optim.resolve_warmup_steps({"samples": opt.warmup_samples}, steps_per_epoch, batch)
  else:
    warmup = int(opt.warmup_steps)
  eval_every = config.eval.every_steps
  if config.eval.every_epochs > 0:
    eval_every = max(1, round(config.eval.every_epochs * steps_per_epoch))
  return RunPlan(total_steps=total, steps_per_epoch=steps_per_epoch, warmup_steps=warmup,
                 epochs=total / steps_per_epoch, samples=total * batch, eval_every_steps=eval_every)


def make_dense_optimizer(config: ml_collections.ConfigDict, plan: RunPlan,
                         grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """The dense half of the run's optimiser; `grad_clip_norm` overrides the config's (a checkpoint's layout)."""
  opt = config.optimizer
  clip = opt.grad_clip_norm if grad_clip_norm is None else grad_clip_norm
  return optim.make_dense_optimizer(
      _schedule(config, plan, opt.lr), name=opt.name, b1=opt.beta1, b2=opt.beta2,
      weight_decay=opt.weight_decay, eps=opt.eps, grad_clip_norm=clip or None)


def _schedule(config: ml_collections.ConfigDict, plan: RunPlan, base: float) -> optax.Schedule:
  opt = config.optimizer
  return optim.make_lr_schedule(base, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps,
                                min_ratio=opt.lr_min_ratio, restart_every=opt.restart_every_steps)


def make_optimizers(config: ml_collections.ConfigDict, plan: RunPlan, grad_clip_norm: float | None = None):
  """(the run's one optimiser: `optim.hrm_optimizer(dense, sparse_signsgd)`, dense lr, puzzle-table lr schedule)."""
  opt = config.optimizer
  emb_schedule = _schedule(config, plan, opt.puzzle_emb_lr)
  optimizer = optim.hrm_optimizer(make_dense_optimizer(config, plan, grad_clip_norm),
                                  optim.sparse_signsgd(emb_schedule, opt.puzzle_emb_weight_decay))
  return optimizer, _schedule(config, plan, opt.lr), emb_schedule


def state_shardings(mesh: Mesh, abstract_state: TrainState) -> TrainState:
  """Batch-sharded ACT carry (one row per example), everything else replicated."""
  replicated = NamedSharding(mesh, P())
  by_row = NamedSharding(mesh, P("data"))
  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  return shardings.replace(carry=jax.tree.map(lambda _: by_row, abstract_state.carry))


def load_init_weights(path: str, state: TrainState, cfg: ModelConfig) -> TrainState:
  """Weights-only start from an hrm_jax checkpoint directory or an original PyTorch checkpoint file."""
  source = pathlib.Path(path).expanduser()
  if not source.exists():
    raise TrainingError(f"init_from={path} does not exist: pass an hrm_jax run directory, its checkpoints/ "
                        "folder, or an original PyTorch step_N file.")
  if source.is_dir():
    if (source / "checkpoints").is_dir():
      source = source / "checkpoints"  # a run's workdir
    reader = ckpt_lib.Checkpointer(source, async_save=False, read_only=True)
    try:
      if reader.latest_good_step() is None:
        raise TrainingError(f"init_from={path}: no finished hrm_jax checkpoint in that directory.")
      weights = ema_lib.restore_eval_weights(reader)  # an EMA run's shadow, as the original saves
    except ckpt_lib.CheckpointError as e:
      raise TrainingError(f"init_from={path}: {e}") from None
    except Exception as e:  # pylint: disable=broad-except  # damaged arrays: Orbax/TensorStore errors
      raise TrainingError(f"init_from={path}: its newest checkpoint cannot be read "
                          f"({ckpt_lib.summarize_error(e)}).") from None
    finally:
      reader.close()
    params, buffers, table = weights["params"], weights["buffers"], weights["puzzle_table"]
  else:
    from hrm_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
    try:
      converted = torch_checkpoint.load_original_checkpoint(source, seq_len=cfg.seq_len)
    except (torch_checkpoint.CheckpointConversionError, ValueError, OSError, ImportError) as e:
      raise TrainingError(f"init_from={path} cannot be read as an original HRM checkpoint: "
                          f"{' '.join(str(e).split())}") from None
    for note in converted.notes:
      say(f"init_from: {note}")
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
    raise TrainingError(f"init_from={path}: its parameter shapes differ from this run's model; set the "
                        "--config.model.* values to the ones it was trained with.")
  new_table = state.puzzle_table
  if table is not None and cfg.puzzle_emb_ndim > 0:
    table = np.asarray(table, np.float32)
    rows = state.puzzle_table.shape[0]
    if table.shape[0] != rows:
      say(f"init_from: puzzle table has {table.shape[0]} rows, this dataset has {rows}; copying the first "
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


@dataclasses.dataclass(frozen=True)
class Run:
  """What setup derives from the config; read-only for the rest of the run."""
  config: ml_collections.ConfigDict
  config_dict: dict[str, Any]  # as saved with every checkpoint (plus the dataset's identity)
  workdir: pathlib.Path
  data_dir: pathlib.Path
  cfg: Any  # ModelConfig
  loss_cfg: Any  # LossConfig
  plan: RunPlan
  optimizer: optax.GradientTransformation  # optim.hrm_optimizer(dense, sparse SignSGD)
  lr_schedule: optax.Schedule
  emb_schedule: optax.Schedule
  mesh: Mesh
  abstract_state: TrainState
  shardings: TrainState
  eval_batch_size: int
  eval_policy: EvalPolicy
  checkpoint_policy: CheckpointPolicy

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0

  def to_global(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    sharding = NamedSharding(self.mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def build_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Run:
  data_dir = resolve_data_dir(config)
  meta = data_format.load_metadata(data_dir, "train")
  cfg = model_config_from(config, meta)
  loss_cfg = loss_config_from(config, meta.vocab_size)
  plan = plan_run(config, meta)
  gbs, num_devices = config.global_batch_size, jax.device_count()
  if gbs % num_devices or gbs % config.grad_accum_steps:
    raise TrainingError(f"global_batch_size={gbs} must be divisible by the {num_devices} devices and by "
                        f"grad_accum_steps={config.grad_accum_steps}.")
  eval_bs = config.eval.batch_size or gbs
  if eval_bs % num_devices:
    raise TrainingError(f"eval.batch_size={eval_bs} must be divisible by the {num_devices} devices.")
  optimizer, lr_schedule, emb_schedule = make_optimizers(config, plan)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  abstract_state = jax.eval_shape(lambda: create_train_state(cfg, optimizer, gbs, config.seed, ema=config.ema))
  config_dict = json.loads(config.to_json_best_effort())
  # Derived, not a setting: data_dir may change on resume (a dataset moved), the training data may not.
  config_dict["dataset"] = dataset_identity(data_dir, meta)
  depth = f"TRM, {cfg.L_layers}" if cfg.arch == "trm" else f"{cfg.H_layers}+{cfg.L_layers}"
  say(f"hrm_jax: {depth} layers, hidden {cfg.hidden_size}, {cfg.forward_dtype}, "
       f"{sum(x.size for x in jax.tree.leaves(abstract_state.params)):,} parameters "
       f"(+ puzzle table {cfg.num_puzzle_identifiers}x{cfg.puzzle_emb_ndim}); {num_devices} device(s), "
       f"{jax.process_count()} process(es)")
  say(f"Run length: {plan.total_steps:,} optimiser steps = {plan.epochs:,.2f} epochs = {plan.samples:,} "
       f"samples (global batch {gbs}; 1 epoch = {plan.steps_per_epoch:,.2f} steps); warmup "
       f"{plan.warmup_steps:,} steps; evaluation every {plan.eval_every_steps:,} steps")
  return Run(config=config, config_dict=config_dict, workdir=workdir, data_dir=data_dir, cfg=cfg,
             loss_cfg=loss_cfg, plan=plan, optimizer=optimizer, lr_schedule=lr_schedule,
             emb_schedule=emb_schedule, mesh=mesh, abstract_state=abstract_state,
             shardings=state_shardings(mesh, abstract_state), eval_batch_size=eval_bs,
             eval_policy=EvalPolicy.from_config(config, plan.eval_every_steps),
             checkpoint_policy=CheckpointPolicy(config.checkpoint.every_steps))
