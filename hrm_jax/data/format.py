"""The original HRM's on-disk puzzle dataset format: write, load and validate.

Layout (identical to `sapientinc/HRM` `dataset/common.py` + `puzzle_dataset.py`):

  <data_dir>/identifiers.json               list: puzzle identifier -> name, id 0 = "<blank>"
  <data_dir>/<split>/dataset.json           DatasetMetadata
  <data_dir>/<split>/<set>__inputs.npy      [N_examples, seq_len] token ids (the original writes uint8)
  <data_dir>/<split>/<set>__labels.npy      [N_examples, seq_len] token ids or ignore_label_id
  <data_dir>/<split>/<set>__puzzle_identifiers.npy  [N_puzzles] int32
  <data_dir>/<split>/<set>__puzzle_indices.npy      [N_puzzles + 1] int32, puzzle p owns examples
                                                    [pi[p], pi[p+1])
  <data_dir>/<split>/<set>__group_indices.npy       [N_groups + 1] int32, group g owns puzzles
                                                    [gi[g], gi[g+1])
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np

FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
BLANK_IDENTIFIER = "<blank>"
METADATA_FILE = "dataset.json"
IDENTIFIERS_FILE = "identifiers.json"
# Elements per chunk when scanning token arrays: bounds the temporary memory of validating a
# memory-mapped set of millions of examples.
_SCAN_CHUNK_ELEMENTS = 1 << 24

PathLike = str | os.PathLike


class DatasetError(ValueError):
  """A dataset on disk (or about to be written) does not follow the original's format."""


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
  """The original's `PuzzleDatasetMetadata` (`dataset.json`), same field names."""

  pad_id: int
  ignore_label_id: int | None  # Label value that becomes -100 (unsupervised); None = none.
  blank_identifier_id: int  # Puzzle identifier of padding rows.
  vocab_size: int
  seq_len: int
  num_puzzle_identifiers: int
  total_groups: int
  mean_puzzle_examples: float
  sets: list[str]

  def to_json_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json_dict(cls, raw: Any, source: str = "dataset.json") -> DatasetMetadata:
    """Builds metadata from parsed JSON, raising DatasetError naming any bad field."""
    if not isinstance(raw, Mapping):
      raise DatasetError(f"{source}: expected a JSON object, got {type(raw).__name__}; "
                         "rewrite it with hrm_jax.data.format.write_split")
    problems = []
    values = {}
    for field in dataclasses.fields(cls):
      if field.name not in raw:
        problems.append(f"field '{field.name}' is missing")
        continue
      value = raw[field.name]
      ok = _field_type_ok(field.name, value)
      if not ok:
        problems.append(f"field '{field.name}' has wrong type {type(value).__name__} "
                        f"(value {value!r}, expected {_FIELD_TYPES[field.name]})")
      values[field.name] = value
    if problems:
      raise DatasetError(f"{source}: " + "; ".join(problems) +
                         ". Fix the file or rebuild the dataset with the builders in hrm_jax.data.")
    values["mean_puzzle_examples"] = float(values["mean_puzzle_examples"])
    values["sets"] = list(values["sets"])
    return cls(**values)


_FIELD_TYPES = {
    "pad_id": "int", "ignore_label_id": "int or null", "blank_identifier_id": "int",
    "vocab_size": "int", "seq_len": "int", "num_puzzle_identifiers": "int", "total_groups": "int",
    "mean_puzzle_examples": "number", "sets": "list of strings",
}


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _field_type_ok(name: str, value: Any) -> bool:
  if name == "ignore_label_id":
    return value is None or _is_int(value)
  if name == "mean_puzzle_examples":
    return _is_int(value) or (isinstance(value, (float, np.floating)) and np.isfinite(value))
  if name == "sets":
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(s, str) and s for s in value)
  return _is_int(value)


