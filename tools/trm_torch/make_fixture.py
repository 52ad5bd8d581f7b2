r"""Writes a TRM parity fixture (checkpoints + reference arrays) with the PyTorch TRM reference.

The layout and array names are those of ../shared/fixtures/trm_original/tiny/float32/, which the original
TinyRecursiveModels code produced (README.txt there lists every array). HRM's fixture writer
(`tools.make_fixture`) does the shared parts; this adds TRM's: the trace of every network call, the EMA
shadow along the trajectory, the EMA checkpoint (step_3) and its eval loop, `preds`.

Usage (from the repo root):
  python -m tools.trm_torch.make_fixture /tmp/trm_fx --config '{"H_cycles": 3, "L_cycles": 2,
      "H_layers": 0, "L_layers": 1, "hidden_size": 32, "num_heads": 2, "expansion": 2, "puzzle_emb_ndim": 32,
      "puzzle_emb_len": 3, "pos_encodings": "none", "mlp_t": true, "no_ACT_continue": true,
      "halt_max_steps": 3, "halt_exploration_prob": 0.1, "forward_dtype": "float32", "batch_size": 4,
      "vocab_size": 7, "seq_len": 10, "num_puzzle_identifiers": 2}'
  # Re-run the original's fixture checkpoint on its own batches:
  F=../shared/fixtures/trm_original/tiny/float32
  python -m tools.trm_torch.make_fixture /tmp/fx --config $F/model_cfg.json \
      --checkpoint $F/checkpoint_dir/step_0 --batches-from $F/reference.npz
"""

import copy
import json
import os
import pathlib
import sys
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
import yaml

from tools import make_fixture as hrm_fixture
from tools.hrm_torch import AdamATan2, load_into_loss_head, load_state_dict_file, to_compiled_state_dict
from tools.trm_torch import ACTLossHead, EMAHelper, TinyRecursiveReasoningModel_ACTV1Config, build_loss_head

EMA_RATE = 0.9  # the fixture's mu (the original's default is 0.999: too slow to see in 3 steps)
MIN_HALT_MARGIN = 0.05
MAX_TRAJ_SEED_TRIES = 12


def _read_config(config) -> Dict[str, Any]:
  if isinstance(config, Mapping):
    config_dict = dict(config)
  else:
    text = os.fspath(config)
    try:
      config_dict = json.loads(pathlib.Path(text).read_text() if os.path.isfile(text) else text)
    except json.JSONDecodeError as e:
      raise ValueError(f"--config {text[:80]!r} is neither a JSON file nor a JSON object ({e})") from e
  if not isinstance(config_dict, dict):
    raise ValueError(f"the config must be a JSON object, got {type(config_dict).__name__}")
  config_dict.setdefault("causal", False)
  return config_dict


def init_loss_head(model_cfg: Mapping[str, Any], seed: int, loss_type: str) -> ACTLossHead:
  """HRM's fixture init with TRM's loss head and the original TRM fixture's q_head.bias [0.0, -0.2]."""
  return hrm_fixture.init_loss_head(model_cfg, seed, loss_type, q_bias=(0.0, -0.2), build=build_loss_head)


def _trace(head: ACTLossHead, batch) -> np.ndarray:
  """Outputs of every L_level call of one eval segment from H_init/L_init, in call order."""
  inner = head.model.inner
  outputs = []
  hook = inner.L_level.register_forward_hook(lambda _m, _i, out: outputs.append(hrm_fixture._f32(out)))  # pylint: disable=protected-access
  try:
    head.eval()
    with torch.no_grad():
      size = batch["inputs"].shape[0]
      inner(inner.reset_carry(torch.ones(size, dtype=torch.bool), inner.empty_carry(size)), batch)
  finally:
    hook.remove()
  return np.stack(outputs)


