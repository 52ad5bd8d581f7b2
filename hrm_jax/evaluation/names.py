"""What each token id of a dataset means: per-class accuracy under names rather than ids."""

from __future__ import annotations

from hrm_jax.data import arc
from hrm_jax.data import format as data_format
from hrm_jax.data import maze

# The ARC palette's colour names, colour 0..9 (token 2..11), as hrm_jax.data.show draws them.
ARC_COLOURS = ("black", "blue", "red", "green", "yellow", "grey", "magenta", "orange", "sky", "maroon")
MAZE_NAMES = {maze.WALL: "wall", maze.OPEN: "open", maze.START: "start", maze.GOAL: "goal", maze.PATH: "path"}


def puzzle_kind(metadata: data_format.DatasetMetadata) -> str:
  """"sudoku", "maze", "arc" or "tokens" (unknown), from vocab size and sequence length as the builders set them."""
  side = int(round(metadata.seq_len ** 0.5))
  if metadata.vocab_size == arc.VOCAB_SIZE and metadata.seq_len == arc.SEQ_LEN:
    return "arc"
  if side * side == metadata.seq_len and metadata.vocab_size == side + 2 and side in (4, 9):
    return "sudoku"
  if metadata.vocab_size == maze.VOCAB_SIZE and side * side == metadata.seq_len:
    return "maze"
  return "tokens"


def token_name(kind: str, token: int) -> str:
  if token == 0:
    return "pad"
  if kind == "sudoku":
    return "blank" if token == 1 else f"digit {token - 1}"
  if kind == "maze":
    return MAZE_NAMES.get(token, f"token {token}")
  if kind == "arc":
    if token == arc.EOS:
      return "end of grid"
    return ARC_COLOURS[token - arc.COLOUR_OFFSET] if token - arc.COLOUR_OFFSET < len(ARC_COLOURS) else f"token {token}"
  return f"token {token}"
