r"""Sudoku-Extreme 1k (paper: 55.0% exact accuracy): 1000 hard puzzles, 1000 augmentations each.

  python -m hrm_jax.main --config=configs/sudoku.py --workdir=workdirs/sudoku
  python -m hrm_jax.main --config=configs/sudoku.py:smoke --workdir=workdirs/sudoku-smoke

The original's recipe: epochs=20000 eval_interval=2000 lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0
puzzle_emb_weight_decay=1.0, global batch 768. Data: generated locally (no download) on first use; to use the
sudoku-extreme CSV instead, build it yourself:
  python -m hrm_jax.data.build sudoku --source train.csv --num-train 1000 --num-aug 1000 \
      --output-dir data/sudoku-extreme-1k-aug-1000
"""

from configs import _paper


def get_config(variant: str = ""):
  c = _paper.paper_config("data/sudoku-extreme-1k-aug-1000",
                          "sudoku --num-train 1000 --num-test 1000 --num-aug 1000")
  _paper.use_small_data_recipe(c)
  c.eval.subset_size = 4096
  return _paper.finish(c, variant, "sudoku", "data/sudoku-smoke",
                       "sudoku --num-train 64 --num-test 32 --num-aug 1 --seed 0")
