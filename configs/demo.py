r"""Demo: a small HRM learns 4x4 Sudoku from scratch in a few minutes on a laptop CPU.

  python -m hrm_jax.main --config=configs/demo.py --workdir=workdirs/demo

The dataset (2000 train / 256 held-out puzzles, unique solutions) is built into data/demo on first use.
Variants: `configs/demo.py:smoke` (a few steps, for tests and CI).
"""

from hrm_jax.config import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.data_dir = "data/demo"
  c.build_data_if_missing = "demo"

  c.model.hidden_size = 64
  c.model.num_heads = 4
  c.model.expansion = 2.0
  c.model.H_cycles = 2
  c.model.L_cycles = 2
  c.model.H_layers = 1
  c.model.L_layers = 1
  c.model.puzzle_emb_ndim = 0  # one dataset-wide puzzle id: nothing to embed
  c.model.pos_encodings = "learned"  # learns the 2D board structure far faster than RoPE's 1D positions
  c.model.halt_max_steps = 4
  c.model.forward_dtype = "float32"  # CPUs have no fast bfloat16 matmuls

  c.global_batch_size = 64
  c.num_steps = 2000
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  # Cosine decay to a 2% floor: the last evaluations sit at a small lr, so the run ends where it converged
  # instead of wherever a constant lr's noise leaves it (which differs between CPUs). Weight decay 1.0 (the
  # paper's Sudoku setting) keeps 2,000 puzzles from being memorised.
  c.optimizer.lr_min_ratio = 0.02
  c.optimizer.weight_decay = 1.0

  c.eval.every_steps = 250
  c.eval.subset_size = 0  # the held-out set is small: always evaluate all of it
  c.eval.full_every_steps = 250
  c.eval.batch_size = 256
  c.eval.at_start = True
  c.checkpoint.every_steps = 250
  c.log.every_steps = 25

  if variant == "smoke":
    c.num_steps = 6
    c.optimizer.warmup_steps = 2
    c.eval.every_steps = 3
    c.eval.full_every_steps = 3
    c.checkpoint.every_steps = 3
    c.log.every_steps = 1
    c.log.progress_bar = False
    c.log.progress_every_s = 5.0
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/demo.py; use '' or 'smoke'.")
  c.lock()
  return c
