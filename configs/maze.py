r"""Maze 30x30 Hard 1k (paper: 74.5% exact accuracy): find the shortest path in 1000 training mazes.

  python -m hrm_jax.main --config=configs/maze.py --workdir=workdirs/maze
  python -m hrm_jax.main --config=configs/maze.py:smoke --workdir=workdirs/maze-smoke

The original's recipe (same as Sudoku): epochs=20000 eval_interval=2000 lr=1e-4 puzzle_emb_lr=1e-4
weight_decay=1.0 puzzle_emb_weight_decay=1.0, global batch 768. Mazes are generated locally on first use
(BFS-verified shortest paths); to use the original's CSVs: python -m hrm_jax.data.build maze --source DIR ...
"""

from configs import _paper


def get_config(variant: str = ""):
  c = _paper.paper_config("data/maze-30x30-hard-1k", "maze --size 30 --num-train 1000 --num-test 1000")
  _paper.use_small_data_recipe(c)
  c.eval.subset_size = 1000
  return _paper.finish(c, variant, "maze", "data/maze-smoke",
                       "maze --size 9 --num-train 64 --num-test 32 --seed 0")
