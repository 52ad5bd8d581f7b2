"""Memory known before it fails: the compiled step's footprint against the device's memory.

`check_train_step_fits` is called once before the first train step: it lowers and compiles the jitted step
for the real shapes (jit reuses that executable for the first call, so nothing compiles twice), reads XLA's
`memory_analysis()` and, when the step cannot fit, raises `DoesNotFitError` whose one-line message names the
figure, the largest `global_batch_size` that fits and the `grad_accum_steps` that keeps the batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np

GiB = 2 ** 30


class DoesNotFitError(RuntimeError):
  """The compiled step needs more memory than the device has; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes of one compiled step per device, from XLA's `memory_analysis()`."""

  temp: int  # temporaries (activations kept for the backward pass, scores, workspace)
  arguments: int  # inputs (the state and the batch)
  outputs: int
  aliased: int  # outputs written in place of donated inputs
  code: int  # generated code (on CPUs and GPUs)

  @property
  def total(self) -> int:
    """Peak footprint: inputs, outputs that cannot reuse a donated input, temporaries and code."""
    return self.arguments + self.outputs - self.aliased + self.temp + self.code

  def describe(self) -> str:
    return (f"{self.total / GiB:.2f} GiB (temporaries {self.temp / GiB:.2f}, arguments {self.arguments / GiB:.2f}, "
            f"outputs {(self.outputs - self.aliased) / GiB:.2f} not donated)")


def step_memory(compiled) -> StepMemory:
  stats = compiled.memory_analysis()
  get = lambda name: int(getattr(stats, name, 0) or 0)
  return StepMemory(temp=get("temp_size_in_bytes"), arguments=get("argument_size_in_bytes"),
                    outputs=get("output_size_in_bytes"), aliased=get("alias_size_in_bytes"),
                    code=get("generated_code_size_in_bytes"))


def device_capacity(device: jax.Device | None = None) -> tuple[int | None, str]:
  """(bytes one device can hold, how that was measured); None where unknown.

  Accelerators: the allocator's limit (`memory_stats()["bytes_limit"]`). CPUs: the RAM still available
  (MemAvailable) plus what this process's live JAX arrays already hold (they are the step's arguments).
  """
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return (int(limit), f"{device.device_kind} allocator limit") if limit else (None, device.device_kind)
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      available_kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
  except (OSError, StopIteration, ValueError):
    try:
      available_kib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024
    except (ValueError, OSError, AttributeError):
      return None, "cpu (available RAM unknown)"
  live = sum(x.nbytes for x in jax.live_arrays() if x.is_fully_addressable)
  return available_kib * 1024 + live, "available RAM"


def _fixed_bytes(state) -> int:
  """Bytes that do not grow with the batch: parameters, optimiser state, puzzle table, and the gradients."""
  # Arrays or ShapeDtypeStructs; all of these are replicated, so a device holds each whole.
  size = lambda x: int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
  return (sum(size(x) for x in jax.tree.leaves(state.replace(carry=None)))
          + sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(state.params)))


def suggest(memory: StepMemory, capacity: int, global_batch_size: int, grad_accum_steps: int, num_devices: int,
            fixed_bytes: int) -> tuple[int, int]:
  """(largest global_batch_size that fits, grad_accum_steps that keeps `global_batch_size`), both estimates
  from a footprint linear in the rows per micro-batch above the batch-independent `fixed_bytes`."""
  rows_per_device = global_batch_size // grad_accum_steps // num_devices
  per_row = max(memory.total - fixed_bytes, 1) / max(rows_per_device, 1)
  rows_fit = int((capacity - fixed_bytes) // per_row)
  batch_fit = max(0, rows_fit) * num_devices
  accum = grad_accum_steps
  if rows_fit >= 1:
    accum = max(grad_accum_steps, math.ceil(global_batch_size / batch_fit))
    while global_batch_size % (accum * num_devices) and accum < global_batch_size:
      accum += 1  # train.py needs the micro-batch to split evenly over the devices
  return batch_fit, accum


def check_train_step_fits(jitted_step, state, batch_spec: dict[str, Any], *, global_batch_size: int,
                          grad_accum_steps: int, capacity: int | None = None, what: str = "train step"
                          ) -> StepMemory:
  """Compiles `jitted_step(state, batch_spec)` and raises DoesNotFitError (one line) if it cannot fit."""
  memory = step_memory(jitted_step.lower(state, batch_spec).compile())
  source = "given capacity"
  if capacity is None:
    capacity, source = device_capacity()
  if capacity is None or memory.total <= capacity:
    return memory
  batch_fit, accum = suggest(memory, capacity, global_batch_size, grad_accum_steps, jax.device_count(),
                             _fixed_bytes(state))
  if batch_fit < 1:
    advice = ("not even one row per device fits: use a smaller model, bfloat16, or "
              "--config.model.attention_impl=blockwise for long sequences")
  else:
    advice = (f"about --config.global_batch_size={batch_fit} fits; or keep {global_batch_size} with "
              f"--config.grad_accum_steps={accum}")
  raise DoesNotFitError(
      f"The compiled {what} needs {memory.describe()} per device but the device has "
      f"{capacity / GiB:.2f} GiB ({source}) at global_batch_size={global_batch_size}, "
      f"grad_accum_steps={grad_accum_steps}: {advice}.")


def batch_spec(seq_len: int, global_batch_size: int, sharding=None) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of one global training batch as the pipeline delivers it (int32 everywhere)."""
  rows = lambda *shape: jax.ShapeDtypeStruct((global_batch_size,) + shape, np.int32, sharding=sharding)
  return {"inputs": rows(seq_len), "labels": rows(seq_len), "puzzle_identifiers": rows()}
