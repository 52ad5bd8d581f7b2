"""The run configuration: every field, its unit and its default (the paper's hyper-parameters).

Task configs in `configs/` start from `base_config()` and change what their task needs. Units are explicit:
`*_steps` count optimiser steps, `epochs` count passes over the training groups (the original's epoch: one
example-puzzle from every group), `*_samples` count training examples.
"""

from __future__ import annotations

import math
import pathlib
import re

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # ---- data ------------------------------------------------------------------------------------------
  c.data_dir = ""  # dataset directory in the original's format (train/, test/, identifiers.json)
  # If data_dir has no dataset: "demo" builds the small 4x4-Sudoku demo set; otherwise a builder command line
  # such as "sudoku --num-train 1000 --num-aug 1000" runs `python -m hrm_jax.data.build` into data_dir.
  c.build_data_if_missing = ""
  c.data_workers = 0  # grain worker processes for training batches (0: in the main process)
  c.seed = 0  # seeds parameters, data order and ACT exploration

  # ---- model (HRM-ACT-v1; vocab_size, seq_len, num_puzzle_identifiers come from the dataset) ---------
  c.model = ml_collections.ConfigDict()
  c.model.arch = "hrm_v1"  # "hrm_v1" | "trm" (configs/trm_*.py add TRM's fields: mlp_t, puzzle_emb_len, ...)
  c.model.hidden_size = 512  # width of every layer
  c.model.num_heads = 8  # attention heads (head size = hidden_size / num_heads)
  c.model.expansion = 4.0  # SwiGLU width = 256 * ceil(round(expansion * hidden * 2/3) / 256)
  c.model.H_cycles = 2  # high-level updates per ACT segment
  c.model.L_cycles = 2  # low-level updates per high-level update
  c.model.H_layers = 4  # transformer blocks of the high-level module
  c.model.L_layers = 4  # transformer blocks of the low-level module
  c.model.puzzle_emb_ndim = 512  # 0 disables the puzzle embedding; original: = hidden_size
  c.model.pos_encodings = "rope"  # "rope" | "learned"
  c.model.rms_norm_eps = 1e-5  # RMSNorm epsilon
  c.model.rope_theta = 10000.0  # RoPE base frequency
  c.model.halt_max_steps = 16  # ACT segments at most (and exactly, in the original's evaluation)
  c.model.halt_exploration_prob = 0.1  # training: chance a row gets a random minimum of segments
  # "bfloat16" | "float32" | "float64" (64-bit JAX: the original's float64 path); parameters stay float32
  c.model.forward_dtype = "bfloat16"
  # "auto": cudnn on GPU in bfloat16, else blockwise (memory linear in T) from 256 positions on, else "xla"
  # (the original's rounding, the parity path) | "xla" | "blockwise" | "cudnn" (GPU, bfloat16) | "jax"
  c.model.attention_impl = "auto"

  # ---- loss ------------------------------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.loss_type = "stablemax_cross_entropy"  # "stablemax_cross_entropy" (original) | "softmax_cross_entropy"
  c.loss.label_smoothing = 0.0  # 0: none (the original)
  c.loss.class_weights = ml_collections.FieldReference(None, field_type=tuple)  # one weight per token id
  c.loss.focal_gamma = 0.0  # > 0: focal loss exponent (0: plain cross-entropy)

  # ---- length of the run -----------------------------------------------------------------------------
  c.global_batch_size = 768  # rows per optimiser step, summed over all devices and hosts
  c.epochs = 100000  # original's epochs; total steps = int(epochs * groups * mean_examples / batch)
  c.num_steps = 0  # if > 0, overrides the step count derived from epochs
  c.grad_accum_steps = 1  # micro-batches per step (same update as the full batch, less memory)

  # ---- optimisers ------------------------------------------------------------------------------------
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam_atan2"  # "adam_atan2" (the original) | "adamw"
  c.optimizer.lr = 1e-4  # peak learning rate of the dense parameters
  c.optimizer.lr_min_ratio = 1.0  # 1.0 = constant after warmup (the original's default)
  c.optimizer.warmup_steps = 2000  # optimiser steps of linear warmup (replaced by either key below when > 0)
  c.optimizer.warmup_epochs = 0.0  # > 0: warmup in epochs instead of warmup_steps
  c.optimizer.warmup_samples = 0  # > 0: warmup in training samples instead of warmup_steps
  c.optimizer.restart_every_steps = 0  # > 0: cosine warm restarts every N steps (needs lr_min_ratio < 1)
  c.optimizer.beta1 = 0.9  # first-moment decay
  c.optimizer.beta2 = 0.95  # second-moment decay
  c.optimizer.weight_decay = 0.1  # decoupled weight decay of the dense parameters
  c.optimizer.eps = 1e-8  # AdamW only (AdamATan2 has none)
  c.optimizer.grad_clip_norm = 0.0  # > 0: clip the global gradient norm (the original does not)
  c.optimizer.puzzle_emb_lr = 1e-2  # peak learning rate of the puzzle embedding (sparse SignSGD)
  c.optimizer.puzzle_emb_weight_decay = 0.1  # weight decay of the puzzle embedding rows
  # EMA of the dense weights (TRM's; the original HRM has none): shadow = (1-rate)*w + rate*shadow after each
  # step; evaluation (and export of the run's weights) then uses the shadow. Saved in every checkpoint.
  c.ema = False  # keep an EMA shadow of the dense weights and evaluate with it (TRM's recipe turns it on)
  c.ema_rate = 0.999  # the shadow's rate: shadow = (1-rate)*w + rate*shadow after each optimiser step

  # ---- evaluation ------------------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 2000  # fast evaluation on a fixed subset every N steps (0: never)
  c.eval.every_epochs = 0.0  # if > 0, overrides every_steps: evaluate every N epochs (the original's unit)
  c.eval.subset_size = 1024  # examples in the fast subset (0: the whole test split)
  c.eval.full_every_steps = 20000  # full evaluation at least this often (0: only at the end)
  # also run the full one when the fast exact accuracy rises this much (absolute: 0.01 = one point) over its best
  c.eval.full_on_fast_gain = 0.01
  c.eval.full_max_examples = 0  # > 0: "full" evaluations read only the first N test examples (smoke tests)
  c.eval.batch_size = 0  # 0: global_batch_size
  c.eval.halt_on_q = False  # True: stop rows when q_halt > q_continue (the original runs all segments)
  c.eval.halt_max_steps = 0  # > 0: more segments than training (inference-time scaling)
  c.eval.early_stop_patience = 0  # > 0: stop after N full evaluations without a better exact accuracy
  c.eval.at_start = False  # also evaluate before the first step (shows where training starts from)
  c.eval.save_predictions = False  # write predictions of each full evaluation to workdir/predictions/
  c.eval.evaluator = "exact"  # "exact" | "arc" (adds the original's ARC voting pass@k; saves predictions)

  # ---- checkpoints -----------------------------------------------------------------------------------
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # also saved at the end, at each full evaluation and on SIGTERM/SIGINT
  c.checkpoint.max_to_keep = 3  # newest N kept, plus the best by full-eval exact accuracy
  c.checkpoint.async_save = True  # write checkpoints in the background while training goes on
  c.init_from = ""  # weights-only start: an hrm_jax checkpoint dir or an original PyTorch step_N file
  # After a NaN/Inf stop: resume the last finite checkpoint with RECOVERY_SAFE_KEYS (lr, clipping, warmup)
  # allowed to differ from it; the change is recorded in the checkpoint metadata.
  c.recover_from_nan = False

  # ---- logging ---------------------------------------------------------------------------------------
  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 50  # fetch and write train metrics every N steps (the only host sync in the loop)
  c.log.tensorboard = True  # write TensorBoard events to workdir/tb
  c.log.wandb_project = ""  # non-empty: also log to W&B (needs `pip install wandb`)
  c.log.progress_bar = True  # a progress line on the console
  c.log.progress_every_s = 30.0  # without a terminal: a progress line at least this often (also while evaluating)
  c.log.status_every_s = 10.0  # status.json heartbeat period in seconds (a background thread; at most 30)

  # ---- scale -----------------------------------------------------------------------------------------
  c.distributed = False  # call jax.distributed.initialize() (multi-host; env or flags give the coordinator)
  return c


