"""Grain input pipelines over the original HRM puzzle format (training sampler and evaluation batches).

Training follows the original's `PuzzleDataset._iter_train`: an epoch is an independent permutation of all
groups; each visited group contributes one uniformly chosen puzzle, of which `min(puzzle_size, remaining)`
examples are drawn without replacement, until the global batch holds exactly `global_batch_size` rows (the
last puzzle of a batch may be truncated, its leftover examples are dropped, and the next batch starts at the
next group). Batches run across epoch boundaries and are never padded.

Unlike the original, every random draw derives from `seed`: the permutation and puzzle choices of epoch `e`
from `SeedSequence(seed, spawn_key=(0, e))`, and the example order inside the batch that starts at visit
`(e, o)` from `SeedSequence(seed, spawn_key=(1, e, o))`. A batch is therefore a pure function of
(seed, its start cursor), so it does not depend on the number of prefetch workers or processes, and the
iterator state is just the cursor of the next batch.

Several sets in one split are pooled into one set of groups for training (the original walks them one
after the other); evaluation keeps them apart, set by set.

Pipeline, all grain pieces: `_BatchPlanDataset` (an `IterDataset` source yielding each global batch's
example indices; `mp_prefetch` slices it so worker i handles batches i, i + n, ...) ->
`.map(_GatherTrainBatch)` (reads this process's rows from the memory-mapped arrays, kept uint8 so that
little crosses process boundaries) -> optional `.mp_prefetch(...)` -> `.map(_CollateTrainBatch)` (int32,
ignore label -> -100). `TrainBatches` wraps it so that `get_state()` is the portable cursor
`{"epoch", "offset", "batches", ...}`, restorable with any `worker_count`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Iterator

from absl import flags
import grain
import numpy as np

from hrm_jax.data import format as data_format
from hrm_jax.model.losses import IGNORE_LABEL_ID  # What labels equal to ignore_label_id become.
_STATE_VERSION = 1

PathLike = str | os.PathLike


def _ensure_absl_flags_parsed() -> None:
  # grain 0.2.18's mp_prefetch reads an absl flag and fails unless flags were parsed (google/grain
  # issue 1355); programs without absl.app (tests, notebooks) would crash. Defaults are kept.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def steps_per_epoch(metadata: data_format.DatasetMetadata, global_batch_size: int) -> float:
  """Optimizer steps per epoch as the original counts them (§4.3): groups * mean examples / batch."""
  return metadata.total_groups * metadata.mean_puzzle_examples / global_batch_size


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size={global_batch_size} must be >= 1.")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count="
                     f"{process_count}; pick a global batch size that is a multiple of it.")
  return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class _PooledIndex:
  """All sets of a split concatenated into one index space (examples, puzzles, groups)."""

  set_names: tuple[str, ...]
  example_offsets: np.ndarray  # [num_sets + 1] first pooled example index of each set.
  puzzle_offsets: np.ndarray  # [num_sets + 1] first pooled puzzle index of each set.
  puzzle_starts: np.ndarray  # [N_puzzles] pooled index of each puzzle's first example.
  puzzle_sizes: np.ndarray  # [N_puzzles] examples per puzzle.
  group_starts: np.ndarray  # [N_groups] pooled index of each group's first puzzle.
  group_sizes: np.ndarray  # [N_groups] puzzles per group.

  @classmethod
  def from_split(cls, split: data_format.PuzzleSplit) -> _PooledIndex:
    example_offsets, puzzle_offsets = [0], [0]
    puzzle_starts, puzzle_sizes, group_starts, group_sizes = [], [], [], []
    for name in split.metadata.sets:
      arrays = split.sets[name]
      pi = np.asarray(arrays["puzzle_indices"], dtype=np.int64)
      gi = np.asarray(arrays["group_indices"], dtype=np.int64)
      puzzle_starts.append(pi[:-1] + example_offsets[-1])
      puzzle_sizes.append(np.diff(pi))
      group_starts.append(gi[:-1] + puzzle_offsets[-1])
      group_sizes.append(np.diff(gi))
      example_offsets.append(example_offsets[-1] + int(arrays["inputs"].shape[0]))
      puzzle_offsets.append(puzzle_offsets[-1] + len(pi) - 1)
    return cls(set_names=tuple(split.metadata.sets),
               example_offsets=np.asarray(example_offsets, dtype=np.int64),
               puzzle_offsets=np.asarray(puzzle_offsets, dtype=np.int64),
               puzzle_starts=np.concatenate(puzzle_starts), puzzle_sizes=np.concatenate(puzzle_sizes),
               group_starts=np.concatenate(group_starts), group_sizes=np.concatenate(group_sizes))


# ------------------------------------------------------------------------------------------------
# Training: batch plans
# ------------------------------------------------------------------------------------------------


class _TrainPlanner:
  """Computes the example indices of each global batch from a cursor (epoch, visit offset)."""

  def __init__(self, index: _PooledIndex, global_batch_size: int, seed: int,
               num_epochs: int | None):
    self._index = index
    self._batch_size = global_batch_size
    self._seed = seed
    self._num_epochs = num_epochs
    # Empty groups could not supply a puzzle; they are left out of every epoch.
    self._groups = np.flatnonzero(index.group_sizes > 0)
    self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

  @property
  def num_visits(self) -> int:
    return int(self._groups.size)

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(puzzle_V, size_V, cumulative size_V) of the visits of `epoch` in visiting order."""
    if epoch not in self._cache:
      rng = np.random.default_rng(np.random.SeedSequence(self._seed, spawn_key=(0, epoch)))
      groups_V = self._groups[rng.permutation(self._groups.size)]
      start_V = self._index.group_starts[groups_V]
      puzzle_V = rng.integers(start_V, start_V + self._index.group_sizes[groups_V])
      size_V = self._index.puzzle_sizes[puzzle_V]
      if len(self._cache) >= 2:  # Cursors only move forward; a batch straddling two epochs needs both.
        self._cache.pop(min(self._cache))
      self._cache[epoch] = (puzzle_V, size_V, np.cumsum(size_V))
    return self._cache[epoch]

  def next_plan(self, epoch: int, offset: int) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """Plan of the batch starting at visit `offset` of `epoch`.

    Returns (example_B, puzzle_B, next_epoch, next_offset), or None when a finite run cannot fill
    another full batch (the original drops that last short batch).
    """
    start_epoch, start_offset = epoch, offset
    puzzles, sizes = [], []
    need = self._batch_size
    while need > 0:
      if self._num_epochs is not None and epoch >= self._num_epochs:
        return None
      puzzle_V, size_V, cumsize_V = self._epoch(epoch)
      base = int(cumsize_V[offset - 1]) if offset else 0
      # First visit at which the batch is full; it may be only partly used.
      last = int(np.searchsorted(cumsize_V, base + need, side="left"))
      stop = min(last + 1, puzzle_V.size)
      puzzles.append(puzzle_V[offset:stop])
      sizes.append(size_V[offset:stop])
      need -= int(cumsize_V[stop - 1]) - base
      epoch, offset = (epoch + 1, 0) if stop >= puzzle_V.size else (epoch, stop)
    puzzle_P = np.concatenate(puzzles)
    size_P = np.concatenate(sizes)
    # Random order of the examples inside each puzzle (drawing `min(size, remaining)` of them without
    # replacement = taking a prefix of that order); only the last puzzle can be cut short.
    rng = np.random.default_rng(
        np.random.SeedSequence(self._seed, spawn_key=(1, start_epoch, start_offset)))
    total = int(size_P.sum())
    segment_X = np.repeat(np.arange(size_P.size), size_P)
    order_X = np.lexsort((rng.random(total), segment_X))
    first_X = np.repeat(np.cumsum(size_P) - size_P, size_P)
    within_X = order_X - first_X  # Position of each drawn example inside its own puzzle.
    example_X = np.repeat(self._index.puzzle_starts[puzzle_P], size_P) + within_X
    example_B = example_X[: self._batch_size]
    puzzle_B = np.repeat(puzzle_P, size_P)[: self._batch_size]
    return example_B, puzzle_B, epoch, offset


