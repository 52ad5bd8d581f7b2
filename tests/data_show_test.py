"""Tests of the dataset visualiser (HTML and PNG output, predictions, kind detection)."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from hrm_jax.data import arc
from hrm_jax.data import demo
from hrm_jax.data import format as data_format
from hrm_jax.data import maze
from hrm_jax.data import show

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return pathlib.Path(demo.ensure_demo_dataset(tmp_path_factory.mktemp("show") / "demo"))


def _tables(text):
  """(panel title, token rows) of every grid in the HTML, in order."""
  found = re.findall(r"data-kind='([^']*)' data-tokens='([^']*)'", text)
  return [(kind, [[int(t) for t in row.split()] for row in tokens.split(";")])
          for kind, tokens in found]


def test_html_contains_the_dataset_grids(demo_dir, tmp_path):
  out = tmp_path / "demo.html"
  proc = subprocess.run([sys.executable, "-m", "hrm_jax.data.show", str(demo_dir), "--split",
                         "test", "--num", "3", "--start", "2", "--out", str(out)],
                        capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  text = out.read_text()
  assert text.startswith("<!DOCTYPE html>") and "<script" not in text and "http" not in text
  tables = _tables(text)
  arrays = data_format.load_split(demo_dir, "test").sets["all"]
  assert [k for k, _ in tables] == ["input", "label"] * 3
  for k in range(3):
    np.testing.assert_array_equal(np.array(tables[2 * k][1]).ravel(), arrays["inputs"][2 + k])
    np.testing.assert_array_equal(np.array(tables[2 * k + 1][1]).ravel(), arrays["labels"][2 + k])
  # Sudoku digits are drawn: a label row shows digit = token - 1 in each cell.
  first_label = np.asarray(arrays["labels"][2]).reshape(4, 4)
  row_html = re.findall(r"<tr>(.*?)</tr>", text)[4]
  assert re.findall(r">(\d)</td>", row_html) == [str(t - 1) for t in first_label[0]]


def test_predictions_from_logits_mark_wrong_cells(demo_dir, tmp_path):
  arrays = data_format.load_split(demo_dir, "test").sets["all"]
  inputs = np.asarray(arrays["inputs"][:4]).astype(np.int32)
  labels = np.asarray(arrays["labels"][:4]).astype(np.int32)
  preds = labels.copy()
  preds[1, 5] = 2 if labels[1, 5] != 2 else 3  # One wrong cell in row 1.
  logits = np.eye(6, dtype=np.float32)[preds] * 5.0
  # A padding row (all PAD inputs) is skipped.
  inputs = np.concatenate([inputs, np.zeros((1, 16), np.int32)])
  labels = np.concatenate([labels, np.full((1, 16), -100, np.int32)])
  logits = np.concatenate([logits, np.zeros((1, 16, 6), np.float32)])
  npz = tmp_path / "preds.npz"
  np.savez(npz, inputs=inputs, labels=labels, logits=logits,
           puzzle_identifiers=np.zeros(5, np.int32))
  out = tmp_path / "preds.html"
  show.show(demo_dir, out, predictions=npz, num=10)
  text = out.read_text()
  tables = _tables(text)
  assert [k for k, _ in tables] == ["input", "label", "prediction"] * 4
  np.testing.assert_array_equal(np.array(tables[5][1]).ravel(), preds[1])
  titles = re.findall(r"<h3>(.*?)</h3>", text)
  assert len(titles) == 4
  assert "wrong (1 cells)" in titles[1]
  assert all("correct" in titles[k] for k in (0, 2, 3))
  assert text.count(show._WRONG_COLOUR) == 1


def _read_png(path):
  """The PNG's RGB pixels, read back by Pillow (a real decoder checks the file)."""
  with Image.open(path) as image:
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def _arc_dataset(tmp_path):
  root = tmp_path / "tasks" / "evaluation"
  root.mkdir(parents=True)
  pair = {"input": [[1, 2, 3], [4, 5, 6]], "output": [[7, 8, 0], [3, 3, 1]]}
  (root / "t1.json").write_text(json.dumps({"train": [pair], "test": [pair, pair]}))
  out = tmp_path / "arc"
  arc.build_arc_dataset(out, sources=[str(tmp_path / "tasks")], num_aug=0, log=None)
  return out


def _predictions_with_wrong_cells(data_dir, tmp_path, wrong_cells):
  """An npz of the test split's first rows, predicted right except at `wrong_cells` [(row, position)]."""
  arrays = data_format.load_split(data_dir, "test").sets["all"]
  n = 1 + max(row for row, _ in wrong_cells)
  inputs, labels = np.asarray(arrays["inputs"][:n]), np.asarray(arrays["labels"][:n])
  preds = np.where(labels < 0, 0, labels)
  for row, position in wrong_cells:
    assert labels[row, position] >= 2, "pick a supervised cell"
    preds[row, position] = 2 if labels[row, position] != 2 else 3
  npz = tmp_path / "preds.npz"
  np.savez(npz, inputs=inputs, labels=labels, preds=preds, puzzle_identifiers=np.zeros(n, np.int32))
  return npz, labels, preds


