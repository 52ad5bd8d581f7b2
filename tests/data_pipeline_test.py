"""Tests of hrm_jax.data.pipeline on tiny synthetic datasets.

Every example's inputs spell its own index (three base-10 digits), so a batch can be traced back to the
examples, puzzles and groups it was drawn from.
"""

import json

import grain
import numpy as np
import pytest

from hrm_jax.data import format as data_format
from hrm_jax.data import pipeline

SEQ_LEN = 4
VOCAB = 10


def _write(root, group_puzzle_sizes, sets=("all",), seed=0, splits=("train", "test")):
  """Writes a dataset; group_puzzle_sizes[g] = example counts of group g's puzzles (per set)."""
  rng = np.random.default_rng(seed)
  per_set, offset, puzzle_id = {}, 0, 1
  for name in sets:
    sizes = [s for group in group_puzzle_sizes for s in group]
    n = sum(sizes)
    index = np.arange(offset, offset + n)
    inputs = np.stack([index // 100, index // 10 % 10, index % 10, np.full(n, 9)], 1)
    per_set[name] = {
        "inputs": inputs.astype(np.uint8),
        "labels": rng.integers(0, VOCAB, (n, SEQ_LEN)).astype(np.uint8),
        "puzzle_identifiers": np.arange(puzzle_id, puzzle_id + len(sizes), dtype=np.int32),
        "puzzle_indices": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32),
        "group_indices": np.concatenate(
            [[0], np.cumsum([len(g) for g in group_puzzle_sizes])]).astype(np.int32),
    }
    offset += n
    puzzle_id += len(sizes)
  metadata = data_format.DatasetMetadata(
      pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=VOCAB, seq_len=SEQ_LEN,
      num_puzzle_identifiers=puzzle_id, total_groups=len(group_puzzle_sizes) * len(sets),
      mean_puzzle_examples=offset / (puzzle_id - 1), sets=list(sets))
  for split in splits:
    data_format.write_split(root, split, metadata, per_set)
  return per_set


# 9 groups of 1-3 puzzles with 2-4 examples each (ARC-shaped), and 13 one-example groups (Sudoku-shaped).
ARC_GROUPS = [[3, 2], [4], [2, 3, 4], [2], [3, 3], [4, 2, 2], [2], [3], [2, 4]]
SUDOKU_GROUPS = [[1]] * 13


@pytest.fixture(scope="module")
def arc_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("arc")
  _write(root, ARC_GROUPS)
  return root


@pytest.fixture(scope="module")
def sudoku_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("sudoku")
  _write(root, SUDOKU_GROUPS)
  return root


def _example_ids(batch):
  inputs = batch["inputs"].astype(np.int64)
  return inputs[:, 0] * 100 + inputs[:, 1] * 10 + inputs[:, 2]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _puzzle_tables(groups):
  sizes = [s for g in groups for s in g]
  starts = np.concatenate([[0], np.cumsum(sizes)])
  group_of_puzzle = [g for g, group in enumerate(groups) for _ in group]
  return np.asarray(sizes), starts, group_of_puzzle


def _visits(batches, groups):
  """Splits rows into visits [(group, puzzle, examples, truncated)], checking per-visit rules."""
  sizes, starts, group_of_puzzle = _puzzle_tables(groups)
  visits = []
  for batch in batches:
    examples = _example_ids(batch)
    puzzles = batch["puzzle_identifiers"] - 1  # Identifiers are puzzle index + 1 here.
    row = 0
    while row < len(examples):
      p = int(puzzles[row])
      # A visit is the full puzzle, or a prefix cut short by the end of the batch.
      end = row
      while end < len(examples) and end - row < sizes[p] and puzzles[end] == p:
        end += 1
      chosen = examples[row:end]
      assert np.all((chosen >= starts[p]) & (chosen < starts[p + 1])), "example outside its puzzle"
      assert len(set(chosen.tolist())) == len(chosen), "examples drawn with replacement"
      truncated = end - row < sizes[p]
      assert not truncated or end == len(examples), "only the last puzzle of a batch may be cut"
      visits.append((group_of_puzzle[p], p, chosen, truncated))
      row = end
  return visits


def _assert_epochs_are_permutations(group_sequence, num_groups):
  for start in range(0, len(group_sequence), num_groups):
    epoch = group_sequence[start:start + num_groups]
    assert len(set(epoch)) == len(epoch), f"a group repeats within the epoch at visit {start}"
    if len(epoch) == num_groups:
      assert sorted(epoch) == list(range(num_groups))


def test_steps_per_epoch():
  metadata = data_format.DatasetMetadata(
      pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
      num_puzzle_identifiers=1, total_groups=1000, mean_puzzle_examples=1.0, sets=["all"])
  assert pipeline.steps_per_epoch(metadata, 768) == pytest.approx(1000 / 768)
  # The original's Sudoku-1k step count for 2000 epochs (reference §4.3).
  assert int(2000 * pipeline.steps_per_epoch(metadata, 768)) == 2604


def test_train_batch_contents(arc_dir):
  split = data_format.load_split(arc_dir, "train")
  raw = split.sets["all"]
  batch = next(pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=0))
  assert batch.keys() == {"inputs", "labels", "puzzle_identifiers"}
  assert batch["inputs"].shape == (8, SEQ_LEN) and batch["inputs"].dtype == np.int32
  assert batch["labels"].shape == (8, SEQ_LEN) and batch["labels"].dtype == np.int32
  assert batch["puzzle_identifiers"].shape == (8,)
  assert batch["puzzle_identifiers"].dtype == np.int32
  examples = _example_ids(batch)
  np.testing.assert_array_equal(batch["inputs"], raw["inputs"][examples])
  raw_labels = raw["labels"][examples].astype(np.int32)
  expected_labels = np.where(raw_labels == 0, -100, raw_labels)
  np.testing.assert_array_equal(batch["labels"], expected_labels)
  assert (batch["labels"] == -100).any()
  puzzles = np.searchsorted(raw["puzzle_indices"], examples, side="right") - 1
  np.testing.assert_array_equal(batch["puzzle_identifiers"], raw["puzzle_identifiers"][puzzles])


