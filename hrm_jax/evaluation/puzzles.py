"""Reading one puzzle for `solve` (a Sudoku string, a maze text grid, an ARC task JSON), checking it, and
judging the model's answer. Every problem raises PuzzleError with one line naming it and the fix.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from hrm_jax.data import arc
from hrm_jax.data import maze
from hrm_jax.data import sudoku
from hrm_jax.data.build_util import BuildError


class PuzzleError(ValueError):
  """A puzzle that cannot be given to the model; the message says what is wrong and how to fix it."""


# ------------------------------------------------------------------------------------------------
# Sudoku
# ------------------------------------------------------------------------------------------------
def parse_sudoku(text: str) -> tuple[np.ndarray, int]:
  """(digits [N] with 0 = blank, box) from 81 (9x9) or 16 (4x4) characters; '.' or '0' is a blank."""
  cells = "".join(text.split())
  sizes = {16: 2, 81: 3}
  if len(cells) not in sizes:
    raise PuzzleError(f"the Sudoku has {len(cells)} characters; give 81 for 9x9 or 16 for 4x4, row by row, "
                      "with '.' or '0' for a blank.")
  box = sizes[len(cells)]
  side = box * box
  digits = np.zeros(len(cells), np.int64)
  for i, ch in enumerate(cells):
    if ch == ".":
      continue
    if not ch.isdigit() or int(ch) > side:
      raise PuzzleError(f"character {ch!r} at position {i + 1} (row {i // side + 1}, column {i % side + 1}) is "
                        f"not a digit 1-{side}, '.' or '0'.")
    digits[i] = int(ch)
  geo = sudoku.geometry(box)
  unit_kinds = ["row"] * side + ["column"] * side + ["box"] * side
  for u, unit in enumerate(geo.units_UxD):
    values = digits[unit]
    for d in range(1, side + 1):
      where = unit[values == d]
      if len(where) > 1:
        cells_named = ", ".join(f"r{c // side + 1}c{c % side + 1}" for c in where)
        raise PuzzleError(f"the givens contradict each other: digit {d} appears {len(where)} times in "
                          f"{unit_kinds[u]} {u % side + 1} ({cells_named}); fix the puzzle string.")
  if sudoku.rate_puzzles(digits[None], box).num_solutions_M[0] == 0:
    raise PuzzleError("the givens contradict each other: no digit placement completes this Sudoku; "
                      "check the puzzle string.")
  return digits, box


def sudoku_tokens(digits: np.ndarray) -> np.ndarray:
  return sudoku.encode(digits[None])[0].astype(np.int32)


def sudoku_answer(tokens: np.ndarray) -> np.ndarray:
  """Digits from predicted tokens (tokens that are not digits become 0)."""
  digits = np.asarray(tokens, np.int64) - 1
  return np.where(digits >= 1, digits, 0)


def judge_sudoku(givens: np.ndarray, answer: np.ndarray, box: int) -> tuple[bool, bool]:
  """(a valid complete solution, consistent with the givens)."""
  valid = bool(sudoku.is_valid_solution(answer[None], box)[0])
  consistent = bool(np.all((givens == 0) | (givens == answer)))
  return valid, consistent


def format_sudoku(digits: np.ndarray, box: int) -> str:
  side = box * box
  grid = np.asarray(digits).reshape(side, side)
  lines = []
  for r in range(side):
    if r and r % box == 0:
      lines.append("-+-".join(["-" * (2 * box - 1)] * box))
    row = " | ".join(" ".join(str(d) if d else "." for d in grid[r, b * box:(b + 1) * box]) for b in range(box))
    lines.append(row)
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Maze
# ------------------------------------------------------------------------------------------------
def parse_maze(path: pathlib.Path) -> np.ndarray:
  """Tokens [H, W] of a text maze ('#' wall, ' ' open, 'S' start, 'G' goal), one row per line."""
  if not path.is_file():
    raise PuzzleError(f"maze file {path} does not exist.")
  rows = [line.rstrip("\r\n") for line in path.read_text().splitlines()]
  while rows and not rows[-1].strip():
    rows.pop()
  if not rows:
    raise PuzzleError(f"{path} holds no maze; write one row per line with '#' walls, ' ' open cells, S and G.")
  widths = sorted({len(r) for r in rows})
  if len(widths) > 1:
    raise PuzzleError(f"{path}: rows have different lengths {widths}; every row must be as long as the first "
                      "(spaces are open cells, so pad with spaces, not nothing).")
  if len(rows) != widths[0]:
    raise PuzzleError(f"{path}: the maze is {len(rows)}x{widths[0]}; mazes are square.")
  lookup = {ch: i + 1 for i, ch in enumerate(maze.CHARSET) if ch != "o"}
  for r, row in enumerate(rows):
    for c, ch in enumerate(row):
      if ch not in lookup:
        raise PuzzleError(f"{path}: character {ch!r} at row {r + 1}, column {c + 1} is not one of '#', ' ', "
                          "'S', 'G'.")
  tokens = np.array([[lookup[ch] for ch in row] for row in rows], np.int32)
  for token, name in ((maze.START, "S"), (maze.GOAL, "G")):
    if int((tokens == token).sum()) != 1:
      raise PuzzleError(f"{path}: the maze needs exactly one {name}, it has {int((tokens == token).sum())}.")
  start = tuple(int(x) for x in np.argwhere(tokens == maze.START)[0])
  goal = tuple(int(x) for x in np.argwhere(tokens == maze.GOAL)[0])
  dist, _ = maze.bfs(tokens != maze.WALL, start)
  if dist[goal] < 0:
    raise PuzzleError(f"{path}: G cannot be reached from S; there is no path to find.")
  return tokens


def judge_maze(maze_HxW: np.ndarray, answer_HxW: np.ndarray) -> bool:
  """True when the answer keeps the maze and marks one shortest S->G path with 'o'."""
  path = answer_HxW == maze.PATH
  if np.any(np.where(path, maze_HxW != maze.OPEN, answer_HxW != maze_HxW)):
    return False
  start = tuple(np.argwhere(maze_HxW == maze.START)[0])
  goal = tuple(np.argwhere(maze_HxW == maze.GOAL)[0])
  shortest = maze.bfs(maze_HxW != maze.WALL, start)[0][goal]
  walk = maze.bfs(path | (maze_HxW == maze.START) | (maze_HxW == maze.GOAL), start)[0][goal]
  return int(path.sum()) == shortest - 1 and walk == shortest


def format_maze(tokens_HxW: np.ndarray) -> str:
  chars = " " + maze.CHARSET
  return "\n".join("".join(chars[int(t)] if 0 <= t < len(chars) else "?" for t in row) for row in tokens_HxW)


# ------------------------------------------------------------------------------------------------
# ARC
# ------------------------------------------------------------------------------------------------
def parse_arc_task(path: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray | None]]:
  """The task's test inputs and (when given) outputs, checked as ARC grids (rectangular, colours 0-9)."""
  if not path.is_file():
    raise PuzzleError(f"ARC task file {path} does not exist.")
  try:
    raw: Any = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise PuzzleError(f"{path} is not valid JSON ({e}).") from None
  if not isinstance(raw, dict) or not isinstance(raw.get("test"), list) or not raw["test"]:
    raise PuzzleError(f"{path}: an ARC task is a JSON object with a non-empty 'test' list of {{'input': grid}}.")
  pairs = []
  for kind in ("train", "test"):
    for i, pair in enumerate(raw.get(kind) or []):
      if not isinstance(pair, dict) or "input" not in pair:
        raise PuzzleError(f"{path}: {kind}[{i}] needs an 'input' grid.")
      try:
        grids = [arc._parse_grid(pair[k], f"{path} {kind}[{i}].{k}")  # pylint: disable=protected-access
                 if k in pair else None for k in ("input", "output")]
      except BuildError as e:
        raise PuzzleError(str(e)) from None
      if kind == "test":
        pairs.append((grids[0], grids[1]))
  return pairs


def format_arc(grid: np.ndarray) -> str:
  return "\n".join(" ".join(str(int(c)) for c in row) for row in grid) if grid.size else "(empty grid)"
