"""Train HRM: `python -m hrm_jax.main --config=configs/<task>.py[:variant] --workdir=DIR [--config.key=value]`.

Running the same command again resumes the run in DIR exactly where it stopped.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Task config file, e.g. configs/demo.py or configs/sudoku.py:smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, status.json.")
flags.mark_flags_as_required(["config", "workdir"])


def _innermost_message(error: BaseException) -> str:
  # ml_collections wraps the KeyError of an unknown key in an AttributeError; str() of a KeyError is its
  # repr (escaped quotes, a literal \n), so take the innermost message text itself.
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  return " ".join(text.split())


def _parse_flags(argv):
  """absl flag parsing with config-override mistakes reported in one line (no traceback)."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError, TypeError, ValueError, flags.Error) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    if not bad or isinstance(e, flags.IllegalFlagValueError) and "--config." not in str(e):
      print(f"error: {_innermost_message(e)}\nUsage: python -m hrm_jax.main --config=configs/<task>.py[:variant] "
            "--workdir=DIR [--config.key=value ...]", file=sys.stderr)
      sys.exit(2)
    print(f"error: bad config override {' '.join(bad or argv[1:])}: {_innermost_message(e)} (settings are "
          "--config.<key>=<value> with keys as in the config file; hrm_jax/config.py lists every key)",
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; settings go in --config.key=value flags.")
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.config_with_absl()
  if _CONFIG.value.model.get("forward_dtype") == "float64":
    jax.config.update("jax_enable_x64", True)  # the original's float64 forward (slow; for verification)
  logging.set_verbosity(logging.WARNING)
  from hrm_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  from hrm_jax.training import train  # pylint: disable=import-outside-toplevel
  from hrm_jax.data.format import DatasetError  # pylint: disable=import-outside-toplevel
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (train.TrainingError, DatasetError, checkpoint.CheckpointError, checkpoint.ResumeConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
