"""The one tolerance policy of every parity check (tools.parity and tests/parity_test.py use only this).

An array's tolerance is measured, not chosen: the torch reference (tools/hrm_torch, or tools/trm_torch for a
TRM fixture, built from hrm_torch's layers and optimisers; it reproduces the
original bit for bit on the float64 fixture and to ~1e-6 in float32) recomputes the fixture from its own
checkpoint and batches once plainly and once under each rounding variant of tools/hrm_torch/variants.py
(another matmul blocking; the original's float32 steps rounded differently; H_init/L_init one ulp off). The
largest relative distance of a variant from the plain run is the array's SPREAD: how far rounding alone moves
that array, at its depth in the recurrence, in this config. Then

  tolerance(array) = FACTOR · max(spread(array), unit roundoff of the forward dtype)   (float32, bfloat16)
  tolerance(array) = max(1e-9, FACTOR · spread(array))                                 (float64)

In float64 the original still computes some steps in float32 (RoPE, rms_norm, the Q head, the BCE and
softmax losses, the float32 parameters and their optimisers); only arrays downstream of those get a spread
above 1e-9, and `float64_exception` names the float32 step that explains each.

FACTOR: how much further than the measured spread another correct implementation (hrm_jax) may lie.
Measured with `python -m tools.tolerance FIXTURE...` (BUILD.md, "Checking parity"): hrm_jax's error is at most
2.3x the spread in float32 (tiny fixture and two random configs), 4.4x in float64 (tiny and two random
configs) and 5.4x in bfloat16; on another CPU hrm_jax's float32 error was 2.3x this machine's. FACTOR = 12
keeps at least that 2.3x margin over every measured ratio, while a semantic slip (a missing sqrt(D) scale, a
transposed weight) lies 10^4-10^5 x above the tolerance on the first segment's carry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re

import numpy as np
import yaml

FACTOR = 12.0
FLOAT64_TARGET = 1e-9
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -9, "float64": 2.0 ** -53}
# A parameter element that moved by at least this fraction of the learning rate between two variants took
# an update of the other sign (sign-like optimisers: AdamATan2's first steps, SignSGD); such elements are
# sign-ambiguous and left out of the spread (tools.parity bounds them separately).
SIGN_JUMP_FRACTION = 0.1

# The original's float32 steps under forward_dtype float64 (fixture README.txt), by array family.
_FLOAT64_ISLANDS = (
    (r"param__|paramstats__|puzzle_emb_weights_after_signsgd",
     "float32 parameters updated by float32 optimisers (layers.py:50-56, sparse_embedding.py:121-132), after "
     "float32 gradients"),
    (r"grad", "gradients rounded to the float32 parameters (layers.py:59,77) after the float32 rms_norm / RoPE"
              " backward (layers.py:151-157, 33-40)"),
    (r"q_halt|q_continue|target_q_continue",
     "Q head output cast to float32 (hrm_act_v1.py:211), on the float32-rounded rms_norm output"),
    (r"loss|metric_", "float32 Q losses (losses.py:84,94) / softmax CE (losses.py:37) and losses of "
                      "float32-rounded rms_norm outputs"),
    (r".*", "every block output is rms_norm'd in float32 (layers.py:151-157) with float32 RoPE tables and "
            "rotation (layers.py:85-92, 33-40)"),
)


def float64_exception(name: str) -> str:
  """The float32 step of the original (under forward_dtype float64) that explains an array's spread."""
  return next(why for pattern, why in _FLOAT64_ISLANDS if re.search(pattern, name))


@dataclasses.dataclass
class Spread:
  """Measured rounding spread of one array: relative error (as tools.parity measures it) and details."""

  value: float  # float arrays: max over variants of the relative distance from the plain run
  count_slack: int = 0  # scalar counts: largest |difference| of a variant
  exact_flips: int = 0  # non-scalar exact arrays: elements some variant changed (0 on a sound fixture)
  by_variant: dict[str, float] = dataclasses.field(default_factory=dict)
  sign_jumps: int = 0  # parameter elements left out as sign-ambiguous


