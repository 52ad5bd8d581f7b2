"""`python -m hrm_jax.solve`: a demo-trained model solves fresh 4x4 Sudokus; every bad puzzle is one line."""

import json
import re

import numpy as np
import pytest

from hrm_jax import solve as solve_cli
from hrm_jax.data import format as data_format
from hrm_jax.data import maze
from hrm_jax.data import sudoku
from hrm_jax.evaluation import puzzles

import demo_run


def _fresh_puzzles(data_dir, count: int, seed: int = 12345) -> list[str]:
  """4x4 puzzles (unique solutions, 6..10 blanks as the demo's) that are in neither split of the dataset."""
  seen = set()
  for split in ("train", "test"):
    seen |= {row.tobytes() for row in np.asarray(data_format.load_split(data_dir, split).sets["all"]["inputs"])}
  made = sudoku.generate_puzzles(8 * count, np.random.default_rng(seed), box=2, blanks_range=(6, 10))
  fresh = [p for p in made.puzzles_MxN if sudoku.encode(p[None])[0].tobytes() not in seen]
  assert len(fresh) >= count
  return ["".join(str(int(d)) for d in p) for p in fresh[:count]]


def _printed_grid(out: str) -> np.ndarray:
  rows = [re.findall(r"\d", line) for line in out.splitlines() if re.fullmatch(r"[\d .|]+", line)]
  return np.array([int(d) for row in rows for d in row])


def _solve_rate(capsys, workdir, puzzle_strings) -> float:
  solved = 0
  for text in puzzle_strings:
    code = solve_cli.main(["--checkpoint", str(workdir), "--sudoku", text])
    out, err = capsys.readouterr()
    assert code in (0, solve_cli.WRONG_ANSWER), err
    answer = _printed_grid(out)
    givens = np.array([int(c) for c in text])
    # Judge the printed grid independently of the command's own verdict.
    right = bool(sudoku.is_valid_solution(answer[None], 2)[0]) and np.all((givens == 0) | (givens == answer))
    assert right == (code == 0), out
    assert re.search(r"segments used: 4 \(at most 4\); halting confidence sigmoid\(q_halt\) = 0\.\d{3}", out), out
    solved += right
  return solved / len(puzzle_strings)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return demo_run.trained_demo(tmp_path_factory)


def test_a_short_demo_run_solves_fresh_puzzles_it_never_saw(demo, capsys):
  workdir, data = demo
  # The 500-step model solves about half of the held-out set; a quarter of 12 fresh puzzles is a safe floor.
  assert _solve_rate(capsys, workdir, _fresh_puzzles(data, 12)) >= 0.25


@pytest.mark.slow
def test_the_full_demo_run_solves_most_fresh_puzzles(tmp_path_factory, capsys):
  workdir, data = demo_run.trained_demo(tmp_path_factory, demo_run.FULL_STEPS)
  assert _solve_rate(capsys, workdir, _fresh_puzzles(data, 24)) >= 0.75  # it solves ~93% of its held-out set


@pytest.mark.parametrize("text,expect", [
    ("1.3..2.4.4.3..1", "has 15 characters; give 81 for 9x9 or 16 for 4x4"),
    ("1.3..2.4.4.3..1x", "character 'x' at position 16"),
    ("1.3..2.4.4.3..15", "character '5' at position 16 (row 4, column 4) is not a digit 1-4"),
    ("11..............", "digit 1 appears 2 times in row 1 (r1c1, r1c2)"),
    ("1...1...........", "digit 1 appears 2 times in column 1"),
    ("12....3...4.....", "no digit placement completes this Sudoku"),
    ("." * 81, "trained on sequences of 16 tokens"),
])
def test_bad_sudoku_strings_get_one_line(demo, capsys, text, expect):
  code = solve_cli.main(["--checkpoint", str(demo[0]), "--sudoku", text])
  err = capsys.readouterr().err
  assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  assert expect in err, err


def _maze_file(tmp_path, rows):
  path = tmp_path / "maze.txt"
  path.write_text("\n".join(rows) + "\n")
  return path


MAZE = ["#####", "#S  #", "# # #", "#  G#", "#####"]


@pytest.mark.parametrize("rows,expect", [
    (["#####", "#S #", "#   #", "#  G#", "#####"], "rows have different lengths"),
    (["#####", "#S x#", "#   #", "#  G#", "#####"], "character 'x' at row 2, column 4"),
    (["#####", "#S  #", "#   #", "#   #", "#####"], "exactly one G"),
    (["#####", "#S# #", "### #", "#  G#", "#####"], "G cannot be reached from S"),
    (MAZE, "trained on sequences of 16 tokens"),  # a 5x5 maze for the 4x4-Sudoku model
])
def test_bad_mazes_get_one_line(demo, tmp_path, capsys, rows, expect):
  code = solve_cli.main(["--checkpoint", str(demo[0]), "--maze", str(_maze_file(tmp_path, rows))])
  err = capsys.readouterr().err
  assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  assert expect in err, err


def test_a_maze_answer_counts_only_as_a_shortest_path(tmp_path):
  grid = puzzles.parse_maze(_maze_file(tmp_path, MAZE))
  right = grid.copy()
  right[1, 2] = right[1, 3] = right[2, 3] = maze.PATH  # S(1,1) -> (1,2) -> (1,3) -> (2,3) -> G(3,3)
  assert puzzles.judge_maze(grid, right)
  detour = grid.copy()
  detour[1, 2] = detour[1, 3] = detour[2, 3] = detour[2, 1] = maze.PATH  # an extra cell
  assert not puzzles.judge_maze(grid, detour)
  broken = grid.copy()
  broken[1, 2] = broken[2, 3] = maze.PATH  # not connected
  assert not puzzles.judge_maze(grid, broken)
  assert not puzzles.judge_maze(grid, grid)


@pytest.mark.parametrize("task,expect", [
    ({"train": [], "test": [{"input": [[1, 2], [3]]}]}, "equally long rows"),
    ({"train": [], "test": [{"input": [[1, 2], [3, 10]]}]}, "colour 10; colours are 0-9"),
    ({"train": [{"input": [[-1]], "output": [[0]]}], "test": [{"input": [[1]]}]}, "colour -1"),
    ({"test": []}, "non-empty 'test' list"),
    ("not json", "not valid JSON"),
    ({"train": [], "test": [{"input": [[1, 2]]}]}, "needs --data DIR"),
])
def test_bad_arc_tasks_get_one_line(demo, tmp_path, capsys, task, expect):
  path = tmp_path / "0abc1234.json"
  path.write_text(task if isinstance(task, str) else json.dumps(task))
  code = solve_cli.main(["--checkpoint", str(demo[0]), "--arc-task", str(path)])
  err = capsys.readouterr().err
  assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  assert expect in err, err


def test_an_arc_task_the_dataset_does_not_know_is_refused(demo, tmp_path, capsys):
  path = tmp_path / "0abc1234.json"
  path.write_text(json.dumps({"train": [], "test": [{"input": [[1, 2]]}]}))
  code = solve_cli.main(["--checkpoint", str(demo[0]), "--arc-task", str(path), "--data", str(demo[1])])
  err = capsys.readouterr().err
  assert code == 1 and "not in" in err and "identifiers.json" in err, err
