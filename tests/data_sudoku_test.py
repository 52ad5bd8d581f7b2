"""Tests of the Sudoku builder, its solver/generator, CSV import and the demo dataset."""

import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hrm_jax.data import augment
from hrm_jax.data import demo
from hrm_jax.data import format as data_format
from hrm_jax.data import sudoku
from hrm_jax.data.build_util import BuildError

REPO = pathlib.Path(__file__).resolve().parents[1]
# "AI Escargot", a well-known hard puzzle with a unique solution.
ESCARGOT = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."


# ------------------------------------------------------------------------------------------------
# An independent reference: plain backtracking over cells, no propagation tricks.
# ------------------------------------------------------------------------------------------------


def _peers(box):
  n = box * box
  peers = []
  for cell in range(n * n):
    r, c = divmod(cell, n)
    same = set()
    for k in range(n):
      same.add(r * n + k)
      same.add(k * n + c)
    br, bc = r // box * box, c // box * box
    for i in range(box):
      for j in range(box):
        same.add((br + i) * n + bc + j)
    same.discard(cell)
    peers.append(sorted(same))
  return peers


def brute_force(grid, box, limit=2):
  """(number of solutions capped at `limit`, first solution) by backtracking."""
  n = box * box
  peers = _peers(box)
  grid = [int(v) for v in grid]
  solutions = []

  def options(cell):
    used = {grid[p] for p in peers[cell]}
    return [d for d in range(1, n + 1) if d not in used]

  def rec():
    if len(solutions) >= limit:
      return
    blanks = [i for i, v in enumerate(grid) if v == 0]
    if not blanks:
      solutions.append(list(grid))
      return
    cell = min(blanks, key=lambda i: len(options(i)))
    for d in options(cell):
      grid[cell] = d
      rec()
      grid[cell] = 0

  for cell, v in enumerate(grid):
    if v and v in {grid[p] for p in peers[cell]}:
      return 0, None
  rec()
  return len(solutions), (solutions[0] if solutions else None)


def valid_solution(grid, box):
  n = box * box
  g = np.asarray(grid).reshape(n, n)
  want = set(range(1, n + 1))
  rows = all(set(g[r]) == want for r in range(n))
  cols = all(set(g[:, c]) == want for c in range(n))
  boxes = all(set(g[br:br + box, bc:bc + box].ravel()) == want
              for br in range(0, n, box) for bc in range(0, n, box))
  return rows and cols and boxes


def _digits(text):
  return np.array([0 if ch in ".0" else int(ch) for ch in text])


# ------------------------------------------------------------------------------------------------
# Solver and generator
# ------------------------------------------------------------------------------------------------


def test_solver_matches_brute_force_on_random_4x4_puzzles():
  rng = np.random.default_rng(1)
  grids = sudoku.random_solved_grids(60, rng, box=2)
  assert all(valid_solution(g, 2) for g in grids)
  # Random blanking gives unique, multi-solution and (after a clash) unsolvable boards.
  puzzles = np.where(rng.random(grids.shape) < 0.7, 0, grids)
  puzzles[:5, 0] = puzzles[:5, 1] = 1  # Two equal digits in one row: no solution.
  result = sudoku.rate_puzzles(puzzles, box=2)
  for i, puzzle in enumerate(puzzles):
    count, first = brute_force(puzzle, 2)
    assert result.num_solutions_M[i] == count, i
    if count == 1:
      assert result.solution_MxN[i].tolist() == first
  assert {0, 1, 2} <= set(result.num_solutions_M.tolist())


def test_ratings_singles_zero_and_hard_puzzle_positive():
  rng = np.random.default_rng(0)
  solved = sudoku.random_solved_grids(1, rng)[0]
  one_blank = solved.copy()
  one_blank[40] = 0
  escargot = _digits(ESCARGOT)
  result = sudoku.rate_puzzles(np.stack([one_blank, escargot]))
  assert result.num_solutions_M.tolist() == [1, 1]
  assert result.guesses_M[0] == 0
  assert result.guesses_M[1] >= 10
  count, solution = brute_force(escargot, 3)
  assert count == 1 and result.solution_MxN[1].tolist() == solution