def is_param_kind(name: str) -> bool:
  return ("param__" in name or "paramstats__" in name or name == "puzzle_emb_weights_after_signsgd"
          or "_ema__" in name or "emastats__" in name)  # TRM's EMA shadow of the parameters


def kind_of(name: str) -> str:
  """'output', 'grad' or 'param' (the kinds reported per array)."""
  if is_param_kind(name):
    return "param"
  return "grad" if "grad" in name else "output"


def relative_error(value, ref, stats: bool = False) -> float:
  """max|value - ref| / max|ref|; for [sum, sum of squares, max|x|] stats, each relative to its scale."""
  value, ref = np.asarray(value, np.float64), np.asarray(ref, np.float64)
  if stats:
    n = value[3] if value.shape[0] > 3 else 1.0
    sum_scale = max(np.sqrt(ref[1] * n), 1e-300)  # a sum may cancel to ~0: use the tensor's L2 scale
    return float(max(abs(value[0] - ref[0]) / sum_scale, abs(value[1] - ref[1]) / max(ref[1], 1e-300) / 2,
                     abs(value[2] - ref[2]) / max(ref[2], 1e-300)))
  if ref.size == 0:
    return 0.0
  return float(np.max(np.abs(value.reshape(ref.shape) - ref)) / max(float(np.max(np.abs(ref))), 1e-300))


@dataclasses.dataclass
class Policy:
  """Tolerances for one fixture, from the spreads measured on it."""

  forward_dtype: str
  spreads: dict[str, Spread]
  # float64 fixtures: arrays whose every value is a float32 number (the original holds them in float32), so
  # one float32 rounding is the closest any other implementation can be checked against them.
  float32_held: frozenset[str] = frozenset()
  plain: dict[str, np.ndarray] | None = None  # the torch reference's own (unperturbed) arrays

  def spread(self, name: str) -> float:
    s = self.spreads.get(name)
    value = s.value if s is not None else 0.0
    if _is_stats(name):
      # [sum, sum of squares, max|x|] of a whole tensor: one element (the max) can move as far as the
      # tensor's elements do, so a summary inherits the spread of the tensor's stored rows.
      rows = self.spreads.get(name.replace("gradstats__", "grad__").replace("paramstats__", "param__")
                              .replace("emastats__", "ema__"))
      value = max(value, rows.value if rows is not None else 0.0)
    match = re.match(r"(eval_step\d+_|ema_eval_step\d+_|traj\d+_|train_)(loss|metric_)", name)
    if match:
      # A loss or metric summarises its segment's outputs; two draws of the variants can leave a scalar
      # nearly unmoved by chance, so it inherits the spread of the logits and Q values it is computed from.
      prefix = "inner_step1_" if match.group(1) == "train_" else match.group(1)
      value = max([value] + [self.spreads[prefix + k].value for k in ("logits", "q_halt", "q_continue")
                             if prefix + k in self.spreads])
    return value

  def tolerance(self, name: str) -> float:
    spread = self.spread(name)
    if self.forward_dtype == "float64":
      if name in self.float32_held:
        return FACTOR * max(spread, UNIT_ROUNDOFF["float32"])
      return max(FLOAT64_TARGET, FACTOR * spread)
    return FACTOR * max(spread, UNIT_ROUNDOFF[self.forward_dtype])

  def count_slack(self, name: str) -> int:
    s = self.spreads.get(name)
    return s.count_slack if s is not None else 0

  def explanation(self, name: str) -> str:
    """Why an array's tolerance exceeds the float64 target (float64 fixtures only)."""
    if self.forward_dtype != "float64" or self.tolerance(name) <= FLOAT64_TARGET:
      return ""
    return ("held in float32; " if name in self.float32_held else "") + float64_exception(name)


def _float32_exact(x: np.ndarray) -> bool:
  return bool(np.array_equal(x.astype(np.float32).astype(np.float64), x))


def _is_stats(name: str) -> bool:
  return "stats__" in name


