"""Numerical parity of hrm_jax against a fixture produced by the ORIGINAL PyTorch HRM.

  python -m tools.parity ../shared/fixtures/hrm_original/tiny/float32
  python -m tools.parity ../shared/fixtures/hrm_original/tiny/bfloat16
  python -m tools.parity ../shared/fixtures/hrm_original/tiny/float64     # runs with 64-bit JAX
  python -m tools.parity ../shared/fixtures/trm_original/tiny/float32     # TRM (also bfloat16, float64)

FIXTURE_DIR holds checkpoint_dir/step_0, checkpoint_dir/all_config.yaml, model_cfg.json and reference.npz
(array names and meanings in the fixture's README.txt). The checkpoint is loaded through the converter, every
array of reference.npz is recomputed, and each is compared:

  relative error of an array = max|hrm_jax - original| / max|original|

Tolerances come from tools/tolerance.py, the one policy the tests use too: each array's tolerance is
FACTOR x its measured rounding spread (the torch reference recomputing the fixture under rounding variants),
never a fixed constant; float64 fixtures are held to 1e-9 except where the original's own float32 steps
spread an array further (each such array is printed with the float32 step that explains it). Integer and
boolean arrays (halted, steps, current data, counts) must match exactly; a scalar count may differ by as
much as the variants' counts differ.

Sign-like updates (SignSGD, and AdamATan2 whose first steps are ~lr·sign(g)) turn a gradient that is zero up
to rounding into a full-size step of either sign. Rule: a parameter element is sign-ambiguous when, at some
step so far, the ORIGINAL gradient was within rounding noise of zero (|g| <= the tolerance of that
gradient array · max|g| of its tensor;
for the puzzle table the duplicate-summed row gradient) AND hrm_jax's gradient had the other sign. Such an
element is excluded from the relative-error check but must still lie within the largest possible total update
of its starting value (2 · Σ_t lr/(1-β1^t) · π/2 for AdamATan2, 2 · t · lr for SignSGD, plus the decay), and
the count of such elements is printed beside the array.

A TRM fixture (the converter recognises TRM's checkpoint) gets the same checks with TRM's model, plus
TRM's own arrays (tools/parity_trm.py: every network call of a segment, the EMA shadow, the EMA checkpoint's
eval loop, `preds`).

Exit status: 0 when every checked array passes, 1 when any fails. Arrays of unknown names are listed as
NOT CHECKED.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from hrm_jax.convert import torch_checkpoint
from hrm_jax.model import arch
from hrm_jax.model import hrm
from hrm_jax.model.losses import LossConfig, act_loss
from hrm_jax.training import optim
from hrm_jax.training import segment as segment_lib
from tools import tolerance as tolerance_lib

_NUM_TRAJ_CALLS = 3


@dataclasses.dataclass
class Result:
  name: str
  kind: str
  error: float
  tolerance: float
  passed: bool
  note: str = ""


@dataclasses.dataclass
class _Record:
  kind: str  # "exact", "stats:<kind>", or "output" / "grad" / "param"
  value: np.ndarray
  ignore_mask: np.ndarray | None = None
  slack: np.ndarray | None = None


class Comparer:
  """Records computed arrays by reference name; `judge` compares them against reference.npz."""

  def __init__(self, reference: dict[str, np.ndarray], policy: tolerance_lib.Policy):
    self.reference = reference
    self.policy = policy
    self.records: dict[str, _Record] = {}
    # Count metrics of a threshold (q_halt >= 0): rows within tolerance of it may count either way.
    self.threshold_slack: dict[str, int] = {}

  def tolerance(self, name: str) -> float:
    return self.policy.tolerance(name)

  def exact(self, name: str, value) -> None:
    self.records[name] = _Record("exact", np.asarray(value))

  def close(self, name: str, value, kind: str = "output", ignore_mask=None, slack=None) -> None:
    self.records[name] = _Record(kind, np.asarray(value, np.float64), ignore_mask, slack)

  def stats(self, name: str, tensor, kind: str) -> None:
    t = np.asarray(tensor, np.float64)
    self.records[name] = _Record("stats:" + kind, np.array([t.sum(), np.square(t).sum(), np.abs(t).max(),
                                                             t.size]))

  def judge(self) -> list[Result]:
    """Compares every record against the reference with the policy's tolerance."""
    results = []
    for name, rec in self.records.items():
      ref = self.reference[name]
      if rec.kind == "exact":
        results.append(self._judge_exact(name, rec, ref, max(self.policy.count_slack(name),
                                                             self.threshold_slack.get(name, 0))))
        continue
      error, note, ok = self._error(rec, ref)
      kind = rec.kind.split(":")[-1]
      tol = self.tolerance(name)
      why = self.policy.explanation(name)
      if why and error > tolerance_lib.FLOAT64_TARGET:
        note = (note + "; " if note else "") + f"float32 in the original: {why}"
      results.append(Result(name, kind, error, tol, ok and error <= tol, note))
    return results

  @staticmethod
  def _judge_exact(name, rec, ref, allowed: int) -> Result:
    value = rec.value
    if value.shape != ref.shape:
      return Result(name, "exact", float("inf"), 0.0, False, f"shape {value.shape} != {ref.shape}")
    mismatches = int(np.sum(value.astype(ref.dtype) != ref))
    if not (ref.ndim == 0 and np.issubdtype(ref.dtype, np.number)):
      allowed = 0
    note = f"noise floor ±{allowed}" if allowed else ""
    diff = float(np.max(np.abs(value.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    ok = mismatches == 0 or (ref.ndim == 0 and diff <= allowed)
    if not ok and ref.size <= 16:
      note = (note + "; " if note else "") + f"got {value.tolist()}, want {ref.tolist()}"
    return Result(name, "exact", float(mismatches), float(allowed), ok, note)

  @staticmethod
  def _error(rec: _Record, ref) -> tuple[float, str, bool]:
    if rec.kind.startswith("stats:"):
      return tolerance_lib.relative_error(rec.value, ref, stats=True), "", bool(np.all(np.isfinite(rec.value)))
    ref = np.asarray(ref, np.float64)
    if rec.value.size != ref.size:
      return float("inf"), f"shape {rec.value.shape} != {ref.shape}", False
    value = rec.value.reshape(ref.shape)
    diff = np.abs(value - ref)
    note = ""
    ok = bool(np.all(np.isfinite(value)))
    if rec.ignore_mask is not None and np.any(rec.ignore_mask):
      ambiguous = np.asarray(rec.ignore_mask, bool)
      within = bool(np.all(diff[ambiguous] <= rec.slack[ambiguous] * (1 + 1e-6) + 1e-12))
      note = f"{int(ambiguous.sum())} sign-ambiguous element(s) {'within' if within else 'OUTSIDE'} bound"
      ok = ok and within
      value = np.where(ambiguous, ref, value)
    return tolerance_lib.relative_error(value, ref), note, ok


def _load_fixture(fixture_dir: pathlib.Path):
  model_cfg = json.loads((fixture_dir / "model_cfg.json").read_text())
  all_config = yaml.safe_load((fixture_dir / "checkpoint_dir" / "all_config.yaml").read_text())
  all_config["checkpoint_path"] = str(fixture_dir / "checkpoint_dir")  # where its checkpoints are now
  converted = torch_checkpoint.load_original_checkpoint(
      fixture_dir / "checkpoint_dir" / "step_0", seq_len=int(model_cfg["seq_len"]))
  cfg = converted.model_config
  # The fixture's train-mode parts run without exploration (halting then depends on Q only).
  expected = {k: model_cfg[k] for k in ("H_cycles", "L_cycles", "halt_max_steps", "num_heads", "hidden_size",
                                         "vocab_size", "num_puzzle_identifiers") if k in model_cfg}
  mismatch = {k: (v, getattr(cfg, k)) for k, v in expected.items() if getattr(cfg, k) != v}
  if mismatch:
    raise SystemExit(f"model_cfg.json disagrees with the converted checkpoint: {mismatch}")
  with np.load(fixture_dir / "reference.npz") as npz:
    reference = {k: npz[k] for k in npz.files}
  return cfg, converted, all_config, reference


def _batch(reference, prefix=""):
  return {k: jnp.asarray(reference[prefix + k]) for k in hrm.DATA_KEYS}


def _original_keys(params, cfg):
  """{original key 'model.inner.X': array in the original's layout} for every dense parameter."""
  state = torch_checkpoint.to_state_dict(params, None, None, cfg, prefix="model.inner.", params_only=True)
  return state


def run_parity(fixture_dir: pathlib.Path, policy: tolerance_lib.Policy | None = None
               ) -> tuple[list[Result], list[str]]:
  """Recomputes every known array of the fixture and judges it; returns (results, unknown array names).

  `policy` (tools.tolerance.measure of this fixture) is measured here when not given. A float64 fixture
  runs with 64-bit JAX enabled for this call only (a thread-local switch; other code keeps float32).
  """
  fixture_dir = pathlib.Path(fixture_dir)
  if policy is None:
    policy = tolerance_lib.measure(fixture_dir)
  forward_dtype = json.loads((fixture_dir / "model_cfg.json").read_text()).get("forward_dtype")
  with jax.enable_x64(forward_dtype == "float64"):
    cfg, converted, all_config, ref = _load_fixture(fixture_dir)
    cmp = _compute(cfg, converted, all_config, ref, policy)
  unknown = sorted(set(ref) - set(cmp.records) - _bookkeeping_names(ref))
  return cmp.judge(), unknown


def _nudge_one_ulp(x: np.ndarray, seed: int) -> np.ndarray:
  """A quarter of the elements (chosen by `seed`) moved to the next representable value away from zero."""
  x = np.asarray(x)
  chosen = np.random.default_rng(seed).random(x.shape) < 0.25
  bits = x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]).copy()
  bits[chosen] += 1
  return bits.view(x.dtype)


def _compute(cfg, converted, all_config, ref, policy: tolerance_lib.Policy) -> Comparer:
  cmp = Comparer(ref, policy)
  loss_cfg = LossConfig(loss_type=converted.loss_type or "stablemax_cross_entropy")
  params = jax.tree.map(jnp.asarray, converted.params)
  buffers = jax.tree.map(jnp.asarray, converted.buffers)
  table = jnp.asarray(converted.puzzle_table) if converted.puzzle_table is not None else None
  batch = _batch(ref)
  batch_size = int(batch["inputs"].shape[0])
  train_cfg = cfg.replace(halt_exploration_prob=0.0)

  model = arch.model_for(cfg)

  # ---- embeddings and one inner segment --------------------------------------------------------------
  rows = hrm.gather_puzzle_rows(cfg, table, batch["puzzle_identifiers"])
  cmp.close("input_embeddings", model.input_embeddings(params, cfg, batch["inputs"], rows))
  carry = hrm.reset_carry(hrm.initial_carry(cfg, batch_size), batch, buffers)
  (z_H, z_L), logits, q_halt, q_cont = jax.jit(model.segment, static_argnums=1)(
      params, cfg, carry.z_H, carry.z_L, batch["inputs"], rows)
  for name, value in (("logits", logits), ("q_halt", q_halt), ("q_continue", q_cont), ("zH", z_H),
                      ("zL", z_L)):
    cmp.close(f"inner_step1_{name}", value)

  # ---- evaluation-mode ACT loop through the loss head ------------------------------------------------
  cmp.exact("eval_num_steps", np.int64(eval_loop(cmp, "eval_step", cfg, loss_cfg, params, buffers, table, batch)))

  # ---- one training-mode segment: loss, metrics, gradients, one SignSGD step --------------------------
  grad_fn = jax.jit(segment_lib.segment_value_and_grad,
                    static_argnames=("cfg", "loss_cfg", "global_batch_size"))
  carry = hrm.reset_carry(hrm.initial_carry(cfg, batch_size), batch, buffers)
  rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
  (_, (new_carry, _, metrics, total)), (grads, row_grads) = grad_fn(
      params, rows, cfg=train_cfg, loss_cfg=loss_cfg, carry=carry, rng=None, global_batch_size=batch_size)
  cmp.close("train_loss", total)
  cmp.exact("train_halted", new_carry.halted)
  _compare_metrics(cmp, "train_metric_", metrics)
  for key, value in _original_keys(grads, cfg).items():
    if f"grad__{key}" in ref:
      cmp.close(f"grad__{key}", value, "grad")
  if cfg.puzzle_emb_ndim > 0:
    cmp.close("grad__puzzle_emb.local_weights", row_grads, "grad")
    lr_emb = float(all_config.get("puzzle_emb_lr", 1e-2))
    wd_emb = float(all_config.get("puzzle_emb_weight_decay", 0.1))
    new_table = optim.sparse_signsgd_update(table, carry.current_data["puzzle_identifiers"], row_grads,
                                            lr_emb, wd_emb)
    ambiguous, slack = _signsgd_ambiguity(ref, "grad__puzzle_emb.local_weights",
                                          np.asarray(carry.current_data["puzzle_identifiers"]), row_grads,
                                          np.asarray(table), cmp.tolerance("grad__puzzle_emb.local_weights"),
                                          lr_emb, wd_emb, steps=1)
    cmp.close("puzzle_emb_weights_after_signsgd", new_table, "param", ambiguous, slack)

  extras = None
  if cfg.arch == "trm":
    from tools import parity_trm  # pylint: disable=import-outside-toplevel
    extras = parity_trm.TRMExtras(cmp, cfg, loss_cfg, all_config, params, buffers, table, batch)
  _run_trajectory(cmp, cfg, train_cfg, loss_cfg, all_config, params, buffers, table, ref, grad_fn,
                  on_step=extras.after_step if extras else None)
  if extras:
    extras.finish()
  return cmp


def eval_loop(cmp: Comparer, prefix: str, cfg, loss_cfg, params, buffers, table, batch) -> int:
  """The evaluation-mode ACT loop through the loss head, compared segment by segment; returns its length."""
  model = arch.model_for(cfg)
  ref = cmp.reference

  @jax.jit
  def eval_call(carry, batch):
    carry = hrm.reset_carry(carry, batch, buffers)
    rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
    carry, outputs = model.act_step(params, cfg, carry, rows, training=False)
    loss, metrics = act_loss(outputs, carry.current_data["labels"], carry.halted, carry.steps,
                             **loss_cfg.kwargs())
    return carry, outputs, loss, metrics

  carry = hrm.initial_carry(cfg, int(batch["inputs"].shape[0]))
  num_eval = 0
  while True:
    carry, outputs, loss, metrics = eval_call(carry, batch)
    p = f"{prefix}{num_eval}_"
    num_eval += 1
    if p + "logits" in ref:
      cmp.close(p + "logits", outputs["logits"])
      cmp.close(p + "q_halt", outputs["q_halt_logits"])
      cmp.close(p + "q_continue", outputs["q_continue_logits"])
      cmp.close(p + "loss", loss)
      cmp.exact(p + "halted", carry.halted)
      cmp.exact(p + "steps", carry.steps)
      _compare_metrics(cmp, p + "metric_", metrics)
      _compare_preds(cmp, p + "preds", outputs["logits"])
    if bool(jnp.all(carry.halted)) or num_eval > 1000:
      return num_eval


def _compare_preds(cmp: Comparer, name: str, logits) -> None:
  """argmax predictions, exactly, except where ours and the original's are tied within the logits tolerance
  in the ORIGINAL's logits (then either is a valid argmax)."""
  if name not in cmp.reference:
    return
  ref_preds = np.asarray(cmp.reference[name])
  ref_logits = np.asarray(cmp.reference[name[:-len("preds")] + "logits"], np.float64)
  ours = np.asarray(jnp.argmax(logits, axis=-1))
  gap = np.abs(np.take_along_axis(ref_logits, ours[..., None], -1)
               - np.take_along_axis(ref_logits, ref_preds[..., None].astype(np.int64), -1))[..., 0]
  tied = gap <= cmp.tolerance(name[:-len("preds")] + "logits") * np.max(np.abs(ref_logits))
  cmp.exact(name, np.where(tied, ref_preds, ours))


def _bookkeeping_names(ref) -> set[str]:
  """Arrays that describe the fixture (batches, row indices, seeds) rather than results to reproduce."""
  names = {"inputs", "labels", "puzzle_identifiers", "traj_row_stride", "traj_seed", "ema_rate"}
  names |= {k for k in ref if k.startswith("traj_rows__") or re.match(r"traj\d+_batch_", k)}
  return names


def _compare_metrics(cmp: Comparer, prefix: str, metrics) -> None:
  for name, value in metrics.items():
    key = prefix + name
    if key not in cmp.reference:
      continue
    if np.issubdtype(cmp.reference[key].dtype, np.integer) or name in ("count", "exact_accuracy",
                                                                           "q_halt_accuracy", "steps"):
      cmp.exact(key, np.asarray(value).astype(np.int64))
      if name == "q_halt_accuracy":
        cmp.threshold_slack[key] = _rows_near_zero(cmp, prefix.replace("metric_", "q_halt"))
    else:
      cmp.close(key, value)


def _rows_near_zero(cmp: Comparer, q_name: str) -> int:
  """Rows whose q_halt lies within its tolerance of the q_halt >= 0 threshold (their count may flip)."""
  q = cmp.reference.get(q_name)
  if q is None:
    return 0
  q = np.asarray(q, np.float64)
  return int(np.sum(np.abs(q) <= cmp.tolerance(q_name) * max(float(np.abs(q).max()), 1e-30)))


def _sign_flips(ours, reference, grad_tol):
  """Elements whose gradient sign differs from the original's while the original's is ~0 (rounding noise)."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  near_zero = np.abs(reference) <= grad_tol * max(np.abs(reference).max(), 1e-30)
  return near_zero & (np.sign(ours) != np.sign(reference))


def _signsgd_ambiguity(ref, grad_name, ids, our_row_grads, table_before, grad_tol, lr, wd, steps):
  """Table elements whose duplicate-summed gradient flipped sign against the original's near-zero one."""
  summed = {}
  for source, rows in (("ref", ref[grad_name]), ("ours", our_row_grads)):
    acc = np.zeros((table_before.shape[0], np.shape(rows)[1]))
    np.add.at(acc, ids, np.asarray(rows, np.float64))
    summed[source] = acc
  touched = np.zeros(table_before.shape[0], bool)
  touched[ids] = True
  ambiguous = touched[:, None] & _sign_flips(summed["ours"], summed["ref"], grad_tol)
  slack = np.full(table_before.shape, 2.0 * lr * steps) + np.abs(table_before) * lr * wd * steps
  return ambiguous, slack


def _run_trajectory(cmp, cfg, train_cfg, loss_cfg, all_config, params, buffers, table, ref, grad_fn,
                    on_step=None):
  """Three training calls with the carry kept between them, SignSGD then AdamATan2 after each.

  `on_step(k, params)` runs after call k's updates (and their checks).
  """
  if "traj0_loss" not in ref:
    return
  lr = float(all_config.get("lr", 1e-3))
  betas = (float(all_config.get("beta1", 0.9)), float(all_config.get("beta2", 0.95)))
  wd = float(all_config.get("weight_decay", 0.1))
  lr_emb = float(all_config.get("puzzle_emb_lr", 1e-2))
  wd_emb = float(all_config.get("puzzle_emb_weight_decay", 0.1))
  warmup = int(all_config.get("lr_warmup_steps", 0) or 0)
  min_ratio = float(all_config.get("lr_min_ratio", 1.0))
  total_steps = max(_NUM_TRAJ_CALLS, 1)
  # The run's one optimiser object (train.make_optimizers): AdamATan2 dense, SignSGD on the puzzle rows.
  optimizer = optim.hrm_optimizer(
      optim.adam_atan2(optim.make_lr_schedule(lr, warmup_steps=warmup, total_steps=total_steps,
                                              min_ratio=min_ratio), b1=betas[0], b2=betas[1], weight_decay=wd),
      optim.sparse_signsgd(optim.make_lr_schedule(lr_emb, warmup_steps=warmup, total_steps=total_steps,
                                                  min_ratio=min_ratio), wd_emb))
  opt_state = optimizer.init(optim.WithPuzzleEmb(params, table))
  batch_size = int(ref["traj0_batch_inputs"].shape[0])
  carry = hrm.initial_carry(cfg, batch_size)
  # Elements whose reference gradient was ~0 at some step (their update direction is undetermined).
  ambiguous_dense: dict[str, np.ndarray] = {}
  ambiguous_table = np.zeros(table.shape, bool) if table is not None else None
  table_start = np.asarray(table) if table is not None else None
  params_start = _original_keys(params, cfg)

  for k in range(_NUM_TRAJ_CALLS):
    if f"traj{k}_loss" not in ref:
      break
    batch = _batch(ref, f"traj{k}_batch_")
    cmp.exact(f"traj{k}_reset", carry.halted)
    carry = hrm.reset_carry(carry, batch, buffers)
    rows = hrm.gather_puzzle_rows(cfg, table, carry.current_data["puzzle_identifiers"])
    (_, (carry, outputs, metrics, total)), (grads, row_grads) = grad_fn(
        params, rows, cfg=train_cfg, loss_cfg=loss_cfg, carry=carry, rng=None, global_batch_size=batch_size)
    p = f"traj{k}_"
    cmp.close(p + "loss", total)
    _compare_metrics(cmp, p + "metric_", metrics)
    cmp.exact(p + "halted", carry.halted)
    cmp.exact(p + "steps", carry.steps)
    for name in hrm.DATA_KEYS:
      cmp.exact(p + "current_" + name, carry.current_data[name])
    cmp.close(p + "zH", carry.z_H)
    cmp.close(p + "zL", carry.z_L)
    cmp.close(p + "logits", outputs["logits"])
    cmp.close(p + "q_halt", outputs["q_halt_logits"])
    cmp.close(p + "q_continue", outputs["q_continue_logits"])
    if p + "target_q_continue" in ref:
      cmp.close(p + "target_q_continue", outputs["target_q_continue"])
    _compare_preds(cmp, p + "preds", outputs["logits"])

    grads_orig = _original_keys(grads, cfg)
    for key, value in grads_orig.items():
      value = np.asarray(value)
      rows_kept = ref.get(f"traj_rows__{key}")
      if p + "grad__" + key in ref:
        cmp.close(p + "grad__" + key, value[rows_kept] if rows_kept is not None else value, "grad")
      if p + "gradstats__" + key in ref:
        cmp.stats(p + "gradstats__" + key, value, "grad")

    # Sparse SignSGD on the puzzle table, then AdamATan2 on every dense parameter (the original's order).
    if table is not None:
      ids = carry.current_data["puzzle_identifiers"]
      cmp.exact(p + "local_ids", ids)
      cmp.close(p + "grad__puzzle_emb.local_weights", row_grads, "grad")
      amb, _ = _signsgd_ambiguity(ref, p + "grad__puzzle_emb.local_weights", np.asarray(ids), row_grads,
                                  np.asarray(table), cmp.tolerance(p + "grad__puzzle_emb.local_weights"),
                                  lr_emb, wd_emb, 1)
      ambiguous_table |= amb
      sparse_grads = optim.SparseRowGrads(ids, row_grads)
    else:
      sparse_grads = None
    updates, opt_state = optimizer.update(optim.WithPuzzleEmb(grads, sparse_grads), opt_state,
                                          optim.WithPuzzleEmb(params, table))
    params, table = optim.apply_updates(optim.WithPuzzleEmb(params, table), updates)
    if table is not None:
      slack = np.full(table.shape, 2.0 * lr_emb * (k + 1)) + np.abs(table_start) * lr_emb * wd_emb * (k + 1)
      cmp.close(p + "param__puzzle_emb.weights", table, "param", ambiguous_table, slack)

    params_orig = _original_keys(params, cfg)
    # AdamATan2's largest possible step per update is lr/(1-b1^t)·pi/2 (atan2 is bounded).
    max_step = sum(lr / (1 - betas[0] ** (t + 1)) * np.pi / 2 for t in range(k + 1))
    for key, value in params_orig.items():
      value = np.asarray(value)
      rows_kept = ref.get(f"traj_rows__{key}")
      ref_grad = ref.get(p + "grad__" + key)
      if ref_grad is not None:
        our_grad = np.asarray(grads_orig[key])
        flips = _sign_flips(our_grad[rows_kept] if rows_kept is not None else our_grad, ref_grad,
                            cmp.tolerance(p + "grad__" + key))
        ambiguous_dense[key] = ambiguous_dense.get(key, np.zeros_like(flips)) | flips
      if p + "param__" + key in ref:
        start = params_start[key][rows_kept] if rows_kept is not None else params_start[key]
        slack = np.full(start.shape, 2 * max_step) + np.abs(start) * lr * wd * (k + 1)
        cmp.close(p + "param__" + key, value[rows_kept] if rows_kept is not None else value, "param",
                  ambiguous_dense.get(key), slack)
      if p + "paramstats__" + key in ref:
        cmp.stats(p + "paramstats__" + key, value, "param")
    if on_step is not None:
      on_step(k, params)


def format_report(results: list[Result], unknown: list[str]) -> str:
  lines = [f"{'array':<72} {'kind':<6} {'rel.err':>10} {'tol':>8}  result"]
  for r in results:
    err = f"{int(r.error)} diff" if r.kind == "exact" else f"{r.error:.3e}"
    tol = "exact" if r.kind == "exact" else f"{r.tolerance:.0e}"
    lines.append(f"{r.name:<72} {r.kind:<6} {err:>10} {tol:>8}  {'PASS' if r.passed else 'FAIL'}"
                 + (f"  ({r.note})" if r.note else ""))
  for name in unknown:
    lines.append(f"{name:<72} {'?':<6} {'':>10} {'':>8}  NOT CHECKED (unknown array name)")
  failed = [r for r in results if not r.passed]
  worst = {}
  for r in results:
    if r.kind != "exact":
      worst[r.kind] = max(worst.get(r.kind, 0.0), r.error)
  lines.append("")
  lines.append("worst relative error by kind: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
  lines.append(f"{len(results) - len(failed)} passed, {len(failed)} failed"
               + (f", {len(unknown)} not checked" if unknown else ""))
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("fixture_dir", type=pathlib.Path, help="directory with checkpoint_dir/ and reference.npz")
  parser.add_argument("--failures-only", action="store_true", help="print only failing arrays")
  args = parser.parse_args(argv)
  missing = [p for p in ("checkpoint_dir/step_0", "model_cfg.json", "reference.npz",
                         "checkpoint_dir/all_config.yaml") if not (args.fixture_dir / p).exists()]
  if missing:
    print(f"error: {args.fixture_dir} is not a parity fixture directory; missing {missing}", file=sys.stderr)
    return 2
  results, unknown = run_parity(args.fixture_dir)
  if args.failures_only:
    results_to_show = [r for r in results if not r.passed]
    print(format_report(results_to_show, unknown).rsplit("\n", 1)[0])
  report = format_report(results, unknown)
  print(report if not args.failures_only else report.rsplit("\n", 1)[-1])
  return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