class _BatchPlanDataset(grain.IterDataset):
  """Source `IterDataset` of batch plans: (example_L, puzzle_L, next_epoch, next_offset).

  Each plan holds only this process's slice of the global batch. `set_slice` lets `mp_prefetch` give
  worker i the plans i, i + n, i + 2n, ... (every worker walks the cheap plan stream; only the
  expensive gathering is split).
  """

  def __init__(self, planner: _TrainPlanner, start: tuple[int, int], local_slice: slice):
    super().__init__()
    self._planner = planner
    self._start = start
    self._local_slice = local_slice
    self._worker_slice = slice(0, None, 1)

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    del sequential_slice  # A stream has no random access; interleaving keeps the order either way.
    self._worker_slice = sl

  def __iter__(self) -> _BatchPlanIterator:
    return _BatchPlanIterator(self._planner, self._start, self._local_slice, self._worker_slice)

  def __str__(self) -> str:
    return f"_BatchPlanDataset(start={self._start}, worker_slice={self._worker_slice})"


class _BatchPlanIterator(grain.DatasetIterator):
  """Walks the plan stream from a cursor; state = cursor plus the number of plans walked."""

  def __init__(self, planner: _TrainPlanner, start: tuple[int, int], local_slice: slice,
               worker_slice: slice):
    super().__init__()
    self._planner = planner
    self._local_slice = local_slice
    self._first = worker_slice.start or 0
    self._stride = worker_slice.step or 1
    self.set_state({"epoch": int(start[0]), "offset": int(start[1]), "index": 0})

  def __next__(self):
    # Skip the plans of other workers, then emit ours.
    while True:
      plan = self._planner.next_plan(self._epoch, self._offset)
      if plan is None:
        raise StopIteration
      example_B, puzzle_B, self._epoch, self._offset = plan
      index = self._index
      self._index += 1
      if index >= self._first and (index - self._first) % self._stride == 0:
        return (example_B[self._local_slice], puzzle_B[self._local_slice],
                (self._epoch, self._offset))

  def get_state(self) -> dict[str, int]:
    return {"epoch": self._epoch, "offset": self._offset, "index": self._index}

  def set_state(self, state: dict[str, int]) -> None:
    self._epoch, self._offset = int(state["epoch"]), int(state["offset"])
    self._index = int(state["index"])