def spreads_from_runs(plain: dict[str, np.ndarray], variants: dict[str, dict[str, np.ndarray]],
                      lr: float, numel: dict[str, int] | None = None) -> dict[str, Spread]:
  """Per-array spread of the variant runs around the plain run (`numel`: parameter name -> size, for stats)."""
  out = {}
  for name, base in plain.items():
    base = np.asarray(base)
    spread = Spread(0.0)
    for vname, run in variants.items():
      other = np.asarray(run[name])
      if base.dtype.kind in "biu":
        if base.ndim == 0:
          spread.count_slack = max(spread.count_slack, int(abs(int(other) - int(base))))
        else:
          spread.exact_flips = max(spread.exact_flips, int(np.sum(other != base)))
        continue
      b64, o64 = base.astype(np.float64), other.astype(np.float64)
      if is_param_kind(name) and not _is_stats(name):
        jumps = np.abs(o64 - b64) >= SIGN_JUMP_FRACTION * lr
        spread.sign_jumps = max(spread.sign_jumps, int(jumps.sum()))
        o64 = np.where(jumps, b64, o64)
      if _is_stats(name):
        n = float((numel or {}).get(name.split("__", 1)[1], 1))
        err = relative_error(np.append(o64, n), np.append(b64, n), stats=True)
      else:
        # Symmetric scale: an array that is exactly 0 in the plain run (a saturated loss) must not get an
        # infinite spread from a variant's tiny nonzero value.
        err = float(np.max(np.abs(o64 - b64)) / max(np.max(np.abs(b64)), np.max(np.abs(o64)), 1e-300)
                    ) if b64.size else 0.0
      spread.by_variant[vname] = err
      spread.value = max(spread.value, err)
    out[name] = spread
  return out


_CACHE: dict[str, Policy] = {}


def _fixture_key(fixture_dir: pathlib.Path, variants) -> str:
  """What the spreads depend on: checkpoint, configs and batches (not the reference values themselves)."""
  digest = hashlib.sha256(repr(variants).encode())
  for name in ("checkpoint_dir/step_0", "checkpoint_dir/all_config.yaml", "model_cfg.json"):
    digest.update((fixture_dir / name).read_bytes())
  with np.load(fixture_dir / "reference.npz") as npz:
    for k in sorted(npz.files):
      if k in ("inputs", "labels", "puzzle_identifiers") or re.match(r"traj\d+_batch_", k):
        digest.update(k.encode() + npz[k].tobytes())
  return digest.hexdigest()


def measure(fixture_dir: pathlib.Path, variants=None) -> Policy:
  """Runs the torch reference plainly and under each rounding variant on the fixture's checkpoint.

  Cached per process by the fixture's checkpoint, configs and batches.
  """
  key = _fixture_key(pathlib.Path(fixture_dir), variants)
  if key not in _CACHE:
    _CACHE[key] = _measure(pathlib.Path(fixture_dir), variants)
  return _CACHE[key]


def is_trm_fixture(model_cfg: dict, all_config: dict) -> bool:
  """A TRM fixture: its all_config.yaml names the original's TRM (or model_cfg.json has TRM-only keys)."""
  name = str(((all_config or {}).get("arch") or {}).get("name", ""))
  if name:
    return "recursive_reasoning.trm" in name
  return "mlp_t" in model_cfg or "no_ACT_continue" in model_cfg


