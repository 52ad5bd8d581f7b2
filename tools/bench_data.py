r"""Throughput of the training data pipeline on synthetic Sudoku- and ARC-shaped datasets.

  python -m tools.bench_data                       # both shapes, worker_count 0 and 2
  python -m tools.bench_data --shapes=arc --workers=0,1,2,4 --batches=100

Writes the datasets under --workdir (a temporary directory by default) with hrm_jax.data.format, then
times `make_train_iterator` at --batch_size. Start-up (first batch, including spawning workers) is
reported apart from the steady rate. Also times one pass of `make_eval_batches`.
"""

import dataclasses
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline

_SHAPES = flags.DEFINE_list("shapes", ["sudoku", "arc"], "Dataset shapes to measure.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "worker_count values to measure.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 768, "Global batch size (rows).")
_BATCHES = flags.DEFINE_integer("batches", 60, "Batches timed after the first one.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write the datasets (default: a temp dir).")


@dataclasses.dataclass(frozen=True)
class Shape:
  seq_len: int
  vocab_size: int
  groups: int
  puzzles_per_group: int
  examples_per_puzzle: tuple[int, int]  # Inclusive range, drawn per puzzle.


SHAPES = {
    # Sudoku-1k-aug-like: 1000 originals with 19 augmentations each, 1 example per puzzle: 20k rows.
    "sudoku": Shape(seq_len=81, vocab_size=11, groups=1000, puzzles_per_group=20,
                    examples_per_puzzle=(1, 1)),
    # ARC-aug-like: ~1000 groups, 8 variants each, 2-5 examples per variant: ~28k rows of 900.
    "arc": Shape(seq_len=900, vocab_size=12, groups=1000, puzzles_per_group=8,
                 examples_per_puzzle=(2, 5)),
}


def write_dataset(root: pathlib.Path, shape: Shape) -> int:
  """Writes a random train split of `shape`; returns its number of examples."""
  rng = np.random.default_rng(0)
  num_puzzles = shape.groups * shape.puzzles_per_group
  lo, hi = shape.examples_per_puzzle
  sizes = rng.integers(lo, hi + 1, num_puzzles)
  num_examples = int(sizes.sum())
  arrays = {
      "inputs": rng.integers(0, shape.vocab_size, (num_examples, shape.seq_len), dtype=np.uint8),
      "labels": rng.integers(0, shape.vocab_size, (num_examples, shape.seq_len), dtype=np.uint8),
      "puzzle_identifiers": np.arange(1, num_puzzles + 1, dtype=np.int32),
      "puzzle_indices": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32),
      "group_indices": np.arange(0, num_puzzles + 1, shape.puzzles_per_group, dtype=np.int32),
  }
  metadata = data_format.DatasetMetadata(
      pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=shape.vocab_size,
      seq_len=shape.seq_len, num_puzzle_identifiers=num_puzzles + 1, total_groups=shape.groups,
      mean_puzzle_examples=num_examples / num_puzzles, sets=["all"])
  data_format.write_split(root, "train", metadata, {"all": arrays})
  data_format.write_split(root, "test", metadata, {"all": arrays})
  return num_examples


def time_train(data_dir: pathlib.Path, workers: int) -> tuple[float, float]:
  """(seconds to the first batch, steady batches/s)."""
  start = time.perf_counter()
  iterator = pipeline.make_train_iterator(data_dir, global_batch_size=_BATCH_SIZE.value, seed=0,
                                          worker_count=workers)
  try:
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      batch = next(iterator)
    rate = _BATCHES.value / (time.perf_counter() - start)
    assert batch["inputs"].shape[0] == _BATCH_SIZE.value
  finally:
    iterator.close()
  return first, rate


def time_eval(data_dir: pathlib.Path) -> float:
  start, count = time.perf_counter(), 0
  for _ in pipeline.make_eval_batches(data_dir, global_batch_size=_BATCH_SIZE.value):
    count += 1
  return count / (time.perf_counter() - start)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(_WORKDIR.value or tmp)
    print(f"global batch {_BATCH_SIZE.value}, {_BATCHES.value} timed batches")
    print(f"{'shape':8} {'examples':>9} {'seq':>4} {'workers':>7} {'first batch s':>13} "
          f"{'train batch/s':>13} {'rows/s':>9}")
    for name in _SHAPES.value:
      shape = SHAPES[name]
      data_dir = workdir / f"bench_{name}"
      num_examples = write_dataset(data_dir, shape)
      for workers in map(int, _WORKERS.value):
        first, rate = time_train(data_dir, workers)
        print(f"{name:8} {num_examples:>9} {shape.seq_len:>4} {workers:>7} {first:>13.2f} "
              f"{rate:>13.1f} {rate * _BATCH_SIZE.value:>9.0f}")
      print(f"{name:8} eval (1 thread): {time_eval(data_dir):.1f} batch/s")


if __name__ == "__main__":
  app.run(main)
