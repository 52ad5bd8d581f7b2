"""Loss head (models/losses.py): LM loss, Q-halt / Q-continue BCE, and the original's metrics."""

from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

IGNORE_LABEL_ID = -100


def _stablemax_s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
  return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
  s_x = _stablemax_s(x)
  return torch.log(s_x / torch.sum(s_x, dim=dim, keepdim=True))


def stablemax_cross_entropy(
    logits_BxSxV: torch.Tensor, labels_BxS: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID
) -> torch.Tensor:
  """Per-token -log stablemax(label) in float64, 0 at ignored tokens; [B, S]."""
  logprobs_BxSxV = log_stablemax(logits_BxSxV.to(torch.float64), dim=-1)
  valid_BxS = labels_BxS != ignore_index
  safe_labels_BxS = torch.where(valid_BxS, labels_BxS, 0)
  picked_BxS = torch.gather(
      logprobs_BxSxV, index=safe_labels_BxS.to(torch.long).unsqueeze(-1), dim=-1
  ).squeeze(-1)
  return -torch.where(valid_BxS, picked_BxS, 0)


def softmax_cross_entropy(
    logits_BxSxV: torch.Tensor, labels_BxS: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID
) -> torch.Tensor:
  """Per-token softmax CE in fp32, 0 at ignored tokens; [B, S]."""
  return F.cross_entropy(
      logits_BxSxV.to(torch.float32).view(-1, logits_BxSxV.shape[-1]),
      labels_BxS.to(torch.long).view(-1), ignore_index=ignore_index, reduction="none",
  ).view(labels_BxS.shape)


LOSS_FUNCTIONS: Dict[str, Callable[..., torch.Tensor]] = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


class ACTLossHead(nn.Module):
  """Wraps the ACT model; returns (carry, loss, metrics, outputs, all_halted) like the original."""

  def __init__(self, model: nn.Module, loss_type: str):
    super().__init__()
    if loss_type not in LOSS_FUNCTIONS:
      raise ValueError(f"unknown loss_type {loss_type!r}; use one of {sorted(LOSS_FUNCTIONS)}")
    self.model = model
    self.loss_type = loss_type
    self.loss_fn = LOSS_FUNCTIONS[loss_type]

  def initial_carry(self, *args, **kwargs):
    return self.model.initial_carry(*args, **kwargs)

  def forward(
      self, return_keys: Sequence[str], **model_kwargs
  ) -> Tuple[object, torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]:
    new_carry, outputs = self.model(**model_kwargs)
    labels_BxS = new_carry.current_data["labels"]

    with torch.no_grad():
      mask_BxS = labels_BxS != IGNORE_LABEL_ID
      loss_counts_B = mask_BxS.sum(-1)
      loss_divisor_Bx1 = loss_counts_B.clamp_min(1).unsqueeze(-1)

      is_correct_BxS = mask_BxS & (torch.argmax(outputs["logits"], dim=-1) == labels_BxS)
      # A row with no supervised token counts as correct.
      seq_is_correct_B = is_correct_BxS.sum(-1) == loss_counts_B

      valid_B = new_carry.halted & (loss_counts_B > 0)
      metrics = {
          "count": valid_B.sum(),
          "accuracy": torch.where(
              valid_B, (is_correct_BxS.to(torch.float32) / loss_divisor_Bx1).sum(-1), 0
          ).sum(),
          "exact_accuracy": (valid_B & seq_is_correct_B).sum(),
          "q_halt_accuracy": (
              valid_B & ((outputs["q_halt_logits"] >= 0) == seq_is_correct_B)
          ).sum(),
          "steps": torch.where(valid_B, new_carry.steps, 0).sum(),
      }

    lm_loss = (
        self.loss_fn(outputs["logits"], labels_BxS, ignore_index=IGNORE_LABEL_ID) / loss_divisor_Bx1
    ).sum()
    q_halt_loss = F.binary_cross_entropy_with_logits(
        outputs["q_halt_logits"], seq_is_correct_B.to(outputs["q_halt_logits"].dtype),
        reduction="sum",
    )
    metrics.update({"lm_loss": lm_loss.detach(), "q_halt_loss": q_halt_loss.detach()})

    q_continue_loss = 0
    if "target_q_continue" in outputs:
      q_continue_loss = F.binary_cross_entropy_with_logits(
          outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum"
      )
      metrics["q_continue_loss"] = q_continue_loss.detach()

    detached_outputs = {k: outputs[k].detach() for k in return_keys if k in outputs}
    total_loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
    return new_carry, total_loss, metrics, detached_outputs, new_carry.halted.all()