# The one list of keys a resumed run may change (see checkpoint.check_resume_compatible). A key covers the keys
# below it ("eval" covers "eval.batch_size"). The run length may change: the schedule is stretched to it
# (train.py says so when lr_min_ratio < 1). Seeds, batch sizes, data, model and optimiser keys may not.
RESUME_SAFE_KEYS = ("eval", "log", "checkpoint", "num_steps", "epochs", "data_workers", "init_from",
                    "build_data_if_missing", "distributed", "model.attention_impl", "data_dir",
                    "recover_from_nan")
# Also allowed to change with --config.recover_from_nan=true: what tames a diverged run.
RECOVERY_SAFE_KEYS = ("optimizer.lr", "optimizer.puzzle_emb_lr", "optimizer.grad_clip_norm",
                      "optimizer.warmup_steps", "optimizer.warmup_epochs", "optimizer.warmup_samples")


_EVALUATORS = ("exact", "arc")


def problems(c: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with a config, each as `key=value: why; fix` (checked before any data or compilation)."""
  found = []

  def need(ok: bool, key: str, why: str) -> None:
    if not ok:
      node = c
      for part in key.split("."):
        node = node[part]
      found.append(f"{key}={node!r}: {why}")

  need(c.global_batch_size >= 1, "global_batch_size", "must be a positive number of rows per step")
  need(c.grad_accum_steps >= 1, "grad_accum_steps", "must be >= 1")
  need(c.num_steps >= 0, "num_steps", "must be >= 0 (0: derive the run length from epochs)")
  need(c.num_steps > 0 or (math.isfinite(c.epochs) and c.epochs > 0), "epochs",
       "must be > 0 when num_steps is 0")
  for key in ("lr", "puzzle_emb_lr", "lr_min_ratio", "beta1", "beta2", "weight_decay", "eps", "grad_clip_norm",
              "puzzle_emb_weight_decay", "warmup_epochs"):
    value = c.optimizer[key]
    need(math.isfinite(value) and value >= 0, f"optimizer.{key}", "must be a finite number >= 0")
  need(0 <= c.optimizer.lr_min_ratio <= 1, "optimizer.lr_min_ratio", "must lie in [0, 1]")
  need(c.optimizer.warmup_steps >= 0 and c.optimizer.warmup_samples >= 0, "optimizer.warmup_steps",
       "warmup_steps and warmup_samples must be >= 0")
  need(not (c.optimizer.warmup_epochs > 0 and c.optimizer.warmup_samples > 0), "optimizer.warmup_epochs",
       "give the warmup in one unit: set warmup_epochs or warmup_samples, not both")
  need(c.optimizer.restart_every_steps >= 0, "optimizer.restart_every_steps", "must be >= 0 (0: no restarts)")
  need(not (c.optimizer.restart_every_steps > 0 and c.optimizer.lr_min_ratio == 1.0),
       "optimizer.restart_every_steps", "warm restarts do nothing with lr_min_ratio=1.0 (a constant lr); "
       "set --config.optimizer.lr_min_ratio below 1, e.g. 0.1")
  for key in ("label_smoothing", "focal_gamma"):
    value = c.loss[key]
    need(math.isfinite(value) and value >= 0, f"loss.{key}", "must be a finite number >= 0")
  weights = c.loss.class_weights
  need(weights is None or all(math.isfinite(float(w)) and float(w) >= 0 for w in weights), "loss.class_weights",
       "every weight must be a finite number >= 0")
  need(c.eval.evaluator in _EVALUATORS, "eval.evaluator", f"must be one of {_EVALUATORS}")
  for key in ("every_steps", "subset_size", "full_every_steps", "batch_size", "early_stop_patience",
              "halt_max_steps", "full_max_examples"):
    need(c.eval[key] >= 0, f"eval.{key}", "must be >= 0")
  need(math.isfinite(c.eval.full_on_fast_gain), "eval.full_on_fast_gain", "must be a finite number")
  need(c.checkpoint.every_steps >= 1, "checkpoint.every_steps", "must be >= 1")
  need(math.isfinite(c.ema_rate) and 0 <= c.ema_rate < 1, "ema_rate",
       "must lie in [0, 1) (the original's is 0.999; 0 makes the EMA the weights themselves)")
  need(c.checkpoint.max_to_keep >= 1, "checkpoint.max_to_keep", "must be >= 1")
  need(c.log.every_steps >= 1, "log.every_steps", "must be >= 1")
  need(0 < c.log.status_every_s <= 30, "log.status_every_s", "must lie in (0, 30] seconds")
  need(c.log.progress_every_s > 0, "log.progress_every_s", "must be > 0 seconds")
  need(c.data_workers >= 0, "data_workers", "must be >= 0")
  return found


_FIELD = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(.*?)(?:\s+#\s?(.*))?$")


def documented_keys() -> list[tuple[str, object, str]]:
  """(key, default, comment) for every key of `base_config()`, comments as written in this file."""
  comments: dict[str, str] = {}
  pending: list[str] = []
  for line in pathlib.Path(__file__).read_text().splitlines():
    stripped = line.strip()
    if stripped.startswith("# ----"):
      pending = []
    elif stripped.startswith("#"):
      pending.append(stripped.lstrip("# "))
    elif (match := _FIELD.match(line)) and "ConfigDict()" not in match.group(2):
      comments[match.group(1)] = " ".join(pending + ([match.group(3)] if match.group(3) else []))
      pending = []
    else:
      pending = []
  flat: list[tuple[str, object, str]] = []

  def walk(node, prefix=""):
    for key in node.keys():
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f"{prefix}{key}.")
      else:
        flat.append((prefix + key, value, comments.get(prefix + key, "")))

  walk(base_config())
  return flat
