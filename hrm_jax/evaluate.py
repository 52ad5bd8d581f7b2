r"""Evaluate a trained model on a dataset split: `python -m hrm_jax.evaluate --checkpoint PATH --data DIR`.

  python -m hrm_jax.evaluate --checkpoint workdirs/demo --data data/demo --out eval/demo
  python -m hrm_jax.evaluate --checkpoint workdirs/demo --data data/demo --halt-max-steps 8 --early-halt

Prints exact accuracy (the headline), token accuracy, per-class accuracy, halting steps and q-halt accuracy as
the original computes them, plus segments run and seconds; `--out DIR` gets report.json and predictions.npz
(and for ARC submission.json in the Kaggle layout, with the original's voting pass@k in the report).
Exit status: 0 on success, 1 for a bad checkpoint, dataset or flag (one line on stderr), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from hrm_jax.evaluation import cli


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hrm_jax.evaluate", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_model_flags(parser)
  parser.add_argument("--data", required=True, type=pathlib.Path, help="dataset directory (train/, test/, ...)")
  parser.add_argument("--split", default="test")
  parser.add_argument("--out", type=pathlib.Path, default=None, help="write report.json, predictions.npz here")
  parser.add_argument("--halt-max-steps", type=int, default=None,
                      help="segments per puzzle (default: the model's; more than training = inference-time scaling)")
  parser.add_argument("--early-halt", action="store_true",
                      help="stop each puzzle at its first segment with q_halt > q_continue (not the original's "
                           "evaluation, which always runs halt-max-steps segments)")
  parser.add_argument("--subset", type=int, default=None, help="evaluate a fixed random subset of N examples")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="rows per batch (default: a run's own evaluation batch size, else 256)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)

  def run() -> int:
    for name in ("halt_max_steps", "subset", "batch_size"):
      value = getattr(args, name)
      if value is not None and value < 1:
        raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    import tqdm  # pylint: disable=import-outside-toplevel
    from hrm_jax.data import format as data_format  # pylint: disable=import-outside-toplevel
    from hrm_jax.evaluation import score  # pylint: disable=import-outside-toplevel
    meta = data_format.load_metadata(args.data, args.split)
    model = cli.load_model(args, seq_len=meta.seq_len)
    total = data_format.load_split(args.data, args.split).num_examples()
    total = min(total, args.subset) if args.subset else total
    with tqdm.tqdm(total=total, unit="puzzle", desc="evaluating", disable=True if args.no_progress else None,
                   file=sys.stderr, leave=False) as bar:
      report = score.evaluate_model(model, args.data, split=args.split, halt_max_steps=args.halt_max_steps,
                                    early_halt=args.early_halt, subset=args.subset, batch_size=args.batch_size,
                                    out_dir=args.out, progress=bar.update)
    step = f" (step {report['step']})" if report["step"] is not None else ""
    print(f"{report['checkpoint']}{step} on {args.data}/{args.split}:")
    print(score.format_report(report))
    return 0

  return cli.run(run)


if __name__ == "__main__":
  sys.exit(main())
