"""ARC pass@k voting: de-augmentation, vote ranking with the Q tie-break, and the all-test-inputs rule."""

import json

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


# ---------------------------------------------------------------------------------------------------------
# submission.json in the Kaggle ARC Prize layout
# ---------------------------------------------------------------------------------------------------------
def _assert_kaggle_layout(submission, test_inputs_per_task):
  """The competition's format: {task_id: [{"attempt_1": grid, "attempt_2": grid}, one per test input]}, each grid
  a rectangular list of lists of ints 0-9, 1..30 on each side."""
  assert isinstance(submission, dict) and set(submission) == set(test_inputs_per_task)
  for task, entries in submission.items():
    assert isinstance(entries, list) and len(entries) == test_inputs_per_task[task]
    for entry in entries:
      assert set(entry) == {"attempt_1", "attempt_2"}
      for grid in entry.values():
        assert isinstance(grid, list) and 1 <= len(grid) <= 30
        assert all(isinstance(row, list) and len(row) == len(grid[0]) for row in grid) and 1 <= len(grid[0]) <= 30
        assert all(isinstance(c, int) and 0 <= c <= 9 for row in grid for c in row)


def test_submission_holds_the_two_best_answers_per_test_input_in_order():
  other_in, other_out = [[4, 4], [4, 1]], [[7]]
  names = ["task1", AUG_A, AUG_B, "task1", "task2"]
  rows = [_row(GRID_IN, GRID_OUT, WRONG, "task1"),  # task1, test input 1: WRONG once, GRID_OUT twice
          _row(GRID_IN, GRID_OUT, GRID_OUT, AUG_A), _row(GRID_IN, GRID_OUT, GRID_OUT, AUG_B),
          _row(other_in, other_out, other_out, "task1"),  # task1, test input 2: one answer only
          _row(GRID_IN, GRID_OUT, WRONG, "task2")]
  preds, identifiers = _predictions(rows, names, q=[0.0, 0.0, 0.0, 0.0, 0.0])
  submission = arc_eval.submission(preds, identifiers)
  _assert_kaggle_layout(json.loads(json.dumps(submission)), {"task1": 2, "task2": 1})
  assert submission["task1"][0] == {"attempt_1": GRID_OUT, "attempt_2": WRONG}
  assert submission["task1"][1] == {"attempt_1": other_out, "attempt_2": other_out}  # a single answer twice
  assert submission["task2"][0]["attempt_1"] == WRONG
  scores = arc_eval.arc_pass_at_k(preds, identifiers, ks=(1, 2))
  assert scores["arc_tasks"] == 2 and scores["arc_test_inputs"] == 3
  assert scores["arc_pass@1"] == 0.5 and scores["arc_pass@2"] == 0.5  # task1 solved, task2 not


def _write_task(path, train, test):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"train": [{"input": i, "output": o} for i, o in train],
                              "test": [{"input": i, "output": o} for i, o in test]}))


@pytest.mark.slow  # ~20 s: compiles a 900-position model; the layout itself is checked by the test above
def test_evaluate_on_an_arc_dataset_writes_pass_at_k_and_a_kaggle_submission(tmp_path, capsys):
  from hrm_jax import evaluate as evaluate_cli  # pylint: disable=import-outside-toplevel
  from hrm_jax.convert import npz_file  # pylint: disable=import-outside-toplevel
  from hrm_jax.model import hrm  # pylint: disable=import-outside-toplevel
  from hrm_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  source = tmp_path / "tasks"
  _write_task(source / "training" / "aaaa0001.json", [([[1, 2]], [[2, 1]])], [([[3, 4]], [[4, 3]])])
  _write_task(source / "evaluation" / "bbbb0002.json", [([[1, 0]], [[0, 1]])],
              [([[5, 6]], [[6, 5]]), ([[7, 8], [9, 1]], [[8, 7], [1, 9]])])
  arc.build_arc_dataset(tmp_path / "data", sources=[str(source)], num_aug=3, seed=0, log=None)
  meta = json.loads((tmp_path / "data" / "test" / "dataset.json").read_text())
  cfg = ModelConfig(vocab_size=12, seq_len=900, num_puzzle_identifiers=meta["num_puzzle_identifiers"],
                    puzzle_emb_ndim=16, hidden_size=16, num_heads=2, expansion=2.0, H_layers=1, L_layers=1,
                    H_cycles=1, L_cycles=1, halt_max_steps=2, forward_dtype="float32")
  params = hrm.init_params(cfg, jax.random.key(0))
  table = np.random.default_rng(0).normal(size=(cfg.num_puzzle_identifiers, 16)).astype(np.float32)
  npz_file.save_npz(tmp_path / "arc.npz", params, hrm.init_buffers(cfg, jax.random.key(1)), table, cfg)
  code = evaluate_cli.main(["--checkpoint", str(tmp_path / "arc.npz"), "--data", str(tmp_path / "data"),
                            "--out", str(tmp_path / "out"), "--no-progress", "--batch-size", "8"])
  out, err = capsys.readouterr()
  assert code == 0, err
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["kind"] == "arc" and report["arc_tasks"] == 1 and report["arc_test_inputs"] == 2
  assert {"arc_pass@1", "arc_pass@2"} <= set(report) and "ARC pass@2" in out
  assert set(report["per_class_accuracy"]) <= {"end of grid", *arc_eval_names()}
  _assert_kaggle_layout(json.loads((tmp_path / "out" / "submission.json").read_text()), {"bbbb0002": 2})


def arc_eval_names():
  from hrm_jax.evaluation import names  # pylint: disable=import-outside-toplevel
  return names.ARC_COLOURS
