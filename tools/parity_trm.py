"""The TRM-only arrays of a TRM parity fixture, checked inside `tools.parity`'s run.

`python -m tools.parity ../shared/fixtures/trm_original/tiny/float32` detects a TRM checkpoint through the
converter and adds these checks to HRM's (embeddings, one segment, eval loop, train segment, trajectory):
  inner_step1_trace        every network call of one segment, replayed call by call with `trm.net`
  traj{k}_ema__*, emastats the EMA shadow after each trajectory call (`hrm_jax.training.ema`)
  ema_eval_step{k}_*       the eval loop of the EMA checkpoint the original saved (checkpoint_dir/step_3)
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.convert import torch_checkpoint
from hrm_jax.model import hrm
from hrm_jax.model import trm
from hrm_jax.training.ema import ema_update


class TRMExtras:
  """Checks the TRM-only arrays; `after_step` is the trajectory's per-call hook, `finish` runs last."""

  def __init__(self, cmp, cfg, loss_cfg, all_config, params, buffers, table, batch):
    self.cmp, self.cfg, self.loss_cfg, self.batch, self.buffers = cmp, cfg, loss_cfg, batch, buffers
    self.checkpoint_dir = pathlib.Path(all_config["checkpoint_path"])
    ref = cmp.reference
    self.rate = float(ref["ema_rate"]) if "ema_rate" in ref else float(all_config.get("ema_rate", 0.999))
    self.ema = params
    if "inner_step1_trace" in ref:
      cmp.close("inner_step1_trace", self._trace(params, buffers, table))

  def _trace(self, params, buffers, table):
    """Outputs of every network call of one eval segment from H_init/L_init, in call order."""
    cfg, batch = self.cfg, self.batch
    rows = hrm.gather_puzzle_rows(cfg, table, batch["puzzle_identifiers"])
    carry = hrm.reset_carry(hrm.initial_carry(cfg, int(batch["inputs"].shape[0])), batch, buffers)
    x = trm.input_embeddings(params, cfg, batch["inputs"], rows)
    call = jax.jit(trm.net, static_argnums=1)
    z_H, z_L, outputs = carry.z_H, carry.z_L, []
    for _ in range(cfg.H_cycles):
      for _ in range(cfg.L_cycles):
        z_L = call(params, cfg, z_L, z_H + x)
        outputs.append(z_L)
      z_H = call(params, cfg, z_H, z_L)
      outputs.append(z_H)
    return jnp.stack(outputs)

  def after_step(self, k: int, params) -> None:
    """EMA update after call k; compared with the original's shadow (rows kept and whole-tensor stats)."""
    cmp, ref = self.cmp, self.cmp.reference
    self.ema = ema_update(self.ema, params, self.rate)
    state = torch_checkpoint.to_state_dict(self.ema, None, None, self.cfg, prefix="model.inner.",
                                           params_only=True)
    for key, value in state.items():
      value = np.asarray(value)
      name = f"traj{k}_ema__{key}"
      if name in ref:
        rows = ref.get(f"traj_rows__{key}")
        # Elements whose update direction was undetermined are those of the parameter check, bounded alike.
        param_record = cmp.records.get(f"traj{k}_param__{key}")
        mask = param_record.ignore_mask if param_record is not None else None
        slack = param_record.slack if param_record is not None else None
        cmp.close(name, value[rows] if rows is not None else value, "param", mask, slack)
      if f"traj{k}_emastats__{key}" in ref:
        cmp.stats(f"traj{k}_emastats__{key}", value, "param")

  def finish(self) -> None:
    """The eval loop of the original's saved EMA copy (checkpoint_dir/step_3: shadow parameters and the
    live puzzle table), when the fixture has it."""
    from tools import parity  # pylint: disable=import-outside-toplevel
    ref = self.cmp.reference
    step_3 = self.checkpoint_dir / "step_3"
    if "ema_eval_step0_logits" not in ref or not step_3.exists():
      return
    converted = torch_checkpoint.load_original_checkpoint(step_3, seq_len=self.cfg.seq_len)
    params = jax.tree.map(jnp.asarray, converted.params)
    table = jnp.asarray(converted.puzzle_table) if converted.puzzle_table is not None else None
    # H_init/L_init never train: the EMA copy's buffers are the live ones (self.buffers).
    parity.eval_loop(self.cmp, "ema_eval_step", converted.model_config, self.loss_cfg, params, self.buffers,
                     table, self.batch)
