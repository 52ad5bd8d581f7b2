"""Maze datasets: a generator with BFS-verified shortest-path labels, the original's CSV reader, and
the builder.

Encoding as the original `build_maze_dataset.py`: characters of "# SGo" become tokens 1..5
(`#` wall, ` ` open, `S` start, `G` goal, `o` path in labels); PAD 0 unused; vocab 6; seq size².
The label is the input with the cells of a shortest S→G path (S and G excluded) set to `o`.

Generated mazes: a random spanning tree (recursive backtracker) over a lattice of rooms at odd
coordinates, then each remaining wall between two neighbouring rooms is knocked out with
probability `loop_fraction`, so there are several routes and the label must be the *shortest* one.
S is a random open cell and G a random open cell at BFS distance >= `min_path_length` (moves) whose
shortest path is unique (unless `allow_ties`), so the label is the only correct answer.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import pathlib
import time
from typing import Callable

import numpy as np

from hrm_jax.data import augment
from hrm_jax.data import build_util
from hrm_jax.data import format as data_format
from hrm_jax.data.build_util import BuildError

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
VOCAB_SIZE = len(CHARSET) + 1
_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


def default_min_path_length(size: int) -> int:
  """The original Maze-Hard threshold (110 moves on 30×30), scaled with the number of cells."""
  return int(110 * size * size / 900)


def _carve(size: int, rng: np.random.Generator, loop_fraction: float) -> np.ndarray:
  """A size×size grid of WALL/OPEN: a random spanning tree of rooms plus random extra openings."""
  rooms = (size - 1) // 2
  grid = np.full((size, size), WALL, dtype=np.uint8)
  # Rooms sit at odd coordinates; an even size leaves one spare wall line, put on a random side.
  off_r, off_c = rng.integers(0, size - 2 * rooms, size=2)
  pos = lambda i: 2 * i + 1
  visited = np.zeros((rooms, rooms), dtype=bool)
  start = tuple(rng.integers(0, rooms, size=2))
  visited[start] = True
  grid[off_r + pos(start[0]), off_c + pos(start[1])] = OPEN
  stack = [start]
  while stack:
    r, c = stack[-1]
    nexts = [(r + dr, c + dc) for dr, dc in _MOVES
             if 0 <= r + dr < rooms and 0 <= c + dc < rooms and not visited[r + dr, c + dc]]
    if not nexts:
      stack.pop()
      continue
    nr, nc = nexts[rng.integers(len(nexts))]
    visited[nr, nc] = True
    grid[off_r + pos(nr), off_c + pos(nc)] = OPEN
    grid[off_r + r + nr + 1, off_c + c + nc + 1] = OPEN  # The wall between the two rooms.
    stack.append((nr, nc))
  if loop_fraction > 0:
    # Walls between two horizontally or vertically adjacent rooms.
    walls = np.zeros_like(grid, dtype=bool)
    walls[off_r + 1:off_r + 2 * rooms:2, off_c + 2:off_c + 2 * rooms - 1:2] = True
    walls[off_r + 2:off_r + 2 * rooms - 1:2, off_c + 1:off_c + 2 * rooms:2] = True
    knock = walls & (grid == WALL) & (rng.random(grid.shape) < loop_fraction)
    grid[knock] = OPEN
  return grid


def bfs(open_HxW: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """BFS distances (-1 unreachable) and numbers of shortest paths (capped at 2) from `start`."""
  h, w = open_HxW.shape
  dist = np.full((h, w), -1, dtype=np.int64)
  ways = np.zeros((h, w), dtype=np.int64)
  dist[start], ways[start] = 0, 1
  queue = collections.deque([start])
  while queue:
    r, c = queue.popleft()
    for dr, dc in _MOVES:
      nr, nc = r + dr, c + dc
      if 0 <= nr < h and 0 <= nc < w and open_HxW[nr, nc]:
        if dist[nr, nc] < 0:
          dist[nr, nc] = dist[r, c] + 1
          queue.append((nr, nc))
        if dist[nr, nc] == dist[r, c] + 1:
          ways[nr, nc] = min(2, ways[nr, nc] + ways[r, c])
  return dist, ways


def shortest_path(open_HxW: np.ndarray, start: tuple[int, int], goal: tuple[int, int]
                  ) -> list[tuple[int, int]]:
  """One shortest path start→goal (inclusive) by walking BFS distances back from the goal."""
  dist, _ = bfs(open_HxW, start)
  if dist[goal] < 0:
    raise ValueError(f"goal {goal} is unreachable from {start}")
  path = [goal]
  r, c = goal
  while (r, c) != start:
    for dr, dc in _MOVES:
      nr, nc = r + dr, c + dc
      if (0 <= nr < dist.shape[0] and 0 <= nc < dist.shape[1] and
          dist[nr, nc] == dist[r, c] - 1 and dist[nr, nc] >= 0):
        r, c = nr, nc
        break
    path.append((r, c))
  return path[::-1]


@dataclasses.dataclass
class MazeSet:
  inputs_MxHxW: np.ndarray  # Tokens 1..4 (wall/open/start/goal).
  labels_MxHxW: np.ndarray  # Inputs with the shortest path's inner cells set to PATH.
  path_length_M: np.ndarray  # Moves from S to G (the CSV rating column for imported mazes).


def generate_mazes(count: int, size: int, rng: np.random.Generator, min_path_length: int,
                   loop_fraction: float = 0.05, allow_ties: bool = False,
                   exclude: set[bytes] | None = None, max_attempts: int | None = None) -> MazeSet:
  """`count` distinct mazes whose labels are BFS shortest paths of >= `min_path_length` moves."""
  if size < 5:
    raise BuildError(f"--size must be >= 5, got {size}.")
  seen = set() if exclude is None else set(exclude)
  inputs, labels, lengths = [], [], []
  attempts = 0
  max_attempts = max_attempts or 200 * count + 1000
  while len(inputs) < count:
    attempts += 1
    if attempts > max_attempts:
      raise BuildError(f"gave up after {attempts - 1} mazes: too few {size}x{size} mazes have a "
                       f"unique shortest path of >= {min_path_length} moves; lower "
                       "--min-path-length (or pass --allow-ties / raise --size).")
    grid = _carve(size, rng, loop_fraction)
    open_cells = np.argwhere(grid == OPEN)
    start = tuple(open_cells[rng.integers(len(open_cells))])
    dist, ways = bfs(grid == OPEN, start)
    ok = dist >= max(min_path_length, 1)
    if not allow_ties:
      ok &= ways == 1
    goals = np.argwhere(ok)
    if not len(goals):
      continue
    goal = tuple(goals[rng.integers(len(goals))])
    maze = grid.copy()
    maze[start], maze[goal] = START, GOAL
    key = maze.tobytes()
    if key in seen:
      continue
    seen.add(key)
    label = maze.copy()
    for cell in shortest_path(grid == OPEN, start, goal)[1:-1]:
      label[cell] = PATH
    inputs.append(maze)
    labels.append(label)
    lengths.append(int(dist[goal]))
  return MazeSet(np.stack(inputs), np.stack(labels), np.asarray(lengths, np.int64))


# ------------------------------------------------------------------------------------------------
# CSV (the original's layout: header, then source,q,a,rating; grid side = sqrt(len(q)))
# ------------------------------------------------------------------------------------------------


def read_maze_csv(path: pathlib.Path) -> MazeSet:
  """Reads one of the original's maze CSVs. Raises BuildError naming the bad line."""
  if not path.is_file():
    raise BuildError(f"maze CSV {path} does not exist; the source directory must hold train.csv "
                     "and test.csv (columns source,q,a,rating).")
  lookup = {ch: i + 1 for i, ch in enumerate(CHARSET)}
  inputs, labels, ratings = [], [], []
  side = None
  with open(path, newline="") as f:
    reader = csv.reader(f)
    if next(reader, None) is None:
      raise BuildError(f"{path} is empty; expected a header then source,q,a,rating rows.")
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if not row:
        continue
      if len(row) != 4:
        raise BuildError(f"{where}: expected 4 columns (source,q,a,rating), got {len(row)}.")
      _, q, a, rating = row
      n = int(round(len(q) ** 0.5))
      if n * n != len(q) or len(a) != len(q) or n == 0:
        raise BuildError(f"{where}: q and a must be the same square number of characters, got "
                         f"{len(q)} and {len(a)}.")
      if side is None:
        side = n
      elif n != side:
        raise BuildError(f"{where}: grid is {n}x{n} but earlier rows are {side}x{side}.")
      bad = [ch for ch in q + a if ch not in lookup]
      if bad:
        raise BuildError(f"{where}: character {bad[0]!r} is not in the maze charset {CHARSET!r}.")
      inputs.append(np.array([lookup[ch] for ch in q], np.uint8).reshape(n, n))
      labels.append(np.array([lookup[ch] for ch in a], np.uint8).reshape(n, n))
      try:
        ratings.append(int(float(rating)))
      except ValueError:
        raise BuildError(f"{where}: rating {rating!r} is not a number.") from None
  if not inputs:
    raise BuildError(f"{path} holds no mazes after its header.")
  return MazeSet(np.stack(inputs), np.stack(labels), np.asarray(ratings, np.int64))


