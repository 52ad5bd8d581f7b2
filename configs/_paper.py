"""Shared pieces of the task configs: the paper's recipes and a tiny smoke-test model."""

from hrm_jax.config import base_config


def paper_config(data_dir: str, build_recipe: str):
  """HRM as in the paper: 27M parameters, 4+4 layers, hidden 512, bfloat16, ACT with 16 segments."""
  c = base_config()
  c.data_dir = data_dir
  c.build_data_if_missing = build_recipe
  return c


def use_small_data_recipe(c):
  """The paper's recipe for the 1k-example tasks (Sudoku-Extreme 1k, Maze 30x30 Hard 1k)."""
  c.epochs = 20000
  c.eval.every_epochs = 2000  # = 2604 steps with 1000 groups at batch 768
  c.optimizer.lr = 1e-4
  c.optimizer.puzzle_emb_lr = 1e-4
  c.optimizer.weight_decay = 1.0
  c.optimizer.puzzle_emb_weight_decay = 1.0
  return c


def make_smoke(c, data_dir: str, build_recipe: str):
  """A few steps of a tiny model on a tiny dataset: the whole pipeline in under 2 minutes on 2 CPU cores,
  with a line on the console at least every 10 s."""
  c.data_dir = data_dir
  c.build_data_if_missing = build_recipe
  c.model.hidden_size = 64
  c.model.num_heads = 4
  c.model.H_layers = 1
  c.model.L_layers = 1
  c.model.puzzle_emb_ndim = 64 if c.model.puzzle_emb_ndim else 0
  c.model.halt_max_steps = 2
  c.model.forward_dtype = "float32"
  c.global_batch_size = 16
  c.num_steps = 10
  c.optimizer.warmup_steps = 2
  c.optimizer.warmup_epochs = 0.0
  c.eval.every_steps = 5
  c.eval.every_epochs = 0.0
  c.eval.subset_size = 32
  c.eval.full_every_steps = 10
  c.eval.batch_size = 32
  c.checkpoint.every_steps = 5
  c.eval.full_max_examples = 64  # ARC's test split holds 838 examples of length 900: keep smoke runs short
  if build_recipe.startswith("arc"):  # sequence length 900: a smaller batch and evaluation (2 cores, < 2 min)
    c.global_batch_size = 8
    c.eval.subset_size = 16
    c.eval.batch_size = 16
    c.eval.full_max_examples = 32
  c.log.every_steps = 1
  c.log.progress_bar = True  # without a terminal: a plain line every progress_every_s
  c.log.progress_every_s = 5.0
  return c


def finish(c, variant: str, name: str, smoke_data_dir: str, smoke_recipe: str):
  if variant == "smoke":
    make_smoke(c, smoke_data_dir, smoke_recipe)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/{name}.py; use '' or 'smoke'.")
  c.lock()
  return c