@pytest.mark.parametrize("kind", ["arc", "sudoku"])
def test_png_captions_and_marks_exactly_the_wrong_cells(kind, demo_dir, tmp_path):
  data_dir = _arc_dataset(tmp_path) if kind == "arc" else demo_dir
  # ARC: cells of the 2x3 output grid (canvas row stride 30); Sudoku: cells of the 4x4 board.
  wrong = [(0, 0), (0, 31), (1, 2)] if kind == "arc" else [(0, 5), (1, 0), (1, 15)]
  npz, _, _ = _predictions_with_wrong_cells(data_dir, tmp_path, wrong)
  out = pathlib.Path(show.show(data_dir, tmp_path / "p.png", predictions=npz))
  pixels = _read_png(out)
  examples, detected = show.collect_examples(data_dir, predictions=npz)
  image, layout = show.render_png(examples, detected)
  assert detected == kind and len(examples) == 2
  np.testing.assert_array_equal(np.asarray(image), pixels)  # The file holds what was rendered.

  cell, white = show.CELL_PIXELS[kind], np.array([255, 255, 255])
  marked = set()
  for k, (example, origins) in enumerate(zip(examples, layout)):
    assert [p.title for p in example.panels] == ["input", "label", "prediction"]
    for panel, (x0, y0) in zip(example.panels, origins):
      h, w = panel.tokens.shape
      for r in range(h):
        for c in range(w):
          corner = pixels[y0 + r * cell + 1, x0 + c * cell + 1]  # On the wrong-cell frame, if any.
          centre = pixels[y0 + r * cell + cell // 2, x0 + c * cell + 1 + cell // 3]
          if panel.wrong[r, c]:
            marked.add((k, r, c))
            np.testing.assert_array_equal(corner, white)
          else:
            np.testing.assert_array_equal(corner, show._hex(panel.colours[r][c]))
          if kind == "arc":  # The fill still shows the predicted colour inside the frame.
            np.testing.assert_array_equal(centre, show._hex(panel.colours[r][c]))
    # Captions: the title band over the grids holds dark text pixels.
    top = origins[0][1]
    band = pixels[max(top - 40, 0):top - 1, :]
    assert (band.max(-1) < 100).any(), f"no caption text above example {k}"
  # Exactly the changed cells are marked: map the flat positions onto each prediction panel.
  assert len(marked) == len(wrong)
  assert sorted(k for k, _, _ in marked) == sorted(row for row, _ in wrong)
  assert "wrong (2 cells)" in examples[0].title if kind == "arc" else "wrong (1 cells)" in examples[0].title


def test_html_marks_wrong_cells_in_every_kind(tmp_path):
  data_dir = _arc_dataset(tmp_path)
  npz, _, _ = _predictions_with_wrong_cells(data_dir, tmp_path, [(0, 0), (1, 31)])
  text = pathlib.Path(show.show(data_dir, tmp_path / "p.html", predictions=npz)).read_text()
  assert text.count(show._HTML_MARK) == 2


def test_png_output_for_each_kind(demo_dir, tmp_path):
  image = _read_png(pathlib.Path(show.show(demo_dir, tmp_path / "s.png", num=2)))
  assert image.shape[0] > 50 and (image == 0).all(-1).any()  # Digits are drawn in black.

  maze_dir = tmp_path / "maze"
  maze.build_maze_dataset(maze_dir, size=9, num_train=2, num_test=2, min_path_length=4, log=None)
  image = _read_png(pathlib.Path(show.show(maze_dir, tmp_path / "m.png", num=1)))
  colours = {tuple(c) for c in image.reshape(-1, 3)}
  assert {(0x2E, 0xCC, 0x40), (0xFF, 0x41, 0x36), (0xFF, 0x9F, 0x1C)} <= colours  # S, G, path.


def test_arc_panels_crop_to_the_used_canvas(tmp_path):
  root = tmp_path / "tasks" / "evaluation"
  root.mkdir(parents=True)
  pair = {"input": [[1, 2, 3], [4, 5, 6]], "output": [[7, 8]]}
  (root / "t1.json").write_text(json.dumps({"train": [pair], "test": [pair]}))
  out = tmp_path / "arc"
  arc.build_arc_dataset(out, sources=[str(tmp_path / "tasks")], num_aug=0, log=None)
  text = pathlib.Path(show.show(out, tmp_path / "a.html")).read_text()
  tables = _tables(text)
  # Input: 2×3 colours + EOS border → 3×4 crop; label 1×2 → 2×3.
  assert tables[0][1] == [[3, 4, 5, 1], [6, 7, 8, 1], [1, 1, 1, 0]]
  assert tables[1][1] == [[9, 10, 1], [1, 1, 0]]
  assert "puzzle t1" in text and show.ARC_PALETTE[1] in text


def test_kind_detection():
  meta = lambda vocab, seq: data_format.DatasetMetadata(0, 0, 0, vocab, seq, 1, 1, 1.0, ["all"])
  assert show.detect_kind(meta(11, 81)) == "sudoku"
  assert show.detect_kind(meta(6, 16)) == "sudoku"
  assert show.detect_kind(meta(6, 900)) == "maze"
  assert show.detect_kind(meta(12, 900)) == "arc"
  with pytest.raises(show.ShowError, match="pass --kind"):
    show.detect_kind(meta(50, 128))


def test_cli_errors_are_one_line(demo_dir, tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "hrm_jax.data.show", *args],
                          capture_output=True, text=True, cwd=REPO)
  for args, message in (
      ((str(demo_dir), "--out", str(tmp_path / "x.jpg")), "must end in .html or .png"),
      ((str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")), "does not exist"),
      ((str(demo_dir), "--predictions", str(tmp_path / "p.npz"), "--out",
        str(tmp_path / "x.html")), "predictions file"),
  ):
    proc = run(*args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
