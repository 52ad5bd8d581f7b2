"""Exports a trained model's whole inference (every ACT segment, in its while_loop) as a standalone program.

  StableHLO  `jax.export` with a symbolic batch dimension, serialized; `jax.export.deserialize(bytes).call(
             inputs_BxS, puzzle_identifiers_B)` runs it with JAX alone (no hrm_jax, no Flax).
  ONNX       jax2onnx (0.13.0); the segment loop becomes an ONNX Loop, the batch dimension stays symbolic.

Both take int32 `inputs [B, S]` and `puzzle_identifiers [B]` and return (preds [B, S] int32, logits [B, S, V]
float32, q_halt_logits [B], q_continue_logits [B], steps [B] int32), the weights baked in as constants.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.convert.model_file import LoadedModel
from hrm_jax.model import arch

INPUT_NAMES = ("inputs", "puzzle_identifiers")
OUTPUT_NAMES = ("preds", "logits", "q_halt_logits", "q_continue_logits", "steps")
FORMATS = ("stablehlo", "onnx")


def inference_fn(model: LoadedModel, segments: int | None = None, early_halt: bool = False) -> Callable:
  """(inputs_BxS, puzzle_identifiers_B) -> OUTPUT_NAMES, with the model's weights closed over."""
  cfg = model.model_config
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), model.params)
  buffers = {k: jnp.asarray(v, cfg.dtype) for k, v in model.buffers.items()}
  table = None if model.puzzle_table is None else jnp.asarray(model.puzzle_table, jnp.float32)

  def run(inputs_BxS, puzzle_identifiers_B):
    batch = {"inputs": inputs_BxS, "labels": jnp.zeros_like(inputs_BxS), "puzzle_identifiers": puzzle_identifiers_B}
    out = arch.model_for(cfg).infer(params, buffers, cfg, table, batch, halt_on_q=early_halt, halt_max_steps=segments)
    logits = out["logits"].astype(jnp.float32)
    return (jnp.argmax(logits, axis=-1).astype(jnp.int32), logits, out["q_halt_logits"],
            out["q_continue_logits"], out["steps"].astype(jnp.int32))

  return run


def input_specs(seq_len: int):
  batch, = jax.export.symbolic_shape("batch")
  return (jax.ShapeDtypeStruct((batch, seq_len), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.int32))


def export_stablehlo(fn: Callable, seq_len: int, platforms: tuple[str, ...] = ("cpu",)) -> bytes:
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(*input_specs(seq_len))
  return bytes(exported.serialize())


@contextlib.contextmanager
def _native_fori_loop():
  """jax2onnx 0.13.0 replaces lax.fori_loop by its own primitive whose lowering needs the loop body's captured
  values to be constants; HRM's inner loops capture the carry, so it fails (TracerArrayConversionError).
  Without that patch, fori_loop traces to lax.scan, which jax2onnx converts (as an ONNX Loop)."""
  from jax2onnx.plugins.jax.lax import fori_loop  # pylint: disable=import-outside-toplevel
  plugin = fori_loop.ForiLoopPlugin
  original = plugin.__dict__["binding_specs"]
  plugin.binding_specs = classmethod(lambda cls: [])
  try:
    yield
  finally:
    plugin.binding_specs = original


def export_onnx(fn: Callable, seq_len: int) -> bytes:
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("ONNX export needs jax2onnx: pip install -r requirements-onnx.txt") from e
  for name in ("jax2onnx", "onnx_ir"):
    logging.getLogger(name).setLevel(logging.ERROR)
  with _native_fori_loop():
    proto = jax2onnx.to_onnx(fn, list(input_specs(seq_len)), model_name="hrm_act_v1",
                             input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES))
  return proto.SerializeToString()


def run_stablehlo(serialized: bytes, inputs_BxS: np.ndarray, puzzle_identifiers_B: np.ndarray) -> list[np.ndarray]:
  exported = jax.export.deserialize(bytearray(serialized))
  return [np.asarray(x) for x in exported.call(jnp.asarray(inputs_BxS, jnp.int32),
                                               jnp.asarray(puzzle_identifiers_B, jnp.int32))]


def run_onnx(serialized: bytes, inputs_BxS: np.ndarray, puzzle_identifiers_B: np.ndarray) -> list[np.ndarray]:
  import onnxruntime  # pylint: disable=import-outside-toplevel
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3
  session = onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
  return session.run(list(OUTPUT_NAMES), {"inputs": np.asarray(inputs_BxS, np.int32),
                                          "puzzle_identifiers": np.asarray(puzzle_identifiers_B, np.int32)})


def compare(got: list[np.ndarray], want: list[np.ndarray]) -> dict[str, Any]:
  """Largest differences of an exported program's outputs from the in-process model's."""
  got_d, want_d = dict(zip(OUTPUT_NAMES, got)), dict(zip(OUTPUT_NAMES, want))
  diff = lambda k: float(np.max(np.abs(np.asarray(got_d[k], np.float64) - np.asarray(want_d[k], np.float64))))
  return {"max_abs_logits": diff("logits"), "max_abs_q_halt": diff("q_halt_logits"),
          "max_abs_q_continue": diff("q_continue_logits"),
          "preds_equal": float(np.mean(got_d["preds"] == want_d["preds"])),
          "steps_equal": bool(np.array_equal(got_d["steps"], want_d["steps"]))}


def describe(model: LoadedModel, fmt: str, segments: int, early_halt: bool, platforms) -> dict[str, Any]:
  """The sidecar JSON written next to an export: what goes in, what comes out, which model."""
  cfg = model.model_config
  return {"format": fmt, "source": model.source, "step": model.step, "segments": segments, "early_halt": early_halt,
          "platforms": list(platforms) if fmt == "stablehlo" else None,
          "inputs": {"inputs": ["batch", cfg.seq_len, "int32"], "puzzle_identifiers": ["batch", "int32"]},
          "outputs": {"preds": ["batch", cfg.seq_len, "int32"], "logits": ["batch", cfg.seq_len, cfg.vocab_size,
                                                                           "float32"],
                      "q_halt_logits": ["batch", "float32"], "q_continue_logits": ["batch", "float32"],
                      "steps": ["batch", "int32"]},
          "model_config": cfg.to_dict(), "loss_type": model.loss_type}


def write(path: pathlib.Path, serialized: bytes, description: dict[str, Any]) -> pathlib.Path:
  path.write_bytes(serialized)
  sidecar = path.with_name(path.name + ".json")
  sidecar.write_text(json.dumps(description, indent=1))
  return sidecar