def _measure(fixture_dir: pathlib.Path, variants=None) -> Policy:
  import torch  # pylint: disable=import-outside-toplevel
  from tools import make_fixture as mf  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from tools.hrm_torch import build_loss_head, load_into_loss_head, load_state_dict_file
  from tools.hrm_torch import variants as variants_lib  # pylint: disable=import-outside-toplevel

  fixture_dir = pathlib.Path(fixture_dir)
  model_cfg = json.loads((fixture_dir / "model_cfg.json").read_text())
  all_config = yaml.safe_load((fixture_dir / "checkpoint_dir" / "all_config.yaml").read_text())
  loss_type = ((all_config.get("arch") or {}).get("loss") or {}).get("loss_type", "stablemax_cross_entropy")
  state_dict = load_state_dict_file(fixture_dir / "checkpoint_dir" / "step_0")
  batches = mf.batches_from_reference(fixture_dir / "reference.npz")

  build, compute = build_loss_head, mf.compute_reference
  if is_trm_fixture(model_cfg, all_config):
    # TRM: tools/trm_torch's reference, built from tools/hrm_torch's layers and optimisers (so the variants'
    # patches reach it), with TRM's own arrays (trace, EMA shadow, EMA checkpoint's eval loop).
    from tools.trm_torch import build_loss_head as build  # pylint: disable=import-outside-toplevel
    from tools.trm_torch import make_fixture as trm_mf  # pylint: disable=import-outside-toplevel
    with np.load(fixture_dir / "reference.npz") as npz:
      ema_rate = float(npz["ema_rate"]) if "ema_rate" in npz.files else float(all_config.get("ema_rate", 0.999))
    compute = lambda head, batches: trm_mf.compute_reference(head, batches, ema_rate)[0]  # pylint: disable=unnecessary-lambda-assignment

  def run(variant):
    with torch.random.fork_rng():
      torch.manual_seed(0)
      context = (variants_lib.rounding_variant(variant, None)
                 if variant is not None and not variant.startswith("ulp") else None)
      if context is not None:
        with context:
          head = build(model_cfg, loss_type)
          load_into_loss_head(head, state_dict)
          return compute(head, batches)
      head = build(model_cfg, loss_type)
      load_into_loss_head(head, state_dict)
      if variant is None:
        return compute(head, batches)
      with variants_lib.rounding_variant(variant, head):
        return compute(head, batches)

  plain = run(None)
  runs = {v: run(v) for v in (variants or variants_lib.VARIANTS)}
  lr = min(float(all_config.get("lr", 1e-3)), float(all_config.get("puzzle_emb_lr", 1e-2)))
  numel = {k.removeprefix("_orig_mod."): int(v.numel()) for k, v in state_dict.items()}
  with np.load(fixture_dir / "reference.npz") as npz:
    float32_held = frozenset(k for k in npz.files if npz[k].dtype == np.float64 and _float32_exact(
        npz[k][2:3] if _is_stats(k) else npz[k]))  # a summary's max|x| tells the tensor's dtype
  return Policy(model_cfg["forward_dtype"], spreads_from_runs(plain, runs, lr, numel), float32_held, plain)


def main(argv=None) -> int:
  """Prints, per fixture, the measured spreads by kind and depth and hrm_jax's worst error / spread."""
  import argparse  # pylint: disable=import-outside-toplevel
  from tools import parity  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m tools.tolerance", description=main.__doc__)
  parser.add_argument("fixture_dirs", nargs="+", type=pathlib.Path)
  args = parser.parse_args(argv)
  for fixture in args.fixture_dirs:
    policy = measure(fixture)
    results, _ = parity.run_parity(fixture, policy)
    by_group: dict[tuple[str, str], float] = {}
    for name, spread in policy.spreads.items():
      if spread.by_variant:
        match = re.match(r"(eval_step|ema_eval_step|traj)(\d+)_", name)
        depth = f"{match.group(1)}{match.group(2)}" if match else "one segment"
        key = (kind_of(name), depth)
        by_group[key] = max(by_group.get(key, 0.0), spread.value)
    ratios = sorted(((r.error / (r.tolerance / FACTOR), r.name) for r in results
                     if r.kind != "exact" and r.tolerance > 0), reverse=True)
    failed = sum(not r.passed for r in results)
    print(f"{fixture}  ({policy.forward_dtype}, FACTOR {FACTOR:g}): {len(results) - failed} passed, "
          f"{failed} failed; worst hrm_jax error / (tolerance / FACTOR) {ratios[0][0]:.2f} ({ratios[0][1]})")
    for (kind, depth), value in sorted(by_group.items()):
      print(f"  spread  {kind:<6} {depth:<12} {value:.2e}")
    if policy.forward_dtype == "float64":
      beyond = [r for r in results if r.kind != "exact" and r.error > FLOAT64_TARGET]
      print(f"  float64: {len(results) - len(beyond)} arrays within {FLOAT64_TARGET:g}; {len(beyond)} beyond, "
            f"each explained by a float32 step of the original")
  return 0


if __name__ == "__main__":
  import sys  # pylint: disable=import-outside-toplevel
  sys.exit(main())
