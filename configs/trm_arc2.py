r"""TRM on ARC-AGI-2 (paper: 7.8% pass@2).

  python -m hrm_jax.main --config=configs/trm_arc2.py --workdir=workdirs/trm-arc2
  python -m hrm_jax.main --config=configs/trm_arc2.py:smoke --workdir=workdirs/trm-arc2-smoke

Same recipe as configs/trm_arc1.py on the ARC-AGI-2 tasks (the README's second ARC command).
"""

from configs import _trm
from configs import trm_arc1


def get_config(variant: str = ""):
  c = trm_arc1.get_config()
  c.unlock()
  c.data_dir = "data/arc-2-aug-1000"
  c.build_data_if_missing = "arc --source arc-agi-2 --num-aug 1000"
  return _trm.finish(c, variant, "trm_arc2", "data/arc2-smoke", "arc --source arc-agi-2 --num-aug 1 --seed 0")
