r"""TRM on Sudoku-Extreme 1k (paper: 87.4% with the MLP variant, 74.7% with attention).

  python -m hrm_jax.main --config=configs/trm_sudoku.py --workdir=workdirs/trm-sudoku
  python -m hrm_jax.main --config=configs/trm_sudoku.py:attn --workdir=workdirs/trm-sudoku-attn
  python -m hrm_jax.main --config=configs/trm_sudoku.py:smoke --workdir=workdirs/trm-sudoku-smoke

The README's commands: arch.mlp_t=True arch.pos_encodings=none arch.H_cycles=3 arch.L_cycles=6 (default; the
`attn` variant keeps attention with RoPE) epochs=50000 eval_interval=5000 lr=1e-4 puzzle_emb_lr=1e-4
weight_decay=1.0 puzzle_emb_weight_decay=1.0 ema=True, global batch 768. Data as configs/sudoku.py.
"""

from configs import _trm


def get_config(variant: str = ""):
  c = _trm.trm_config("data/sudoku-extreme-1k-aug-1000",
                      "sudoku --num-train 1000 --num-test 1000 --num-aug 1000")
  _trm.use_small_data_recipe(c)
  c.eval.subset_size = 4096
  if "attn" not in variant.split(","):
    c.model.mlp_t = True  # the token MLP is tied to T = 81 + 16 positions
    c.model.pos_encodings = "none"
  return _trm.finish(c, variant, "trm_sudoku", "data/sudoku-smoke",
                     "sudoku --num-train 64 --num-test 32 --num-aug 1 --seed 0", variants=("attn",))