def test_generated_9x9_puzzles_are_hard_unique_and_minimal():
  rng = np.random.default_rng(3)
  data = sudoku.generate_puzzles(4, rng, box=3, min_difficulty=2)
  assert data.puzzles_MxN.shape == (4, 81)
  assert (data.difficulty_M >= 2).all()
  # The stored difficulty is the solver's rating of the stored puzzle.
  assert sudoku.rate_puzzles(data.puzzles_MxN).guesses_M.tolist() == data.difficulty_M.tolist()
  for puzzle, solution in zip(data.puzzles_MxN, data.solutions_MxN):
    assert valid_solution(solution, 3)
    given = puzzle != 0
    assert (puzzle[given] == solution[given]).all()
    count, reference = brute_force(puzzle, 3)
    assert count == 1 and reference == solution.tolist()
  # Minimal: restoring nothing, removing any single further clue breaks uniqueness.
  puzzle = data.puzzles_MxN[0]
  for cell in np.flatnonzero(puzzle)[:6]:
    weaker = puzzle.copy()
    weaker[cell] = 0
    assert brute_force(weaker, 3)[0] == 2


def test_build_generated_dataset_format_and_encoding(tmp_path):
  out = tmp_path / "sudoku"
  sudoku.build_sudoku_dataset(out, num_train=3, num_test=2, num_aug=2, seed=5, log=None)
  train = data_format.load_split(out, "train")
  test = data_format.load_split(out, "test")
  assert data_format.load_identifiers(out) == ["<blank>"]
  meta = train.metadata
  assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers) == (11, 81, 1)
  assert (meta.pad_id, meta.ignore_label_id, meta.blank_identifier_id) == (0, 0, 0)
  assert meta.total_groups == 3 and test.metadata.total_groups == 2
  arrays = train.sets["all"]
  assert arrays["inputs"].dtype == np.uint8 and arrays["puzzle_indices"].dtype == np.int32
  assert arrays["inputs"].shape == (9, 81)
  assert arrays["group_indices"].tolist() == [0, 3, 6, 9]
  assert arrays["puzzle_indices"].tolist() == list(range(10))
  assert not arrays["puzzle_identifiers"].any()
  for split in (train, test):
    inputs = np.asarray(split.sets["all"]["inputs"]).astype(int)
    labels = np.asarray(split.sets["all"]["labels"]).astype(int)
    assert inputs.min() >= 1 and labels.min() >= 2 and labels.max() <= 10
    for inp, lab in zip(inputs, labels):
      puzzle, solution = inp - 1, lab - 1
      assert valid_solution(solution, 3)
      given = puzzle != 0
      assert (puzzle[given] == solution[given]).all()
      assert brute_force(puzzle, 3)[0] == 1
  # Train and test boards are distinct.
  train_boards = {bytes(r) for r in np.asarray(train.sets["all"]["inputs"])}
  assert not train_boards & {bytes(r) for r in np.asarray(test.sets["all"]["inputs"])}


def test_augmentation_preserves_validity_and_blanks():
  rng = np.random.default_rng(7)
  for box in (2, 3):
    data = sudoku.generate_puzzles(3, rng, box=box, min_difficulty=0)
    for _ in range(5):
      puzzles, solutions = augment.shuffle_sudoku(data.puzzles_MxN, data.solutions_MxN, rng, box)
      for p, s, p0 in zip(puzzles, solutions, data.puzzles_MxN):
        assert valid_solution(s, box)
        assert (p[p != 0] == s[p != 0]).all()
        assert (p == 0).sum() == (p0 == 0).sum()
        assert brute_force(p, box)[0] == 1
    # Over many draws the symmetry actually changes boards.
    changed = [not np.array_equal(augment.shuffle_sudoku(data.puzzles_MxN[:1],
                                                         data.solutions_MxN[:1], rng, box)[0],
                                  data.puzzles_MxN[:1]) for _ in range(10)]
    assert any(changed)


