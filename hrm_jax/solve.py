r"""Solve one puzzle with a trained model: `python -m hrm_jax.solve --checkpoint PATH --sudoku|--maze|--arc-task`.

  python -m hrm_jax.solve --checkpoint workdirs/demo --sudoku 1.3..2.4.4.3..12
  python -m hrm_jax.solve --checkpoint workdirs/maze --maze maze.txt
  python -m hrm_jax.solve --checkpoint workdirs/arc1 --arc-task 00576224.json --data data/arc-aug-1000

Prints the answer as a grid, the segments used and the halting confidence sigmoid(q_halt); for a Sudoku
whether the answer is a valid solution that keeps the givens, for a maze whether it marks a shortest path.
ARC models know tasks only through their puzzle embeddings, so --arc-task needs the dataset (--data) the
model was trained on: every augmented copy of the task in it votes, as in the original's evaluation, and
the two best answers are printed. Exit status: 0 when solved, 3 when the model's answer is wrong or
invalid, 1 for a bad puzzle, checkpoint or flag (one line on stderr), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
from typing import Sequence

import numpy as np

from hrm_jax.evaluation import cli

WRONG_ANSWER = 3


@functools.lru_cache(maxsize=8)
def _jitted_infer(cfg, halt_max_steps, early_halt):
  import jax  # pylint: disable=import-outside-toplevel
  from hrm_jax.model import arch  # pylint: disable=import-outside-toplevel
  return jax.jit(lambda p, b, t, x: arch.model_for(cfg).infer(p, b, cfg, t, x, halt_on_q=early_halt, halt_max_steps=halt_max_steps))


def _infer(model, inputs_BxS: np.ndarray, puzzle_ids_B: np.ndarray, halt_max_steps, early_halt):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  cfg = model.model_config
  batch = {"inputs": jnp.asarray(inputs_BxS, jnp.int32), "labels": jnp.zeros_like(jnp.asarray(inputs_BxS, jnp.int32)),
           "puzzle_identifiers": jnp.asarray(puzzle_ids_B, jnp.int32)}
  table = None if model.puzzle_table is None else jnp.asarray(model.puzzle_table, jnp.float32)
  out = _jitted_infer(cfg, halt_max_steps, early_halt)(
      jax.tree.map(jnp.asarray, model.params), {k: jnp.asarray(v, cfg.dtype) for k, v in model.buffers.items()},
      table, batch)
  return {"preds": np.asarray(jnp.argmax(out["logits"], -1)), "q_halt": np.asarray(out["q_halt_logits"], np.float64),
          "steps": np.asarray(out["steps"])}


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _check_kind(model, seq_len: int, vocab: int, what: str) -> None:
  cfg = model.model_config
  if cfg.seq_len != seq_len or cfg.vocab_size != vocab:
    raise cli.UsageError(f"{model.source} was trained on sequences of {cfg.seq_len} tokens from a vocabulary of "
                         f"{cfg.vocab_size}; {what} needs {seq_len} tokens from {vocab}. Use a model trained on "
                         "this kind and size of puzzle.")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hrm_jax.solve", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_model_flags(parser)
  puzzle = parser.add_mutually_exclusive_group(required=True)
  puzzle.add_argument("--sudoku", help="81 (9x9) or 16 (4x4) characters row by row, '.' or '0' for blanks")
  puzzle.add_argument("--maze", type=pathlib.Path, help="text file: '#' wall, ' ' open, 'S' start, 'G' goal")
  puzzle.add_argument("--arc-task", type=pathlib.Path, help="ARC task JSON ({'train': [...], 'test': [...]})")
  parser.add_argument("--data", type=pathlib.Path, help="the ARC dataset the model was trained on (identifiers.json)")
  parser.add_argument("--halt-max-steps", type=int, default=None, help="segments (default: the model's)")
  parser.add_argument("--early-halt", action="store_true", help="stop at the first segment with q_halt > q_continue")
  args = parser.parse_args(argv)

  def run() -> int:
    from hrm_jax.data import maze as maze_lib  # pylint: disable=import-outside-toplevel
    from hrm_jax.data import sudoku  # pylint: disable=import-outside-toplevel
    from hrm_jax.evaluation import puzzles  # pylint: disable=import-outside-toplevel
    if args.halt_max_steps is not None and args.halt_max_steps < 1:
      raise cli.UsageError(f"--halt-max-steps must be >= 1, got {args.halt_max_steps}")
    if args.sudoku is not None:
      givens, box = puzzles.parse_sudoku(args.sudoku)
      model = cli.load_model(args, seq_len=givens.size)
      _check_kind(model, givens.size, sudoku.vocab_size(box), f"a {box * box}x{box * box} Sudoku")
      out = _infer(model, puzzles.sudoku_tokens(givens)[None], np.zeros(1), args.halt_max_steps, args.early_halt)
      answer = puzzles.sudoku_answer(out["preds"][0])
      valid, consistent = puzzles.judge_sudoku(givens, answer, box)
      print(puzzles.format_sudoku(answer, box))
      ok = valid and consistent
      print(f"valid solution: {'yes' if valid else 'no'}; keeps the givens: {'yes' if consistent else 'no'}")
    elif args.maze is not None:
      grid = puzzles.parse_maze(args.maze)
      model = cli.load_model(args, seq_len=grid.size)
      _check_kind(model, grid.size, maze_lib.VOCAB_SIZE, f"a {grid.shape[0]}x{grid.shape[1]} maze")
      out = _infer(model, grid.reshape(1, -1), np.zeros(1), args.halt_max_steps, args.early_halt)
      answer = out["preds"][0].reshape(grid.shape)
      print(puzzles.format_maze(answer))
      ok = puzzles.judge_maze(grid, answer)
      print(f"marks a shortest path from S to G: {'yes' if ok else 'no'}")
    else:
      return _solve_arc(args, puzzles)
    print(f"segments used: {int(out['steps'][0])} (at most {args.halt_max_steps or model.model_config.halt_max_steps})"
          f"; halting confidence sigmoid(q_halt) = {_sigmoid(out['q_halt'][0]):.3f}")
    return 0 if ok else WRONG_ANSWER

  return cli.run(run)


def _solve_arc(args, puzzles) -> int:
  from hrm_jax.data import arc  # pylint: disable=import-outside-toplevel
  from hrm_jax.data import format as data_format  # pylint: disable=import-outside-toplevel
  from hrm_jax.evaluation import arc_eval  # pylint: disable=import-outside-toplevel
  pairs = puzzles.parse_arc_task(args.arc_task)
  if args.data is None:
    raise cli.UsageError("--arc-task needs --data DIR, the ARC dataset the model was trained on: the model knows "
                         "a task only through the puzzle embeddings of its identifiers in that dataset.")
  identifiers = data_format.load_identifiers(args.data)
  task = args.arc_task.stem
  variants = [(i, n) for i, n in enumerate(identifiers) if i and arc.parse_augmentation(n)[0] == task]
  if not any(n == task for _, n in variants):
    raise cli.UsageError(f"task {task!r} (the file's name) is not in {args.data}/identifiers.json, so the model "
                         "has no puzzle embedding for it; name the file after a task of the model's dataset.")
  model = cli.load_model(args, seq_len=arc.SEQ_LEN)
  _check_kind(model, arc.SEQ_LEN, arc.VOCAB_SIZE, "an ARC task")
  rows, ids, labels = [], [], []
  for test_input, _ in pairs:
    for ident, name in variants:
      _, tid, cmap = arc.parse_augmentation(name)
      rows.append(arc.grid_to_canvas(arc.apply_augmentation(test_input, tid, cmap)).ravel())
      ids.append(ident)
      labels.append(np.zeros(arc.SEQ_LEN, np.int32))
  out = _infer(model, np.stack(rows), np.asarray(ids), args.halt_max_steps, args.early_halt)
  predictions = {"inputs": np.stack(rows), "labels": np.stack(labels), "preds": out["preds"],
                 "puzzle_identifiers": np.asarray(ids), "q_halt_logits": out["q_halt"]}
  voted = sorted(arc_eval.vote(predictions, identifiers), key=lambda t: t.order)
  all_right = True
  for number, (entry, (_, truth)) in enumerate(zip(voted, pairs)):
    print(f"test input {number + 1}: {len(variants)} augmented copies voted")
    for attempt, (_, grid, votes, q) in enumerate(entry.ranked[:2]):
      right = "" if truth is None else ("  (correct)" if np.array_equal(grid, truth) else "  (wrong)")
      print(f"attempt {attempt + 1}: {votes} votes, mean halting confidence {q:.3f}{right}")
      print(puzzles.format_arc(grid))
    if truth is not None:
      all_right &= any(np.array_equal(g, truth) for _, g, _, _ in entry.ranked[:2])
  print(f"segments used: {int(out['steps'].max())} (at most {args.halt_max_steps or model.model_config.halt_max_steps})")
  return 0 if all_right else WRONG_ANSWER


if __name__ == "__main__":
  sys.exit(main())
