"""Renders puzzles of a dataset (and optionally a model's predictions) as coloured grids.

  python -m hrm_jax.data.show data/sudoku-4x4-demo --split test --num 8 --out /tmp/sudoku.html
  python -m hrm_jax.data.show data/arc-aug-1000 --predictions preds.npz --out /tmp/arc.png

HTML is a single self-contained file (inline styles, no scripts or downloads); the PNG (Pillow) has the
same captions: puzzle names, per-example correctness and panel titles. Sudoku shows digits (givens
white, solved cells blue, wrong predictions red), mazes walls/start/goal/path, ARC the standard colour
palette cropped to the used part of the canvas. In every prediction picture each wrong cell has a white
frame (on ARC it is the only mark, since the fill shows the predicted colour).

The predictions file is an .npz with `inputs`, `labels`, `puzzle_identifiers` and either `preds`
[N, seq] or `logits` [N, seq, vocab] (argmax is taken); rows whose inputs are all PAD are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import pathlib
import sys
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hrm_jax.data import format as data_format
from hrm_jax.model.losses import IGNORE_LABEL_ID

KINDS = ("sudoku", "maze", "arc")
ARC_PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE",
               "#FF851B", "#7FDBFF", "#870C25")
_PAD_COLOUR, _EOS_COLOUR, _WRONG_COLOUR = "#EEEEEE", "#BBBBBB", "#FF6B6B"
_MAZE_COLOURS = {0: _PAD_COLOUR, 1: "#222222", 2: "#FFFFFF", 3: "#2ECC40", 4: "#FF4136",
                 5: "#FF9F1C"}
_MARK_COLOUR = "#FFFFFF"  # Frame on wrong predicted cells; not in the ARC palette nor any fill of a wrong cell.
_HTML_MARK = f"box-shadow:inset 0 0 0 2px {_MARK_COLOUR}"
_GRID_LINE, _BOX_LINE = (200, 200, 200), (40, 40, 40)
CELL_PIXELS = {"sudoku": 24, "maze": 8, "arc": 12}


class ShowError(ValueError):
  """Bad arguments or input files; reported as one line by the CLI."""


@dataclasses.dataclass
class Panel:
  """One rendered grid: per-cell colour, text and whether it is a wrong prediction."""

  title: str
  tokens: np.ndarray  # [H, W] token ids shown (for machine checks of the HTML).
  colours: list[list[str]]
  texts: list[list[str]]
  wrong: np.ndarray  # [H, W] bool
  box: int = 0  # Sudoku box size, for thick box borders; 0 otherwise.


@dataclasses.dataclass
class Example:
  title: str
  panels: list[Panel]


def detect_kind(metadata: data_format.DatasetMetadata) -> str:
  """Guesses the puzzle kind from vocab size and sequence length (as the builders set them)."""
  side = int(round(metadata.seq_len ** 0.5))
  if metadata.vocab_size == 12 and metadata.seq_len == 900:
    return "arc"
  if side * side == metadata.seq_len and metadata.vocab_size == side + 2 and side in (4, 9):
    return "sudoku"
  if metadata.vocab_size == 6 and side * side == metadata.seq_len:
    return "maze"
  raise ShowError(f"cannot tell the puzzle kind from vocab_size={metadata.vocab_size}, "
                  f"seq_len={metadata.seq_len}; pass --kind {{{','.join(KINDS)}}}.")


# ------------------------------------------------------------------------------------------------
# Panels per kind
# ------------------------------------------------------------------------------------------------


def _sudoku_panel(title: str, tokens: np.ndarray, given: np.ndarray, wrong: np.ndarray) -> Panel:
  side = tokens.shape[0]
  colours, texts = [], []
  for r in range(side):
    colours.append([])
    texts.append([])
    for c in range(side):
      t = int(tokens[r, c])
      texts[-1].append(str(t - 1) if t >= 2 else "")
      colour = "#FFFFFF" if given[r, c] else "#DCEBFF"
      if t == 0:
        colour = _PAD_COLOUR
      if wrong[r, c]:
        colour = _WRONG_COLOUR
      colours[-1].append(colour)
  return Panel(title, tokens, colours, texts, wrong, box=int(round(side ** 0.5)))


def _maze_panel(title: str, tokens: np.ndarray, wrong: np.ndarray) -> Panel:
  colours = [[_WRONG_COLOUR if wrong[r, c] else _MAZE_COLOURS.get(int(t), "#FF00FF")
              for c, t in enumerate(row)] for r, row in enumerate(tokens)]
  texts = [["" for _ in row] for row in tokens]
  return Panel(title, tokens, colours, texts, wrong)


def _arc_colour(t: int) -> str:
  if t == 0:
    return _PAD_COLOUR
  if t == 1:
    return _EOS_COLOUR
  if 2 <= t < 12:
    return ARC_PALETTE[t - 2]
  return "#FF00FF"


def _arc_panel(title: str, tokens: np.ndarray, wrong: np.ndarray) -> Panel:
  colours = [[_arc_colour(int(t)) for t in row] for row in tokens]
  texts = [["" for _ in row] for row in tokens]
  return Panel(title, tokens, colours, texts, wrong)


def _used_box(*grids: np.ndarray) -> tuple[slice, slice]:
  """Bounding box of non-PAD cells over the given canvases (the whole canvas if all PAD)."""
  used = np.zeros(grids[0].shape, dtype=bool)
  for g in grids:
    used |= g != 0
  if not used.any():
    return slice(None), slice(None)
  rows, cols = np.flatnonzero(used.any(1)), np.flatnonzero(used.any(0))
  return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def make_example(kind: str, title: str, inputs: np.ndarray, labels: np.ndarray,
                 preds: np.ndarray | None) -> Example:
  """Panels (input, label, prediction) for one example given flat token rows."""
  side = int(round(inputs.shape[0] ** 0.5))
  if side * side != inputs.shape[0]:
    raise ShowError(f"sequence length {inputs.shape[0]} is not a square grid.")
  inp = inputs.reshape(side, side).astype(np.int64)
  lab = labels.reshape(side, side).astype(np.int64)
  lab = np.where(lab == IGNORE_LABEL_ID, 0, lab)
  pred = None if preds is None else preds.reshape(side, side).astype(np.int64)
  no_wrong = np.zeros_like(inp, dtype=bool)
  wrong = no_wrong if pred is None else (lab != 0) & (pred != lab)
  status = "" if pred is None else (" · correct" if not wrong.any()
                                    else f" · wrong ({int(wrong.sum())} cells)")
  if kind == "arc":
    rs, cs = _used_box(inp)
    ls, lc = _used_box(lab)
    panels = [_arc_panel("input", inp[rs, cs], no_wrong[rs, cs]),
              _arc_panel("label", lab[ls, lc], no_wrong[ls, lc])]
    if pred is not None:
      panels.append(_arc_panel("prediction", pred[ls, lc], wrong[ls, lc]))
  elif kind == "sudoku":
    given = inp >= 2
    panels = [_sudoku_panel("input", inp, np.ones_like(given), no_wrong),
              _sudoku_panel("label", lab, given, no_wrong)]
    if pred is not None:
      panels.append(_sudoku_panel("prediction", pred, given, wrong))
  else:
    panels = [_maze_panel("input", inp, no_wrong), _maze_panel("label", lab, no_wrong)]
    if pred is not None:
      panels.append(_maze_panel("prediction", pred, wrong))
  return Example(title + status, panels)


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def render_html(examples: Sequence[Example], heading: str) -> str:
  """A standalone HTML page of all examples (no scripts, no external resources)."""
  out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
         f"<title>{html.escape(heading)}</title>",
         "<style>body{font-family:sans-serif;margin:16px}"
         ".ex{margin:0 0 18px 0}.ex h3{font-size:14px;margin:4px 0}"
         ".panel{display:inline-block;vertical-align:top;margin-right:16px}"
         ".panel p{margin:2px 0;font-size:12px;color:#555}"
         "table.g{border-collapse:collapse}table.g td{width:16px;height:16px;padding:0;"
         "text-align:center;font-size:11px;border:1px solid #ccc}"
         "table.s td{width:22px;height:22px;font-size:14px}</style></head><body>",
         f"<h2>{html.escape(heading)}</h2>"]
  for example in examples:
    out.append(f"<div class='ex'><h3>{html.escape(example.title)}</h3>")
    for panel in example.panels:
      token_text = ";".join(" ".join(str(int(t)) for t in row) for row in panel.tokens)
      cls = "g s" if panel.box else "g"
      out.append(f"<div class='panel'><p>{html.escape(panel.title)}</p>"
                 f"<table class='{cls}' data-kind='{html.escape(panel.title)}' "
                 f"data-tokens='{token_text}'>")
      for r, (colour_row, text_row) in enumerate(zip(panel.colours, panel.texts)):
        cells = []
        for c, (colour, text) in enumerate(zip(colour_row, text_row)):
          style = f"background:{colour}"
          if panel.wrong[r, c]:
            style += f";{_HTML_MARK}"
          if panel.box:
            if c % panel.box == 0 and c:
              style += ";border-left:2px solid #333"
            if r % panel.box == 0 and r:
              style += ";border-top:2px solid #333"
          cells.append(f"<td style='{style}'>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
      out.append("</table></div>")
    out.append("</div>")
  out.append("</body></html>")
  return "\n".join(out)


def _hex(colour: str) -> tuple[int, int, int]:
  return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)
  except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  return right - left, bottom - top


def _draw_panel(draw: ImageDraw.ImageDraw, panel: Panel, x0: int, y0: int, cell: int) -> None:
  """Draws `panel`'s grid with its top-left grid line at (x0, y0): cells, digits, box lines, wrong marks."""
  h, w = panel.tokens.shape
  draw.rectangle((x0, y0, x0 + w * cell, y0 + h * cell), fill=_GRID_LINE)
  digits = _font(max(8, cell * 2 // 3))
  for r in range(h):
    for c in range(w):
      x, y = x0 + c * cell + 1, y0 + r * cell + 1
      draw.rectangle((x, y, x + cell - 2, y + cell - 2), fill=_hex(panel.colours[r][c]))
      if panel.wrong[r, c]:
        # A frame inside the cell (the fill keeps showing the predicted colour, as ARC needs).
        draw.rectangle((x, y, x + cell - 2, y + cell - 2), outline=_hex(_MARK_COLOUR),
                       width=max(1, cell // 6))
      text = panel.texts[r][c]
      if text and cell >= 10:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=digits)
        draw.text((x + (cell - 1 - (right - left)) // 2 - left, y + (cell - 1 - (bottom - top)) // 2 - top),
                  text, fill=(0, 0, 0), font=digits)
  if panel.box:
    for k in range(0, h + 1, panel.box):
      draw.line((x0, y0 + k * cell, x0 + w * cell, y0 + k * cell), fill=_BOX_LINE)
    for k in range(0, w + 1, panel.box):
      draw.line((x0 + k * cell, y0, x0 + k * cell, y0 + h * cell), fill=_BOX_LINE)


def render_png(examples: Sequence[Example], kind: str) -> tuple[Image.Image, list[list[tuple[int, int]]]]:
  """One RGB picture: an example per row under its caption, its panels left to right under their titles.

  Returns the picture and, per example and panel, the (x, y) of the grid's top-left corner (cell (r, c)
  covers x + c·cell .. x + (c+1)·cell, with `cell = CELL_PIXELS[kind]`).
  """
  cell, gap = CELL_PIXELS[kind], 12
  caption_font, title_font = _font(13), _font(11)
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  caption_h = _text_size(measure, "Ag", caption_font)[1] + 6
  title_h = _text_size(measure, "Ag", title_font)[1] + 4
  layout, rows, width, y = [], [], 0, gap // 2
  for example in examples:
    x, origins = gap, []
    grid_top = y + caption_h + title_h
    for panel in example.panels:
      origins.append((x, grid_top))
      panel_w = max(panel.tokens.shape[1] * cell + 1, _text_size(measure, panel.title, title_font)[0])
      x += panel_w + gap
    width = max(width, x, gap + _text_size(measure, example.title, caption_font)[0] + gap)
    height = max(p.tokens.shape[0] for p in example.panels) * cell + 1
    rows.append((y, example, origins))
    layout.append(origins)
    y = grid_top + height + gap
  image = Image.new("RGB", (width, y), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  for top, example, origins in rows:
    draw.text((gap, top), example.title, fill=(0, 0, 0), font=caption_font)
    for panel, (x0, y0) in zip(example.panels, origins):
      draw.text((x0, y0 - title_h), panel.title, fill=(85, 85, 85), font=title_font)
      _draw_panel(draw, panel, x0, y0, cell)
  return image, layout


# ------------------------------------------------------------------------------------------------
# Loading rows
# ------------------------------------------------------------------------------------------------


def _names(data_dir: pathlib.Path) -> list[str] | None:
  try:
    return data_format.load_identifiers(data_dir)
  except data_format.DatasetError:
    return None


def _puzzle_name(names: list[str] | None, identifier: int) -> str:
  if names is not None and 0 <= identifier < len(names):
    return names[identifier]
  return f"id {identifier}"


def collect_examples(data_dir: str | pathlib.Path, split: str = "test", num: int = 8,
                     start: int = 0, predictions: str | pathlib.Path | None = None,
                     kind: str = "auto") -> tuple[list[Example], str]:
  """Examples to render (dataset rows, or rows of a predictions file) and the puzzle kind."""
  data_dir = pathlib.Path(data_dir)
  metadata = data_format.load_metadata(data_dir, split)
  kind = detect_kind(metadata) if kind == "auto" else kind
  if kind not in KINDS:
    raise ShowError(f"--kind must be auto or one of {KINDS}, got {kind!r}.")
  names = _names(data_dir)
  examples = []
  if predictions is None:
    loaded = data_format.load_split(data_dir, split)
    for set_name in metadata.sets:
      arrays = loaded.sets[set_name]
      total = arrays["inputs"].shape[0]
      for i in range(start, min(total, start + num - len(examples))):
        puzzle = int(np.searchsorted(arrays["puzzle_indices"], i, side="right")) - 1
        ident = int(arrays["puzzle_identifiers"][puzzle])
        title = f"{split}/{set_name} example {i} · puzzle {_puzzle_name(names, ident)}"
        examples.append(make_example(kind, title, np.asarray(arrays["inputs"][i]),
                                     np.asarray(arrays["labels"][i]), None))
      if len(examples) >= num:
        break
    return examples, kind

  path = pathlib.Path(predictions)
  if not path.is_file():
    raise ShowError(f"predictions file {path} does not exist.")
  try:
    data = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise ShowError(f"{path} is not a readable .npz file ({e}).") from None
  missing = [k for k in ("inputs", "labels") if k not in data]
  if missing or ("preds" not in data and "logits" not in data):
    raise ShowError(f"{path} must hold inputs, labels and preds or logits; it has "
                    f"{sorted(data.keys())}.")
  inputs, labels = np.asarray(data["inputs"]), np.asarray(data["labels"])
  preds = np.asarray(data["preds"]) if "preds" in data else np.asarray(data["logits"]).argmax(-1)
  if not inputs.shape == labels.shape == preds.shape or inputs.ndim != 2:
    raise ShowError(f"{path}: inputs {inputs.shape}, labels {labels.shape} and preds "
                    f"{preds.shape} must all be [N, seq_len].")
  if inputs.shape[1] != metadata.seq_len:
    raise ShowError(f"{path}: sequence length {inputs.shape[1]} does not match the dataset's "
                    f"seq_len {metadata.seq_len}; is this the right DIR?")
  identifiers = (np.asarray(data["puzzle_identifiers"]) if "puzzle_identifiers" in data
                 else np.zeros(len(inputs), np.int64))
  rows = [i for i in range(len(inputs)) if (inputs[i] != metadata.pad_id).any()]
  for i in rows[start:start + num]:
    title = f"prediction row {i} · puzzle {_puzzle_name(names, int(identifiers[i]))}"
    examples.append(make_example(kind, title, inputs[i], labels[i], preds[i]))
  return examples, kind


def show(data_dir: str | pathlib.Path, out: str | pathlib.Path, split: str = "test", num: int = 8,
         start: int = 0, predictions: str | pathlib.Path | None = None, kind: str = "auto") -> str:
  """Renders examples to `out` (.html or .png); returns the output path."""
  out = pathlib.Path(out)
  suffix = out.suffix.lower()
  if suffix not in (".html", ".htm", ".png"):
    raise ShowError(f"--out must end in .html or .png, got {out.name!r}.")
  if not out.parent.is_dir():
    raise ShowError(f"directory {out.parent} of --out does not exist.")
  examples, kind = collect_examples(data_dir, split, num, start, predictions, kind)
  if not examples:
    raise ShowError(f"nothing to show: no examples from index {start} in {data_dir} ({split}).")
  if suffix == ".png":
    render_png(examples, kind)[0].save(out, format="PNG")
  else:
    heading = f"{data_dir} · {split} · {kind}" + (f" · {predictions}" if predictions else "")
    out.write_text(render_html(examples, heading), encoding="utf-8")
  return str(out)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m hrm_jax.data.show",
      description="Render puzzles (input, label, prediction) as coloured grids to HTML or PNG.")
  parser.add_argument("data_dir", metavar="DIR", help="Dataset directory (holds train/ and test/).")
  parser.add_argument("--split", default="test", help="Split to read (default test).")
  parser.add_argument("--predictions", default=None, metavar="FILE.npz",
                      help="Predictions .npz (inputs, labels, preds or logits, "
                           "puzzle_identifiers); its rows are shown instead of the split's.")
  parser.add_argument("--num", type=int, default=8, help="Number of examples (default 8).")
  parser.add_argument("--start", type=int, default=0, help="Index of the first example shown.")
  parser.add_argument("--kind", default="auto", choices=("auto",) + KINDS,
                      help="Puzzle kind; auto detects it from vocab size and sequence length.")
  parser.add_argument("--out", required=True, metavar="FILE.{html,png}",
                      help="Output file: .html (self-contained) or .png.")
  args = parser.parse_args(argv)
  if args.num < 1 or args.start < 0:
    print("error: --num must be >= 1 and --start >= 0.", file=sys.stderr)
    return 2
  try:
    path = show(args.data_dir, args.out, args.split, args.num, args.start, args.predictions,
                args.kind)
  except (ShowError, data_format.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