def _trajectory_with_ema(head: ACTLossHead, traj_batches, ema: EMAHelper) -> Dict[str, np.ndarray]:
  """HRM's trajectory (SignSGD then AdamATan2 per call), with the EMA updated after each call."""
  out: Dict[str, np.ndarray] = {}
  params = dict(head.named_parameters())

  def after_adam(optimizer, _args, _kwargs):
    if not isinstance(optimizer, AdamATan2):
      return
    call = sum(1 for k in out if k.endswith("_emastats__" + next(iter(params))))
    ema.update(head)
    for name in params:
      shadow = ema.shadow[name]
      out[f"traj{call}_ema__{name}"] = hrm_fixture._f32(shadow)[hrm_fixture.traj_rows(shadow.shape)]  # pylint: disable=protected-access
      out[f"traj{call}_emastats__{name}"] = hrm_fixture._stats(shadow)  # pylint: disable=protected-access

  handle = register_optimizer_step_post_hook(after_adam)
  try:
    out.update(hrm_fixture._trajectory(head, traj_batches))  # pylint: disable=protected-access
  finally:
    handle.remove()
  return out


def _outputs_with_preds(arrays: Dict[str, np.ndarray]) -> None:
  for name in list(arrays):
    if name.endswith("_logits") and name.startswith(("eval_step", "ema_eval_step", "traj")):
      arrays[name[:-len("logits")] + "preds"] = np.argmax(arrays[name], axis=-1).astype(np.int64)


def compute_reference(head: ACTLossHead, batches: "hrm_fixture.FixtureBatches", ema_rate: float = EMA_RATE
                      ) -> tuple[Dict[str, np.ndarray], ACTLossHead]:
  """Every reference.npz array, and the EMA copy after the trajectory (what the original saves as step_3)."""
  initial_state = copy.deepcopy(head.state_dict())
  original_config = head.model.config
  try:
    fixed = hrm_fixture._to_torch(batches.fixed)  # pylint: disable=protected-access
    arrays = {k: v.numpy().copy() for k, v in fixed.items()}
    arrays.update(hrm_fixture._eval_parts(head, fixed))  # pylint: disable=protected-access
    arrays["inner_step1_trace"] = _trace(head, fixed)
    hrm_fixture._without_exploration(head)  # pylint: disable=protected-access
    arrays.update(hrm_fixture._train_segment(head, fixed))  # pylint: disable=protected-access
    head.load_state_dict(initial_state)
    ema = EMAHelper(mu=ema_rate)
    ema.register(head)
    arrays.update(_trajectory_with_ema(head, batches.traj, ema))
    ema_head = ema.ema_copy(head)
    ema_head.model.config = original_config
    ema_eval = hrm_fixture._eval_parts(ema_head, fixed)  # pylint: disable=protected-access
    arrays.update({"ema_" + k: v for k, v in ema_eval.items() if k.startswith("eval_step")})
    _outputs_with_preds(arrays)
    arrays["traj_row_stride"] = np.array(hrm_fixture.TRAJ_ROW_STRIDE, dtype=np.int64)
    arrays["traj_seed"] = np.array(batches.traj_seed, dtype=np.int64)
    arrays["ema_rate"] = np.array(ema_rate, dtype=np.float64)
  finally:
    head.model.config = original_config
    head.load_state_dict(initial_state)
    head.zero_grad(set_to_none=True)
  return arrays, ema_head


def halting_margin(arrays: Mapping[str, np.ndarray], halt_max_steps: int) -> float:
  """Smallest |q_halt| of the trajectory's halting decisions not forced by the last step (TRM: q_halt > 0)."""
  margins = []
  for call in range(hrm_fixture.NUM_TRAJ_CALLS):
    unforced = arrays[f"traj{call}_steps"] < halt_max_steps
    margins.extend(np.abs(arrays[f"traj{call}_q_halt"])[unforced].tolist())
  return min(margins) if margins else float("nan")


def choose_traj_seed(head: ACTLossHead, first_seed: int) -> int:
  """First trajectory seed with mixed halting and a clear margin, else the best tried."""
  cfg = head.model.config
  if cfg.halt_max_steps < 2:
    return first_seed
  initial_state = copy.deepcopy(head.state_dict())
  best_seed, best_score = first_seed, None
  try:
    hrm_fixture._without_exploration(head)  # pylint: disable=protected-access
    for traj_seed in range(first_seed, first_seed + MAX_TRAJ_SEED_TRIES):
      head.load_state_dict(initial_state)
      arrays = hrm_fixture._trajectory(head, hrm_fixture.make_traj_batches(cfg, traj_seed))  # pylint: disable=protected-access
      score = (hrm_fixture.has_mixed_halting(arrays, cfg.halt_max_steps), halting_margin(arrays, cfg.halt_max_steps))
      if best_score is None or score > best_score:
        best_seed, best_score = traj_seed, score
      if score[0] and score[1] >= MIN_HALT_MARGIN:
        break
  finally:
    head.model.config = cfg
    head.load_state_dict(initial_state)
    head.zero_grad(set_to_none=True)
  return best_seed


