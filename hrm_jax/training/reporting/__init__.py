"""What a training run reports: metric logs, TensorBoard events, status.json, a progress bar, eval reports.

The training loop calls into this package every step, so everything here is cheap on the host and never
forces a device sync on its own: values are converted to Python floats only when they are written, and the
loop decides when that happens (on its log steps).

Files a run writes (all under its workdir, see BUILD.md "What a run reports"):
  metrics.jsonl   one JSON object per logged step, appended across restarts (`jsonl`).
  tb/             TensorBoard event files, written by tensorboardX without TensorFlow (`tensorboard`).
  status.json     a small snapshot of where the run is, replaced atomically (`status`).

One module per concern: `values` (conversions and file helpers), `jsonl`, `tensorboard`, `wandb_writer`,
`writers` (the fan-out and the standard set), `status`, `timing` (StepTimer), `progress` (ProgressBar),
`report` (the evaluation report). Their public names are re-exported here: use `reporting.X`.
"""

from hrm_jax.training.reporting.jsonl import JSONL_SPLITS, JsonlWriter, read_jsonl
from hrm_jax.training.reporting.progress import DEFAULT_BAR_METRICS, ProgressBar
from hrm_jax.training.reporting.report import format_eval_report
from hrm_jax.training.reporting.status import RUN_STATES, StatusFile
from hrm_jax.training.reporting.tensorboard import TensorBoardWriter
from hrm_jax.training.reporting.timing import StepTimer, TimingStats
from hrm_jax.training.reporting.values import (eta_seconds, format_duration, new_run_id, to_float, to_jsonable,
                                               write_json_atomically)
from hrm_jax.training.reporting.wandb_writer import WandbWriter, wandb_available
from hrm_jax.training.reporting.writers import MultiWriter, make_writers

__all__ = [
    "DEFAULT_BAR_METRICS", "JSONL_SPLITS", "JsonlWriter", "MultiWriter", "ProgressBar", "RUN_STATES",
    "StatusFile", "StepTimer", "TensorBoardWriter", "TimingStats", "WandbWriter", "eta_seconds",
    "format_duration", "format_eval_report", "make_writers", "new_run_id", "read_jsonl", "to_float",
    "to_jsonable", "wandb_available", "write_json_atomically",
]
