"""AdamATan2 (the `adam-atan2` package's fused CUDA optimiser) as plain torch ops, CPU friendly."""

from typing import Iterable, Tuple

import torch


class AdamATan2(torch.optim.Optimizer):
  """Adam with atan2 in place of m / (sqrt(v) + eps); no epsilon, decoupled weight decay.

  Per step t (from 1), elementwise, fp32:
    p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
    p ← p − lr/(1−β1^t) · atan2(m, sqrt(v)/sqrt(1−β2^t))
  The first-moment correction scales the step; the second-moment one sits inside atan2.
  """

  def __init__(
      self, params: Iterable[torch.Tensor], lr: float = 1e-3,
      betas: Tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-2,
  ):
    if lr < 0.0:
      raise ValueError(f"Invalid learning rate: {lr}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
      raise ValueError(f"Invalid betas: {betas}")
    if weight_decay < 0.0:
      raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

  @torch.no_grad()
  def step(self, closure=None):
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    for group in self.param_groups:
      lr = group["lr"]
      beta1, beta2 = group["betas"]
      weight_decay = group["weight_decay"]
      for p in group["params"]:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state["step"] = 0
          state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
          state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        grad = p.grad

        p.mul_(1.0 - lr * weight_decay)
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = lr / (1.0 - beta1**step)
        bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
        p.add_(torch.atan2(exp_avg, exp_avg_sq.sqrt() / bias_correction2_sqrt), alpha=-step_size)
    return loss
