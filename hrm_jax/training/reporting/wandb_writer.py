"""Optional Weights & Biases logging (needs the `wandb` package)."""

from __future__ import annotations

from typing import Any, Mapping

from hrm_jax.training.reporting.values import to_float


def wandb_available() -> bool:
  try:
    import wandb  # pylint: disable=import-outside-toplevel,unused-import  # noqa: F401
  except ImportError:
    return False
  return True


class WandbWriter:
  """Logs metrics to Weights & Biases as `split/name`; needs the optional `wandb` package."""

  def __init__(self, project: str, *, name: str | None = None, config: Mapping[str, Any] | None = None,
               run_id: str | None = None, **init_kwargs: Any):
    try:
      import wandb  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          "W&B logging was requested but the `wandb` package is not installed. Install it with "
          "`pip install wandb` (and run `wandb login`), or turn W&B logging off in the config; "
          "metrics.jsonl and TensorBoard logs are written either way."
      ) from e
    self._wandb = wandb
    self._run = wandb.init(project=project, name=name, id=run_id,
                           config=dict(config) if config is not None else None, **init_kwargs)

  def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
    logged = {}
    for key, value in metrics.items():
      try:
        logged[f"{split}/{key}"] = to_float(value)
      except TypeError:
        continue
    self._run.log(logged, step=int(step))

  def flush(self) -> None:
    pass  # wandb sends in the background.

  def close(self) -> None:
    if self._run is not None:
      self._run.finish()
      self._run = None