# ------------------------------------------------------------------------------------------------
# Gathering rows (shared by training and evaluation)
# ------------------------------------------------------------------------------------------------


class _Rows:
  """Reads pooled examples/puzzles of a split; memory maps are opened lazily in each process."""

  def __init__(self, split_dir: pathlib.Path, metadata: data_format.DatasetMetadata,
               index: _PooledIndex):
    self._split_dir = split_dir
    self._metadata = metadata
    self._index = index
    self._arrays: dict[str, dict[str, np.ndarray]] | None = None

  def __getstate__(self):
    # Never pickle memory maps (that would copy the whole set into every worker).
    return {**self.__dict__, "_arrays": None}

  def _open(self) -> dict[str, dict[str, np.ndarray]]:
    if self._arrays is None:
      self._arrays = {
          name: {field: np.load(self._split_dir / f"{name}__{field}.npy", mmap_mode="r")
                 for field in ("inputs", "labels", "puzzle_identifiers")}
          for name in self._index.set_names}
    return self._arrays

  def gather(self, example_R: np.ndarray, puzzle_R: np.ndarray) -> dict[str, np.ndarray]:
    """Raw rows in their stored dtype (uint8 for the original's builders) and puzzle identifiers."""
    arrays = self._open()
    rows, seq_len = example_R.shape[0], self._metadata.seq_len
    token_dtype = np.result_type(*[arrays[name][field].dtype for name in self._index.set_names
                                   for field in ("inputs", "labels")])
    inputs_RxS = np.empty((rows, seq_len), token_dtype)
    labels_RxS = np.empty((rows, seq_len), token_dtype)
    identifiers_R = np.empty((rows,), np.int32)
    offsets = self._index.example_offsets
    set_R = np.searchsorted(offsets, example_R, side="right") - 1
    for s, name in enumerate(self._index.set_names):
      mask_R = set_R == s
      if not mask_R.any():
        continue
      local_R = example_R[mask_R] - offsets[s]
      inputs_RxS[mask_R] = arrays[name]["inputs"][local_R]
      labels_RxS[mask_R] = arrays[name]["labels"][local_R]
      identifiers_R[mask_R] = arrays[name]["puzzle_identifiers"][
          puzzle_R[mask_R] - self._index.puzzle_offsets[s]]
    return {"inputs": inputs_RxS, "labels": labels_RxS, "puzzle_identifiers": identifiers_R}

  def collate(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int32 everything, labels equal to ignore_label_id -> -100 (the original's `_collate_batch`)."""
    labels_RxS = raw["labels"].astype(np.int32)
    if self._metadata.ignore_label_id is not None:
      labels_RxS[raw["labels"] == self._metadata.ignore_label_id] = IGNORE_LABEL_ID
    return {"inputs": raw["inputs"].astype(np.int32), "labels": labels_RxS,
            "puzzle_identifiers": raw["puzzle_identifiers"].astype(np.int32, copy=False)}


class _GatherTrainBatch(grain.transforms.Map):
  """Plan -> raw rows; runs in the prefetch workers, whose output stays compact (uint8) for IPC."""

  def __init__(self, rows: _Rows):
    self._rows = rows

  def map(self, plan):
    example_L, puzzle_L, cursor = plan
    return self._rows.gather(example_L, puzzle_L), cursor


class _CollateTrainBatch(grain.transforms.Map):
  """Raw rows -> model batch; runs in the consuming process (and returns plain, owned arrays)."""

  def __init__(self, rows: _Rows):
    self._rows = rows

  def map(self, element):
    raw, cursor = element
    return self._rows.collate(raw), cursor


# ------------------------------------------------------------------------------------------------
# Training: the checkpointable dataset and iterator
# ------------------------------------------------------------------------------------------------


class TrainBatches(grain.IterDataset):
  """Infinite (or `num_epochs`-long) stream of this process's slices of the global training batches.

  Iterating gives a `TrainIterator`; its state is the cursor of the next global batch, which does not
  depend on `worker_count`, so a state saved with one worker count restores with any other.
  """

  def __init__(self, planner: _TrainPlanner, rows: _Rows, local_slice: slice, seed: int,
               worker_count: int, worker_buffer_size: int):
    super().__init__()
    self._planner = planner
    self._rows = rows
    self._local_slice = local_slice
    self._seed = seed
    self._worker_count = worker_count
    self._worker_buffer_size = worker_buffer_size

  def _pipeline(self, epoch: int, offset: int) -> grain.IterDataset:
    ds = _BatchPlanDataset(self._planner, (epoch, offset), self._local_slice)
    ds = ds.map(_GatherTrainBatch(self._rows))
    if self._worker_count > 0:
      _ensure_absl_flags_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._worker_count, per_worker_buffer_size=self._worker_buffer_size))
    return ds.map(_CollateTrainBatch(self._rows))

  def __iter__(self) -> TrainIterator:
    return TrainIterator(self)

  def __str__(self) -> str:
    return f"TrainBatches(seed={self._seed}, worker_count={self._worker_count})"


