"""Tests of hrm_jax.data.format: round trips, the original's exact layout, and every validation error."""

import json
import pathlib

import numpy as np
import pytest

from hrm_jax.data import format as data_format


def _metadata(**overrides) -> data_format.DatasetMetadata:
  fields = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=6,
                num_puzzle_identifiers=5, total_groups=2, mean_puzzle_examples=1.75, sets=["all"])
  fields.update(overrides)
  return data_format.DatasetMetadata(**fields)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
  """Two groups: group 0 = puzzles 0, 1; group 1 = puzzles 2, 3; 7 examples in all."""
  rng = np.random.default_rng(seed)
  return {
      "inputs": rng.integers(0, 12, (7, 6)).astype(np.uint8),
      "labels": rng.integers(0, 12, (7, 6)).astype(np.uint8),
      "puzzle_identifiers": np.array([1, 2, 3, 4], np.int32),
      "puzzle_indices": np.array([0, 2, 3, 5, 7], np.int32),
      "group_indices": np.array([0, 2, 4], np.int32),
  }


def _write_original_layout(root: pathlib.Path) -> dict[str, np.ndarray]:
  """A dataset made with plain numpy/json exactly as the original's builders write it."""
  arrays = {
      "inputs": np.array([[1, 2, 3, 1], [2, 2, 1, 1], [3, 1, 1, 2]], np.uint8),
      "labels": np.array([[0, 4, 5, 0], [5, 5, 0, 0], [4, 4, 4, 4]], np.uint8),
      "puzzle_identifiers": np.array([1, 2], np.int32),
      "puzzle_indices": np.array([0, 2, 3], np.int32),
      "group_indices": np.array([0, 2], np.int32),
  }
  for split in ("train", "test"):
    (root / split).mkdir(parents=True)
    for field, value in arrays.items():
      np.save(root / split / f"all__{field}.npy", value)
    # Key order and value types as pydantic's model_dump() produces them in the original.
    (root / split / "dataset.json").write_text(json.dumps({
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 6,
        "seq_len": 4, "num_puzzle_identifiers": 3, "total_groups": 1,
        "mean_puzzle_examples": 1.5, "sets": ["all"]}))
  (root / "identifiers.json").write_text(json.dumps(["<blank>", "p0", "p0_t1_0123456789"]))
  return arrays


def test_round_trip(tmp_path):
  metadata, arrays = _metadata(), _arrays()
  data_format.write_split(tmp_path, "train", metadata, {"all": arrays})
  data_format.write_identifiers(tmp_path, ["<blank>", "a", "b", "c", "d"])
  for mmap in (True, False):
    split = data_format.load_split(tmp_path, "train", mmap=mmap)
    assert split.metadata == metadata
    assert split.num_examples() == 7
    for field, value in arrays.items():
      loaded = split.sets["all"][field]
      np.testing.assert_array_equal(loaded, value)
      assert loaded.dtype == value.dtype
      assert isinstance(loaded, np.memmap) == mmap
  assert data_format.load_identifiers(tmp_path) == ["<blank>", "a", "b", "c", "d"]
  assert json.loads((tmp_path / "train" / "dataset.json").read_text()) == {
      "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12,
      "seq_len": 6, "num_puzzle_identifiers": 5, "total_groups": 2,
      "mean_puzzle_examples": 1.75, "sets": ["all"]}


def test_writer_casts_indices_to_int32_and_keeps_token_dtype(tmp_path):
  arrays = _arrays()
  arrays["puzzle_indices"] = arrays["puzzle_indices"].astype(np.int64)
  arrays["group_indices"] = list(arrays["group_indices"])
  data_format.write_split(tmp_path, "test", _metadata(ignore_label_id=None), {"all": arrays})
  loaded = data_format.load_split(tmp_path, "test").sets["all"]
  assert loaded["puzzle_indices"].dtype == np.int32
  assert loaded["group_indices"].dtype == np.int32
  assert loaded["inputs"].dtype == np.uint8


def test_original_layout_loads_unchanged(tmp_path):
  arrays = _write_original_layout(tmp_path)
  for split_name in ("train", "test"):
    split = data_format.load_split(tmp_path, split_name)
    assert split.metadata.ignore_label_id == 0
    assert split.metadata.mean_puzzle_examples == 1.5
    for field, value in arrays.items():
      np.testing.assert_array_equal(split.sets["all"][field], value)
      assert split.sets["all"][field].dtype == value.dtype
  assert data_format.load_identifiers(tmp_path)[0] == "<blank>"


