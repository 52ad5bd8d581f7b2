"""Grid symmetries shared by the dataset builders: the 8 dihedral transforms and colour maps.

Dihedral ids follow the original's `dataset/common.py`: 0 identity, 1 rot90, 2 rot180, 3 rot270,
4 fliplr, 5 flipud, 6 transpose, 7 fliplr∘rot90 (anti-diagonal reflection). Rotations are numpy's
(counter-clockwise). All transforms act on the last two axes, so a batch `[B, H, W]` works too.
"""

from __future__ import annotations

import numpy as np

NUM_DIHEDRAL = 8
# DIHEDRAL_INVERSE[t] undoes transform t (rot90 and rot270 swap; the rest are involutions).
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
  """Applies dihedral transform `tid` (0..7) to the last two axes of `grid`."""
  if tid == 0:
    return grid
  if tid in (1, 2, 3):
    return np.rot90(grid, k=tid, axes=(-2, -1))
  if tid == 4:
    return grid[..., ::-1]
  if tid == 5:
    return grid[..., ::-1, :]
  if tid == 6:
    return np.swapaxes(grid, -1, -2)
  if tid == 7:
    return np.rot90(grid, k=1, axes=(-2, -1))[..., ::-1]
  raise ValueError(f"dihedral transform id must be in 0..7, got {tid}")


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
  """Undoes `dihedral_transform(grid, tid)`."""
  if not 0 <= tid < NUM_DIHEDRAL:
    raise ValueError(f"dihedral transform id must be in 0..7, got {tid}")
  return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])


def random_colour_map(rng: np.random.Generator, num_colours: int = 10) -> np.ndarray:
  """A permutation of colours 0..num_colours-1 that keeps 0 (ARC's black background) fixed."""
  return np.concatenate([[0], rng.permutation(np.arange(1, num_colours))]).astype(np.uint8)


def shuffle_sudoku(board_BxN: np.ndarray, solution_BxN: np.ndarray, rng: np.random.Generator,
                   box: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Applies one random validity-preserving Sudoku symmetry to each row of a batch.

  Boards hold digits 1..box² with 0 = blank, flattened row-major (`N = box⁴`). As the original's
  `shuffle_sudoku`: a digit permutation (0 fixed), a transpose with probability 1/2, then a row
  permutation (shuffled bands × shuffled rows within each band) and likewise for columns (stacks).
  The same symmetry is applied to a board and its solution; each batch row draws its own.
  """
  n = box * box
  board_BxNxN = np.asarray(board_BxN).reshape(-1, n, n)
  solution_BxNxN = np.asarray(solution_BxN).reshape(-1, n, n)
  num = board_BxNxN.shape[0]
  out_board = np.empty_like(board_BxNxN)
  out_solution = np.empty_like(solution_BxNxN)
  for i in range(num):
    digit_map = np.concatenate([[0], rng.permutation(np.arange(1, n + 1))])
    transpose = rng.random() < 0.5
    rows = np.concatenate([band * box + rng.permutation(box) for band in rng.permutation(box)])
    cols = np.concatenate([stack * box + rng.permutation(box) for stack in rng.permutation(box)])
    for src, dst in ((board_BxNxN, out_board), (solution_BxNxN, out_solution)):
      grid = src[i].T if transpose else src[i]
      dst[i] = digit_map[grid[rows][:, cols]]
  return out_board.reshape(num, n * n), out_solution.reshape(num, n * n)