def test_same_seed_same_batches_different_seed_different(arc_dir):
  make = lambda seed: _take(pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=seed), 6)
  _assert_batches_equal(make(3), make(3))
  other = make(4)
  assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(make(3), other))


def test_sudoku_epochs_are_group_permutations_across_batch_boundaries(sudoku_dir):
  # 13 groups, batches of 5: batches straddle epochs; 4 epochs = 52 visits -> 10 full batches.
  batches = list(pipeline.make_train_iterator(sudoku_dir, global_batch_size=5, seed=1,
                                              num_epochs=4))
  assert len(batches) == 10
  assert all(b["inputs"].shape[0] == 5 for b in batches)
  groups = np.concatenate([_example_ids(b) for b in batches]).tolist()
  _assert_epochs_are_permutations(groups, 13)
  assert groups[:13] != groups[13:26]  # Each epoch is an independent permutation.


def test_arc_group_sampling_rules(arc_dir):
  num_epochs, batch_size = 6, 7
  batches = list(pipeline.make_train_iterator(arc_dir, global_batch_size=batch_size, seed=2,
                                              num_epochs=num_epochs))
  assert all(b["inputs"].shape == (batch_size, SEQ_LEN) for b in batches)
  visits = _visits(batches, ARC_GROUPS)
  assert any(v[3] for v in visits), "precondition: some puzzle was cut at a batch end"
  groups = [v[0] for v in visits]
  _assert_epochs_are_permutations(groups, len(ARC_GROUPS))
  # Only the visits that could not fill a final batch are missing (the short batch is dropped).
  assert num_epochs * len(ARC_GROUPS) - batch_size <= len(visits) <= num_epochs * len(ARC_GROUPS)
  # Over the epochs, every group with several puzzles had more than one of them chosen.
  for g, group in enumerate(ARC_GROUPS):
    if len(group) > 1:
      assert len({v[1] for v in visits if v[0] == g}) > 1, f"group {g} always gave one puzzle"


def test_puzzle_choice_is_uniform(tmp_path):
  _write(tmp_path, [[1, 1, 1, 1]], splits=("train",))
  batch = next(pipeline.make_train_iterator(tmp_path, global_batch_size=4000, seed=5))
  counts = np.bincount(batch["puzzle_identifiers"] - 1, minlength=4)
  assert counts.sum() == 4000 and np.all(np.abs(counts - 1000) < 120), counts


def test_endless_stream_keeps_epoch_structure(sudoku_dir):
  iterator = pipeline.make_train_iterator(sudoku_dir, global_batch_size=5, seed=7)
  batches = _take(iterator, 40)  # ~15 epochs; a finite stream would have stopped.
  _assert_epochs_are_permutations(np.concatenate([_example_ids(b) for b in batches]).tolist(), 13)
  assert iterator.get_state()["epoch"] == 40 * 5 // 13


