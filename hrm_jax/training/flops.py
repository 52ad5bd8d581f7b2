"""FLOPs of a jitted step from XLA's cost analysis, and model FLOP/s utilisation (MFU) against a device peak.

XLA's HLO cost analysis counts a loop body once, whatever its trip count, and HRM's recurrence runs its
no-gradient cycles (and the blockwise attention's key blocks) as `scan`s. So the step is traced once,
every `scan` in its jaxpr is rewritten to unroll fully, and the cost analysis of that lowering (not compiled)
gives the FLOPs actually executed. A `while_loop` with a data-dependent trip count (the evaluation's ACT
loop) still counts once: for the eval step the figure is per segment.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

# Dense bfloat16 peak FLOP/s of datacentre GPUs by `device_kind` substring (vendor data sheets, SXM parts,
# without sparsity). Used only to turn FLOP/s into MFU; unknown devices report FLOP/s without MFU.
BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe part is 756e12
    "A100": 312e12,
    "L4": 121e12,
}


def _unroll_value(value):
  if isinstance(value, jex_core.ClosedJaxpr):
    return jex_core.ClosedJaxpr(_unroll_jaxpr(value.jaxpr), value.consts)
  if isinstance(value, jex_core.Jaxpr):
    return _unroll_jaxpr(value)
  if type(value) is tuple:  # pylint: disable=unidiomatic-typecheck  (not NamedTuples such as PRNG impls)
    return tuple(_unroll_value(v) for v in value)
  return value


def _unroll_jaxpr(jaxpr: jex_core.Jaxpr) -> jex_core.Jaxpr:
  eqns = []
  for eqn in jaxpr.eqns:
    params = {name: _unroll_value(value) for name, value in eqn.params.items()}
    if eqn.primitive.name == "scan":
      params["unroll"] = max(1, params["length"])
    eqns.append(eqn.replace(params=params))
  return jaxpr.replace(eqns=eqns)


def step_flops(fn: Callable, *args: Any) -> float:
  """FLOPs of one call of `fn(*args)` (arrays or ShapeDtypeStructs), loops counted by their trip counts."""
  closed = jax.make_jaxpr(fn)(*args)
  unrolled = jex_core.jaxpr_as_fun(_unroll_value(closed))
  flat_args = jax.tree.leaves(args)
  abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat_args]
  cost = jax.jit(unrolled).lower(*abstract).cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def device_peak_flops(device: jax.Device | None = None) -> tuple[float | None, str]:
  """(dense bf16 peak FLOP/s, device kind) of `device` (default: the first), None where unknown (CPUs)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  for name, peak in BF16_PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak, kind
  return None, kind


def utilisation(flops_per_step: float, seconds_per_step: float, num_devices: int = 1,
                device: jax.Device | None = None) -> dict[str, Any]:
  """Model TFLOP/s (per device) and MFU against the device's bf16 peak (None where the peak is unknown)."""
  peak, kind = device_peak_flops(device)
  per_device = flops_per_step / max(seconds_per_step, 1e-12) / num_devices
  return {"tflops_per_s": per_device / 1e12, "mfu": None if peak is None else per_device / peak,
          "peak_tflops": None if peak is None else peak / 1e12, "device_kind": kind}


def train_step_flops(step_cfg, optimizer, state, batch_spec) -> float | None:
  """FLOPs of one train step (global batch), counted once at start-up; None if the count fails.

  Counted on the one-shot attention: the same arithmetic as blockwise or cuDNN, but visible to the cost
  analysis (cuDNN's kernel is a custom call that counts nothing).
  """
  from hrm_jax.training import train_step as train_step_lib  # pylint: disable=import-outside-toplevel
  one_shot = dataclasses.replace(step_cfg, model=step_cfg.model.replace(attention_impl="xla"))
  try:
    return step_flops(train_step_lib.make_train_step(one_shot, optimizer), state, batch_spec)
  except Exception:  # pylint: disable=broad-except  (a logged figure must never stop a run)
    return None


def log_fields(flops_per_step: float | None, steps_per_s: float | None, num_devices: int) -> dict[str, float]:
  """{"model_tflops_per_s": per device, "mfu": against the bf16 peak where known} for the train log."""
  if not flops_per_step or not steps_per_s:
    return {}
  use = utilisation(flops_per_step, 1.0 / steps_per_s, num_devices)
  fields = {"model_tflops_per_s": use["tflops_per_s"]}
  if use["mfu"] is not None:
    fields["mfu"] = use["mfu"]
  return fields
