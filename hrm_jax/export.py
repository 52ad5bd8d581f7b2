r"""Export a trained model for use without hrm_jax: `python -m hrm_jax.export --checkpoint PATH --format F --out FILE`.

  python -m hrm_jax.export --checkpoint workdirs/demo --format stablehlo --out demo.stablehlo
  python -m hrm_jax.export --checkpoint workdirs/demo --format onnx --out demo.onnx

The whole inference is exported: every ACT segment (`--segments N`, default the model's halt_max_steps; with
`--early-halt` rows stop at q_halt > q_continue) inside one loop, weights baked in, batch size left open.
StableHLO is `jax.export`'s serialized form: `jax.export.deserialize(open(FILE, 'rb').read()).call(inputs,
puzzle_identifiers)` runs it with JAX alone. ONNX goes through jax2onnx (pip install -r requirements-onnx.txt).
FILE.json describes inputs, outputs and the model. After writing, the export is run on a check batch and
compared with the in-process model (printed). Exit status: 0 on success, 1 for a bad checkpoint or flag
(one line on stderr), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

import numpy as np

from hrm_jax.evaluation import cli


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hrm_jax.export", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_model_flags(parser)
  parser.add_argument("--format", required=True, choices=("stablehlo", "onnx"))
  parser.add_argument("--out", required=True, type=pathlib.Path, help="file to write (and FILE.json beside it)")
  parser.add_argument("--segments", type=int, default=None, help="ACT segments (default: the model's halt_max_steps)")
  parser.add_argument("--early-halt", action="store_true", help="rows stop at their first q_halt > q_continue")
  parser.add_argument("--seq-len", type=int, default=None, help="sequence length, for an original RoPE step_N only")
  parser.add_argument("--platforms", default="cpu,cuda",
                      help="StableHLO: comma-separated platforms to lower for (default cpu,cuda)")
  args = parser.parse_args(argv)

  def run() -> int:
    if args.segments is not None and args.segments < 1:
      raise cli.UsageError(f"--segments must be >= 1, got {args.segments}")
    if not args.out.parent.is_dir():
      raise cli.UsageError(f"output directory {args.out.parent} does not exist; create it first.")
    import jax  # pylint: disable=import-outside-toplevel
    from hrm_jax.evaluation import exporting  # pylint: disable=import-outside-toplevel
    model = cli.load_model(args, seq_len=args.seq_len)
    cfg = model.model_config
    segments = args.segments or cfg.halt_max_steps
    fn = exporting.inference_fn(model, segments, args.early_halt)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    if args.format == "stablehlo":
      serialized = exporting.export_stablehlo(fn, cfg.seq_len, platforms)
      runner = exporting.run_stablehlo
    else:
      serialized = exporting.export_onnx(fn, cfg.seq_len)
      runner = exporting.run_onnx
    sidecar = exporting.write(args.out, serialized,
                              exporting.describe(model, args.format, segments, args.early_halt, platforms))
    rng = np.random.default_rng(0)
    inputs = rng.integers(1, cfg.vocab_size, (3, cfg.seq_len)).astype(np.int32)
    ids = rng.integers(0, cfg.num_puzzle_identifiers, (3,)).astype(np.int32)
    if args.format == "onnx" or jax.default_backend() in platforms:
      check = exporting.compare(runner(serialized, inputs, ids), [np.asarray(x) for x in jax.jit(fn)(inputs, ids)])
      print(f"check on 3 random rows: max |logits - in-process| {check['max_abs_logits']:.2e}, max |q_halt| "
            f"{check['max_abs_q_halt']:.2e}, predictions equal {check['preds_equal']:.0%}, steps equal "
            f"{'yes' if check['steps_equal'] else 'no'}")
    print(f"wrote {args.out} ({len(serialized):,} bytes, {args.format}, {segments} segments"
          f"{', early halting' if args.early_halt else ''}, batch size open) and {sidecar}")
    return 0

  return cli.run(run)


if __name__ == "__main__":
  sys.exit(main())
