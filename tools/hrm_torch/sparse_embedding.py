"""The puzzle embedding (models/sparse_embedding.py): a non-parameter fp32 table and its SignSGD."""

from typing import Iterable, Optional, Tuple

import torch
from torch import nn

from tools.hrm_torch.layers import trunc_normal_init_


class CastedSparseEmbedding(nn.Module):
  """Table `weights` [num_ids, ndim] (persistent buffer, no autograd) plus per-batch scratch.

  In train mode the batch's rows are copied into `local_weights` [batch_size, ndim], a leaf that
  requires grad, so backward leaves one gradient row per batch slot (duplicates not merged) in
  `local_weights.grad`; `local_ids` remembers which rows they were. Hence in train mode the batch
  must have exactly `batch_size` rows. Eval mode is a plain gather without gradient.
  """

  def __init__(
      self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float,
      cast_to: torch.dtype,
  ):
    super().__init__()
    self.cast_to = cast_to
    self.register_buffer(
        "weights",
        trunc_normal_init_(torch.empty((num_embeddings, embedding_dim)), std=init_std),
        persistent=True,
    )
    self.register_buffer(
        "local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True),
        persistent=False,
    )
    self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

  def forward(self, ids_B: torch.Tensor) -> torch.Tensor:
    if not self.training:
      return self.weights[ids_B].to(self.cast_to)
    with torch.no_grad():
      self.local_weights.copy_(self.weights[ids_B])
      self.local_ids.copy_(ids_B)
    return self.local_weights.to(self.cast_to)


def sparse_sign_sgd_update_(
    weights_NxE: torch.Tensor, grad_BxE: torch.Tensor, ids_B: torch.Tensor, lr: float,
    weight_decay: float,
) -> None:
  """In place: for each distinct id, w ← w·(1 − lr·wd) − lr·sign(Σ of its gradient rows)."""
  unique_ids_U, inverse_B = ids_B.unique(return_inverse=True)
  grad_UxE = torch.zeros(
      (unique_ids_U.shape[0], grad_BxE.shape[1]), dtype=grad_BxE.dtype, device=grad_BxE.device
  )
  grad_UxE.scatter_add_(0, inverse_B.unsqueeze(-1).expand(-1, grad_BxE.shape[1]), grad_BxE)
  rows_UxE = weights_NxE[unique_ids_U]
  rows_UxE.mul_(1.0 - lr * weight_decay).add_(torch.sign(grad_UxE), alpha=-lr)
  weights_NxE[unique_ids_U] = rows_UxE


class CastedSparseEmbeddingSignSGD(torch.optim.Optimizer):
  """Single-process `CastedSparseEmbeddingSignSGD_Distributed` (world_size 1).

  Construct with `puzzle_emb.buffers()` like the original: the three buffers are told apart by
  requires_grad (local_weights) and rank (local_ids 1-D, weights 2-D). Only rows whose id is in
  the last train-mode batch get decay and update; there is no momentum.
  """

  def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, weight_decay: float = 1e-2):
    if lr < 0.0:
      raise ValueError(f"Invalid learning rate: {lr}")
    if weight_decay < 0.0:
      raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

  @staticmethod
  def _split_group(params) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    if len(params) != 3:
      raise ValueError(
          "CastedSparseEmbeddingSignSGD expects the 3 buffers of one CastedSparseEmbedding "
          f"(pass puzzle_emb.buffers()), got {len(params)} tensors"
      )
    local_weights = ids = weights = None
    for p in params:
      if p.requires_grad:
        local_weights = p
      elif p.ndim == 1:
        ids = p
      elif p.ndim == 2:
        weights = p
    if local_weights is None or ids is None or weights is None:
      raise ValueError("could not identify local_weights / local_ids / weights among the buffers")
    return local_weights.grad, ids, weights

  @torch.no_grad()
  def step(self, closure=None):
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    for group in self.param_groups:
      grad_BxE, ids_B, weights_NxE = self._split_group(group["params"])
      if grad_BxE is None:
        continue
      sparse_sign_sgd_update_(
          weights_NxE, grad_BxE, ids_B, lr=group["lr"], weight_decay=group["weight_decay"]
      )
    return loss
