"""`python -m hrm_jax.export`: StableHLO and ONNX programs of the whole inference give the in-process model's
outputs within the model's own float32 rounding spread, for any batch size, without hrm_jax's model code."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from hrm_jax import export as export_cli
from hrm_jax.convert import model_file
from hrm_jax.data import format as data_format
from hrm_jax.evaluation import exporting
from tools.parity import _nudge_one_ulp

import demo_run

# Runs the StableHLO file with JAX alone, in a fresh process that never imports hrm_jax (or Flax).
STANDALONE = r"""
import sys, jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
batch = np.load(sys.argv[2])
outs = {}
for size in (3, 64):
  results = exported.call(batch["inputs"][:size], batch["puzzle_identifiers"][:size])
  outs.update({f"{size}_{i}": np.asarray(r) for i, r in enumerate(results)})
np.savez(sys.argv[3], **outs)
assert not any(m.startswith(("hrm_jax", "flax")) for m in sys.modules), "model code was imported"
print("standalone ok")
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  workdir, data = demo_run.trained_demo(tmp_path_factory)
  model = model_file.load_model(workdir)
  rows = np.asarray(data_format.load_split(data, "test").sets["all"]["inputs"][:64], np.int32)
  batch = {"inputs": rows, "puzzle_identifiers": np.zeros(len(rows), np.int32)}
  reference = [np.asarray(x) for x in jax.jit(exporting.inference_fn(model))(batch["inputs"],
                                                                              batch["puzzle_identifiers"])]
  # The noise floor: how far the same model drifts when H_init/L_init move by one ulp (an equally valid
  # float32 computation); exports may differ from the in-process model by a few times that.
  spreads = []
  for seed in range(3):
    nudged = model_file.LoadedModel(
        model.params, {k: _nudge_one_ulp(np.asarray(v), seed * 2 + i) for i, (k, v) in enumerate(model.buffers.items())},
        model.puzzle_table, model.model_config, model.loss_type, "nudged", "run")
    out = [np.asarray(x) for x in jax.jit(exporting.inference_fn(nudged))(batch["inputs"], batch["puzzle_identifiers"])]
    spreads.append(exporting.compare(out, reference))
  tol = {k: 3 * max(s[k] for s in spreads) for k in ("max_abs_logits", "max_abs_q_halt", "max_abs_q_continue")}
  assert tol["max_abs_logits"] > 0
  return workdir, batch, reference, tol


def _check(got, reference, tol, rows=slice(None)):
  want = [r[rows] for r in reference]
  diff = exporting.compare(got, want)
  for key, bound in tol.items():
    assert diff[key] <= bound, (key, diff[key], bound)
  logits = want[1]
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = (top2[..., 1] - top2[..., 0]) > 2 * tol["max_abs_logits"]  # predictions not within rounding of a tie
  np.testing.assert_array_equal(got[0][clear], want[0][clear])
  np.testing.assert_array_equal(got[4], want[4])  # segments per row


def test_stablehlo_runs_without_hrm_jax_and_matches_the_model(setup, tmp_path, capsys):
  workdir, batch, reference, tol = setup
  out = tmp_path / "demo.stablehlo"
  assert export_cli.main(["--checkpoint", str(workdir), "--format", "stablehlo", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "batch size open" in printed and "predictions equal 100%" in printed
  sidecar = json.loads((tmp_path / "demo.stablehlo.json").read_text())
  assert sidecar["segments"] == 4 and sidecar["inputs"]["inputs"] == ["batch", 16, "int32"]
  np.savez(tmp_path / "batch.npz", **batch)
  proc = subprocess.run([sys.executable, "-c", STANDALONE, str(out), str(tmp_path / "batch.npz"),
                         str(tmp_path / "outs.npz")], capture_output=True, text=True, timeout=600,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
  assert proc.returncode == 0 and "standalone ok" in proc.stdout, proc.stderr[-3000:]
  outs = np.load(tmp_path / "outs.npz")
  for size in (3, 64):  # one file, two batch sizes
    _check([outs[f"{size}_{i}"] for i in range(5)], reference, tol, slice(0, size))


def test_onnx_matches_the_model_in_onnxruntime(setup, tmp_path, capsys):
  pytest.importorskip("jax2onnx")
  workdir, batch, reference, tol = setup
  out = tmp_path / "demo.onnx"
  assert export_cli.main(["--checkpoint", str(workdir), "--format", "onnx", "--out", str(out)]) == 0
  assert "predictions equal" in capsys.readouterr().out
  import onnx  # pylint: disable=import-outside-toplevel
  graph = onnx.load(str(out)).graph
  assert any(node.op_type == "Loop" for node in graph.node)  # the segment loop itself, not an unrolled copy
  assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
  serialized = out.read_bytes()
  for size in (3, 64):
    got = exporting.run_onnx(serialized, batch["inputs"][:size], batch["puzzle_identifiers"][:size])
    _check(got, reference, tol, slice(0, size))


def test_bad_export_requests_are_one_line(setup, tmp_path, capsys):
  workdir = setup[0]
  for args, expect in ((["--out", str(tmp_path / "no" / "x.onnx")], "does not exist"),
                       (["--out", str(tmp_path / "x"), "--segments", "0"], "--segments must be >= 1")):
    code = export_cli.main(["--checkpoint", str(workdir), "--format", "stablehlo", *args])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and expect in err, err