@dataclasses.dataclass(frozen=True)
class PuzzleSplit:
  """One validated split: metadata and, per set name, the five arrays (memory-mapped if asked)."""

  path: pathlib.Path
  metadata: DatasetMetadata
  sets: dict[str, dict[str, np.ndarray]]

  def num_examples(self, set_name: str | None = None) -> int:
    names = self.metadata.sets if set_name is None else [set_name]
    return sum(int(self.sets[name]["inputs"].shape[0]) for name in names)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def _check_metadata(metadata: DatasetMetadata, where: str) -> None:
  problems = []
  for name in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
    if getattr(metadata, name) < 1:
      problems.append(f"{name}={getattr(metadata, name)} must be >= 1")
  if metadata.total_groups < 0:
    problems.append(f"total_groups={metadata.total_groups} must be >= 0")
  if not 0 <= metadata.pad_id < metadata.vocab_size:
    problems.append(f"pad_id={metadata.pad_id} is outside [0, vocab_size={metadata.vocab_size})")
  if not 0 <= metadata.blank_identifier_id < max(metadata.num_puzzle_identifiers, 1):
    problems.append(f"blank_identifier_id={metadata.blank_identifier_id} is outside "
                    f"[0, num_puzzle_identifiers={metadata.num_puzzle_identifiers})")
  if len(set(metadata.sets)) != len(metadata.sets):
    problems.append(f"sets={metadata.sets} has duplicate names")
  for name in metadata.sets:
    if "/" in name or name in (".", ".."):
      problems.append(f"set name {name!r} is not usable in a file name")
  if problems:
    raise DatasetError(f"{where}: invalid metadata: " + "; ".join(problems) + ".")


def _chunked_min_max(array: np.ndarray) -> tuple[int, int]:
  """Min and max of an integer array, reading it in bounded chunks (mmap-friendly)."""
  rows_per_chunk = max(1, _SCAN_CHUNK_ELEMENTS // max(1, int(np.prod(array.shape[1:]))))
  lo, hi = None, None
  for start in range(0, array.shape[0], rows_per_chunk):
    chunk = np.asarray(array[start:start + rows_per_chunk])
    c_lo, c_hi = int(chunk.min()), int(chunk.max())
    lo = c_lo if lo is None else min(lo, c_lo)
    hi = c_hi if hi is None else max(hi, c_hi)
  return lo, hi


def _first_bad_token(array: np.ndarray, vocab_size: int,
                     allowed_extra: int | None) -> tuple[int, int] | None:
  """(row, value) of the first out-of-range token, or None; chunked like _chunked_min_max."""
  rows_per_chunk = max(1, _SCAN_CHUNK_ELEMENTS // max(1, int(np.prod(array.shape[1:]))))
  for start in range(0, array.shape[0], rows_per_chunk):
    chunk = np.asarray(array[start:start + rows_per_chunk]).astype(np.int64, copy=False)
    bad = (chunk < 0) | (chunk >= vocab_size)
    if allowed_extra is not None:
      bad &= chunk != allowed_extra
    if bad.any():
      row = int(np.flatnonzero(bad.any(axis=1))[0])
      return start + row, int(chunk[row][bad[row]][0])
  return None


def _check_offsets(offsets: np.ndarray, end: int, name: str, owned: str, where: str) -> None:
  """Checks an offsets array: 1-D, starts at 0, non-decreasing, ends at `end`."""
  if offsets.ndim != 1 or offsets.shape[0] < 1:
    raise DatasetError(f"{where}: {name} must be a 1-D array of length >= 1, got shape "
                       f"{offsets.shape}. Rebuild the dataset.")
  if int(offsets[0]) != 0:
    raise DatasetError(f"{where}: {name} must start at 0 but starts at {int(offsets[0])}. "
                       "Rebuild the dataset.")
  steps = np.diff(np.asarray(offsets).astype(np.int64))
  if steps.size and int(steps.min()) < 0:
    at = int(np.argmax(steps < 0))
    raise DatasetError(f"{where}: {name} is not monotone (non-decreasing): entry {at + 1} = "
                       f"{int(offsets[at + 1])} < entry {at} = {int(offsets[at])}. "
                       "Rebuild the dataset.")
  if int(offsets[-1]) != end:
    raise DatasetError(f"{where}: {name} must end at the number of {owned} ({end}) but ends at "
                       f"{int(offsets[-1])}. Rebuild the dataset.")


def validate_set(metadata: DatasetMetadata, arrays: Mapping[str, np.ndarray], where: str) -> None:
  """Raises DatasetError unless `arrays` (one set's five fields) are consistent with `metadata`.

  `where` names the split directory or set in messages. Token ranges are scanned in chunks so that a
  memory-mapped set is never copied whole.
  """
  missing = [f for f in FIELDS if f not in arrays]
  if missing:
    raise DatasetError(f"{where}: missing arrays {missing}. Every set needs {list(FIELDS)}.")
  for field in FIELDS:
    dtype = arrays[field].dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)):
      raise DatasetError(f"{where}: {field} has dtype {dtype}, expected an integer dtype "
                         "(the original writes uint8 tokens and int32 indices). Rebuild the dataset.")

  inputs, labels = arrays["inputs"], arrays["labels"]
  for field, array in (("inputs", inputs), ("labels", labels)):
    if array.ndim != 2 or array.shape[1] != metadata.seq_len:
      raise DatasetError(f"{where}: {field} has shape {array.shape}, expected [N_examples, "
                         f"seq_len={metadata.seq_len}]. Check seq_len in dataset.json or rebuild.")
  if inputs.shape[0] != labels.shape[0]:
    raise DatasetError(f"{where}: inputs has {inputs.shape[0]} examples but labels has "
                       f"{labels.shape[0]}; they must match. Rebuild the dataset.")
  num_examples = inputs.shape[0]

  for field, array, extra in (("inputs", inputs, None),
                              ("labels", labels, metadata.ignore_label_id)):
    if num_examples == 0:
      continue
    lo, hi = _chunked_min_max(array)
    if lo >= 0 and hi < metadata.vocab_size:
      continue
    bad = _first_bad_token(array, metadata.vocab_size, extra)
    if bad is not None:
      allowed = f"[0, vocab_size={metadata.vocab_size})"
      if extra is not None:
        allowed += f" or ignore_label_id={extra}"
      raise DatasetError(f"{where}: {field} holds token id {bad[1]} (example {bad[0]}) outside "
                         f"{allowed}. Fix vocab_size in dataset.json or rebuild the dataset.")

  identifiers = arrays["puzzle_identifiers"]
  puzzle_indices = arrays["puzzle_indices"]
  _check_offsets(puzzle_indices, num_examples, "puzzle_indices", "examples", where)
  num_puzzles = puzzle_indices.shape[0] - 1
  if identifiers.ndim != 1 or identifiers.shape[0] != num_puzzles:
    raise DatasetError(f"{where}: puzzle_identifiers has shape {identifiers.shape}, expected "
                       f"[N_puzzles={num_puzzles}] (one per puzzle in puzzle_indices). "
                       "Rebuild the dataset.")
  if num_puzzles:
    lo, hi = _chunked_min_max(identifiers)
    if lo < 0 or hi >= metadata.num_puzzle_identifiers:
      bad = lo if lo < 0 else hi
      raise DatasetError(f"{where}: puzzle_identifiers holds {bad}, outside [0, "
                         f"num_puzzle_identifiers={metadata.num_puzzle_identifiers}). Fix "
                         "num_puzzle_identifiers in dataset.json or rebuild the dataset.")
  _check_offsets(arrays["group_indices"], num_puzzles, "group_indices", "puzzles", where)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def _as_index_array(array: np.ndarray, field: str, where: str) -> np.ndarray:
  array = np.asarray(array)
  if array.size and (int(array.min()) < np.iinfo(np.int32).min or
                     int(array.max()) > np.iinfo(np.int32).max):
    raise DatasetError(f"{where}: {field} does not fit in int32 (the original's index dtype).")
  return array.astype(np.int32, copy=False)


