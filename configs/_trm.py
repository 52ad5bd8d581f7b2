"""Shared pieces of the TRM task configs: the original's config/arch/trm.yaml + cfg_pretrain.yaml, its
README recipes, and a tiny smoke-test model."""

from configs import _paper


def trm_config(data_dir: str, build_recipe: str):
  """TRM as the README trains it: one 2-layer network, hidden 512, H_cycles 3, 16 segments, EMA 0.999."""
  c = _paper.paper_config(data_dir, build_recipe)
  m = c.model
  m.arch = "trm"
  m.H_cycles = 3  # paper T: recursions per segment (T-1 of them without gradient)
  m.L_cycles = 6  # paper n: z-updates per recursion
  m.H_layers = 0  # ignored by TRM (there is no H network)
  m.L_layers = 2
  m.mlp_t = False  # True: token-mixing SwiGLU over the positions instead of attention
  m.puzzle_emb_len = 16  # prefix slots (0: ceil(puzzle_emb_ndim / hidden_size), HRM's rule)
  m.no_ACT_continue = True  # halt on q_halt > 0 alone; no continue loss, no second forward
  c.ema = True  # every README command sets ema=True
  c.ema_rate = 0.999
  return c


def use_small_data_recipe(c):
  """The README's Sudoku-Extreme / Maze-Hard commands: epochs 50000, eval every 5000, lrs 1e-4, wd 1.0."""
  _paper.use_small_data_recipe(c)
  c.epochs = 50000
  c.eval.every_epochs = 5000
  return c


def finish(c, variant: str, name: str, smoke_data_dir: str, smoke_recipe: str, variants=()):
  """Applies `variant`: comma-separated words from `variants` (handled by the caller) plus "smoke"."""
  words = [w for w in variant.split(",") if w]
  unknown = [w for w in words if w not in ("smoke",) + tuple(variants)]
  if unknown:
    raise ValueError(f"Unknown variant {unknown} of configs/{name}.py; use a comma-separated list of "
                     f"{['smoke', *variants]} or ''.")
  if "smoke" in words:
    _paper.make_smoke(c, smoke_data_dir, smoke_recipe)
    c.model.H_layers = 0
    c.model.H_cycles = 2
    c.model.L_cycles = 2
    c.model.puzzle_emb_len = 1 if c.model.puzzle_emb_ndim else 0
  c.lock()
  return c
