"""Train HRM: `python -m hrm_jax.main --config=configs/<task>.py[:variant] --workdir=DIR [--config.key=value]`.

Running the same command again resumes the run in DIR exactly where it stopped. `--help` lists every
config key; JAX's own flags (e.g. `--jax_enable_x64`) are accepted too.
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

USAGE = ("Usage: python -m hrm_jax.main --config=configs/<task>.py[:variant] --workdir=DIR "
         "[--config.key=value ...] [--jax_flag=value ...]")


def _innermost_message(error: BaseException) -> str:
  # ml_collections wraps the KeyError of an unknown key in an AttributeError; str() of a KeyError is its
  # repr (escaped quotes, a literal \n), so take the innermost message text itself.
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  return " ".join(str(text).split())


def help_text() -> str:
  from hrm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  lines = [USAGE, "", "Config keys (--config.KEY=VALUE; defaults of hrm_jax/config.py, task files change some):"]
  for key, default, comment in config_lib.documented_keys():
    lines.append(f"  {key} = {default!r}" + (f"  # {comment}" if comment else ""))
  lines += ["", "JAX flags (e.g. --jax_enable_x64) are passed through; `--helpfull` lists every flag."]
  return "\n".join(lines)


def _fail(message: str, code: int) -> None:
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(code)


def _parse_flags(argv):
  """absl flag parsing with config mistakes reported in one line (no traceback)."""
  if any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
    print(help_text())
    sys.exit(0)
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.config_with_absl()  # defines --jax_* flags before they are parsed
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError, TypeError, ValueError, flags.Error) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    message = _innermost_message(e)
    if not bad or isinstance(e, flags.IllegalFlagValueError) and "--config." not in str(e):
      print(f"error: {message}\n{USAGE}", file=sys.stderr)
      sys.exit(2)
    _fail(f"bad config override {' '.join(bad or argv[1:])}: {message} (settings are --config.<key>=<value> "
          "with keys as in the config file; --help lists every key)", 2)
  except OSError as e:  # a config file that does not exist or cannot be read
    _fail(f"cannot read the config file: {e.strerror or e}: {e.filename or ''}. Fix --config=PATH "
          "(e.g. configs/demo.py).", 2)
  except Exception as e:  # pylint: disable=broad-except  # an error inside the user's config file
    _fail(f"the config file failed to load: {type(e).__name__}: {_innermost_message(e)}", 2)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; settings go in --config.key=value flags.\n{USAGE}", 2)
  logging.set_verbosity(logging.WARNING)
  from hrm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    config = _CONFIG.value
    config.to_dict()  # a file that failed to load gives a placeholder that raises only when used
  except OSError as e:  # ml_collections reports a config file it could not load only here
    _fail(f"cannot load the config file given by --config: {_innermost_message(e)}. Fix --config=PATH "
          "(e.g. configs/demo.py).", 2)
  found = config_lib.problems(config)
  if found:
    _fail(f"bad config: {'; '.join(found)}", 2)
  if config.model.get("forward_dtype") == "float64":
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_enable_x64", True)  # the original's float64 forward (slow; for verification)
  from hrm_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  from hrm_jax.training import train  # pylint: disable=import-outside-toplevel
  from hrm_jax.training import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from hrm_jax.data.format import DatasetError  # pylint: disable=import-outside-toplevel
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except (train.TrainingError, DatasetError, checkpoint.CheckpointError, checkpoint.ResumeConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except OSError as e:  # a disk that filled up or went read-only while running
    _fail(f"{e.strerror or e}: {e.filename or ''}. Earlier checkpoints are intact; fix the disk, then rerun the "
          f"same command to resume (details in {_WORKDIR.value}/{workdir_lib.LOG_FILE}).", 1)
  finally:
    _silence_library_shutdown()


def _silence_library_shutdown() -> None:
  """After the run: asyncio futures of a failed Orbax save report themselves when garbage-collected at exit;
  the run's own error line (and run.log) already said what happened."""
  import logging as std_logging  # pylint: disable=import-outside-toplevel
  std_logging.getLogger("asyncio").disabled = True
  sys.unraisablehook = lambda unraisable: None


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
