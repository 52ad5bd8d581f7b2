"""Rounding variants of the torch reference: the same model and math, different (equally valid) roundings.

The parity tolerance policy (tools/tolerance.py) measures, per array, how far the reference moves under
these variants; that spread is the size of the rounding noise any correct re-implementation (or the original
on another CPU) shows. Each variant changes rounding only:

  order    every linear layer sums its contraction in two halves (x1·W1ᵀ + x2·W2ᵀ): another matmul blocking
  dither   every rounding step (each linear layer, attention, rms_norm and RoPE in float32, the float32
           losses, both optimisers' updates, and the backward of each) moved by one ulp in half of its
           elements: an implementation that rounds differently everywhere, as another library or CPU does
  ulp      H_init/L_init moved by one ulp of their dtype in a quarter of their elements (a one-ulp input
           perturbation)

tools/trm_torch builds TRM from these same classes (CastedLinear, Attention, SwiGLU, the optimisers) and
buffer names (model.inner.H_init/L_init); only its module-level `rms_norm` import needs its own patch.
"""

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from tools.hrm_torch import adam_atan2
from tools.hrm_torch import hrm_act_v1
from tools.hrm_torch import layers
from tools.hrm_torch import sparse_embedding
from tools.trm_torch import trm  # TRM's reference: hrm_torch's layers, its own module-level rms_norm

VARIANTS = ("order", "dither", "dither:1", "ulp")  # "dither:N": the dither with seed N
DITHER_FRACTION = 0.5
_INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def ulp_dither(t: torch.Tensor, generator: torch.Generator, fraction: float = DITHER_FRACTION) -> torch.Tensor:
  """`t` with DITHER_FRACTION of its nonzero finite elements moved one ulp up or down (no autograd)."""
  t = t.detach()
  bits = t.contiguous().view(_INT_VIEW[t.dtype]).clone()
  chosen = (torch.rand(t.shape, generator=generator) < fraction) & (t != 0) & torch.isfinite(t)
  step = torch.where(torch.rand(t.shape, generator=generator) < 0.5, 1, -1).to(bits.dtype)
  bits = torch.where(chosen, bits + step, bits)
  return bits.view(t.dtype)


class _Dither(torch.autograd.Function):
  """Identity up to one-ulp dither, forward and backward (another implementation's rounding)."""

  @staticmethod
  def forward(ctx, x, generator):  # pylint: disable=arguments-differ
    ctx.generator = generator
    return ulp_dither(x, generator)

  @staticmethod
  def backward(ctx, grad):  # pylint: disable=arguments-differ
    return ulp_dither(grad, ctx.generator), None


def _dithered(x: torch.Tensor, generator) -> torch.Tensor:
  return _Dither.apply(x, generator) if x.is_floating_point() else x


def _linear_in_halves(self, x: torch.Tensor) -> torch.Tensor:
  weight = self.weight.to(x.dtype)
  half = weight.shape[1] // 2
  if half == 0:
    return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))
  y = F.linear(x[..., :half], weight[:, :half]) + F.linear(x[..., half:], weight[:, half:])
  return y if self.bias is None else y + self.bias.to(x.dtype)


def nudge_one_ulp(t: torch.Tensor, seed: int) -> torch.Tensor:
  """A quarter of the elements (chosen by `seed`) moved to the next representable value away from zero."""
  x = t.detach().cpu()
  if x.dtype == torch.bfloat16:
    bits = x.view(torch.int16).numpy().copy()
  else:
    bits = x.numpy().view({4: np.int32, 8: np.int64}[x.element_size()]).copy()
  chosen = np.random.default_rng(seed).random(bits.shape) < 0.25
  bits[chosen] += 1
  out = torch.from_numpy(bits)
  return out.view(torch.bfloat16) if x.dtype == torch.bfloat16 else out.view(x.dtype)


