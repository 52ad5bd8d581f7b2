r"""Convert HRM checkpoints between the original PyTorch format and hrm_jax.

  # original step_N (+ all_config.yaml beside it) -> hrm_jax .npz
  python -m hrm_jax.convert to-jax checkpoints/run/step_52080 --output hrm.npz --seq-len 81
  # hrm_jax .npz or run workdir -> a state_dict the original loads with strict=True, + all_config.yaml beside it
  python -m hrm_jax.convert to-torch workdirs/demo --output export/step_2000

to-torch writes all_config.yaml in the original's layout next to the state_dict, with an `hrm_jax` block that
holds the whole model config, so to-jax of that file needs no flags. For an original checkpoint without an
all_config.yaml, `--seq-len` gives the dataset's sequence length (RoPE models) and `--set key=value` the fields
its tensors cannot tell (num_heads, expansion, H_cycles, L_cycles, halt_max_steps); to-jax refuses to guess
them unless --original-defaults is given. `--set` also sets hrm_jax-only fields such as attention_impl. Exit status: 0 on success, 1 when the conversion
fails (one-line message), 2 for a malformed command line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Sequence

import yaml

from hrm_jax.convert import model_file
from hrm_jax.convert import npz_file
from hrm_jax.convert import torch_checkpoint


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
  overrides = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set {item!r} is not key=value (e.g. --set num_heads=8)")
    overrides[key.strip()] = yaml.safe_load(value)  # "8" -> 8, "2.5" -> 2.5, "rope" -> "rope"
  return overrides


def to_jax(args: argparse.Namespace) -> None:
  overrides = _parse_sets(args.set)
  converted = torch_checkpoint.load_original_checkpoint(args.checkpoint, overrides=overrides or None,
                                                        seq_len=args.seq_len,
                                                        require_config=not args.original_defaults)
  out = npz_file.save_npz(args.output, converted.params, converted.buffers, converted.puzzle_table,
                          converted.model_config, converted.loss_type)
  print(f"read {args.checkpoint} (key prefix {converted.prefix!r}, loss_type {converted.loss_type})")
  print("model config: " + json.dumps(converted.model_config.to_dict()))
  for note in converted.notes:
    print(f"note: {note}")
  print(f"wrote {out}")


def to_torch(args: argparse.Namespace) -> None:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Writing a torch checkpoint needs PyTorch: pip install torch (the CPU build is enough).") \
        from e
  model = model_file.load_model(args.input, step=args.step)
  cfg = model.model_config
  print(f"read {model.source}")
  state = torch_checkpoint.to_state_dict(model.params, model.buffers, model.puzzle_table, cfg, prefix="")
  output = pathlib.Path(args.output)
  if not output.parent.is_dir():
    raise FileNotFoundError(f"Output directory {output.parent} does not exist; create it first.")
  config_path = torch_checkpoint.write_all_config(output.parent, cfg, model.loss_type, model.run_config)
  tensors = torch_checkpoint.numpy_to_torch({args.prefix + k: v for k, v in state.items()})
  torch.save(tensors, output)
  print("model config: " + json.dumps(cfg.to_dict()))
  print(f"wrote {output} ({len(tensors)} tensors, keys '{args.prefix}*') and {config_path}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hrm_jax.convert", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  jax_cmd = commands.add_parser("to-jax", help="original step_N or .safetensors -> hrm_jax .npz")
  jax_cmd.add_argument("checkpoint", help="step_N file written by the original's pretrain.py, or .safetensors")
  jax_cmd.add_argument("--output", required=True, help="the .npz to write")
  jax_cmd.add_argument("--seq-len", type=int, default=None,
                       help="sequence length of the dataset (required for RoPE checkpoints)")
  jax_cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a model config field; repeatable")
  jax_cmd.add_argument("--original-defaults", action="store_true",
                       help="without an all_config.yaml, assume the original's default num_heads, expansion, "
                            "H_cycles, L_cycles and halt_max_steps instead of refusing")
  jax_cmd.set_defaults(run=to_jax)
  torch_cmd = commands.add_parser("to-torch", help="hrm_jax .npz or run directory -> state_dict for the original")
  torch_cmd.add_argument("input", help=".npz written by to-jax (or npz_file.save_npz), or an hrm_jax run's workdir "
                                       "(its best, else newest, complete checkpoint is converted)")
  torch_cmd.add_argument("--step", type=int, default=None, help="which checkpoint of a run directory")
  torch_cmd.add_argument("--output", required=True, help="file to torch.save the state_dict to, e.g. step_0")
  torch_cmd.add_argument("--prefix", default=torch_checkpoint.DEFAULT_PREFIX,
                         choices=torch_checkpoint.KNOWN_PREFIXES,
                         help="key prefix: pretrain.py's compiled model (default), DISABLE_COMPILE, or bare ACT")
  torch_cmd.set_defaults(run=to_torch)
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except (torch_checkpoint.CheckpointConversionError, ValueError, FileNotFoundError, ImportError,
          OSError) as e:
    message = " ".join(line.strip() for line in str(e).splitlines())
    if args.command == "to-jax" and args.seq_len is None and "seq_len cannot be inferred" in message:
      message += " Use --seq-len N."
    print(f"error: {message}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
