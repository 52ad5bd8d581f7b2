"""A tiny dataset in the original's format for the training tests (not a test module itself).

Puzzles with several examples each and their own puzzle identifiers (so the puzzle table is trained),
grouped two puzzles per group; the test split has two sets of sizes that leave padded last batches.
"""

from __future__ import annotations

import pathlib

import numpy as np

from hrm_jax.data import format as data_format

VOCAB_SIZE = 8  # 0 = pad (and ignored label), tokens 1..7
SEQ_LEN = 8
NUM_PUZZLES = 8  # identifiers 1..8; 0 is the blank identifier
EXAMPLES_PER_PUZZLE = 6
TEST_SET_SIZES = {"a": 37, "b": 29}


def _metadata(sets: list[str], total_groups: int, mean_examples: float) -> data_format.DatasetMetadata:
  return data_format.DatasetMetadata(
      pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN,
      num_puzzle_identifiers=NUM_PUZZLES + 1, total_groups=total_groups, mean_puzzle_examples=mean_examples,
      sets=sets)


def make_set(inputs_NxS: np.ndarray, labels_NxS: np.ndarray, puzzle_ids_P: np.ndarray,
             puzzle_sizes_P: np.ndarray, group_sizes_G: np.ndarray) -> dict[str, np.ndarray]:
  """One set's five arrays; puzzle p owns the next puzzle_sizes_P[p] examples, group g the next puzzles."""
  return {
      "inputs": np.asarray(inputs_NxS, np.uint8), "labels": np.asarray(labels_NxS, np.uint8),
      "puzzle_identifiers": np.asarray(puzzle_ids_P, np.int32),
      "puzzle_indices": np.concatenate([[0], np.cumsum(puzzle_sizes_P)]).astype(np.int32),
      "group_indices": np.concatenate([[0], np.cumsum(group_sizes_G)]).astype(np.int32),
  }


def _labels_for(inputs_NxS: np.ndarray, puzzle_id_N: np.ndarray) -> np.ndarray:
  """A rule the model can learn: shift every token by the puzzle's identifier (cyclically over 1..7)."""
  return (inputs_NxS - 1 + puzzle_id_N[:, None]) % (VOCAB_SIZE - 1) + 1


def eval_split_inputs(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per test set: (inputs [N, S], puzzle id of each example [N]); one example per puzzle."""
  rng = np.random.default_rng(seed + 1)
  return {name: (rng.integers(1, VOCAB_SIZE, (size, SEQ_LEN)), rng.integers(1, NUM_PUZZLES + 1, size))
          for name, size in TEST_SET_SIZES.items()}


def write_eval_split(root: pathlib.Path, labels_by_set: dict[str, np.ndarray] | None = None,
                     seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Writes root/test (sets 'a' and 'b'); labels default to the rule. Returns the arrays written."""
  sets = {}
  for name, (inputs, ids) in eval_split_inputs(seed).items():
    labels = _labels_for(inputs, ids) if labels_by_set is None else labels_by_set[name]
    sets[name] = make_set(inputs, labels, ids, np.ones(len(ids), np.int64), np.ones(len(ids), np.int64))
  mean = 1.0
  data_format.write_split(root, "test", _metadata(list(sets), sum(TEST_SET_SIZES.values()), mean), sets)
  return sets


def write_tiny_dataset(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """Writes root/{train,test}/ and root/identifiers.json; returns root."""
  rng = np.random.default_rng(seed)
  num_train = NUM_PUZZLES * EXAMPLES_PER_PUZZLE
  ids_P = np.arange(1, NUM_PUZZLES + 1)
  inputs = rng.integers(1, VOCAB_SIZE, (num_train, SEQ_LEN))
  labels = _labels_for(inputs, np.repeat(ids_P, EXAMPLES_PER_PUZZLE))
  train = make_set(inputs, labels, ids_P, np.full(NUM_PUZZLES, EXAMPLES_PER_PUZZLE),
                   np.full(NUM_PUZZLES // 2, 2))
  data_format.write_split(root, "train", _metadata(["all"], NUM_PUZZLES // 2, float(EXAMPLES_PER_PUZZLE)),
                          {"all": train})
  write_eval_split(root, seed=seed)
  data_format.write_identifiers(root, [data_format.BLANK_IDENTIFIER]
                                + [f"puzzle{i}" for i in range(1, NUM_PUZZLES + 1)])
  return root
