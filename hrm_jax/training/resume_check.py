"""Whether a checkpoint may resume under a new config: keys compared leaf by leaf, a config hash.

The one list of keys allowed to differ is `hrm_jax.config.RESUME_SAFE_KEYS` (plus `RECOVERY_SAFE_KEYS` when a
diverged run is recovered); callers pass the list they allow.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np


class ResumeConfigError(ValueError):
  """The resuming config differs from the checkpoint's in keys that are not safe."""

  def __init__(self, message: str, keys: Sequence[str]):
    super().__init__(message)
    self.keys = list(keys)




def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.generic, jax.Array)) and np.ndim(obj) == 0:
    return np.asarray(obj).item()
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  if hasattr(obj, "to_dict"):  # ml_collections.ConfigDict and friends.
    return obj.to_dict()
  if isinstance(obj, (set, frozenset)):
    return sorted(obj)
  raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _to_json(obj: Any, what: str) -> Any:
  """Returns `obj` as it will read back from JSON (tuples become lists, ...)."""
  if hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  try:
    return json.loads(json.dumps(obj, default=_json_default))
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"checkpoint {what} must be JSON-serialisable (dicts, lists, str, numbers,"
        f" numpy scalars): {e}. Convert it to plain Python types before saving."
    ) from e


def config_hash(config: Mapping[str, Any]) -> str:
  """Returns a 16-hex-digit SHA-256 of the config's canonical JSON form."""
  canonical = json.dumps(_to_json(config, "config"), sort_keys=True,
                         separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping) and tree:
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def _is_safe(key: str, safe_keys: Iterable[str]) -> bool:
  for safe in safe_keys:
    if key == safe or key.startswith(safe + "."):
      return True
    if fnmatch.fnmatchcase(key, safe) or fnmatch.fnmatchcase(key, safe + ".*"):
      return True
  return False


def check_resume_compatible(saved_config: Mapping[str, Any],
                            new_config: Mapping[str, Any],
                            safe_keys: Iterable[str] | None = None) -> None:
  """Raises ResumeConfigError naming every differing key that is not safe.

  `safe_keys` defaults to `hrm_jax.config.RESUME_SAFE_KEYS`; a safe key matches itself and every key below
  it and may use fnmatch wildcards ("*.every_steps"). Nested keys are compared leaf by leaf under dotted names ("model.hidden_size");
  both configs are compared in their JSON form, so a tuple equals a list.
  """
  if safe_keys is None:
    from hrm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    safe_keys = config_lib.RESUME_SAFE_KEYS
  safe_keys = tuple(safe_keys)
  old = _flatten(_to_json(saved_config, "saved config"))
  new = _flatten(_to_json(new_config, "new config"))
  missing = object()
  unsafe = []
  for key in sorted(set(old) | set(new)):
    before, after = old.get(key, missing), new.get(key, missing)
    if before == after or _is_safe(key, safe_keys):
      continue
    describe = lambda v: "<absent>" if v is missing else json.dumps(v)
    unsafe.append((key, describe(before), describe(after)))
  if unsafe:
    lines = "\n".join(f"  {k}: checkpoint {b} -> now {a}" for k, b, a in unsafe)
    raise ResumeConfigError(
        f"cannot resume: the config differs from the checkpoint's in"
        f" {len(unsafe)} key(s) that change the training run:\n{lines}\n"
        "Fix: rerun with the checkpoint's values for these keys, or start a new"
        " run in a fresh checkpoint directory. Keys allowed to change on resume:"
        f" {', '.join(safe_keys)}.", [k for k, _, _ in unsafe])