# ------------------------------------------------------------------------------------------------
# Builder
# ------------------------------------------------------------------------------------------------


def dihedral_augment(data: MazeSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """All 8 dihedral transforms of each maze, in one group per maze (transform 0 first)."""
  inputs = np.stack([augment.dihedral_transform(data.inputs_MxHxW, t) for t in range(8)], axis=1)
  labels = np.stack([augment.dihedral_transform(data.labels_MxHxW, t) for t in range(8)], axis=1)
  num = data.inputs_MxHxW.shape[0]
  seq_len = int(np.prod(data.inputs_MxHxW.shape[1:]))
  return (inputs.reshape(num * 8, seq_len), labels.reshape(num * 8, seq_len),
          np.full(num, 8, np.int64))


def build_maze_dataset(output_dir: str | pathlib.Path, *, source: str = "generate",
                       size: int = 30, num_train: int | None = None, num_test: int | None = None,
                       min_path_length: int | None = None, loop_fraction: float = 0.05,
                       allow_ties: bool = False, aug: bool = False, seed: int = 0,
                       overwrite: bool = False, log: Callable[[str], None] | None = print) -> dict:
  """Builds `<output_dir>/{train,test}` and identifiers.json; returns a summary dict.

  `source` is "generate" (defaults 1000 train / 1000 test) or a directory holding the original's
  train.csv and test.csv (defaults: every row; `num_train`/`num_test` subsample at random).
  `aug` adds the 8 dihedral transforms of each train maze (as the original's --aug).
  """
  for name, value in (("--num-train", num_train), ("--num-test", num_test)):
    if value is not None and value < 0:
      raise BuildError(f"{name} must be >= 0, got {value}.")
  if source == "generate" and (num_train, num_test) == (0, 0):
    raise BuildError("--num-train and --num-test are both 0; nothing to build.")
  if not 0 <= loop_fraction <= 1:
    raise BuildError(f"--loop-fraction must be in [0, 1], got {loop_fraction}.")
  build_util.check_output_dir(output_dir, overwrite)
  say = log or (lambda _: None)
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  if source == "generate":
    min_len = default_min_path_length(size) if min_path_length is None else min_path_length
    train_count = 1000 if num_train is None else num_train
    test_count = 1000 if num_test is None else num_test
    say(f"Generating {train_count} train + {test_count} test {size}x{size} mazes (shortest path "
        f">= {min_len} moves, loop fraction {loop_fraction})")
    both = generate_mazes(train_count + test_count, size, rng, min_len, loop_fraction, allow_ties)
    take = lambda sl: MazeSet(both.inputs_MxHxW[sl], both.labels_MxHxW[sl], both.path_length_M[sl])
    train, test = take(slice(0, train_count)), take(slice(train_count, None))
  else:
    path = pathlib.Path(source)
    if not path.is_dir():
      raise BuildError(f"--source {source} is not a directory; pass 'generate' or a directory "
                       "holding the original's train.csv and test.csv.")
    missing = [name for name in ("train.csv", "test.csv") if not (path / name).is_file()]
    if missing:
      raise BuildError(f"{path} lacks {', '.join(missing)}; a maze source directory must hold "
                       "train.csv and test.csv (columns source,q,a,rating).")
    train, test = read_maze_csv(path / "train.csv"), read_maze_csv(path / "test.csv")
    if train.inputs_MxHxW.shape[1:] != test.inputs_MxHxW.shape[1:]:
      raise BuildError(f"{path}: train mazes are {train.inputs_MxHxW.shape[1:]} but test mazes are "
                       f"{test.inputs_MxHxW.shape[1:]}; both splits need the same grid size.")
    sub = lambda s, limit: MazeSet(*(a[build_util.take_subset(rng, len(s.inputs_MxHxW), limit)]
                                     for a in (s.inputs_MxHxW, s.labels_MxHxW, s.path_length_M)))
    train, test = sub(train, num_train), sub(test, num_test)
  generate_seconds = time.perf_counter() - start

  seq_len = int(np.prod(train.inputs_MxHxW.shape[1:]))
  if aug:
    train_inputs, train_labels, sizes = dihedral_augment(train)
  else:
    num = train.inputs_MxHxW.shape[0]
    train_inputs = train.inputs_MxHxW.reshape(num, seq_len)
    train_labels = train.labels_MxHxW.reshape(num, seq_len)
    sizes = np.ones(num, np.int64)
  num_test_mazes = test.inputs_MxHxW.shape[0]
  with build_util.atomic_output_dir(output_dir, overwrite) as scratch:
    build_util.write_single_example_split(scratch, "train", train_inputs, train_labels, sizes,
                                          VOCAB_SIZE)
    build_util.write_single_example_split(scratch, "test",
                                          test.inputs_MxHxW.reshape(num_test_mazes, seq_len),
                                          test.labels_MxHxW.reshape(num_test_mazes, seq_len),
                                          np.ones(num_test_mazes, np.int64), VOCAB_SIZE)
    data_format.write_identifiers(scratch, [data_format.BLANK_IDENTIFIER])
  lengths = np.concatenate([train.path_length_M, test.path_length_M])
  summary = {"train_puzzles": int(train_inputs.shape[0]), "train_groups": int(len(sizes)),
             "test_puzzles": int(num_test_mazes), "generate_seconds": generate_seconds,
             "path_length": lengths}
  say(f"Wrote {output_dir}: {summary['train_puzzles']} train puzzles in {summary['train_groups']} "
      f"groups, {num_test_mazes} test puzzles ({generate_seconds:.1f}s to "
      f"{'generate' if source == 'generate' else 'read'})")
  if source == "generate":
    q = np.percentile(lengths, [0, 50, 90, 100])
    say(f"Shortest-path length (moves): min {q[0]:.0f}, median {q[1]:.0f}, p90 {q[2]:.0f}, "
        f"max {q[3]:.0f}, mean {lengths.mean():.1f}")
  return summary
