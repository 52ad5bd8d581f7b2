"""Tests of the dataset visualiser (HTML and PNG output, predictions, kind detection)."""

import json
import pathlib
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
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
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  pos, chunks = 8, {}
  while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
    assert crc == zlib.crc32(kind + body)
    chunks.setdefault(kind, b"")
    chunks[kind] += body
    pos += 12 + length
  w, h, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
  raw = zlib.decompress(chunks[b"IDAT"])
  assert (depth, colour_type) == (8, 2) and len(raw) == h * (3 * w + 1)
  rows = np.frombuffer(raw, np.uint8).reshape(h, 3 * w + 1)
  assert (rows[:, 0] == 0).all()
  return rows[:, 1:].reshape(h, w, 3)


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