def test_metadata_accepts_integer_mean_and_null_ignore_label(tmp_path):
  _write_original_layout(tmp_path)
  path = tmp_path / "train" / "dataset.json"
  raw = json.loads(path.read_text())
  raw.update(mean_puzzle_examples=1, ignore_label_id=None)
  path.write_text(json.dumps(raw))
  metadata = data_format.load_split(tmp_path, "train").metadata
  assert metadata.mean_puzzle_examples == 1.0 and isinstance(metadata.mean_puzzle_examples, float)
  assert metadata.ignore_label_id is None


def _corrupt_json(root, **changes):
  path = root / "train" / "dataset.json"
  raw = json.loads(path.read_text())
  for key, value in changes.items():
    if value is _DELETE:
      del raw[key]
    else:
      raw[key] = value
  path.write_text(json.dumps(raw))


def _replace_array(root, field, value):
  np.save(root / "train" / f"all__{field}.npy", value)


_DELETE = object()

# (name, corruption applied to an original-layout dataset, text the error must contain)
_BAD_DATASETS = [
    ("missing split dir", lambda r: __import__("shutil").rmtree(r / "train"), "no split 'train'"),
    ("missing dataset.json", lambda r: (r / "train" / "dataset.json").unlink(),
     "dataset.json is missing"),
    ("invalid json", lambda r: (r / "train" / "dataset.json").write_text("{"), "not valid JSON"),
    ("missing array", lambda r: (r / "train" / "all__labels.npy").unlink(),
     "all__labels.npy is missing"),
    ("missing field", lambda r: _corrupt_json(r, seq_len=_DELETE), "field 'seq_len' is missing"),
    ("wrong type", lambda r: _corrupt_json(r, vocab_size="6"), "field 'vocab_size' has wrong type"),
    ("bool is not int", lambda r: _corrupt_json(r, pad_id=True), "field 'pad_id' has wrong type"),
    ("sets not a list", lambda r: _corrupt_json(r, sets="all"), "field 'sets' has wrong type"),
    ("unknown set", lambda r: _corrupt_json(r, sets=["all", "extra"]),
     "extra__inputs.npy is missing"),
    ("seq_len mismatch", lambda r: _corrupt_json(r, seq_len=5), "inputs has shape (3, 4)"),
    ("labels rows differ", lambda r: _replace_array(r, "labels", np.zeros((2, 4), np.uint8)),
     "inputs has 3 examples but labels has 2"),
    ("inputs token too large", lambda r: _corrupt_json(r, vocab_size=3),
     "inputs holds token id 3 (example 0) outside [0, vocab_size=3)"),
    ("labels token too large",
     lambda r: _replace_array(r, "labels", np.array([[0, 4, 5, 0], [5, 5, 0, 0], [4, 9, 4, 4]],
                                                    np.uint8)),
     "labels holds token id 9 (example 2)"),
    ("negative token", lambda r: _replace_array(r, "inputs", -np.ones((3, 4), np.int32)),
     "inputs holds token id -1"),
    ("float tokens", lambda r: _replace_array(r, "inputs", np.ones((3, 4), np.float32)),
     "inputs has dtype float32, expected an integer dtype"),
    ("puzzle_indices start", lambda r: _replace_array(r, "puzzle_indices", np.array([1, 2, 3])),
     "puzzle_indices must start at 0"),
    ("puzzle_indices order", lambda r: _replace_array(r, "puzzle_indices", np.array([0, 3, 2, 3])),
     "puzzle_indices is not monotone"),
    ("puzzle_indices end", lambda r: _replace_array(r, "puzzle_indices", np.array([0, 2, 4])),
     "puzzle_indices must end at the number of examples (3) but ends at 4"),
    ("group_indices start", lambda r: _replace_array(r, "group_indices", np.array([1, 2])),
     "group_indices must start at 0"),
    ("group_indices order", lambda r: _replace_array(r, "group_indices", np.array([0, 2, 1, 2])),
     "group_indices is not monotone"),
    ("group_indices end", lambda r: _replace_array(r, "group_indices", np.array([0, 1])),
     "group_indices must end at the number of puzzles (2) but ends at 1"),
    ("identifier count", lambda r: _replace_array(r, "puzzle_identifiers", np.array([1, 2, 2])),
     "puzzle_identifiers has shape (3,), expected [N_puzzles=2]"),
    ("identifier range", lambda r: _replace_array(r, "puzzle_identifiers", np.array([1, 3])),
     "puzzle_identifiers holds 3, outside [0, num_puzzle_identifiers=3)"),
    ("negative identifier", lambda r: _replace_array(r, "puzzle_identifiers", np.array([-1, 1])),
     "puzzle_identifiers holds -1"),
    ("pad_id out of vocab", lambda r: _corrupt_json(r, pad_id=6), "pad_id=6 is outside"),
    ("not an npy file", lambda r: (r / "train" / "all__inputs.npy").write_bytes(b"junk"),
     "not a readable .npy array"),
]


