r"""Writes an HRM parity fixture (checkpoint + reference arrays) with the PyTorch reference model.

The layout and array names are those of ../shared/fixtures/hrm_original/tiny/float32/, which the
original sapientinc/HRM code produced; see README.txt there for what every array means.

Usage (from the repo root):
  python -m tools.make_fixture /tmp/fx --config '{"H_cycles": 2, "L_cycles": 2, "H_layers": 1,
      "L_layers": 1, "hidden_size": 32, "num_heads": 2, "expansion": 2.5, "puzzle_emb_ndim": 0,
      "pos_encodings": "learned", "halt_max_steps": 3, "halt_exploration_prob": 0.1,
      "forward_dtype": "float32", "batch_size": 4, "vocab_size": 7, "seq_len": 10,
      "num_puzzle_identifiers": 1}'
  # Re-run an existing fixture's checkpoint on its own batches:
  F=../shared/fixtures/hrm_original/tiny/float32
  python -m tools.make_fixture /tmp/fx --config $F/model_cfg.json \
      --checkpoint $F/checkpoint_dir/step_0 --batches-from $F/reference.npz
"""

import argparse
import copy
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import yaml

from tools.hrm_torch import (
    IGNORE_LABEL_ID, ACTLossHead, AdamATan2, CastedSparseEmbeddingSignSGD,
    HierarchicalReasoningModel_ACTV1Config, build_loss_head, load_into_loss_head,
    load_state_dict_file, to_compiled_state_dict,
)
from tools.hrm_torch.sparse_embedding import sparse_sign_sgd_update_

LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")
BATCH_KEYS = ("inputs", "labels", "puzzle_identifiers")
NUM_TRAJ_CALLS = 3
TRAJ_ROW_STRIDE = 8
# Tensors this small are stored whole in the traj arrays; larger ones every TRAJ_ROW_STRIDE-th row.
TRAJ_WHOLE_NUMEL = 4096
# Tries of trajectory seeds when looking for a trajectory with mixed halting whose smallest
# unforced |q_halt - q_continue| is at least MIN_HALT_MARGIN.
MAX_TRAJ_SEED_TRIES = 12
MIN_HALT_MARGIN = 0.05

# Optimiser settings of the fixture's trajectory (written to all_config.yaml as well).
TRAIN_SETTINGS = dict(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, puzzle_emb_lr=1e-2,
                      puzzle_emb_weight_decay=0.1)

# model_cfg fields that come from the dataset, not from the yaml `arch` block.
_DATASET_FIELDS = ("batch_size", "vocab_size", "seq_len", "num_puzzle_identifiers", "causal")

Batch = Dict[str, np.ndarray]


@dataclasses.dataclass
class FixtureBatches:
  """The fixed batch and the NEW batch passed at each trajectory call (int32 numpy arrays)."""

  fixed: Batch
  traj: List[Batch]
  traj_seed: int


@dataclasses.dataclass
class FixtureResult:
  arrays: Dict[str, np.ndarray]
  halting_pattern: List[str]  # per call, 'H' = halted, '.' = continues
  margin: float  # smallest |q_halt - q_continue| over decisions not forced by the last step


# ---------------------------------------------------------------------------------------------
# Config and batches
# ---------------------------------------------------------------------------------------------


def parse_config(config: "str | os.PathLike | Mapping[str, Any]") -> Dict[str, Any]:
  """A model_cfg dict from a dict, a JSON string, or a path to a JSON file."""
  if isinstance(config, Mapping):
    config_dict = dict(config)
  else:
    text = os.fspath(config)
    if os.path.isfile(text):
      try:
        config_dict = json.loads(pathlib.Path(text).read_text())
      except json.JSONDecodeError as e:
        raise ValueError(f"config file {text!r} is not valid JSON: {e}") from e
    else:
      try:
        config_dict = json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(
            f"--config {text[:80]!r} is neither an existing file nor a JSON object ({e}); "
            "pass a model_cfg.json path or an inline JSON object"
        ) from e
  if not isinstance(config_dict, dict):
    raise ValueError(f"the config must be a JSON object, got {type(config_dict).__name__}")
  config_dict.setdefault("causal", False)
  HierarchicalReasoningModel_ACTV1Config.from_dict(config_dict)  # raises on a bad config
  return config_dict