class TrainIterator(grain.DatasetIterator):
  """Yields batch dicts; `get_state()` is JSON-serialisable and restores the exact next batch."""

  def __init__(self, dataset: TrainBatches):
    super().__init__()
    self._dataset = dataset
    self._inner: grain.DatasetIterator | None = None
    self._epoch = self._offset = self._batches = 0

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    if self._inner is None:
      # Built lazily so that set_state() right after creation starts workers only once.
      self._inner = iter(self._dataset._pipeline(self._epoch, self._offset))
    batch, (self._epoch, self._offset) = next(self._inner)
    self._batches += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"version": _STATE_VERSION, "seed": self._dataset._seed,
            "num_groups": self._dataset._planner.num_visits,
            "epoch": int(self._epoch), "offset": int(self._offset), "batches": self._batches}

  def set_state(self, state: dict[str, Any]) -> None:
    expected = {"version": _STATE_VERSION, "seed": self._dataset._seed,
                "num_groups": self._dataset._planner.num_visits}
    for key, want in expected.items():
      if state.get(key) != want:
        raise ValueError(
            f"Cannot restore the training data iterator: saved {key}={state.get(key)!r} but this "
            f"pipeline has {key}={want!r}. Resume with the same dataset and data seed, or start a "
            "fresh run.")
    epoch, offset = int(state["epoch"]), int(state["offset"])
    if epoch < 0 or not 0 <= offset < max(1, expected["num_groups"]):
      raise ValueError(f"Corrupt training iterator state {state}: epoch/offset out of range.")
    self._close_inner()
    self._epoch, self._offset, self._batches = epoch, offset, int(state["batches"])

  def _close_inner(self) -> None:
    if self._inner is not None:
      self._inner.close()
      self._inner = None

  def close(self) -> None:
    self._close_inner()
    super().close()

  def __str__(self) -> str:
    return f"TrainIterator(epoch={self._epoch}, offset={self._offset}, batches={self._batches})"


