"""Reading and writing state dicts in the original's key convention."""

import os
from typing import Dict, Mapping

import torch
from torch import nn

COMPILED_PREFIX = "_orig_mod."
# Key prefixes the original may produce, longest first, and what they mean for ACTLossHead keys:
# torch.compile'd loss head, loss head with DISABLE_COMPILE, bare ACT model.
_KNOWN_PREFIXES = (("_orig_mod.model.inner.", "model.inner."), ("model.inner.", "model.inner."),
                   ("inner.", "model.inner."))


def to_compiled_state_dict(head: nn.Module) -> Dict[str, torch.Tensor]:
  """`state_dict()` of an ACTLossHead with the `_orig_mod.` prefix pretrain.py's compile adds."""
  return {COMPILED_PREFIX + k: v.detach().clone() for k, v in head.state_dict().items()}


def to_loss_head_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
  """Renames keys of any original layout to ACTLossHead keys (`model.inner.*`)."""
  if not state_dict:
    raise ValueError("the checkpoint's state dict is empty")
  for prefix, replacement in _KNOWN_PREFIXES:
    if all(k.startswith(prefix) for k in state_dict):
      return {replacement + k[len(prefix):]: v for k, v in state_dict.items()}
  sample = sorted(state_dict)[:3]
  raise ValueError(
      "unrecognised HRM checkpoint keys (expected every key to start with one of "
      f"{[p for p, _ in _KNOWN_PREFIXES]}), e.g. {sample}"
  )


def load_state_dict_file(path: "str | os.PathLike") -> Dict[str, torch.Tensor]:
  """torch.load of an original checkpoint file (weights only), with readable errors."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint file {path!r} does not exist; pass the path of a "
                            "pretrain.py checkpoint such as checkpoint_dir/step_0")
  try:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle/zip errors come in many types
    raise ValueError(f"could not read {path!r} as a torch state dict: {e}") from e
  if not isinstance(state_dict, dict):
    raise ValueError(f"{path!r} holds a {type(state_dict).__name__}, not a state dict")
  return state_dict


def load_into_loss_head(head: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
  """Strict load into an ACTLossHead, whatever the original prefix was."""
  renamed = to_loss_head_keys(state_dict)
  expected = head.state_dict()
  missing = sorted(set(expected) - set(renamed))
  unexpected = sorted(set(renamed) - set(expected))
  if missing or unexpected:
    raise ValueError(
        "checkpoint does not match the model config: "
        f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
    )
  bad_shapes = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in renamed.items()
                if v.shape != expected[k].shape]
  if bad_shapes:
    raise ValueError(
        f"checkpoint shapes differ from the model config (key, checkpoint, model): {bad_shapes[:5]}"
    )
  head.load_state_dict(renamed, strict=True)