def random_batch(rng: np.random.Generator, cfg: HierarchicalReasoningModel_ACTV1Config,
                 ignore_fraction: float = 0.2) -> Batch:
  """Random tokens in [0, V), labels in [1, V) with some ignored tokens."""
  shape = (cfg.batch_size, cfg.seq_len)
  labels = rng.integers(1, cfg.vocab_size, size=shape) if cfg.vocab_size > 1 else np.zeros(shape)
  labels = np.where(rng.random(shape) < ignore_fraction, IGNORE_LABEL_ID, labels)
  return dict(
      inputs=rng.integers(0, cfg.vocab_size, size=shape).astype(np.int32),
      labels=labels.astype(np.int32),
      puzzle_identifiers=rng.integers(0, cfg.num_puzzle_identifiers, size=(cfg.batch_size,)
                                      ).astype(np.int32),
  )


def make_fixed_batch(cfg: HierarchicalReasoningModel_ACTV1Config, seed: int) -> Batch:
  """The fixed batch; its last row is fully ignored like the original fixture's."""
  batch = random_batch(np.random.default_rng(seed), cfg)
  batch["labels"][-1] = IGNORE_LABEL_ID
  return batch


def make_traj_batches(cfg: HierarchicalReasoningModel_ACTV1Config, traj_seed: int) -> List[Batch]:
  rng = np.random.default_rng(traj_seed)
  return [random_batch(rng, cfg) for _ in range(NUM_TRAJ_CALLS)]