def make_train_dataset(data_dir: PathLike, *, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1,
                       num_epochs: int | None = None, worker_count: int = 0,
                       worker_buffer_size: int = 2, split: str = "train") -> TrainBatches:
  """The training stream as a grain `IterDataset` (see `make_train_iterator`)."""
  local_batch_size = _local_batch_size(global_batch_size, process_index, process_count)
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative integer.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs={num_epochs} must be >= 1, or None for an endless stream.")
  if worker_count < 0 or worker_buffer_size < 1:
    raise ValueError(f"worker_count={worker_count} must be >= 0 and worker_buffer_size="
                     f"{worker_buffer_size} >= 1.")
  split_data = data_format.load_split(data_dir, split, mmap=True)
  index = _PooledIndex.from_split(split_data)
  if int(index.example_offsets[-1]) == 0:
    raise data_format.DatasetError(f"{split_data.path} holds no examples; nothing to train on. "
                                   "Rebuild the dataset.")
  planner = _TrainPlanner(index, global_batch_size, int(seed), num_epochs)
  rows = _Rows(split_data.path, split_data.metadata, index)
  local_slice = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)
  return TrainBatches(planner, rows, local_slice, int(seed), worker_count, worker_buffer_size)


def make_train_iterator(data_dir: PathLike, *, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        num_epochs: int | None = None, worker_count: int = 0,
                        worker_buffer_size: int = 2, split: str = "train") -> TrainIterator:
  """Iterator over this process's slices of the global training batches.

  Yields {"inputs": int32 [L, S], "labels": int32 [L, S] (ignore label -> -100),
  "puzzle_identifiers": int32 [L]} with L = global_batch_size // process_count, rows
  [process_index * L, (process_index + 1) * L) of the global batch. Endless when `num_epochs` is None;
  otherwise stops before the first batch that `num_epochs` epochs cannot fill. `worker_count > 0`
  gathers batches in that many grain worker processes (same batches, same states).
  """
  return iter(make_train_dataset(
      data_dir, global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count, num_epochs=num_epochs, worker_count=worker_count,
      worker_buffer_size=worker_buffer_size, split=split))


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