def _dither_patches(generator):
  """(owner, attribute, replacement) for every rounding step of the reference, dithered."""
  lin, rms, rope = layers.CastedLinear.forward, layers.rms_norm, layers.apply_rotary_pos_emb
  sdpa, bce, ce = F.scaled_dot_product_attention, F.binary_cross_entropy_with_logits, F.cross_entropy
  adam_step, sign_step = adam_atan2.AdamATan2.step, sparse_embedding.CastedSparseEmbeddingSignSGD.step

  def linear(self, x):
    return _dithered(lin(self, x), generator)

  def rms_norm(hidden, eps):
    input_dtype = hidden.dtype
    hidden_f32 = hidden.to(torch.float32)
    variance = hidden_f32.square().mean(-1, keepdim=True)
    out = _dithered(hidden_f32 * torch.rsqrt(variance + eps), generator).to(input_dtype)
    return _dithered(out, generator) if input_dtype != torch.float64 else out

  def apply_rope(q, k, cos, sin):
    q_rot, k_rot = rope(q, k, cos, sin)  # float32 inside, cast back
    return _dithered(q_rot, generator), _dithered(k_rot, generator)

  def attention(*args, **kwargs):
    return _dithered(sdpa(*args, **kwargs), generator)

  def loss_wrapper(fn):
    return lambda *args, **kwargs: _dithered(fn(*args, **kwargs), generator)

  def dithered_step(step):
    # The optimiser's own step, without torch's hook wrapper: the optimiser built inside the variant wraps
    # this replacement once, so step post-hooks (tools/trm_torch's EMA update) run once, after the dither.
    step = step.__wrapped__ if getattr(step, "hooked", False) else step

    def run(self, closure=None):
      before = [[p.detach().clone() for p in group["params"]] for group in self.param_groups]
      out = step(self, closure)
      with torch.no_grad():
        for group, olds in zip(self.param_groups, before):
          for p, old in zip(group["params"], olds):
            if not p.is_floating_point():
              continue
            changed = p != old  # rows SignSGD left alone stay bit-identical in any implementation
            p.copy_(torch.where(changed, ulp_dither(p, generator), p))
      return out
    return run

  return [(layers.CastedLinear, "forward", linear), (layers, "rms_norm", rms_norm),
          (hrm_act_v1, "rms_norm", rms_norm), (trm, "rms_norm", rms_norm),
          (layers, "apply_rotary_pos_emb", apply_rope),
          (F, "scaled_dot_product_attention", attention),
          (F, "binary_cross_entropy_with_logits", loss_wrapper(bce)), (F, "cross_entropy", loss_wrapper(ce)),
          (adam_atan2.AdamATan2, "step", dithered_step(adam_step)),
          (sparse_embedding.CastedSparseEmbeddingSignSGD, "step", dithered_step(sign_step))]


@contextlib.contextmanager
def rounding_variant(name: str, head=None, seed: int = 0) -> Iterator[None]:
  """Within the block, the torch reference computes with rounding variant `name` (see the module doc).

  "islands" affects models built inside the block (the RoPE tables are made at construction); "ulp"
  nudges `head`'s H_init/L_init in place and restores them on exit.
  """
  name, _, seed_text = name.partition(":")
  if name not in ("order", "dither", "ulp") or (seed_text and not seed_text.isdigit()):
    raise ValueError(f"unknown rounding variant {name!r}; use one of {VARIANTS}")
  seed = int(seed_text) if seed_text else seed
  saved = []
  try:
    if name == "order":
      saved.append((layers.CastedLinear, "forward", layers.CastedLinear.forward))
      layers.CastedLinear.forward = _linear_in_halves
    elif name == "dither":
      for owner, attr, replacement in _dither_patches(torch.Generator().manual_seed(seed)):
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, replacement)
    elif name == "ulp":
      inner = head.model.inner
      originals = {k: getattr(inner, k).clone() for k in ("H_init", "L_init")}
      with torch.no_grad():
        for seed, (k, v) in enumerate(originals.items()):
          getattr(inner, k).copy_(nudge_one_ulp(v, seed))
      saved.append(("ulp", inner, originals))
    yield
  finally:
    for entry in reversed(saved):
      if entry[0] == "ulp":
        _, inner, originals = entry
        with torch.no_grad():
          for k, v in originals.items():
            getattr(inner, k).copy_(v)
      else:
        setattr(*entry)
