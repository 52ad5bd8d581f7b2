"""Tests of the maze builder: shortest-path labels, augmentation, CSV import, errors."""

import collections
import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hrm_jax.data import format as data_format
from hrm_jax.data import maze
from hrm_jax.data.build_util import BuildError

REPO = pathlib.Path(__file__).resolve().parents[1]
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5


def reference_bfs(passable, source):
  """Independent BFS: distance and number of shortest paths (uncapped) from `source`."""
  h, w = passable.shape
  dist = {source: 0}
  ways = collections.Counter({source: 1})
  queue = collections.deque([source])
  while queue:
    r, c = queue.popleft()
    for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
      if 0 <= nr < h and 0 <= nc < w and passable[nr, nc]:
        if (nr, nc) not in dist:
          dist[(nr, nc)] = dist[(r, c)] + 1
          queue.append((nr, nc))
        if dist[(nr, nc)] == dist[(r, c)] + 1:
          ways[(nr, nc)] += ways[(r, c)]
  return dist, ways


def check_maze(inp, lab, min_len=0, unique=True):
  """Asserts the label marks exactly one shortest S→G path and changes nothing else."""
  starts, goals = np.argwhere(inp == START), np.argwhere(inp == GOAL)
  assert len(starts) == 1 and len(goals) == 1
  s, g = tuple(starts[0]), tuple(goals[0])
  assert set(np.unique(inp)) <= {WALL, OPEN, START, GOAL}
  on_path = lab == PATH
  # Walls, start, goal and open cells off the path are preserved.
  assert (lab[~on_path] == inp[~on_path]).all()
  assert (inp[on_path] == OPEN).all()
  dist, ways = reference_bfs(inp != WALL, s)
  assert g in dist
  shortest = dist[g]
  assert shortest >= min_len
  if unique:
    assert ways[g] == 1
  # The path cells plus S and G connect S to G in exactly `shortest` moves with no spare cells.
  along, _ = reference_bfs(on_path | (inp == START) | (inp == GOAL), s)
  assert along.get(g) == shortest
  assert on_path.sum() == shortest - 1
  return shortest


def test_generated_labels_are_unique_shortest_paths(tmp_path):
  out = tmp_path / "maze"
  summary = maze.build_maze_dataset(out, size=13, num_train=6, num_test=4, min_path_length=20,
                                    seed=3, log=None)
  meta = data_format.load_split(out, "train").metadata
  assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers) == (6, 169, 1)
  assert data_format.load_identifiers(out) == ["<blank>"]
  lengths = []
  for split in ("train", "test"):
    arrays = data_format.load_split(out, split).sets["all"]
    assert arrays["inputs"].dtype == np.uint8
    for inp, lab in zip(np.asarray(arrays["inputs"]), np.asarray(arrays["labels"])):
      lengths.append(check_maze(inp.reshape(13, 13), lab.reshape(13, 13), min_len=20))
  assert sorted(lengths) == sorted(summary["path_length"].tolist())


def test_ties_allowed_still_shortest():
  rng = np.random.default_rng(0)
  data = maze.generate_mazes(8, 11, rng, min_path_length=8, loop_fraction=0.5, allow_ties=True)
  tie_seen = False
  for inp, lab, length in zip(data.inputs_MxHxW, data.labels_MxHxW, data.path_length_M):
    assert check_maze(inp, lab, unique=False) == length
    s = tuple(np.argwhere(inp == START)[0])
    tie_seen |= reference_bfs(inp != WALL, s)[1][tuple(np.argwhere(inp == GOAL)[0])] > 1
  assert tie_seen  # Loops this dense make several shortest routes; the label is still one of them.