class _GatherEvalBatch(grain.transforms.Map):
  """(set number, start, stop) of a global batch -> this process's padded slice with a `valid` mask."""

  def __init__(self, rows: _Rows, index: _PooledIndex, selected: list[np.ndarray],
               global_batch_size: int, local_slice: slice):
    self._rows = rows
    self._selected = selected  # Per set: pooled example indices evaluated, in order.
    self._puzzle_starts = index.puzzle_starts
    self._global_batch_size = global_batch_size
    self._local_slice = local_slice

  def map(self, spec: tuple[int, int, int]) -> dict[str, np.ndarray]:
    set_number, start, stop = spec
    example_G = np.full((self._global_batch_size,), -1, np.int64)
    example_G[: stop - start] = self._selected[set_number][start:stop]
    example_L = example_G[self._local_slice]
    valid_L = example_L >= 0
    metadata = self._rows._metadata
    num_rows = example_L.shape[0]
    batch = {
        "inputs": np.full((num_rows, metadata.seq_len), metadata.pad_id, np.int32),
        "labels": np.full((num_rows, metadata.seq_len), IGNORE_LABEL_ID, np.int32),
        "puzzle_identifiers": np.full((num_rows,), metadata.blank_identifier_id, np.int32),
        "valid": valid_L,
    }
    if valid_L.any():
      example_V = example_L[valid_L]
      puzzle_V = np.searchsorted(self._puzzle_starts, example_V, side="right") - 1
      rows = self._rows.collate(self._rows.gather(example_V, puzzle_V))
      for key, value in rows.items():
        batch[key][valid_L] = value
    return batch


def make_eval_batches(data_dir: PathLike, *, global_batch_size: int, split: str = "test",
                      subset_size: int | None = None, subset_seed: int = 0,
                      process_index: int = 0, process_count: int = 1,
                      num_threads: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Evaluation batches: every example once, in order, set by set (a batch never mixes sets).

  With `subset_size`, a fixed random subset of that many examples (drawn once from `subset_seed`,
  kept in dataset order). Each global batch's rows past the end are padding (inputs=pad_id,
  labels=-100, puzzle_identifiers=blank_identifier_id, valid=False); each process gets its slice, so
  all processes see the same number of batches. `num_threads` background threads prefetch batches.
  """
  local_batch_size = _local_batch_size(global_batch_size, process_index, process_count)
  split_data = data_format.load_split(data_dir, split, mmap=True)
  index = _PooledIndex.from_split(split_data)
  total = int(index.example_offsets[-1])
  pooled = np.arange(total, dtype=np.int64)
  if subset_size is not None:
    if not 0 < subset_size:
      raise ValueError(f"subset_size={subset_size} must be >= 1 (or None for the whole split).")
    if subset_size < total:
      rng = np.random.default_rng(np.random.SeedSequence(subset_seed, spawn_key=(2,)))
      pooled = np.sort(rng.choice(total, size=subset_size, replace=False))
  selected, specs = [], []
  for set_number in range(len(index.set_names)):
    lo, hi = index.example_offsets[set_number], index.example_offsets[set_number + 1]
    chosen = pooled[(pooled >= lo) & (pooled < hi)]
    selected.append(chosen)
    specs += [(set_number, start, min(start + global_batch_size, chosen.size))
              for start in range(0, chosen.size, global_batch_size)]
  rows = _Rows(split_data.path, split_data.metadata, index)
  local_slice = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)
  ds = grain.MapDataset.source(specs).map(
      _GatherEvalBatch(rows, index, selected, global_batch_size, local_slice))
  if num_threads > 0:
    return iter(ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)))
  return (ds[i] for i in range(len(ds)))
