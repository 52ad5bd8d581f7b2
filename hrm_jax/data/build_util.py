"""Pieces shared by the dataset builders: user-facing errors and atomic output directories."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np

from hrm_jax.data import format as data_format


class BuildError(ValueError):
  """A problem the user can fix (bad path, malformed input file, impossible option)."""


def check_output_dir(output_dir: data_format.PathLike, overwrite: bool) -> pathlib.Path:
  """Fails early (before any work) if `output_dir` cannot receive a new dataset."""
  path = pathlib.Path(output_dir)
  if path.exists() and not path.is_dir():
    raise BuildError(f"--output-dir {path} exists and is not a directory; choose another path.")
  if path.is_dir() and any(path.iterdir()) and not overwrite:
    raise BuildError(f"--output-dir {path} already exists and is not empty; pass --overwrite to "
                     "replace it or choose another directory.")
  for parent in [path, *path.parents]:
    if parent.exists():
      if not parent.is_dir():
        raise BuildError(f"cannot create --output-dir {path}: {parent} is not a directory.")
      if not os.access(parent, os.W_OK):
        raise BuildError(f"cannot create --output-dir {path}: {parent} is not writable.")
      break
  return path


def make_scratch_dir(target: pathlib.Path) -> pathlib.Path:
  """A fresh directory beside `target` (same file system, so it can be renamed onto it)."""
  scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
  # mkdtemp makes it private (0700); the finished dataset should get the usual permissions.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(scratch, 0o777 & ~umask)
  return scratch


@contextlib.contextmanager
def atomic_output_dir(output_dir: data_format.PathLike, overwrite: bool = False
                      ) -> Iterator[pathlib.Path]:
  """Yields a scratch directory that replaces `output_dir` only if the block succeeds.

  The scratch directory sits beside `output_dir` (same file system), so the final step is a rename:
  readers never see a half-written dataset, and a failed build leaves nothing behind.
  """
  path = check_output_dir(output_dir, overwrite)
  path.parent.mkdir(parents=True, exist_ok=True)
  scratch = make_scratch_dir(path)
  try:
    yield scratch
    if path.is_dir() and not any(path.iterdir()):
      path.rmdir()
    if path.exists():
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
      os.rename(path, old / "data")
      os.rename(scratch, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(scratch, path)
  finally:
    if scratch.exists():
      shutil.rmtree(scratch, ignore_errors=True)


def single_example_puzzles(inputs_NxS: np.ndarray, labels_NxS: np.ndarray,
                           group_sizes: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
  """Set arrays where every example is its own puzzle (identifier 0), grouped consecutively.

  This is the Sudoku/Maze structure of the original: one example per puzzle, all identifiers 0,
  a group = an original board followed by its augmentations (`group_sizes[g]` puzzles).
  """
  num = inputs_NxS.shape[0]
  group_sizes = np.asarray(group_sizes, dtype=np.int64)
  if int(group_sizes.sum()) != num:
    raise ValueError(f"group sizes sum to {int(group_sizes.sum())}, expected {num} puzzles")
  return {
      "inputs": np.ascontiguousarray(inputs_NxS, dtype=np.uint8),
      "labels": np.ascontiguousarray(labels_NxS, dtype=np.uint8),
      "puzzle_identifiers": np.zeros(num, dtype=np.int32),
      "puzzle_indices": np.arange(num + 1, dtype=np.int32),
      "group_indices": np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int32),
  }


def write_single_example_split(output_dir: pathlib.Path, split: str, inputs_NxS: np.ndarray,
                               labels_NxS: np.ndarray, group_sizes: Sequence[int] | np.ndarray,
                               vocab_size: int) -> data_format.DatasetMetadata:
  """Writes a Sudoku/Maze-style split (PAD 0, ignore label 0, one set 'all', one identifier)."""
  arrays = single_example_puzzles(inputs_NxS, labels_NxS, group_sizes)
  metadata = data_format.DatasetMetadata(
      pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
      seq_len=int(inputs_NxS.shape[1]), num_puzzle_identifiers=1,
      total_groups=len(group_sizes), mean_puzzle_examples=1.0, sets=["all"])
  data_format.write_split(output_dir, split, metadata, {"all": arrays})
  return metadata


def take_subset(rng: np.random.Generator, count: int, limit: int | None) -> np.ndarray:
  """Sorted indices of `limit` random rows out of `count` (all rows when `limit` is None)."""
  if limit is None or limit >= count:
    return np.arange(count)
  return np.sort(rng.choice(count, size=limit, replace=False))
