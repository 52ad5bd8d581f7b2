"""A small 4×4-Sudoku dataset for the demo config: built on first use in about a second.

2000 train / 256 test distinct puzzles (seed 0), each with a unique solution and 6..10 of its 16
cells blank, so a small model learns it in minutes on a CPU. Same format as the builders (seq 16,
vocab 6).
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np

from hrm_jax.data import build_util
from hrm_jax.data import format as data_format
from hrm_jax.data import sudoku

NUM_TRAIN = 2000
NUM_TEST = 256
BLANKS = (6, 10)
SEED = 0


def _is_complete(path: pathlib.Path) -> bool:
  return all((path / split / data_format.METADATA_FILE).is_file() for split in ("train", "test")) \
      and (path / data_format.IDENTIFIERS_FILE).is_file()


def ensure_demo_dataset(data_dir: str | os.PathLike) -> str:
  """Builds the demo dataset at `data_dir` unless it is already there; returns the path.

  Idempotent and atomic: the dataset is written to a temporary sibling directory and renamed into
  place, so a concurrent or interrupted call never leaves a partial dataset at `data_dir`.
  """
  path = pathlib.Path(data_dir)
  if _is_complete(path):
    return str(path)
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise build_util.BuildError(f"{path} exists but is not a complete dataset; remove it or pick "
                                "another directory for the demo dataset.")
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(SEED)
  data = sudoku.generate_puzzles(NUM_TRAIN + NUM_TEST, rng, box=2, min_difficulty=0,
                                 blanks_range=BLANKS)
  inputs, labels = sudoku.encode(data.puzzles_MxN), sudoku.encode(data.solutions_MxN)
  scratch = build_util.make_scratch_dir(path)
  try:
    for split, rows in (("train", slice(0, NUM_TRAIN)), ("test", slice(NUM_TRAIN, None))):
      build_util.write_single_example_split(scratch, split, inputs[rows], labels[rows],
                                            np.ones(len(inputs[rows]), np.int64),
                                            sudoku.vocab_size(2))
    data_format.write_identifiers(scratch, [data_format.BLANK_IDENTIFIER])
    if path.is_dir():
      path.rmdir()  # Empty (checked above); rename needs the target gone.
    try:
      os.rename(scratch, path)
    except OSError:
      # Another process finished first; its dataset is identical (same seed).
      if not _is_complete(path):
        raise
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return str(path)
