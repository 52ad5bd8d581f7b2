r"""Demo: a small TRM learns 4x4 Sudoku from scratch in a few minutes on a laptop CPU (beside configs/demo.py's HRM).

  python -m hrm_jax.main --config=configs/trm_demo.py --workdir=workdirs/trm-demo

Same data (data/demo, built on first use), batch, optimiser and step count as configs/demo.py; the model is
TRM's one 2-layer network recursing 2 x (2 + 1) times per segment, evaluated with its EMA weights.
Variants: `configs/trm_demo.py:smoke` (a few steps, for tests and CI).
"""

from configs import demo


def get_config(variant: str = ""):
  if variant not in ("", "smoke"):
    raise ValueError(f"Unknown variant {variant!r} of configs/trm_demo.py; use '' or 'smoke'.")
  c = demo.get_config(variant)
  c.unlock()
  m = c.model
  m.arch = "trm"
  m.H_cycles = 2
  m.L_cycles = 2
  m.H_layers = 0  # ignored by TRM
  m.L_layers = 2
  m.mlp_t = False
  m.puzzle_emb_len = 0  # no puzzle table (one dataset-wide id), so no prefix
  m.no_ACT_continue = True
  c.ema = True
  c.ema_rate = 0.99  # the original's 0.999 averages over ~1000 steps: most of this 2000-step run
  c.lock()
  return c
