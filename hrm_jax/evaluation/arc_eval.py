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


def arc_pass_at_k(predictions: dict[str, np.ndarray], identifiers: Sequence[str],
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """pass@k over tasks from predictions holding inputs, labels, preds, q_halt_logits, puzzle_identifiers."""
  ids = np.asarray(predictions["puzzle_identifiers"])
  keep = ids != 0  # blank identifier: padding rows
  truth: dict[tuple[str, str], str] = {}
  votes: dict[tuple[str, str], dict[str, list[float]]] = collections.defaultdict(dict)
  q_prob = 1.0 / (1.0 + np.exp(-np.asarray(predictions["q_halt_logits"], np.float64)))
  for row in np.flatnonzero(keep):
    name = identifiers[int(ids[row])]
    base, _, _ = arc.parse_augmentation(name)
    input_grid = arc.invert_augmentation(arc.crop_grid(predictions["inputs"][row]), name)
    key = (base, _hash(input_grid))
    if name == base:  # the un-augmented copy carries the ground truth
      truth[key] = _hash(arc.crop_grid(predictions["labels"][row]))
    answer = _hash(arc.invert_augmentation(arc.crop_grid(predictions["preds"][row]), name))
    entry = votes[key].setdefault(answer, [0, 0.0])
    entry[0] += 1
    entry[1] += q_prob[row]

  solved_inputs = {k: {} for k in ks}
  for key, answers in votes.items():
    if key not in truth:
      continue  # no un-augmented copy of this test input was evaluated (e.g. a subset evaluation)
    ranked = sorted(answers.items(), key=lambda item: (item[1][0], item[1][1] / item[1][0]), reverse=True)
    ranked_hashes = [h for h, _ in ranked]
    for k in ks:
      solved_inputs[k][key] = truth[key] in ranked_hashes[:k]
  tasks = sorted({base for base, _ in truth})
  result: dict[str, float] = {"arc_tasks": float(len(tasks)), "arc_test_inputs": float(len(truth))}
  for k in ks:
    per_task = collections.defaultdict(list)
    for (base, _), ok in solved_inputs[k].items():
      per_task[base].append(ok)
    result[f"arc_pass@{k}"] = (sum(all(v) for v in per_task.values()) / len(tasks)) if tasks else 0.0
  return result


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