def all_config(model_cfg: Mapping[str, Any], loss_type: str, seed: int, ema_rate: float) -> Dict[str, Any]:
  """PretrainConfig-shaped dict: HRM's, with TRM's arch name, data_paths and the EMA settings."""
  config = hrm_fixture.all_config(model_cfg, loss_type, seed)
  config["arch"]["name"] = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
  config["data_paths"] = [config.pop("data_path")]
  config.update(data_paths_test=[], evaluators=[], ema=True, ema_rate=ema_rate, freeze_weights=False,
                min_eval_interval=0, load_checkpoint=None)
  return config


def make_fixture(out_dir, model_cfg, seed: int = 0, loss_type: str = "stablemax_cross_entropy",
                 forward_dtype: Optional[str] = None, checkpoint=None,
                 batches: "Optional[hrm_fixture.FixtureBatches]" = None, ema_rate: float = EMA_RATE,
                 verbose: bool = True) -> Dict[str, np.ndarray]:
  """Writes a TRM fixture directory (see the module docstring) and returns its arrays."""
  cfg_dict = _read_config(model_cfg)
  if forward_dtype is not None:
    cfg_dict["forward_dtype"] = forward_dtype
  TinyRecursiveReasoningModel_ACTV1Config.from_dict(cfg_dict)
  if checkpoint is not None:
    torch.manual_seed(seed)
    head = build_loss_head(cfg_dict, loss_type)
    load_into_loss_head(head, load_state_dict_file(checkpoint))
  else:
    head = init_loss_head(cfg_dict, seed, loss_type)
  cfg = head.model.config
  if batches is None:
    traj_seed = choose_traj_seed(head, first_seed=seed + 1)
    batches = hrm_fixture.FixtureBatches(fixed=hrm_fixture.make_fixed_batch(cfg, seed),
                                         traj=hrm_fixture.make_traj_batches(cfg, traj_seed), traj_seed=traj_seed)
  arrays, ema_head = compute_reference(head, batches, ema_rate)
  if verbose:
    pattern = "  ".join(f"call{i}=" + "".join("H" if h else "." for h in arrays[f"traj{i}_halted"])
                        for i in range(hrm_fixture.NUM_TRAJ_CALLS))
    print(f"{cfg.forward_dtype}  {pattern}  margin {halting_margin(arrays, cfg.halt_max_steps):.3f}  "
          f"traj_seed {int(arrays['traj_seed'])}")

  out = pathlib.Path(out_dir)
  (out / "checkpoint_dir").mkdir(parents=True, exist_ok=True)
  compiled = to_compiled_state_dict(head)
  torch.save(compiled, out / "checkpoint_dir" / "step_0")
  torch.save(to_compiled_state_dict(ema_head), out / "checkpoint_dir" / "step_3")
  (out / "checkpoint_dir" / "all_config.yaml").write_text(
      yaml.safe_dump(all_config(cfg_dict, loss_type, seed, ema_rate), sort_keys=True))
  (out / "model_cfg.json").write_text(json.dumps(cfg_dict, indent=1))
  (out / "state_dict_keys.json").write_text(json.dumps(
      {k: [list(v.shape), str(v.dtype)] for k, v in compiled.items()}, indent=1))
  np.savez(out / "reference.npz", **arrays)
  return arrays


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = hrm_fixture.fixture_parser("python -m tools.trm_torch.make_fixture", __doc__.split("\n\n")[0],
                                      "use this step_N checkpoint instead of a fresh init")
  parser.add_argument("--ema-rate", type=float, default=EMA_RATE)
  args = parser.parse_args(argv)
  batches = lambda: hrm_fixture.batches_from_reference(args.batches_from) if args.batches_from else None
  return hrm_fixture.run_cli(lambda: make_fixture(
      args.out_dir, args.config, seed=args.seed, loss_type=args.loss_type, forward_dtype=args.forward_dtype,
      checkpoint=args.checkpoint, batches=batches(), ema_rate=args.ema_rate))


if __name__ == "__main__":
  sys.exit(main())