@pytest.mark.parametrize("k", [0, 1, 4, 9])
def test_restored_state_continues_with_the_next_batch(arc_dir, k):
  make = lambda: pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=11)
  reference = _take(make(), 14)
  iterator = make()
  _take(iterator, k)
  state = json.loads(json.dumps(iterator.get_state()))  # Must survive a JSON checkpoint.
  restored = make()
  restored.set_state(state)
  assert restored.get_state() == state
  _assert_batches_equal(reference[k:], _take(restored, 14 - k))


def test_grain_checkpoint_helper(arc_dir):
  dataset = pipeline.make_train_dataset(arc_dir, global_batch_size=6, seed=3, num_epochs=2)
  grain.experimental.assert_equal_output_after_checkpoint(dataset)


def test_state_from_another_configuration_is_rejected(arc_dir, sudoku_dir):
  state = pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=1).get_state()
  with pytest.raises(ValueError, match="saved seed=1 but this pipeline has seed=2"):
    pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=2).set_state(state)
  with pytest.raises(ValueError, match="saved num_groups=9 but this pipeline has num_groups=13"):
    pipeline.make_train_iterator(sudoku_dir, global_batch_size=8, seed=1).set_state(state)


def test_worker_processes_give_the_same_batches_and_portable_states(arc_dir):
  make = lambda workers: pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=5,
                                                      worker_count=workers)
  reference_iterator = make(0)
  reference = _take(reference_iterator, 10)
  serial = make(0)
  _take(serial, 3)
  parallel = make(2)
  try:
    parallel.set_state(serial.get_state())  # A state saved without workers restores with two.
    _assert_batches_equal(reference[3:7], _take(parallel, 4))
    state = json.loads(json.dumps(parallel.get_state()))
  finally:
    parallel.close()
  resumed = make(0)
  resumed.set_state(state)  # And back.
  _assert_batches_equal(reference[7:], _take(resumed, 3))


def test_process_slices_concatenate_to_the_global_batch(arc_dir):
  global_batches = _take(pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=9), 5)
  slices = [_take(pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=9,
                                               process_index=p, process_count=2), 5)
            for p in range(2)]
  for i, batch in enumerate(global_batches):
    assert slices[0][i]["inputs"].shape == (4, SEQ_LEN)
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([slices[0][i][key], slices[1][i][key]]))

  global_eval = list(pipeline.make_eval_batches(arc_dir, global_batch_size=8))
  eval_slices = [list(pipeline.make_eval_batches(arc_dir, global_batch_size=8, process_index=p,
                                                 process_count=2)) for p in range(2)]
  assert len(eval_slices[0]) == len(eval_slices[1]) == len(global_eval)
  for i, batch in enumerate(global_eval):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([eval_slices[0][i][key], eval_slices[1][i][key]]))


def test_bad_arguments(arc_dir, tmp_path):
  with pytest.raises(ValueError, match="not divisible by process_count=3"):
    pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=0, process_count=3)
  with pytest.raises(ValueError, match="process_index=2 must lie in"):
    pipeline.make_eval_batches(arc_dir, global_batch_size=8, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="seed=-1"):
    pipeline.make_train_iterator(arc_dir, global_batch_size=8, seed=-1)
  with pytest.raises(data_format.DatasetError, match="does not exist"):
    pipeline.make_train_iterator(tmp_path / "missing", global_batch_size=8, seed=0)


