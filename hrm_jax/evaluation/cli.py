"""What the evaluate, solve and export commands share: model flags, one-line errors."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

import yaml


class UsageError(ValueError):
  """A bad command line or input file; printed as one line."""


def add_model_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", required=True,
                      help="an hrm_jax run's workdir (its best, else latest, checkpoint), an hrm_jax .npz model "
                           "file, or an original step_N (with all_config.yaml beside it)")
  parser.add_argument("--step", type=int, default=None, help="which checkpoint of a run directory")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="model config field for an original step_N without all_config.yaml (repeatable); "
                           "contradicting a file's own config is an error")
  parser.add_argument("--original-defaults", action="store_true",
                      help="for a step_N without all_config.yaml: assume the original's default architecture")


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
  overrides = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise UsageError(f"--set {item!r} is not KEY=VALUE (e.g. --set num_heads=8)")
    overrides[key.strip()] = yaml.safe_load(value)
  return overrides


def load_model(args: argparse.Namespace, seq_len: int | None = None):
  from hrm_jax.convert import model_file  # pylint: disable=import-outside-toplevel
  model = model_file.load_model(args.checkpoint, step=args.step, overrides=parse_sets(args.set) or None,
                                seq_len=seq_len, original_defaults=args.original_defaults)
  for note in model.notes:
    print(f"note: {note}", file=sys.stderr)
  import jax  # pylint: disable=import-outside-toplevel
  try:  # e.g. a model trained with cuDNN attention, used on a CPU
    model.model_config.check_platform(jax.default_backend())
  except ValueError as e:
    raise UsageError(f"{e}: pass --set attention_impl=auto") from None
  return model


def run(main: Callable[[], int]) -> int:
  """Runs `main`, turning user errors (bad files, flags, puzzles) into one `error:` line and exit status 1."""
  try:
    return main()
  except (ValueError, OSError, ImportError, KeyError) as e:
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {message}", file=sys.stderr)
    return 1
