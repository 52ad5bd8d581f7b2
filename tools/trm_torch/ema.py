"""EMA of the parameters (the original's models/ema.py): shadow = (1 - mu)·param + mu·shadow after each step."""

import copy

from torch import nn


class EMAHelper:
  """Shadows every trainable parameter; buffers (H_init, L_init, puzzle table) are not averaged."""

  def __init__(self, mu: float = 0.999):
    self.mu = mu
    self.shadow = {}

  def register(self, module: nn.Module) -> None:
    for name, param in module.named_parameters():
      if param.requires_grad:
        self.shadow[name] = param.data.clone()

  def update(self, module: nn.Module) -> None:
    for name, param in module.named_parameters():
      if param.requires_grad:
        self.shadow[name].data = (1.0 - self.mu) * param.data + self.mu * self.shadow[name].data

  def ema_copy(self, module: nn.Module) -> nn.Module:
    """A deep copy whose parameters are the shadow (its buffers are the live ones)."""
    copied = copy.deepcopy(module)
    for name, param in copied.named_parameters():
      if param.requires_grad:
        param.data.copy_(self.shadow[name].data)
    return copied