@pytest.mark.parametrize("name,corrupt,message", _BAD_DATASETS, ids=[c[0] for c in _BAD_DATASETS])
def test_bad_dataset_raises_named_error(tmp_path, name, corrupt, message):
  del name
  _write_original_layout(tmp_path)
  data_format.load_split(tmp_path, "train")  # Valid before the corruption.
  corrupt(tmp_path)
  with pytest.raises(data_format.DatasetError) as error:
    data_format.load_split(tmp_path, "train")
  assert message in str(error.value)


def test_missing_directory_and_identifiers(tmp_path):
  with pytest.raises(data_format.DatasetError, match="does not exist"):
    data_format.load_split(tmp_path / "nowhere", "train")
  with pytest.raises(data_format.DatasetError, match="identifiers.json is missing"):
    data_format.load_identifiers(tmp_path)
  (tmp_path / "identifiers.json").write_text('{"0": "<blank>"}')
  with pytest.raises(data_format.DatasetError, match="JSON list of strings"):
    data_format.load_identifiers(tmp_path)


def test_labels_may_hold_ignore_label_outside_vocab(tmp_path):
  arrays = _arrays()
  arrays["labels"] = arrays["labels"].astype(np.int32)
  arrays["labels"][3, 2] = -100
  data_format.write_split(tmp_path, "train", _metadata(ignore_label_id=-100), {"all": arrays})
  assert data_format.load_split(tmp_path, "train").sets["all"]["labels"][3, 2] == -100
  with pytest.raises(data_format.DatasetError, match="labels holds token id -100 .example 3."):
    data_format.write_split(tmp_path, "other", _metadata(ignore_label_id=0), {"all": arrays})
  # The ignore label is not allowed in inputs.
  arrays["inputs"] = arrays["labels"]
  with pytest.raises(data_format.DatasetError, match="inputs holds token id -100"):
    data_format.write_split(tmp_path, "other", _metadata(ignore_label_id=-100), {"all": arrays})


def test_writer_validates_before_writing(tmp_path):
  arrays = _arrays()
  arrays["group_indices"] = np.array([0, 3], np.int32)
  with pytest.raises(data_format.DatasetError, match="group_indices must end at the number of "
                     "puzzles .4. but ends at 3"):
    data_format.write_split(tmp_path, "train", _metadata(), {"all": arrays})
  assert not (tmp_path / "train").exists()
  with pytest.raises(data_format.DatasetError, match="must name the same sets"):
    data_format.write_split(tmp_path, "train", _metadata(), {"other": _arrays()})
  with pytest.raises(data_format.DatasetError, match="missing arrays .'labels'."):
    data_format.write_split(tmp_path, "train", _metadata(),
                            {"all": {k: v for k, v in _arrays().items() if k != "labels"}})
  with pytest.raises(data_format.DatasetError, match="names.0. must be '<blank>'"):
    data_format.write_identifiers(tmp_path, ["a", "<blank>"])


def test_chunked_scan_finds_bad_token_in_a_later_chunk(tmp_path, monkeypatch):
  monkeypatch.setattr(data_format, "_SCAN_CHUNK_ELEMENTS", 12)  # Two rows of 6 per chunk.
  arrays = _arrays()
  data_format.write_split(tmp_path, "train", _metadata(), {"all": arrays})
  arrays["inputs"][6, 5] = 12
  np.save(tmp_path / "train" / "all__inputs.npy", arrays["inputs"])
  with pytest.raises(data_format.DatasetError, match="inputs holds token id 12 .example 6."):
    data_format.load_split(tmp_path, "train")
  assert data_format._chunked_min_max(np.arange(35).reshape(7, 5)) == (0, 34)
