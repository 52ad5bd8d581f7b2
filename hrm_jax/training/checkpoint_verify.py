"""What a checkpoint holds beside the arrays, and how a restore is verified (helpers of checkpoint.py).

Orbax restores whatever bytes are on disk; these helpers let the Checkpointer prove they are the bytes it
saved: leaf specs (path, shape, dtype) compared before reading, and a per-leaf fingerprint compared after.
"""

from __future__ import annotations

import base64
import importlib.metadata
import math
import platform
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.training.resume_check import _to_json

_VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved or restored; the message names the fix."""


class CheckpointMismatchError(CheckpointError):
  """The abstract state does not match the saved state (shapes, dtypes, leaves)."""


# ----------------------------------------------------------------------------
# Leaf specs and fingerprints of a state pytree.
# ----------------------------------------------------------------------------


def _leaf_specs(tree: Any) -> list[list[Any]]:
  """[[path, shape, dtype], ...] of every array leaf, in pytree order."""
  abstract = jax.eval_shape(lambda t: t, tree)
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract)
  return [[jax.tree_util.keystr(path), list(leaf.shape), str(leaf.dtype)]
          for path, leaf in flat]


def _words_u32(x: jax.Array) -> jax.Array:
  """Flat uint32 view of `x`'s bits (narrower types are zero-extended)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = np.dtype(x.dtype).itemsize
  if size == 4:
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif size == 8:  # Bitcasting to a narrower type appends a dimension of 2.
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif size == 2:
    words = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  elif size == 1:
    words = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  else:
    raise TypeError(f"cannot fingerprint dtype {x.dtype}")
  return words.reshape(-1)


@jax.jit
def _fingerprint_leaves(leaves: list[jax.Array]) -> jax.Array:
  # Sum of word_i * (2i + 1) mod 2**32: odd weights make every single-word change
  # (any flipped bit) change the sum, and integer sums do not depend on sharding.
  sums = []
  for leaf in leaves:
    words = _words_u32(jnp.asarray(leaf))
    weights = jax.lax.iota(jnp.uint32, words.size) * jnp.uint32(2) + jnp.uint32(1)
    sums.append(jnp.sum(words * weights, dtype=jnp.uint32))
  return jnp.stack(sums) if sums else jnp.zeros((0,), jnp.uint32)


def _fingerprint(tree: Any) -> list[int]:
  leaves = jax.tree_util.tree_leaves(tree)
  return [int(v) for v in np.asarray(jax.device_get(_fingerprint_leaves(leaves)))]


# ----------------------------------------------------------------------------
# Small helpers.
# ----------------------------------------------------------------------------


def _library_versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for name in _VERSIONED_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def summarize_error(error: BaseException, limit: int = 400) -> str:
  """One line naming the root cause (TensorStore errors embed kilobytes of spec)."""
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  root = chain[-1]
  text = f"{type(root).__name__}: {str(root).strip().splitlines()[0] if str(root).strip() else ''}"
  text = re.sub(r"\s+", " ", text)
  return text if len(text) <= limit else text[:limit] + "..."


def _is_out_of_memory(error: BaseException) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def _encode_data_state(data_state: Any) -> dict:
  if isinstance(data_state, (bytes, bytearray)):
    return {"encoding": "base64",
            "value": base64.b64encode(bytes(data_state)).decode("ascii")}
  return {"encoding": "json", "value": _to_json(data_state, "data_state")}


def _decode_data_state(stored: Mapping[str, Any]) -> Any:
  if stored.get("encoding") == "base64":
    return base64.b64decode(stored["value"])
  if stored.get("encoding") == "json":
    return stored["value"]
  raise ValueError(f"unknown data_state encoding {stored.get('encoding')!r}")


def _metric_value(metrics: Mapping[str, Any] | None, name: str | None) -> float | None:
  if not metrics or name is None or name not in metrics:
    return None
  try:
    value = float(np.asarray(metrics[name]))
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) else None


def _with_default_sharding(abstract_state: Any) -> Any:
  """ShapeDtypeStruct tree; leaves without a sharding go to the first local device."""
  device = jax.local_devices()[0]

  def to_struct(leaf):
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      leaf = jax.eval_shape(lambda x: x, leaf)  # Python scalars.
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  return jax.tree_util.tree_map(to_struct, abstract_state)


def compare_specs(directory, step: int, saved: list, expected: list) -> None:
  """Raises CheckpointMismatchError naming every leaf whose shape or dtype differs from the target's."""
  saved_map = {p: (tuple(s), d) for p, s, d in saved}
  expected_map = {p: (tuple(s), d) for p, s, d in expected}
  problems = []
  for path in sorted(set(saved_map) | set(expected_map)):
    a, b = saved_map.get(path), expected_map.get(path)
    if a == b:
      continue
    fmt = lambda v: "absent" if v is None else f"{v[1]}{list(v[0])}"
    problems.append(f"{path or '<root>'}: checkpoint {fmt(a)}, expected {fmt(b)}")
  if problems:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise CheckpointMismatchError(
        f"checkpoint step {step} in {directory} does not fit the"
        f" requested state ({len(problems)} leaf difference(s)):\n  {shown}{more}\n"
        "Fix: build the abstract state from the same model/optimiser config the"
        " checkpoint was written with (see its `config` item), or start a new"
        " run in a fresh directory.")