def test_4x4_dataset_sizes(tmp_path):
  out = tmp_path / "s4"
  sudoku.build_sudoku_dataset(out, box=2, num_train=20, num_test=5, seed=1, log=None)
  meta = data_format.load_split(out, "train").metadata
  assert (meta.vocab_size, meta.seq_len) == (6, 16)


# ------------------------------------------------------------------------------------------------
# CSV import
# ------------------------------------------------------------------------------------------------


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["source", "question", "answer", "rating"])
    writer.writerows(rows)


def _csv_rows(data, blank_chars=".0"):
  rows = []
  for k, (p, s, d) in enumerate(zip(data.puzzles_MxN, data.solutions_MxN, data.difficulty_M)):
    blank = blank_chars[k % len(blank_chars)]
    rows.append([f"src{k}", "".join(blank if v == 0 else str(v) for v in p),
                 "".join(str(v) for v in s), str(int(d))])
  return rows


def test_csv_import_matches_original_encoding(tmp_path):
  rng = np.random.default_rng(11)
  data = sudoku.generate_puzzles(6, rng, box=3, min_difficulty=0)
  rows = _csv_rows(data)
  src = tmp_path / "src"
  src.mkdir()
  _write_csv(src / "train.csv", rows[:4])
  _write_csv(src / "test.csv", rows[4:])
  out = tmp_path / "out"
  sudoku.build_sudoku_dataset(out, source=str(src), log=None)
  inputs = np.asarray(data_format.load_split(out, "train").sets["all"]["inputs"])
  labels = np.asarray(data_format.load_split(out, "train").sets["all"]["labels"])
  # The original: '.'→'0', char - ord('0'), then + 1.
  for (_, q, a, _), inp, lab in zip(rows[:4], inputs, labels):
    assert inp.tolist() == [ord(ch) - ord("0") + 1 for ch in q.replace(".", "0")]
    assert lab.tolist() == [ord(ch) - ord("0") + 1 for ch in a]
  assert data_format.load_split(out, "test").sets["all"]["inputs"].shape == (2, 81)


def test_csv_min_difficulty_and_subsample(tmp_path):
  rng = np.random.default_rng(12)
  data = sudoku.generate_puzzles(8, rng, box=3, min_difficulty=0)
  rows = _csv_rows(data)
  for k, row in enumerate(rows):
    row[3] = str(k)
  src = tmp_path / "src"
  src.mkdir()
  _write_csv(src / "train.csv", rows[:6])
  _write_csv(src / "test.csv", rows[6:])
  out = tmp_path / "out"
  sudoku.build_sudoku_dataset(out, source=str(src), min_difficulty=2, num_train=3, log=None)
  inputs = np.asarray(data_format.load_split(out, "train").sets["all"]["inputs"])
  allowed = {tuple(ord(ch) - ord("0") + 1 for ch in r[1].replace(".", "0")) for r in rows[2:6]}
  assert inputs.shape[0] == 3 and all(tuple(r) in allowed for r in inputs.tolist())


def test_single_csv_is_split(tmp_path):
  rng = np.random.default_rng(13)
  data = sudoku.generate_puzzles(10, rng, box=3, min_difficulty=0)
  path = tmp_path / "all.csv"
  _write_csv(path, _csv_rows(data))
  out = tmp_path / "out"
  sudoku.build_sudoku_dataset(out, source=str(path), num_test=3, log=None)
  assert data_format.load_split(out, "test").sets["all"]["inputs"].shape[0] == 3
  assert data_format.load_split(out, "train").sets["all"]["inputs"].shape[0] == 7


