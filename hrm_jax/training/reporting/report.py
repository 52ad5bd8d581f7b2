"""The evaluation report printed by the loop: exact accuracy first, then the rest."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from hrm_jax.training.reporting.values import to_float

_EXACT_KEYS = ("exact_accuracy", "exact_acc")
_TOKEN_KEYS = ("accuracy", "token_accuracy", "token_acc")
_HALT_KEYS = ("steps", "mean_steps", "halt_steps", "mean_halting_steps")
_PER_CLASS_KEY = "per_class_accuracy"
_PER_CLASS_PREFIXES = ("per_class_accuracy/", "class_accuracy/")


def _pct(value: Any) -> str:
  number = to_float(value)
  return f"{100 * number:.2f}%" if math.isfinite(number) else str(number)


def _first_key(metrics: Mapping[str, Any], keys: Sequence[str]) -> str | None:
  return next((k for k in keys if k in metrics), None)


def _format_flat_eval(metrics: Mapping[str, Any], indent: str) -> list[str]:
  metrics = {(k[len("eval/"):] if k.startswith("eval/") else k): v for k, v in metrics.items()}
  used: set[str] = set()
  lines = []
  count = metrics.get("count")
  if count is not None:
    used.add("count")
  exact_key = _first_key(metrics, _EXACT_KEYS)
  if exact_key is not None:
    used.add(exact_key)
    headline = f"EXACT ACCURACY  {_pct(metrics[exact_key])}"
    if count is not None:
      n = to_float(count)
      headline += f"  ({round(to_float(metrics[exact_key]) * n):d} / {n:.0f} examples)"
  else:
    headline = "EXACT ACCURACY  n/a (no exact_accuracy in the metrics)"
  lines.append(indent + headline)
  token_key = _first_key(metrics, _TOKEN_KEYS)
  if token_key is not None:
    used.add(token_key)
    lines.append(f"{indent}token accuracy  {_pct(metrics[token_key])}")
  per_class: dict[str, Any] = {}
  if _PER_CLASS_KEY in metrics:
    used.add(_PER_CLASS_KEY)
    raw = metrics[_PER_CLASS_KEY]
    if isinstance(raw, Mapping):
      per_class.update({str(k): v for k, v in raw.items()})
    else:
      values = raw.tolist() if hasattr(raw, "tolist") else list(raw)
      per_class.update({str(i): v for i, v in enumerate(values)})
  for key in metrics:
    for prefix in _PER_CLASS_PREFIXES:
      if key.startswith(prefix):
        used.add(key)
        per_class[key[len(prefix):]] = metrics[key]
  if per_class:
    lines.append(f"{indent}per-class accuracy:")
    name_width = max(len(name) for name in per_class)
    for name, value in per_class.items():
      lines.append(f"{indent}  {name:<{name_width}}  {_pct(value)}")
  halt_key = _first_key(metrics, _HALT_KEYS)
  if halt_key is not None:
    used.add(halt_key)
    lines.append(f"{indent}mean halting steps  {to_float(metrics[halt_key]):.2f}")
  losses = [k for k in metrics if k.endswith("loss") and k not in used]
  if losses:
    used.update(losses)
    lines.append(indent + "losses  " + "  ".join(
        f"{k} {to_float(metrics[k]):.4f}" for k in sorted(losses)))
  other = []
  for key in sorted(k for k in metrics if k not in used):
    try:
      value = to_float(metrics[key])
    except TypeError:
      continue
    shown = _pct(value) if "acc" in key else f"{value:.4g}"
    other.append(f"{key} {shown}")
  if other:
    lines.append(indent + "other  " + "  ".join(other))
  return lines


def format_eval_report(metrics: Mapping[str, Any], *, step: int | None = None) -> str:
  """A readable multi-line evaluation summary with exact accuracy as the headline.

  Then token accuracy, per-class accuracy (`per_class_accuracy` as a dict or sequence, or
  `per_class_accuracy/<name>` keys), mean halting steps (`steps`), losses (keys ending in `loss`) and
  anything else. Accepts flat metrics or the original's nested `{set_name: {metric: value}}`.
  """
  title = "Evaluation" + (f" at step {step}" if step is not None else "")
  lines = [title]
  nested = bool(metrics) and all(isinstance(v, Mapping) for v in metrics.values()) and (
      _PER_CLASS_KEY not in metrics)
  if nested:
    for set_name, set_metrics in metrics.items():
      lines.append(f"  [{set_name}]")
      lines.extend(_format_flat_eval(set_metrics, "    "))
  else:
    lines.extend(_format_flat_eval(metrics, "  "))
  return "\n".join(lines)
