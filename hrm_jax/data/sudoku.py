"""Sudoku datasets: a batched numpy solver and generator, the sudoku-extreme CSV reader, a builder.

Encoding as the original `build_sudoku_dataset.py`: a cell holding digit d (0 = blank) becomes
token d + 1, so blank = 1 and digits 1..9 = 2..10; PAD 0 is never used; vocab 11, seq 81. Labels are
the full solution. Each board is one puzzle with one example, all identifiers 0, and a group is an
original board followed by its augmentations. `box=2` gives 4×4 Sudoku (seq 16, vocab 6).

The solver works on a batch of candidate bit masks `cands_MxN` (bit d-1: cell may hold d) and
alternates naked singles (a decided cell removes its digit from its peers) with hidden singles (a
digit possible in one cell of a unit goes there) until nothing changes; open boards branch on the
cell with the fewest candidates: "that cell is its first candidate" vs "it is not". Difficulty is
the number of such guesses needed to explore the whole search tree while proving the solution
unique (0 = solvable by singles alone).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib
import time
from typing import Callable

import numpy as np

from hrm_jax.data import augment
from hrm_jax.data import build_util
from hrm_jax.data import format as data_format
from hrm_jax.data.build_util import BuildError

# Boards processed per propagation call; bounds memory of the batched depth-first search.
_SEARCH_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Index tables of a box×box Sudoku (side n = box², N = n² cells, 3n units)."""

  box: int
  side: int
  num_cells: int
  units_UxD: np.ndarray  # Cells of each unit (rows, then columns, then boxes).
  units_of_cell_Nx3: np.ndarray  # The row, column and box unit of each cell.


