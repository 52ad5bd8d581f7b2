r"""TRM on ARC-AGI-1 (paper: 44.6% pass@2).

  python -m hrm_jax.main --config=configs/trm_arc1.py --workdir=workdirs/trm-arc1
  python -m hrm_jax.main --config=configs/trm_arc1.py:smoke --workdir=workdirs/trm-arc1-smoke

The README's command: arch.H_cycles=3 arch.L_cycles=4 with the cfg_pretrain.yaml defaults (epochs=100000
eval_interval=10000 lr=1e-4 puzzle_emb_lr=1e-2 weight_decay=0.1 puzzle_emb_weight_decay=0.1) and ema=True,
global batch 768. Data as configs/arc1.py (the original also trains on ConceptARC; see BUILD.md).
"""

from configs import _trm


def get_config(variant: str = ""):
  c = _trm.trm_config("data/arc-aug-1000", "arc --source arc-agi-1 --num-aug 1000")
  c.model.L_cycles = 4
  c.epochs = 100000
  c.eval.every_epochs = 10000
  c.eval.subset_size = 4096
  c.eval.evaluator = "arc"
  return _trm.finish(c, variant, "trm_arc1", "data/arc1-smoke", "arc --source arc-agi-1 --num-aug 1 --seed 0")
