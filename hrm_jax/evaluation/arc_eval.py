"""ARC pass@k as the original's `arc_eval.ipynb` computes it, from saved evaluation predictions.

  python -m hrm_jax.evaluation.arc_eval workdirs/arc1/predictions/step_N.npz --data-dir data/arc-aug-1000

Every augmented copy of an evaluation task's test input votes for an answer: its predicted grid is cropped to
the largest top-left colour rectangle, mapped back through the inverse dihedral transform and the inverse colour
permutation, and hashed. Answers are ranked by vote count, ties broken by the mean sigmoid(q_halt) of their
voters. A test input is solved at k when its true output is among the top k answers; a task counts as solved
only when all of its test inputs are. The ARC leaderboard number is pass@2.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import pathlib
import sys
from typing import Sequence

import numpy as np

from hrm_jax.data import arc
from hrm_jax.data import format as data_format

DEFAULT_KS = (1, 2, 10, 100, 1000)


def _hash(grid: np.ndarray) -> str:
  grid = np.ascontiguousarray(grid, dtype=np.uint8)
  return hashlib.sha256(np.asarray(grid.shape, np.int64).tobytes() + grid.tobytes()).hexdigest()


@dataclasses.dataclass
class TestInput:
  """One test input of an evaluation task: its true output (if an un-augmented copy was evaluated) and the
  de-augmented answers of all its copies, best first (most votes, ties broken by mean sigmoid(q_halt))."""

  task: str
  truth: str | None
  ranked: list[tuple[str, np.ndarray, int, float]]  # (hash, grid, votes, mean q)
  order: int  # first row of the un-augmented copy (else of any copy): the task file's order of test inputs


def vote(predictions: dict[str, np.ndarray], identifiers: Sequence[str]) -> list[TestInput]:
  """Groups rows by (task, de-augmented input) and ranks their de-augmented predicted grids."""
  ids = np.asarray(predictions["puzzle_identifiers"])
  q_prob = 1.0 / (1.0 + np.exp(-np.asarray(predictions["q_halt_logits"], np.float64)))
  inputs: dict[tuple[str, str], TestInput] = {}
  answers: dict[tuple[str, str], dict[str, list]] = collections.defaultdict(dict)
  for row in np.flatnonzero(ids != 0):  # blank identifier: padding rows
    name = identifiers[int(ids[row])]
    base, _, _ = arc.parse_augmentation(name)
    input_grid = arc.invert_augmentation(arc.crop_grid(predictions["inputs"][row]), name)
    key = (base, _hash(input_grid))
    entry = inputs.setdefault(key, TestInput(base, None, [], int(row)))
    if name == base:  # the un-augmented copy carries the ground truth
      entry.truth = _hash(arc.crop_grid(predictions["labels"][row]))
      entry.order = int(row)
    grid = arc.invert_augmentation(arc.crop_grid(predictions["preds"][row]), name)
    slot = answers[key].setdefault(_hash(grid), [grid, 0, 0.0])
    slot[1] += 1
    slot[2] += q_prob[row]
  for key, entry in inputs.items():
    ranked = sorted(answers[key].items(), key=lambda item: (item[1][1], item[1][2] / item[1][1]), reverse=True)
    entry.ranked = [(h, grid, count, q_sum / count) for h, (grid, count, q_sum) in ranked]
  return list(inputs.values())


def arc_pass_at_k(predictions: dict[str, np.ndarray], identifiers: Sequence[str],
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """pass@k over tasks from predictions holding inputs, labels, preds, q_halt_logits, puzzle_identifiers."""
  # Test inputs without an un-augmented copy (e.g. a subset evaluation) have no ground truth and are skipped.
  scored = [t for t in vote(predictions, identifiers) if t.truth is not None]
  tasks = sorted({t.task for t in scored})
  result: dict[str, float] = {"arc_tasks": float(len(tasks)), "arc_test_inputs": float(len(scored))}
  for k in ks:
    per_task = collections.defaultdict(list)
    for t in scored:
      per_task[t.task].append(t.truth in [h for h, *_ in t.ranked[:k]])
    result[f"arc_pass@{k}"] = (sum(all(v) for v in per_task.values()) / len(tasks)) if tasks else 0.0
  return result


def submission(predictions: dict[str, np.ndarray], identifiers: Sequence[str]) -> dict[str, list[dict]]:
  """The Kaggle ARC Prize layout: {task: [{"attempt_1": grid, "attempt_2": grid} per test input, in order]}.

  Attempts are the two best-voted answers; with a single distinct answer both attempts are that answer.
  An empty (0x0) predicted grid is not a valid ARC grid and is written as [[0]].
  """
  as_list = lambda grid: grid.astype(int).tolist() if grid.size else [[0]]
  out: dict[str, list[dict]] = {}
  for t in sorted(vote(predictions, identifiers), key=lambda t: (t.task, t.order)):
    grids = [g for _, g, _, _ in t.ranked[:2]]
    grids += grids[-1:] * (2 - len(grids))
    out.setdefault(t.task, []).append({"attempt_1": as_list(grids[0]), "attempt_2": as_list(grids[1])})
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("predictions", type=pathlib.Path, help="predictions/step_N.npz written by an evaluation")
  parser.add_argument("--data-dir", type=pathlib.Path, required=True, help="the ARC dataset (identifiers.json)")
  args = parser.parse_args(argv)
  if not args.predictions.is_file():
    print(f"error: {args.predictions} does not exist; run training with --config.eval.save_predictions=true "
          "(ARC configs do) to write predictions.", file=sys.stderr)
    return 2
  try:
    identifiers = data_format.load_identifiers(args.data_dir)
  except data_format.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with np.load(args.predictions) as npz:
    predictions = {k: npz[k] for k in npz.files}
  for name, value in arc_pass_at_k(predictions, identifiers).items():
    print(f"{name:16s} {value:.4f}" if name.startswith("arc_pass") else f"{name:16s} {int(value)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
