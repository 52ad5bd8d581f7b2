"""A PyTorch re-implementation of the original TRM (SamsungSAILMontreal/TinyRecursiveModels), CPU only.

It produces reference numbers for hrm_jax's TRM on any config; its state-dict keys equal the original's.
"""

from typing import Any, Dict, Mapping, Sequence

import torch

from tools.hrm_torch.losses import ACTLossHead as _HRMLossHead
from tools.trm_torch.ema import EMAHelper
from tools.trm_torch.trm import (
    TinyRecursiveReasoningModel_ACTV1, TinyRecursiveReasoningModel_ACTV1_Inner,
    TinyRecursiveReasoningModel_ACTV1Block, TinyRecursiveReasoningModel_ACTV1Config,
)


class ACTLossHead(_HRMLossHead):
  """The original TRM's loss head: HRM's, plus a `preds` output (argmax of the logits)."""

  def forward(self, return_keys: Sequence[str], **model_kwargs):
    keys = [k for k in return_keys if k != "preds"]
    carry, loss, metrics, outputs, all_halted = super().forward(list(keys) + ["logits"], **model_kwargs)
    if "preds" in return_keys:
      outputs["preds"] = torch.argmax(outputs["logits"], dim=-1)
    if "logits" not in return_keys:
      outputs.pop("logits")
    return carry, loss, metrics, outputs, all_halted


def build_loss_head(model_cfg: Mapping[str, Any], loss_type: str = "stablemax_cross_entropy") -> ACTLossHead:
  """ACTLossHead(TinyRecursiveReasoningModel_ACTV1(model_cfg)), as the original's pretrain builds it."""
  return ACTLossHead(TinyRecursiveReasoningModel_ACTV1(model_cfg), loss_type)


__all__ = ["ACTLossHead", "EMAHelper", "TinyRecursiveReasoningModel_ACTV1",
           "TinyRecursiveReasoningModel_ACTV1_Inner", "TinyRecursiveReasoningModel_ACTV1Block",
           "TinyRecursiveReasoningModel_ACTV1Config", "build_loss_head"]
