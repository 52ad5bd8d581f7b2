r"""TRM on Maze 30x30 Hard 1k (paper: 85.3% exact accuracy).

  python -m hrm_jax.main --config=configs/trm_maze.py --workdir=workdirs/trm-maze
  python -m hrm_jax.main --config=configs/trm_maze.py:smoke --workdir=workdirs/trm-maze-smoke

The README's command: arch.H_cycles=3 arch.L_cycles=4 epochs=50000 eval_interval=5000 lr=1e-4
puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 ema=True, attention with RoPE, global batch
768. Data as configs/maze.py.
"""

from configs import _trm


def get_config(variant: str = ""):
  c = _trm.trm_config("data/maze-30x30-hard-1k", "maze --size 30 --num-train 1000 --num-test 1000")
  _trm.use_small_data_recipe(c)
  c.model.L_cycles = 4
  c.eval.subset_size = 1000
  return _trm.finish(c, variant, "trm_maze", "data/maze-smoke",
                     "maze --size 9 --num-train 64 --num-test 32 --seed 0")
