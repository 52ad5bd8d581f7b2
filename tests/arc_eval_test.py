"""ARC pass@k voting: de-augmentation, vote ranking with the Q tie-break, and the all-test-inputs rule."""

import numpy as np
import pytest

from hrm_jax.data import arc
from hrm_jax.evaluation import arc_eval


def _row(grid_in, grid_out, pred, name):
  """One evaluation row of puzzle `name` (an augmented copy when the name says so), canvas-encoded."""
  _, tid, cmap = arc.parse_augmentation(name)
  aug = lambda g: arc.apply_augmentation(np.asarray(g, np.uint8), tid, cmap)
  return (arc.grid_to_canvas(aug(grid_in)).reshape(-1), arc.grid_to_canvas(aug(grid_out)).reshape(-1),
          arc.grid_to_canvas(aug(pred)).reshape(-1))


def _predictions(rows, names, q):
  identifiers = ["<blank>"] + sorted(set(names))
  ids = [identifiers.index(n) for n in names]
  inputs, labels, preds = (np.stack(x).astype(np.int32) for x in zip(*rows))
  return {"inputs": inputs, "labels": labels, "preds": preds, "puzzle_identifiers": np.asarray(ids, np.int32),
          "q_halt_logits": np.asarray(q, np.float32)}, identifiers


GRID_IN = [[1, 2], [3, 0]]
GRID_OUT = [[2, 2, 1], [0, 3, 3]]
WRONG = [[5, 5, 5], [5, 5, 5]]
AUG_A = arc.augmentation_name("task1", 1, np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9]))
AUG_B = arc.augmentation_name("task1", 6, np.array([0, 9, 8, 7, 6, 5, 4, 3, 2, 1]))


def test_majority_of_de_augmented_votes_wins():
  names = ["task1", AUG_A, AUG_B]
  # Two augmented copies predict the right answer in their own frame; the original copy is wrong.
  rows = [_row(GRID_IN, GRID_OUT, WRONG, names[0]), _row(GRID_IN, GRID_OUT, GRID_OUT, names[1]),
          _row(GRID_IN, GRID_OUT, GRID_OUT, names[2])]
  preds, identifiers = _predictions(rows, names, q=[5.0, -1.0, -1.0])
  result = arc_eval.arc_pass_at_k(preds, identifiers, ks=(1, 2))
  assert result["arc_tasks"] == 1 and result["arc_test_inputs"] == 1
  assert result["arc_pass@1"] == 1.0


def test_q_breaks_ties_and_pass_at_2_admits_the_runner_up():
  names = ["task1", AUG_A]
  rows = [_row(GRID_IN, GRID_OUT, WRONG, names[0]), _row(GRID_IN, GRID_OUT, GRID_OUT, names[1])]
  for q_right, expect_top1 in ((3.0, 1.0), (-3.0, 0.0)):
    preds, identifiers = _predictions(rows, names, q=[0.0, q_right])
    result = arc_eval.arc_pass_at_k(preds, identifiers, ks=(1, 2))
    assert result["arc_pass@1"] == expect_top1
    assert result["arc_pass@2"] == 1.0


def test_a_task_counts_only_when_every_test_input_is_solved():
  other_in = [[4, 4], [4, 1]]
  names = ["task1", "task1"]
  rows = [_row(GRID_IN, GRID_OUT, GRID_OUT, "task1"), _row(other_in, GRID_OUT, WRONG, "task1")]
  preds, identifiers = _predictions(rows, names, q=[0.0, 0.0])
  result = arc_eval.arc_pass_at_k(preds, identifiers, ks=(1,))
  assert result["arc_test_inputs"] == 2
  assert result["arc_pass@1"] == 0.0


def test_padding_rows_are_ignored():
  names = ["task1"]
  preds, identifiers = _predictions([_row(GRID_IN, GRID_OUT, GRID_OUT, "task1")], names, q=[0.0])
  padded = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in preds.items()}
  assert arc_eval.arc_pass_at_k(padded, identifiers, ks=(1,))["arc_pass@1"] == 1.0


def test_cli_reports_a_missing_predictions_file(tmp_path, capsys):
  assert arc_eval.main([str(tmp_path / "none.npz"), "--data-dir", str(tmp_path)]) == 2
  assert "save_predictions" in capsys.readouterr().err


if __name__ == "__main__":
  pytest.main([__file__])