@pytest.mark.parametrize("num_threads", [0, 1])
def test_eval_covers_every_example_once_with_masked_padding(arc_dir, num_threads):
  raw = data_format.load_split(arc_dir, "test").sets["all"]
  num_examples = raw["inputs"].shape[0]
  batches = list(pipeline.make_eval_batches(arc_dir, global_batch_size=8, num_threads=num_threads))
  assert len(batches) == -(-num_examples // 8)
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.dtype == np.bool_ and valid.sum() == num_examples and valid[:num_examples].all()
  examples = np.concatenate([_example_ids(b)[b["valid"]] for b in batches])
  np.testing.assert_array_equal(examples, np.arange(num_examples))  # In order, each once.
  last = batches[-1]
  pad = ~last["valid"]
  assert pad.any()
  assert np.all(last["inputs"][pad] == 0) and np.all(last["labels"][pad] == -100)
  assert np.all(last["puzzle_identifiers"][pad] == 0)
  labels = np.concatenate([b["labels"][b["valid"]] for b in batches])
  raw_labels = raw["labels"].astype(np.int32)
  np.testing.assert_array_equal(labels, np.where(raw_labels == 0, -100, raw_labels))
  identifiers = np.concatenate([b["puzzle_identifiers"][b["valid"]] for b in batches])
  puzzles = np.searchsorted(raw["puzzle_indices"], np.arange(num_examples), side="right") - 1
  np.testing.assert_array_equal(identifiers, raw["puzzle_identifiers"][puzzles])


def test_eval_subset_is_fixed(arc_dir):
  def subset(seed, size=10):
    batches = pipeline.make_eval_batches(arc_dir, global_batch_size=4, subset_size=size,
                                         subset_seed=seed)
    return np.concatenate([_example_ids(b)[b["valid"]] for b in batches])
  first = subset(0)
  assert len(first) == 10 and len(set(first.tolist())) == 10
  assert np.all(np.diff(first) > 0)  # Kept in dataset order.
  np.testing.assert_array_equal(first, subset(0))
  assert not np.array_equal(first, subset(1))
  np.testing.assert_array_equal(subset(0, size=1000), np.arange(sum(map(sum, ARC_GROUPS))))


def test_sets_are_pooled_for_training_and_kept_apart_for_eval(tmp_path):
  _write(tmp_path, [[2], [1, 3]], sets=("a", "b"))
  raw = data_format.load_split(tmp_path, "train")
  batch = next(pipeline.make_train_iterator(tmp_path, global_batch_size=40, seed=0))
  examples = _example_ids(batch)  # Pooled ids: set a holds 0..5, set b holds 6..11.
  assert (examples < 6).any() and (examples >= 6).any()
  for example, identifier in zip(examples, batch["puzzle_identifiers"]):
    name, local = ("a", example) if example < 6 else ("b", example - 6)
    pi = raw.sets[name]["puzzle_indices"]
    puzzle = np.searchsorted(pi, local, side="right") - 1
    assert identifier == raw.sets[name]["puzzle_identifiers"][puzzle]
  batches = list(pipeline.make_eval_batches(tmp_path, global_batch_size=4))
  # 6 examples per set -> 2 batches per set, the second of each half padding.
  assert [int(b["valid"].sum()) for b in batches] == [4, 2, 4, 2]
  np.testing.assert_array_equal(np.concatenate([_example_ids(b)[b["valid"]] for b in batches]),
                                np.arange(12))


def test_original_layout_dataset_feeds_both_pipelines(tmp_path):
  """A dataset written with plain numpy/json in the original's layout (uint8 tokens, int32 indices)."""
  arrays = {
      "inputs": np.array([[1, 2, 3, 1], [2, 2, 1, 1], [3, 1, 1, 2]], np.uint8),
      "labels": np.array([[0, 4, 5, 0], [5, 5, 0, 0], [4, 4, 4, 4]], np.uint8),
      "puzzle_identifiers": np.array([1, 2], np.int32),
      "puzzle_indices": np.array([0, 2, 3], np.int32),
      "group_indices": np.array([0, 1, 2], np.int32),
  }
  for split in ("train", "test"):
    (tmp_path / split).mkdir()
    for field, value in arrays.items():
      np.save(tmp_path / split / f"all__{field}.npy", value)
    (tmp_path / split / "dataset.json").write_text(json.dumps({
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 6,
        "seq_len": 4, "num_puzzle_identifiers": 3, "total_groups": 2,
        "mean_puzzle_examples": 1.5, "sets": ["all"]}))
  batch = next(pipeline.make_train_iterator(tmp_path, global_batch_size=2, seed=0))
  assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape == (2, 4)
  (eval_batch,) = pipeline.make_eval_batches(tmp_path, global_batch_size=4)
  np.testing.assert_array_equal(eval_batch["inputs"][:3], arrays["inputs"])
  np.testing.assert_array_equal(eval_batch["labels"][:3],
                                [[-100, 4, 5, -100], [5, 5, -100, -100], [4, 4, 4, 4]])
  np.testing.assert_array_equal(eval_batch["puzzle_identifiers"], [1, 1, 2, 0])
  np.testing.assert_array_equal(eval_batch["valid"], [True, True, True, False])