def test_malformed_csv_row_reports_line(tmp_path):
  rng = np.random.default_rng(14)
  rows = _csv_rows(sudoku.generate_puzzles(3, rng, box=3, min_difficulty=0))
  rows[1][1] = rows[1][1][:-1]  # 80 characters, on line 3 of the file.
  src = tmp_path / "src"
  src.mkdir()
  _write_csv(src / "train.csv", rows)
  _write_csv(src / "test.csv", rows[:1])
  with pytest.raises(BuildError, match=r"train\.csv:3: question and answer must have 81"):
    sudoku.build_sudoku_dataset(tmp_path / "out", source=str(src), log=None)
  rows[1][1] = rows[0][1].replace(".", "x", 1) if "." in rows[0][1] else "x" + rows[0][1][1:]
  _write_csv(src / "train.csv", rows)
  with pytest.raises(BuildError, match=r"train\.csv:3: question holds 'x'"):
    sudoku.build_sudoku_dataset(tmp_path / "out", source=str(src), log=None)
  assert not (tmp_path / "out").exists()

  # Through the CLI: one line on stderr, exit status 2, no traceback.
  proc = subprocess.run([sys.executable, "-m", "hrm_jax.data.build", "sudoku", "--output-dir",
                         str(tmp_path / "out"), "--source", str(src)],
                        capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "train.csv:3" in proc.stderr


def test_cli_reports_bad_paths(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "hrm_jax.data.build", "sudoku", *args],
                          capture_output=True, text=True, cwd=REPO)
  proc = run("--output-dir", str(tmp_path / "o"), "--source", str(tmp_path / "missing.csv"))
  assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  proc = run("--output-dir", str(tmp_path / "full"), "--box", "2", "--num-train", "2",
             "--num-test", "1")
  assert proc.returncode == 2 and "--overwrite" in proc.stderr
  proc = run("--help")
  assert proc.returncode == 0 and "--min-difficulty" in proc.stdout and "--num-aug" in proc.stdout
  proc = run("--output-dir", str(tmp_path / "ok"), "--box", "2", "--num-train", "4",
             "--num-test", "2", "--quiet")
  assert proc.returncode == 0, proc.stderr
  assert data_format.load_split(tmp_path / "ok", "train").sets["all"]["inputs"].shape == (4, 16)


# ------------------------------------------------------------------------------------------------
# Demo dataset
# ------------------------------------------------------------------------------------------------


def test_demo_dataset_is_idempotent_and_well_formed(tmp_path):
  path = demo.ensure_demo_dataset(tmp_path / "demo")
  stamp = (pathlib.Path(path) / "train" / "dataset.json").stat().st_mtime_ns
  assert demo.ensure_demo_dataset(tmp_path / "demo") == path
  assert (pathlib.Path(path) / "train" / "dataset.json").stat().st_mtime_ns == stamp
  assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # No scratch left behind.
  train = data_format.load_split(path, "train")
  test = data_format.load_split(path, "test")
  assert (train.metadata.vocab_size, train.metadata.seq_len) == (6, 16)
  assert train.num_examples() == demo.NUM_TRAIN and test.num_examples() == demo.NUM_TEST
  boards = {}
  for name, split in (("train", train), ("test", test)):
    inputs = np.asarray(split.sets["all"]["inputs"]).astype(int) - 1
    labels = np.asarray(split.sets["all"]["labels"]).astype(int) - 1
    blanks = (inputs == 0).sum(1)
    assert blanks.min() >= demo.BLANKS[0] and blanks.max() <= demo.BLANKS[1]
    for inp, lab in zip(inputs, labels):
      count, solution = brute_force(inp, 2)
      assert count == 1 and solution == lab.tolist()
    boards[name] = {bytes(r.astype(np.uint8)) for r in inputs}
    assert len(boards[name]) == len(inputs)
  assert not boards["train"] & boards["test"]
  # A different directory gives the same (seeded) data.
  other = demo.ensure_demo_dataset(tmp_path / "again")
  np.testing.assert_array_equal(data_format.load_split(other, "test").sets["all"]["inputs"],
                                test.sets["all"]["inputs"])


def test_demo_refuses_foreign_directory(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "notes.txt").write_text("mine")
  with pytest.raises(BuildError, match="not a complete dataset"):
    demo.ensure_demo_dataset(tmp_path / "d")


def test_brute_force_reference_itself():
  # Guard the reference: an empty 4×4 board has 288 solutions, so counting stops at the limit.
  assert brute_force([0] * 16, 2, limit=5)[0] == 5
  assert brute_force([1, 1] + [0] * 14, 2)[0] == 0
  assert valid_solution([1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1], 2)
  assert not valid_solution([1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 1, 2], 2)