@functools.lru_cache(maxsize=None)
def geometry(box: int) -> Geometry:
  if box < 2:
    raise ValueError(f"Sudoku box size must be >= 2, got {box}")
  n = box * box
  cell = np.arange(n * n).reshape(n, n)
  rows = [cell[r] for r in range(n)]
  cols = [cell[:, c] for c in range(n)]
  boxes = [cell[br * box:(br + 1) * box, bc * box:(bc + 1) * box].ravel()
           for br in range(box) for bc in range(box)]
  units = np.stack(rows + cols + boxes)
  r, c = np.divmod(np.arange(n * n), n)
  units_of_cell = np.stack([r, n + c, 2 * n + (r // box) * box + c // box], axis=1)
  return Geometry(box, n, n * n, units, units_of_cell)


def vocab_size(box: int) -> int:
  """PAD + blank + box² digits (11 for 9×9, as the original)."""
  return box * box + 2


@functools.lru_cache(maxsize=None)
def _tables(side: int) -> tuple[np.ndarray, np.ndarray]:
  """Popcount and (for one-bit masks) digit lookup tables over all candidate masks."""
  masks = np.arange(1 << side)
  popcount = np.array([bin(m).count("1") for m in masks], dtype=np.int8)
  digit = np.zeros(1 << side, dtype=np.uint8)
  digit[1 << np.arange(side)] = np.arange(1, side + 1)
  return popcount, digit


def candidates_from_grids(grids_MxN: np.ndarray, geo: Geometry) -> np.ndarray:
  """Candidate bit masks (bit d-1 = digit d allowed) of boards with digits 1..n, 0 = blank."""
  grids_MxN = np.asarray(grids_MxN).astype(np.int32)
  full = (1 << geo.side) - 1
  return np.where(grids_MxN == 0, full, 1 << np.maximum(grids_MxN - 1, 0)).astype(np.int32)


def _propagate(cands_MxN: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
  """Naked + hidden singles to a fixed point; returns (cands, status) with status 1 solved, -1
  contradiction, 0 open (needs a guess)."""
  popcount, _ = _tables(geo.side)
  full = (1 << geo.side) - 1
  cands = cands_MxN.copy()
  status = np.zeros(cands.shape[0], dtype=np.int8)
  units, units_of_cell = geo.units_UxD, geo.units_of_cell_Nx3
  active = np.arange(cands.shape[0])
  while active.size:
    x = cands[active]
    counts_AxN = popcount[x]
    single_AxN = counts_AxN == 1
    dead = (counts_AxN == 0).any(-1)
    fixed_AxUxD = np.where(single_AxN, x, 0)[:, units]
    placed_AxU = np.bitwise_or.reduce(fixed_AxUxD, axis=2)
    # Distinct one-bit masks sum to their OR; a larger sum means a digit placed twice in a unit.
    dead |= (fixed_AxUxD.sum(2) != placed_AxU).any(-1)
    taken_AxN = np.bitwise_or.reduce(placed_AxU[:, units_of_cell], axis=2)
    y = np.where(single_AxN, x, x & ~taken_AxN)
    # Digits seen at least once / at least twice in each unit.
    y_AxUxD = y[:, units]
    once = np.zeros(placed_AxU.shape, dtype=np.int32)
    twice = np.zeros_like(once)
    for k in range(geo.side):
      twice |= once & y_AxUxD[..., k]
      once |= y_AxUxD[..., k]
    dead |= (once != full).any(-1)
    hidden_AxN = np.bitwise_or.reduce((once & ~twice)[:, units_of_cell], axis=2) & y
    num_hidden_AxN = popcount[hidden_AxN]
    # Two digits that each fit only in the same cell cannot both be placed.
    dead |= (num_hidden_AxN > 1).any(-1)
    y = np.where(num_hidden_AxN == 1, hidden_AxN, y)
    changed = (y != x).any(-1)
    cands[active] = y
    status[active[dead]] = -1
    settled = ~changed & ~dead
    status[active[settled & single_AxN.all(-1)]] = 1
    active = active[changed & ~dead]
  return cands, status


@dataclasses.dataclass
class SearchResult:
  num_solutions_M: np.ndarray  # Solutions found, capped at the search limit.
  guesses_M: np.ndarray  # Branchings made (difficulty when the search ran to completion).
  solution_MxN: np.ndarray  # First solution found (digits 1..n), zeros where none.


def search(cands_MxN: np.ndarray, geo: Geometry, limit: int,
           rng: np.random.Generator | None = None) -> SearchResult:
  """Batched depth-first search that stops a board after `limit` solutions.

  With `rng` the branch digit is random (used to build random full grids); otherwise the lowest
  candidate, which makes the guess count a deterministic rating.
  """
  popcount, digit_of = _tables(geo.side)
  num, side = cands_MxN.shape[0], geo.side
  num_solutions = np.zeros(num, dtype=np.int64)
  guesses = np.zeros(num, dtype=np.int64)
  solution = np.zeros((num, geo.num_cells), dtype=np.uint8)
  stack: list[tuple[np.ndarray, np.ndarray]] = [(cands_MxN, np.arange(num))]
  while stack:
    cands, owner = stack.pop()
    if cands.shape[0] > _SEARCH_CHUNK:
      stack.append((cands[:-_SEARCH_CHUNK], owner[:-_SEARCH_CHUNK]))
      cands, owner = cands[-_SEARCH_CHUNK:], owner[-_SEARCH_CHUNK:]
    keep = num_solutions[owner] < limit
    cands, owner = cands[keep], owner[keep]
    if not owner.size:
      continue
    cands, status = _propagate(cands, geo)
    for i in np.flatnonzero(status == 1):
      if num_solutions[owner[i]] == 0:
        solution[owner[i]] = digit_of[cands[i]]
      num_solutions[owner[i]] += 1
    open_rows = np.flatnonzero(status == 0)
    if not open_rows.size:
      continue
    cands, owner = cands[open_rows], owner[open_rows]
    counts_AxN = popcount[cands]
    counts_AxN[counts_AxN <= 1] = side + 1
    rows = np.arange(owner.size)
    cell = counts_AxN.argmin(-1)
    options = cands[rows, cell]
    if rng is None:
      bit = options & -options
    else:
      allowed_AxD = (options[:, None] >> np.arange(side)) & 1
      bit = 1 << (rng.random(allowed_AxD.shape) * allowed_AxD).argmax(-1)
    chosen = cands.copy()
    chosen[rows, cell] = bit
    cands[rows, cell] = options & ~bit
    np.add.at(guesses, owner, 1)
    # LIFO: the "cell = digit" branch is explored first.
    stack.append((cands, owner))
    stack.append((chosen, owner))
  return SearchResult(np.minimum(num_solutions, limit), guesses, solution)


def rate_puzzles(puzzles_MxN: np.ndarray, box: int = 3) -> SearchResult:
  """Counts solutions up to 2 and the guesses needed to prove it (the difficulty rating)."""
  geo = geometry(box)
  return search(candidates_from_grids(puzzles_MxN, geo), geo, limit=2)


def is_valid_solution(grids_MxN: np.ndarray, box: int = 3) -> np.ndarray:
  """True where a board is completely filled and every unit holds each digit once."""
  geo = geometry(box)
  grids_MxN = np.asarray(grids_MxN)
  units_MxUxD = np.sort(grids_MxN[:, geo.units_UxD], axis=-1)
  return (units_MxUxD == np.arange(1, geo.side + 1)).all((1, 2))


def random_solved_grids(count: int, rng: np.random.Generator, box: int = 3) -> np.ndarray:
  """`count` random complete grids (digits 1..n), built by randomised search."""
  geo = geometry(box)
  cands = np.full((count, geo.num_cells), (1 << geo.side) - 1, dtype=np.int32)
  result = search(cands, geo, limit=1, rng=rng)
  return result.solution_MxN


def dig_puzzles(solutions_MxN: np.ndarray, rng: np.random.Generator, box: int = 3,
                max_blanks_M: np.ndarray | None = None) -> np.ndarray:
  """Blanks cells in random order while the solution stays unique; returns puzzles (0 = blank).

  Removing a cell keeps the solution unique iff no solution has another digit there, so each step
  is a one-solution search with that digit struck out. Stops per board at `max_blanks_M`.
  """
  geo = geometry(box)
  puzzles = np.array(solutions_MxN, dtype=np.uint8)
  num = puzzles.shape[0]
  order_MxN = np.argsort(rng.random((num, geo.num_cells)), axis=1)
  blanks = np.zeros(num, dtype=np.int64)
  max_blanks = np.full(num, geo.num_cells) if max_blanks_M is None else np.asarray(max_blanks_M)
  for step in range(geo.num_cells):
    rows = np.flatnonzero(blanks < max_blanks)
    if not rows.size:
      break
    cells = order_MxN[rows, step]
    values = puzzles[rows, cells].astype(np.int64)
    trial = puzzles[rows].copy()
    trial[np.arange(rows.size), cells] = 0
    cands = candidates_from_grids(trial, geo)
    cands[np.arange(rows.size), cells] &= ~(1 << (values - 1))
    unique = search(cands, geo, limit=1).num_solutions_M == 0
    puzzles[rows[unique], cells[unique]] = 0
    blanks[rows[unique]] += 1
  return puzzles


@dataclasses.dataclass
class SudokuSet:
  puzzles_MxN: np.ndarray  # Digits, 0 = blank.
  solutions_MxN: np.ndarray
  difficulty_M: np.ndarray  # Solver guesses (generated) or the CSV rating column.

  def __len__(self) -> int:
    return int(self.puzzles_MxN.shape[0])

  def select(self, index: np.ndarray | slice) -> SudokuSet:
    return SudokuSet(self.puzzles_MxN[index], self.solutions_MxN[index], self.difficulty_M[index])


def generate_puzzles(count: int, rng: np.random.Generator, box: int = 3, min_difficulty: int = 0,
                     blanks_range: tuple[int, int] | None = None,
                     exclude: set[bytes] | None = None,
                     log: Callable[[str], None] | None = None) -> SudokuSet:
  """Distinct puzzles with unique solutions and difficulty >= `min_difficulty`.

  Without `blanks_range` puzzles are dug until minimal (no clue can be removed); with it each
  board stops at a random blank count in [lo, hi]. `exclude` holds puzzle bytes to avoid (e.g. the
  train set when making the test set).
  """
  geo = geometry(box)
  seen = set() if exclude is None else set(exclude)
  kept: list[SudokuSet] = []
  have, tried, accepted = 0, 0, 0
  while have < count:
    # Oversample by the observed acceptance rate so most rounds finish the job.
    rate = (accepted + 1) / (tried + 1)
    batch = int(min(max((count - have) / max(rate, 1e-3) * 1.2, 16), 20000))
    solutions = random_solved_grids(batch, rng, box)
    max_blanks = None
    if blanks_range is not None:
      max_blanks = rng.integers(blanks_range[0], blanks_range[1] + 1, size=batch)
    puzzles = dig_puzzles(solutions, rng, box, max_blanks)
    rated = search(candidates_from_grids(puzzles, geo), geo, limit=2)
    if not (rated.num_solutions_M == 1).all():
      raise AssertionError("digging produced a puzzle without a unique solution")
    ok = rated.guesses_M >= min_difficulty
    tried += batch
    accepted += int(ok.sum())
    rows = []
    for i in np.flatnonzero(ok):
      key = puzzles[i].tobytes()
      if key not in seen and have + len(rows) < count:
        seen.add(key)
        rows.append(i)
    rows = np.asarray(rows, dtype=np.int64)
    kept.append(SudokuSet(puzzles[rows], solutions[rows], rated.guesses_M[rows]))
    have += rows.size
    if log is not None:
      log(f"  generated {have}/{count} puzzles ({tried} dug, {accepted} with difficulty >= "
          f"{min_difficulty})")
  return SudokuSet(np.concatenate([k.puzzles_MxN for k in kept]),
                   np.concatenate([k.solutions_MxN for k in kept]),
                   np.concatenate([k.difficulty_M for k in kept]))


# ------------------------------------------------------------------------------------------------
# CSV (sudoku-extreme layout: header, then source,question,answer,rating)
# ------------------------------------------------------------------------------------------------


def read_sudoku_csv(path: pathlib.Path, box: int = 3) -> SudokuSet:
  """Reads a sudoku-extreme CSV; '.' or '0' is a blank. Raises BuildError naming the bad line.

  Rows are checked one by one for shape, then characters are decoded for all rows at once (the
  full sudoku-extreme train.csv has ~3.8M rows).
  """
  geo = geometry(box)
  n, cells = geo.side, geo.num_cells
  digits = "123456789ABCDEFG"[:n]
  if not path.is_file():
    raise BuildError(f"Sudoku CSV {path} does not exist; pass --source a sudoku-extreme CSV file "
                     "(or a directory with train.csv and test.csv), or --source generate.")
  lines, questions, answers, ratings = [], [], [], []
  with open(path, newline="") as f:
    reader = csv.reader(f)
    if next(reader, None) is None:
      raise BuildError(f"{path} is empty; expected a header, then source,question,answer,rating "
                       "rows.")
    for row in reader:
      if not row:
        continue
      where = f"{path}:{reader.line_num}"
      if len(row) != 4:
        raise BuildError(f"{where}: expected 4 columns (source,question,answer,rating), "
                         f"got {len(row)}.")
      _, question, answer, rating = row
      if len(question) != cells or len(answer) != cells:
        raise BuildError(f"{where}: question and answer must have {cells} characters for a "
                         f"{n}x{n} Sudoku, got {len(question)} and {len(answer)}.")
      try:
        ratings.append(int(rating))
      except ValueError:
        raise BuildError(f"{where}: rating {rating!r} is not an integer.") from None
      lines.append(reader.line_num)
      questions.append(question)
      answers.append(answer)
  if not questions:
    raise BuildError(f"{path} holds no puzzles after its header.")

  invalid = 255
  table = np.full(256, invalid, dtype=np.uint8)
  for value, ch in enumerate(digits, start=1):
    table[ord(ch)] = value
  answer_table = table.copy()
  table[ord(".")] = table[ord("0")] = 0
  as_bytes = lambda texts: np.frombuffer("".join(texts).encode("ascii", errors="replace"),
                                         dtype=np.uint8).reshape(len(texts), cells)
  raw_q, raw_a = as_bytes(questions), as_bytes(answers)
  puzzles, solutions = table[raw_q], answer_table[raw_a]
  for name, decoded, raw, allowed in (
      ("question", puzzles, questions, f"digits 1-{n} and '.' or '0' for blanks"),
      ("answer", solutions, answers, f"digits 1-{n} (a full grid)")):
    bad_rows = np.flatnonzero((decoded == invalid).any(1))
    if bad_rows.size:
      row = int(bad_rows[0])
      ch = raw[row][int(np.argmax(decoded[row] == invalid))]
      raise BuildError(f"{path}:{lines[row]}: {name} holds {ch!r}; allowed are {allowed}.")
  clash = (puzzles != 0) & (puzzles != solutions)
  bad_rows = np.flatnonzero(clash.any(1))
  if bad_rows.size:
    row = int(bad_rows[0])
    raise BuildError(f"{path}:{lines[row]}: answer disagrees with a given of the question at "
                     f"cell {int(np.argmax(clash[row]))}.")
  return SudokuSet(puzzles, solutions, np.asarray(ratings, np.int64))


def _csv_sources(source: pathlib.Path, rng: np.random.Generator, num_test: int | None,
                 box: int) -> tuple[SudokuSet, SudokuSet]:
  """(train, test) from a directory with train.csv/test.csv or one CSV split at random."""
  if source.is_dir():
    missing = [name for name in ("train.csv", "test.csv") if not (source / name).is_file()]
    if missing:
      raise BuildError(f"{source} lacks {', '.join(missing)}; a Sudoku source directory must hold "
                       "train.csv and test.csv (the sudoku-extreme layout).")
    return read_sudoku_csv(source / "train.csv", box), read_sudoku_csv(source / "test.csv", box)
  rows = read_sudoku_csv(source, box)
  total = rows.puzzles_MxN.shape[0]
  test_count = max(1, total // 10) if num_test is None else num_test
  if test_count >= total:
    raise BuildError(f"{source} has {total} puzzles; --num-test {test_count} leaves none to train "
                     "on. Lower --num-test.")
  order = rng.permutation(total)
  return rows.select(np.sort(order[test_count:])), rows.select(np.sort(order[:test_count]))


# ------------------------------------------------------------------------------------------------
# Builder
# ------------------------------------------------------------------------------------------------


def encode(grids_MxN: np.ndarray) -> np.ndarray:
  """Digits (0 = blank) → tokens (digit + 1), uint8 as the original."""
  return (np.asarray(grids_MxN, dtype=np.uint8) + 1).astype(np.uint8)


def augment_set(data: SudokuSet, num_aug: int, rng: np.random.Generator, box: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Each board then `num_aug` random symmetries of it: (puzzles, solutions, group sizes)."""
  num = data.puzzles_MxN.shape[0]
  if num_aug == 0:
    return data.puzzles_MxN, data.solutions_MxN, np.ones(num, dtype=np.int64)
  cells = data.puzzles_MxN.shape[1]
  puzzles = np.empty((num, num_aug + 1, cells), np.uint8)
  solutions = np.empty_like(puzzles)
  puzzles[:, 0], solutions[:, 0] = data.puzzles_MxN, data.solutions_MxN
  for k in range(1, num_aug + 1):
    puzzles[:, k], solutions[:, k] = augment.shuffle_sudoku(data.puzzles_MxN, data.solutions_MxN,
                                                            rng, box)
  return (puzzles.reshape(-1, cells), solutions.reshape(-1, cells),
          np.full(num, num_aug + 1, dtype=np.int64))


def build_sudoku_dataset(output_dir: str | pathlib.Path, *, source: str = "generate",
                         num_train: int | None = None, num_test: int | None = None,
                         num_aug: int = 0, min_difficulty: int | None = None, box: int = 3,
                         seed: int = 0, blanks_range: tuple[int, int] | None = None,
                         overwrite: bool = False,
                         log: Callable[[str], None] | None = print) -> dict:
  """Builds `<output_dir>/{train,test}` and identifiers.json; returns a summary dict.

  `source` is "generate" or a CSV path / directory. Generated defaults: 1000 train, 1000 test,
  minimal puzzles; CSV defaults: every row (`num_train` subsamples train, as the original's
  --subsample-size). `min_difficulty` filters on the solver's guesses (generated; default 1 for
  9×9, 0 for 4×4) or the CSV rating column (default no filter). Augmentation (`num_aug` copies
  per board) is applied to train only.
  """
  if box not in (2, 3):
    raise BuildError(f"--box must be 2 (4x4) or 3 (9x9), got {box}.")
  for name, value in (("--num-train", num_train), ("--num-test", num_test), ("--num-aug", num_aug)):
    if value is not None and value < 0:
      raise BuildError(f"{name} must be >= 0, got {value}.")
  if blanks_range is not None and not 1 <= blanks_range[0] <= blanks_range[1]:
    raise BuildError(f"blank range {blanks_range} must satisfy 1 <= lo <= hi.")
  if source == "generate" and (num_train, num_test) == (0, 0):
    raise BuildError("--num-train and --num-test are both 0; nothing to build.")
  build_util.check_output_dir(output_dir, overwrite)
  say = log or (lambda _: None)
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  if source == "generate":
    train_count = 1000 if num_train is None else num_train
    test_count = 1000 if num_test is None else num_test
    # Generated 9×9 puzzles are "hard" by default: none is solvable by singles alone.
    floor = (1 if box == 3 else 0) if min_difficulty is None else min_difficulty
    say(f"Generating {train_count} train + {test_count} test {box * box}x{box * box} Sudokus "
        f"(difficulty >= {floor})")
    both = generate_puzzles(train_count + test_count, rng, box, floor, blanks_range, log=say)
    # One pool, then split, keeps train and test puzzles distinct.
    train, test = both.select(slice(0, train_count)), both.select(slice(train_count, None))
  else:
    path = pathlib.Path(source)
    if not path.exists():
      raise BuildError(f"--source {source} does not exist; pass 'generate', a sudoku-extreme CSV "
                       "file, or a directory holding train.csv and test.csv.")
    train, test = _csv_sources(path, rng, num_test if not path.is_dir() else None, box)
    if min_difficulty is not None:
      train = train.select(train.difficulty_M >= min_difficulty)
      test = test.select(test.difficulty_M >= min_difficulty)
    # Filter first, then subsample (the original's order).
    train = train.select(build_util.take_subset(rng, len(train), num_train))
    if path.is_dir():
      test = test.select(build_util.take_subset(rng, len(test), num_test))
    if not len(train) or not len(test):
      raise BuildError(f"no puzzles left in {'test' if len(train) else 'train'} after filtering; "
                       "lower --min-difficulty.")
  generate_seconds = time.perf_counter() - start

  puzzles, solutions, sizes = augment_set(train, num_aug, rng, box)
  with build_util.atomic_output_dir(output_dir, overwrite) as scratch:
    build_util.write_single_example_split(scratch, "train", encode(puzzles), encode(solutions),
                                          sizes, vocab_size(box))
    build_util.write_single_example_split(scratch, "test", encode(test.puzzles_MxN),
                                          encode(test.solutions_MxN),
                                          np.ones(len(test), np.int64), vocab_size(box))
    data_format.write_identifiers(scratch, [data_format.BLANK_IDENTIFIER])
  summary = {
      "train_puzzles": int(puzzles.shape[0]), "train_groups": int(len(sizes)),
      "test_puzzles": len(test), "generate_seconds": generate_seconds,
      "train_difficulty": train.difficulty_M, "test_difficulty": test.difficulty_M,
  }
  say(f"Wrote {output_dir}: {summary['train_puzzles']} train puzzles in {summary['train_groups']} "
      f"groups, {summary['test_puzzles']} test puzzles ({generate_seconds:.1f}s to "
      f"{'generate' if source == 'generate' else 'read'})")
  say("Difficulty (train+test): " + difficulty_histogram(
      np.concatenate([train.difficulty_M, test.difficulty_M])))
  return summary


def difficulty_histogram(difficulty_M: np.ndarray) -> str:
  """Compact text histogram: quantiles plus counts in doubling buckets."""
  d = np.asarray(difficulty_M)
  if not d.size:
    return "(empty)"
  edges = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
  parts = []
  for lo, hi in zip(edges, edges[1:] + [None]):
    n = int(((d >= lo) & (d < hi)).sum()) if hi is not None else int((d >= lo).sum())
    if n:
      parts.append(f"{lo}" + ("" if hi == lo + 1 else f"-{hi - 1}" if hi else "+") + f":{n}")
  q = np.percentile(d, [50, 90, 99])
  return (f"mean {d.mean():.1f}, median {q[0]:.0f}, p90 {q[1]:.0f}, p99 {q[2]:.0f}, max "
          f"{d.max()}; buckets " + " ".join(parts))
