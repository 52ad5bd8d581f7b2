"""The run configuration: every field, its unit and its default (the paper's hyper-parameters).

Task configs in `configs/` start from `base_config()` and change what their task needs. Units are explicit:
`*_steps` count optimiser steps, `epochs` count passes over the training groups (the original's epoch: one
example-puzzle from every group), `*_samples` count training examples.
"""

from __future__ import annotations

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
  c.model.hidden_size = 512
  c.model.num_heads = 8
  c.model.expansion = 4.0  # SwiGLU width = 256 * ceil(round(expansion * hidden * 2/3) / 256)
  c.model.H_cycles = 2
  c.model.L_cycles = 2
  c.model.H_layers = 4
  c.model.L_layers = 4
  c.model.puzzle_emb_ndim = 512  # 0 disables the puzzle embedding; original: = hidden_size
  c.model.pos_encodings = "rope"  # "rope" | "learned"
  c.model.rms_norm_eps = 1e-5
  c.model.rope_theta = 10000.0
  c.model.halt_max_steps = 16  # ACT segments at most (and exactly, in the original's evaluation)
  c.model.halt_exploration_prob = 0.1
  c.model.forward_dtype = "bfloat16"  # "bfloat16" | "float32"; parameters stay float32 masters
  # "auto": cudnn on GPU in bfloat16, else blockwise (memory linear in T) from 256 positions on, else "xla"
  # (the original's rounding, the parity path) | "xla" | "blockwise" | "cudnn" (GPU, bfloat16) | "jax"
  c.model.attention_impl = "auto"

  # ---- loss ------------------------------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.loss_type = "stablemax_cross_entropy"  # | "softmax_cross_entropy"
  c.loss.label_smoothing = 0.0
  c.loss.class_weights = ml_collections.FieldReference(None, field_type=tuple)  # one weight per token id
  c.loss.focal_gamma = 0.0

  # ---- length of the run -----------------------------------------------------------------------------
  c.global_batch_size = 768  # rows per optimiser step, summed over all devices and hosts
  c.epochs = 100000  # original's epochs; total steps = int(epochs * groups * mean_examples / batch)
  c.num_steps = 0  # if > 0, overrides the step count derived from epochs
  c.grad_accum_steps = 1  # micro-batches per step (same update as the full batch, less memory)

  # ---- optimisers ------------------------------------------------------------------------------------
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam_atan2"  # | "adamw"
  c.optimizer.lr = 1e-4
  c.optimizer.lr_min_ratio = 1.0  # 1.0 = constant after warmup (the original's default)
  c.optimizer.warmup_steps = 2000  # optimiser steps; or give warmup_epochs / warmup_samples instead
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.warmup_samples = 0
  c.optimizer.restart_every_steps = 0  # > 0: cosine warm restarts every N steps
  c.optimizer.beta1 = 0.9
  c.optimizer.beta2 = 0.95
  c.optimizer.weight_decay = 0.1
  c.optimizer.eps = 1e-8  # AdamW only (AdamATan2 has none)
  c.optimizer.grad_clip_norm = 0.0  # > 0: clip the global gradient norm (the original does not)
  c.optimizer.puzzle_emb_lr = 1e-2
  c.optimizer.puzzle_emb_weight_decay = 0.1
  # EMA of the dense weights (TRM's; the original HRM has none): shadow = (1-rate)*w + rate*shadow after each
  # step; evaluation (and export of the run's weights) then uses the shadow. Saved in every checkpoint.
  c.ema = False
  c.ema_rate = 0.999

  # ---- evaluation ------------------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 2000  # fast evaluation on a fixed subset every N steps (0: never)
  c.eval.every_epochs = 0.0  # if > 0, overrides every_steps: evaluate every N epochs (the original's unit)
  c.eval.subset_size = 1024  # examples in the fast subset (0: the whole test split)
  c.eval.full_every_steps = 20000  # full evaluation at least this often (0: only at the end)
  c.eval.full_on_improvement = 0.01  # also run the full one when the fast exact accuracy improves by this
  c.eval.batch_size = 0  # 0: global_batch_size
  c.eval.halt_on_q = False  # True: stop rows when q_halt > q_continue (the original runs all segments)
  c.eval.halt_max_steps = 0  # > 0: more segments than training (inference-time scaling)
  c.eval.early_stop_patience = 0  # > 0: stop after N full evaluations without a better exact accuracy
  c.eval.at_start = False  # also evaluate before the first step (shows where training starts from)
  c.eval.save_predictions = False
  c.eval.evaluator = "exact"  # "exact" | "arc" (adds the original's ARC voting pass@k; saves predictions)  # write predictions of each full evaluation to workdir/predictions/

  # ---- checkpoints -----------------------------------------------------------------------------------
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # also saved at the end, at each full evaluation and on SIGTERM/SIGINT
  c.checkpoint.max_to_keep = 3  # newest N kept, plus the best by full-eval exact accuracy
  c.checkpoint.async_save = True
  c.init_from = ""  # weights-only start: an hrm_jax checkpoint dir or an original PyTorch step_N file

  # ---- logging ---------------------------------------------------------------------------------------
  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 50  # fetch and write train metrics every N steps (the only host sync in the loop)
  c.log.tensorboard = True
  c.log.wandb_project = ""  # non-empty: also log to W&B (needs `pip install wandb`)
  c.log.progress_bar = True

  # ---- scale -----------------------------------------------------------------------------------------
  c.distributed = False  # call jax.distributed.initialize() (multi-host; env or flags give the coordinator)
  return c


# Keys a resumed run may change without changing what is trained (see checkpoint.check_resume_compatible).
RESUME_SAFE_KEYS = ("eval", "log", "checkpoint", "num_steps", "epochs", "data_workers", "init_from",
                    "build_data_if_missing", "distributed", "model.attention_impl", "data_dir")