def write_split(output_dir: PathLike, split: str, metadata: DatasetMetadata,
                sets: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Validates and writes `<output_dir>/<split>/dataset.json` and `<set>__<field>.npy` files.

  `sets` maps each set name in `metadata.sets` to its five arrays. Token arrays are written with the
  dtype given (the original uses uint8); index arrays are written as int32 like the original.
  """
  where = f"{os.fspath(output_dir)}/{split}"
  _check_metadata(metadata, where)
  if list(sets) != list(metadata.sets):
    raise DatasetError(f"{where}: metadata.sets={metadata.sets} but arrays were given for sets "
                       f"{list(sets)}; they must name the same sets in the same order.")
  prepared = {}
  for name, arrays in sets.items():
    set_where = f"{where} (set '{name}')"
    arrays = {field: np.asarray(value) for field, value in arrays.items()}
    extra = sorted(set(arrays) - set(FIELDS))
    if extra:
      raise DatasetError(f"{set_where}: unknown arrays {extra}; only {list(FIELDS)} are stored.")
    for field in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
      if field in arrays and np.issubdtype(arrays[field].dtype, np.integer):
        arrays[field] = _as_index_array(arrays[field], field, set_where)
    validate_set(metadata, arrays, set_where)
    prepared[name] = arrays

  split_dir = pathlib.Path(output_dir) / split
  split_dir.mkdir(parents=True, exist_ok=True)
  for name, arrays in prepared.items():
    for field in FIELDS:
      np.save(split_dir / f"{name}__{field}.npy", arrays[field])
  # Metadata last: a split whose dataset.json exists is complete.
  with open(split_dir / METADATA_FILE, "w") as f:
    json.dump(metadata.to_json_dict(), f)


def write_identifiers(output_dir: PathLike, names: list[str]) -> None:
  """Writes `<output_dir>/identifiers.json`: `names[i]` is the name of puzzle identifier i.

  `names[0]` must be "<blank>" (identifier 0 is the padding/blank puzzle in the original).
  """
  names = list(names)
  if not names or names[0] != BLANK_IDENTIFIER:
    raise DatasetError(f"{os.fspath(output_dir)}/{IDENTIFIERS_FILE}: names[0] must be "
                       f"{BLANK_IDENTIFIER!r} (identifier 0 is reserved), got "
                       f"{names[0] if names else 'an empty list'!r}. Prepend {BLANK_IDENTIFIER!r}.")
  if not all(isinstance(n, str) for n in names):
    raise DatasetError(f"{os.fspath(output_dir)}/{IDENTIFIERS_FILE}: every name must be a string.")
  path = pathlib.Path(output_dir)
  path.mkdir(parents=True, exist_ok=True)
  with open(path / IDENTIFIERS_FILE, "w") as f:
    json.dump(names, f)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _existing_splits(data_dir: pathlib.Path) -> list[str]:
  return sorted(p.parent.name for p in data_dir.glob(f"*/{METADATA_FILE}"))


def _read_json(path: pathlib.Path) -> Any:
  """A dataset's JSON file; invalid JSON is a DatasetError naming the file."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path} is not valid JSON ({e}); rebuild the dataset.") from e


def load_metadata(data_dir: PathLike, split: str) -> DatasetMetadata:
  """Reads and checks `<data_dir>/<split>/dataset.json` only (no arrays)."""
  root = pathlib.Path(data_dir)
  if not root.is_dir():
    raise DatasetError(f"dataset directory {root} does not exist; pass the directory a dataset "
                       "builder wrote (the one holding train/ and test/).")
  split_dir = root / split
  if not split_dir.is_dir():
    raise DatasetError(f"{root} has no split '{split}' (found splits: "
                       f"{_existing_splits(root) or 'none'}); pick one of those or rebuild.")
  path = split_dir / METADATA_FILE
  if not path.is_file():
    raise DatasetError(f"{path} is missing; the split was not written completely. Rebuild it.")
  metadata = DatasetMetadata.from_json_dict(_read_json(path), source=str(path))
  _check_metadata(metadata, str(path))
  return metadata


def load_split(data_dir: PathLike, split: str, mmap: bool = True) -> PuzzleSplit:
  """Loads and validates one split; arrays are read-only memory maps when `mmap`."""
  metadata = load_metadata(data_dir, split)
  split_dir = pathlib.Path(data_dir) / split
  sets = {}
  for name in metadata.sets:
    arrays = {}
    for field in FIELDS:
      path = split_dir / f"{name}__{field}.npy"
      if not path.is_file():
        raise DatasetError(f"{path} is missing (dataset.json lists set '{name}'); rebuild the "
                           "dataset or remove the set from dataset.json.")
      try:
        arrays[field] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
      except (ValueError, OSError) as e:
        raise DatasetError(f"{path} is not a readable .npy array ({e}); rebuild the dataset.") from e
    validate_set(metadata, arrays, f"{split_dir} (set '{name}')")
    sets[name] = arrays
  return PuzzleSplit(path=split_dir, metadata=metadata, sets=sets)


def load_identifiers(data_dir: PathLike) -> list[str]:
  """Reads `<data_dir>/identifiers.json` (identifier -> puzzle name)."""
  path = pathlib.Path(data_dir) / IDENTIFIERS_FILE
  if not path.is_file():
    raise DatasetError(f"{path} is missing; the dataset builders write it next to train/ and test/.")
  names = _read_json(path)
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise DatasetError(f"{path} must hold a JSON list of strings; rebuild the dataset.")
  return names