def test_dihedral_augmentation_groups(tmp_path):
  out = tmp_path / "maze"
  maze.build_maze_dataset(out, size=11, num_train=3, num_test=2, min_path_length=10, aug=True,
                          seed=4, log=None)
  arrays = data_format.load_split(out, "train").sets["all"]
  assert arrays["group_indices"].tolist() == [0, 8, 16, 24]
  inputs = np.asarray(arrays["inputs"]).reshape(-1, 11, 11)
  labels = np.asarray(arrays["labels"]).reshape(-1, 11, 11)
  expected = [lambda g: g, lambda g: np.rot90(g, 1), lambda g: np.rot90(g, 2),
              lambda g: np.rot90(g, 3), np.fliplr, np.flipud, lambda g: g.T,
              lambda g: np.fliplr(np.rot90(g, 1))]
  for group in range(3):
    base = group * 8
    for t in range(8):
      np.testing.assert_array_equal(inputs[base + t], expected[t](inputs[base]))
      np.testing.assert_array_equal(labels[base + t], expected[t](labels[base]))
      check_maze(inputs[base + t], labels[base + t])
  assert data_format.load_split(out, "test").sets["all"]["inputs"].shape == (2, 121)


def test_generator_is_seeded():
  a = maze.generate_mazes(3, 15, np.random.default_rng(9), 15)
  b = maze.generate_mazes(3, 15, np.random.default_rng(9), 15)
  c = maze.generate_mazes(3, 15, np.random.default_rng(10), 15)
  np.testing.assert_array_equal(a.labels_MxHxW, b.labels_MxHxW)
  assert not np.array_equal(a.labels_MxHxW, c.labels_MxHxW)


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["source", "q", "a", "rating"])
    writer.writerows(rows)


def _as_text(grid):
  return "".join(maze.CHARSET[v - 1] for v in grid.ravel())


def test_csv_import_matches_original_charset(tmp_path):
  data = maze.generate_mazes(5, 9, np.random.default_rng(1), 6)
  rows = [["gen", _as_text(i), _as_text(l), str(n)]
          for i, l, n in zip(data.inputs_MxHxW, data.labels_MxHxW, data.path_length_M)]
  src = tmp_path / "src"
  src.mkdir()
  _write_csv(src / "train.csv", rows[:3])
  _write_csv(src / "test.csv", rows[3:])
  out = tmp_path / "out"
  maze.build_maze_dataset(out, source=str(src), log=None)
  arrays = data_format.load_split(out, "train").sets["all"]
  # The original: token = CHARSET.index(ch) + 1.
  for (_, q, a, _), inp, lab in zip(rows, arrays["inputs"], arrays["labels"]):
    assert inp.tolist() == ["# SGo".index(ch) + 1 for ch in q]
    assert lab.tolist() == ["# SGo".index(ch) + 1 for ch in a]
  assert data_format.load_split(out, "test").metadata.seq_len == 81


def test_csv_errors_name_the_line(tmp_path):
  data = maze.generate_mazes(3, 9, np.random.default_rng(2), 6)
  rows = [["gen", _as_text(i), _as_text(l), "0"] for i, l in zip(data.inputs_MxHxW,
                                                                  data.labels_MxHxW)]
  rows[1][2] = "X" + rows[1][2][1:]
  src = tmp_path / "src"
  src.mkdir()
  _write_csv(src / "train.csv", rows)
  with pytest.raises(BuildError, match="lacks|does not exist"):
    maze.build_maze_dataset(tmp_path / "out", source=str(src), log=None)
  _write_csv(src / "test.csv", rows[:1])
  with pytest.raises(BuildError, match=r"train\.csv:3: character 'X'"):
    maze.build_maze_dataset(tmp_path / "out", source=str(src), log=None)
  rows[1] = ["gen", rows[0][1][:-1], rows[0][2][:-1], "0"]
  _write_csv(src / "train.csv", rows)
  proc = subprocess.run([sys.executable, "-m", "hrm_jax.data.build", "maze", "--output-dir",
                         str(tmp_path / "out"), "--source", str(src)],
                        capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "train.csv:3" in proc.stderr and "square" in proc.stderr
  assert not (tmp_path / "out").exists()


def test_impossible_requests_fail_clearly(tmp_path):
  with pytest.raises(BuildError, match="--size must be >= 5"):
    maze.build_maze_dataset(tmp_path / "o", size=3, num_train=1, num_test=1, log=None)
  with pytest.raises(BuildError, match="lower\\s+--min-path-length|lower --min-path-length"):
    maze.generate_mazes(1, 7, np.random.default_rng(0), 500, max_attempts=20)
  with pytest.raises(BuildError, match="not a directory"):
    maze.build_maze_dataset(tmp_path / "o", source=str(tmp_path / "nope"), log=None)