def batches_from_reference(npz_path: "str | os.PathLike") -> FixtureBatches:
  """The fixed and trajectory batches stored in an existing reference.npz."""
  path = os.fspath(npz_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--batches-from {path!r} does not exist; pass a reference.npz")
  with np.load(path) as ref:
    try:
      fixed = {k: ref[k] for k in BATCH_KEYS}
      traj = [{k: ref[f"traj{i}_batch_{k}"] for k in BATCH_KEYS} for i in range(NUM_TRAJ_CALLS)]
      traj_seed = int(ref["traj_seed"])
    except KeyError as e:
      raise ValueError(f"{path!r} lacks the batch array {e}; is it a fixture reference.npz?") from e
  return FixtureBatches(fixed=fixed, traj=traj, traj_seed=traj_seed)


def _check_batch(batch: Batch, cfg: HierarchicalReasoningModel_ACTV1Config, name: str) -> None:
  expected = dict(inputs=(cfg.batch_size, cfg.seq_len), labels=(cfg.batch_size, cfg.seq_len),
                  puzzle_identifiers=(cfg.batch_size,))
  for key, shape in expected.items():
    if key not in batch:
      raise ValueError(f"{name} batch lacks {key!r}")
    if tuple(batch[key].shape) != shape:
      raise ValueError(f"{name} batch {key!r} has shape {batch[key].shape}, config needs {shape}")


def _to_torch(batch: Batch) -> Dict[str, torch.Tensor]:
  return {k: torch.from_numpy(np.asarray(batch[k], dtype=np.int32)) for k in BATCH_KEYS}


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def init_loss_head(model_cfg: Mapping[str, Any], seed: int, loss_type: str, q_bias: Sequence[float] = (0.3, -0.2),
                   build: Callable[[Mapping[str, Any], str], Any] = build_loss_head) -> Any:
  """Fresh init under `seed` (`build`: HRM's loss head, or TRM's), then the fixture's deviation so that halting
  is non-trivial: q_head.weight = 0.1·N(0,1), q_head.bias = `q_bias`, puzzle_emb.weights = 0.5·N(0,1).
  """
  torch.manual_seed(seed)
  head = build(model_cfg, loss_type)
  inner = head.model.inner
  with torch.no_grad():
    inner.q_head.weight.copy_(0.1 * torch.randn_like(inner.q_head.weight))
    inner.q_head.bias.copy_(torch.tensor(list(q_bias)))
    if hasattr(inner, "puzzle_emb"):
      inner.puzzle_emb.weights.copy_(0.5 * torch.randn_like(inner.puzzle_emb.weights))
  return head


def _without_exploration(head: ACTLossHead) -> None:
  """Train-mode parts run with halt_exploration_prob 0, so halting is deterministic given Q."""
  head.model.config = dataclasses.replace(head.model.config, halt_exploration_prob=0.0)


# Float arrays are saved as float32, or as float64 for a float64 model (as the original's float64 fixture:
# values the original holds in float32 are then exact upcasts). Set by `compute_reference`.
_SAVE_DTYPE = [torch.float32]


def _f32(t: torch.Tensor) -> np.ndarray:
  # A copy: .numpy() of an fp32 tensor aliases its storage, which later steps update in place.
  return t.detach().to(_SAVE_DTYPE[0]).cpu().numpy().copy()


def _native(t: torch.Tensor) -> np.ndarray:
  """Loss-head outputs in their own dtype (float ones widened to float64 for a float64 model)."""
  t = t.detach()
  if t.is_floating_point() and _SAVE_DTYPE[0] == torch.float64:
    t = t.to(torch.float64)
  return t.cpu().numpy().copy()


def _stats(t: torch.Tensor) -> np.ndarray:
  t64 = t.detach().to(torch.float64)
  return np.array([t64.sum().item(), t64.square().sum().item(), t64.abs().max().item()])


def traj_rows(shape: Sequence[int]) -> np.ndarray:
  """Row indices kept in traj arrays: all rows of small tensors, else every TRAJ_ROW_STRIDE-th."""
  if int(np.prod(shape)) <= TRAJ_WHOLE_NUMEL:
    return np.arange(shape[0], dtype=np.int64)
  return np.arange(0, shape[0], TRAJ_ROW_STRIDE, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Reference computations
# ---------------------------------------------------------------------------------------------


def _eval_parts(head: ACTLossHead, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
  out = {}
  head.eval()
  inner = head.model.inner
  batch_size = batch["inputs"].shape[0]
  with torch.no_grad():
    out["input_embeddings"] = _f32(inner._input_embeddings(  # pylint: disable=protected-access
        batch["inputs"], batch["puzzle_identifiers"]))
    carry = inner.reset_carry(torch.ones(batch_size, dtype=torch.bool),
                              inner.empty_carry(batch_size))
    carry, logits, (q_halt, q_continue) = inner(carry, batch)
    out.update(inner_step1_logits=_f32(logits), inner_step1_q_halt=_f32(q_halt),
               inner_step1_q_continue=_f32(q_continue), inner_step1_zH=_f32(carry.z_H),
               inner_step1_zL=_f32(carry.z_L))

    act_carry = head.initial_carry(batch)
    step = 0
    while True:
      act_carry, loss, metrics, outputs, all_finish = head(
          return_keys=["logits", "q_halt_logits", "q_continue_logits"], carry=act_carry,
          batch=batch)
      prefix = f"eval_step{step}_"
      out[prefix + "logits"] = _f32(outputs["logits"])
      out[prefix + "q_halt"] = _f32(outputs["q_halt_logits"])
      out[prefix + "q_continue"] = _f32(outputs["q_continue_logits"])
      out[prefix + "loss"] = _f32(loss)
      for name, value in metrics.items():
        out[prefix + "metric_" + name] = _f32(value)
      out[prefix + "halted"] = act_carry.halted.numpy().copy()
      out[prefix + "steps"] = act_carry.steps.numpy().copy()
      step += 1
      if all_finish:
        break
    out["eval_num_steps"] = np.array(step, dtype=np.int64)
  return out


def _train_segment(head: ACTLossHead, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
  """One train-mode segment from a fresh carry, its gradients and one SignSGD step (on a copy)."""
  out = {}
  head.train()
  head.zero_grad(set_to_none=True)
  inner = head.model.inner
  batch_size = batch["inputs"].shape[0]
  carry = head.initial_carry(batch)
  carry, loss, metrics, _, _ = head(return_keys=[], carry=carry, batch=batch)
  (loss / batch_size).backward()
  out["train_loss"] = _f32(loss)
  for name, value in metrics.items():
    out["train_metric_" + name] = _f32(value)
  out["train_halted"] = carry.halted.numpy().copy()
  for name, param in head.named_parameters():
    grad = param.grad if param.grad is not None else torch.zeros_like(param)
    out["grad__" + name] = _f32(grad)
  if hasattr(inner, "puzzle_emb"):
    emb = inner.puzzle_emb
    out["grad__puzzle_emb.local_weights"] = _f32(emb.local_weights.grad)
    table = emb.weights.detach().clone()
    sparse_sign_sgd_update_(table, emb.local_weights.grad, emb.local_ids,
                            lr=TRAIN_SETTINGS["puzzle_emb_lr"],
                            weight_decay=TRAIN_SETTINGS["puzzle_emb_weight_decay"])
    out["puzzle_emb_weights_after_signsgd"] = _f32(table)
    emb.local_weights.grad = None
  head.zero_grad(set_to_none=True)
  return out


def _trajectory(head: ACTLossHead, traj_batches: Sequence[Batch]) -> Dict[str, np.ndarray]:
  """Train-mode calls with the ACT carry kept between them, each followed by both optimisers."""
  out = {}
  head.train()
  inner = head.model.inner
  has_puzzle_emb = hasattr(inner, "puzzle_emb")
  optimizers = []
  if has_puzzle_emb:
    optimizers.append(CastedSparseEmbeddingSignSGD(
        inner.puzzle_emb.buffers(), lr=TRAIN_SETTINGS["puzzle_emb_lr"],
        weight_decay=TRAIN_SETTINGS["puzzle_emb_weight_decay"]))
  optimizers.append(AdamATan2(
      head.parameters(), lr=TRAIN_SETTINGS["lr"],
      betas=(TRAIN_SETTINGS["beta1"], TRAIN_SETTINGS["beta2"]),
      weight_decay=TRAIN_SETTINGS["weight_decay"]))
  for optimizer in optimizers:
    optimizer.zero_grad(set_to_none=True)

  params = dict(head.named_parameters())
  for name, param in params.items():
    out["traj_rows__" + name] = traj_rows(param.shape)

  carry = None
  for call, np_batch in enumerate(traj_batches):
    batch = _to_torch(np_batch)
    batch_size = batch["inputs"].shape[0]
    if carry is None:
      carry = head.initial_carry(batch)
    p = f"traj{call}_"
    for key in BATCH_KEYS:
      out[p + "batch_" + key] = batch[key].numpy().copy()
    out[p + "reset"] = carry.halted.numpy().copy()

    carry, loss, metrics, outputs, _ = head(
        return_keys=["logits", "q_halt_logits", "q_continue_logits", "target_q_continue"],
        carry=carry, batch=batch)
    (loss / batch_size).backward()

    out[p + "loss"] = _native(loss)
    for name, value in metrics.items():
      out[p + "metric_" + name] = _native(value)
    out[p + "halted"] = carry.halted.numpy().copy()
    out[p + "steps"] = carry.steps.numpy().copy()
    for key in BATCH_KEYS:
      out[p + "current_" + key] = carry.current_data[key].numpy().copy()
    out[p + "zH"] = _f32(carry.inner_carry.z_H)
    out[p + "zL"] = _f32(carry.inner_carry.z_L)
    out[p + "logits"] = _f32(outputs["logits"])
    out[p + "q_halt"] = _f32(outputs["q_halt_logits"])
    out[p + "q_continue"] = _f32(outputs["q_continue_logits"])
    if "target_q_continue" in outputs:  # absent when halt_max_steps == 1 (no ACT)
      out[p + "target_q_continue"] = _f32(outputs["target_q_continue"])
    for name, param in params.items():
      grad = param.grad if param.grad is not None else torch.zeros_like(param)
      out[p + "grad__" + name] = _f32(grad)[out["traj_rows__" + name]]
      out[p + "gradstats__" + name] = _stats(grad)
    if has_puzzle_emb:
      out[p + "grad__puzzle_emb.local_weights"] = _f32(inner.puzzle_emb.local_weights.grad)
      out[p + "local_ids"] = inner.puzzle_emb.local_ids.numpy().copy()

    for optimizer in optimizers:
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)

    for name, param in params.items():
      out[p + "param__" + name] = _f32(param)[out["traj_rows__" + name]]
      out[p + "paramstats__" + name] = _stats(param)
    if has_puzzle_emb:
      out[p + "param__puzzle_emb.weights"] = _f32(inner.puzzle_emb.weights)
  return out


def halting_summary(arrays: Mapping[str, np.ndarray], halt_max_steps: int):
  """Per-call halting pattern and the smallest |q_halt - q_continue| of unforced decisions."""
  pattern, margins = [], []
  for call in range(NUM_TRAJ_CALLS):
    p = f"traj{call}_"
    pattern.append("".join("H" if h else "." for h in arrays[p + "halted"]))
    unforced = arrays[p + "steps"] < halt_max_steps
    gap = np.abs(arrays[p + "q_halt"] - arrays[p + "q_continue"])[unforced]
    margins.extend(gap.tolist())
  return pattern, (min(margins) if margins else float("nan"))


def has_mixed_halting(arrays: Mapping[str, np.ndarray], halt_max_steps: int) -> bool:
  """Some row halts before the last step AND some row continues."""
  early = cont = False
  for call in range(NUM_TRAJ_CALLS):
    halted = arrays[f"traj{call}_halted"]
    steps = arrays[f"traj{call}_steps"]
    early |= bool(np.any(halted & (steps < halt_max_steps)))
    cont |= bool(np.any(~halted))
  return early and cont


def compute_reference(head: ACTLossHead, batches: FixtureBatches) -> Dict[str, np.ndarray]:
  """Every reference.npz array, for the head's current weights (left unchanged on return)."""
  cfg = head.model.config
  _check_batch(batches.fixed, cfg, "fixed")
  for i, b in enumerate(batches.traj):
    _check_batch(b, cfg, f"trajectory call {i}")
  initial_state = copy.deepcopy(head.state_dict())
  original_config = head.model.config
  _SAVE_DTYPE[0] = torch.float64 if cfg.forward_dtype == "float64" else torch.float32
  try:
    fixed = _to_torch(batches.fixed)
    arrays = {k: v.numpy().copy() for k, v in fixed.items()}
    arrays.update(_eval_parts(head, fixed))
    _without_exploration(head)
    arrays.update(_train_segment(head, fixed))
    head.load_state_dict(initial_state)
    arrays.update(_trajectory(head, batches.traj))
    arrays["traj_row_stride"] = np.array(TRAJ_ROW_STRIDE, dtype=np.int64)
    arrays["traj_seed"] = np.array(batches.traj_seed, dtype=np.int64)
  finally:
    head.model.config = original_config
    head.load_state_dict(initial_state)
    head.zero_grad(set_to_none=True)
  return arrays


def choose_traj_seed(head: ACTLossHead, first_seed: int) -> int:
  """First trajectory seed with mixed halting and margin >= MIN_HALT_MARGIN, else the best tried.

  A clear margin keeps the halting decisions stable under another framework's rounding.
  """
  cfg = head.model.config
  if cfg.halt_max_steps < 2:
    return first_seed
  initial_state = copy.deepcopy(head.state_dict())
  original_config = head.model.config
  best_seed, best_score = first_seed, None
  try:
    _without_exploration(head)
    for traj_seed in range(first_seed, first_seed + MAX_TRAJ_SEED_TRIES):
      head.load_state_dict(initial_state)
      arrays = _trajectory(head, make_traj_batches(cfg, traj_seed))
      score = (has_mixed_halting(arrays, cfg.halt_max_steps),
               halting_summary(arrays, cfg.halt_max_steps)[1])
      if best_score is None or score > best_score:
        best_seed, best_score = traj_seed, score
      if score[0] and score[1] >= MIN_HALT_MARGIN:
        break
  finally:
    head.model.config = original_config
    head.load_state_dict(initial_state)
    head.zero_grad(set_to_none=True)
  return best_seed


# ---------------------------------------------------------------------------------------------
# Writing a fixture directory
# ---------------------------------------------------------------------------------------------


def all_config(model_cfg: Mapping[str, Any], loss_type: str, seed: int,
               data_path: str = "synthetic") -> Dict[str, Any]:
  """PretrainConfig-shaped dict (the arch block plus the trajectory's optimiser settings)."""
  arch = {k: v for k, v in model_cfg.items() if k not in _DATASET_FIELDS}
  arch.update(name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
              loss=dict(loss_type=loss_type, name="losses@ACTLossHead"))
  return dict(
      arch=arch, data_path=data_path, global_batch_size=model_cfg["batch_size"], epochs=1,
      eval_interval=None, checkpoint_every_eval=False, checkpoint_path=None, eval_save_outputs=[],
      lr=TRAIN_SETTINGS["lr"], lr_min_ratio=1.0, lr_warmup_steps=0,
      beta1=TRAIN_SETTINGS["beta1"], beta2=TRAIN_SETTINGS["beta2"],
      weight_decay=TRAIN_SETTINGS["weight_decay"], puzzle_emb_lr=TRAIN_SETTINGS["puzzle_emb_lr"],
      puzzle_emb_weight_decay=TRAIN_SETTINGS["puzzle_emb_weight_decay"], project_name=None,
      run_name=None, seed=seed,
  )


def make_fixture(
    out_dir: "str | os.PathLike",
    model_cfg: "Mapping[str, Any] | str | os.PathLike",
    seed: int = 0,
    loss_type: str = "stablemax_cross_entropy",
    forward_dtype: Optional[str] = None,
    checkpoint: "str | os.PathLike | None" = None,
    batches: Optional[FixtureBatches] = None,
    data_path: str = "synthetic",
    verbose: bool = True,
) -> FixtureResult:
  """Writes a fixture directory and returns its arrays.

  Args:
    out_dir: directory to create (may exist; files in it are overwritten).
    model_cfg: the model_cfg dict, a JSON string or a path to a JSON file.
    seed: torch seed of the fresh init and numpy seed of the fixed batch.
    loss_type: stablemax_cross_entropy or softmax_cross_entropy.
    forward_dtype: overrides model_cfg["forward_dtype"] when given.
    checkpoint: a pretrain.py state-dict file to use instead of a fresh init (no deviation applied).
    batches: explicit batches; else generated from `seed`, with trajectory seeds tried from
      seed + 1 until the trajectory shows mixed halting with a margin >= MIN_HALT_MARGIN (else
      the best of MAX_TRAJ_SEED_TRIES tries).
    data_path: `data_path` written in all_config.yaml.
    verbose: print the halting pattern and margin.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown loss_type {loss_type!r}; use one of {list(LOSS_TYPES)}")
  cfg_dict = parse_config(model_cfg)
  if forward_dtype is not None:
    cfg_dict["forward_dtype"] = forward_dtype
    HierarchicalReasoningModel_ACTV1Config.from_dict(cfg_dict)
  if checkpoint is not None:
    state_dict = load_state_dict_file(checkpoint)
    torch.manual_seed(seed)
    head = build_loss_head(cfg_dict, loss_type)
    load_into_loss_head(head, state_dict)
  else:
    head = init_loss_head(cfg_dict, seed, loss_type)
  cfg = head.model.config

  if batches is not None:
    arrays = compute_reference(head, batches)
  else:
    traj_seed = choose_traj_seed(head, first_seed=seed + 1)
    arrays = compute_reference(head, FixtureBatches(
        fixed=make_fixed_batch(cfg, seed), traj=make_traj_batches(cfg, traj_seed),
        traj_seed=traj_seed))

  pattern, margin = halting_summary(arrays, cfg.halt_max_steps)
  if verbose:
    calls = "  ".join(f"call{i}={p}" for i, p in enumerate(pattern))
    mixed = has_mixed_halting(arrays, cfg.halt_max_steps)
    print(f"{cfg.forward_dtype}  {calls}  margin {margin:.3f}"
          f"{'' if mixed else '  (no mixed halting)'}  traj_seed {int(arrays['traj_seed'])}")

  out = pathlib.Path(out_dir)
  (out / "checkpoint_dir").mkdir(parents=True, exist_ok=True)
  compiled = to_compiled_state_dict(head)
  torch.save(compiled, out / "checkpoint_dir" / "step_0")
  (out / "checkpoint_dir" / "all_config.yaml").write_text(
      yaml.safe_dump(all_config(cfg_dict, loss_type, seed, data_path), sort_keys=True))
  (out / "model_cfg.json").write_text(json.dumps(cfg_dict, indent=1))
  (out / "state_dict_keys.json").write_text(json.dumps(
      {k: [list(v.shape), str(v.dtype)] for k, v in compiled.items()}, indent=1))
  np.savez(out / "reference.npz", **arrays)
  return FixtureResult(arrays=arrays, halting_pattern=pattern, margin=margin)


def fixture_parser(prog: str, description: str, checkpoint_help: str) -> argparse.ArgumentParser:
  """The arguments every fixture maker (HRM's, TRM's) takes."""
  parser = argparse.ArgumentParser(prog=prog, description=description)
  parser.add_argument("out_dir", help="fixture directory to write")
  parser.add_argument("--config", required=True,
                      help="model_cfg as inline JSON or a JSON file path")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--forward-dtype", choices=["float32", "bfloat16", "float64"], default=None)
  parser.add_argument("--loss-type", choices=list(LOSS_TYPES), default="stablemax_cross_entropy")
  parser.add_argument("--checkpoint", default=None, help=checkpoint_help)
  parser.add_argument("--batches-from", default=None,
                      help="take the fixed and trajectory batches from this reference.npz")
  return parser


def run_cli(make: Callable[[], Any]) -> int:
  """Calls `make`; a bad config or a missing file is one error line and exit 2."""
  try:
    make()
  except (ValueError, FileNotFoundError) as e:
    print(f"make_fixture: error: {e}", file=sys.stderr)
    return 2
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = fixture_parser("python -m tools.make_fixture", __doc__.split("\n\n")[0],
                          "use this pretrain.py checkpoint instead of a fresh init")
  parser.add_argument("--data-path", default="synthetic", help="data_path for all_config.yaml")
  args = parser.parse_args(argv)
  batches = lambda: batches_from_reference(args.batches_from) if args.batches_from else None
  return run_cli(lambda: make_fixture(args.out_dir, args.config, seed=args.seed, loss_type=args.loss_type,
                                      forward_dtype=args.forward_dtype, checkpoint=args.checkpoint,
                                      batches=batches(), data_path=args.data_path))


if __name__ == "__main__":
  sys.exit(main())
