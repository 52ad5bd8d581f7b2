"""Runs the real `train_and_evaluate` on a tiny config in its own process (driver for the scaling tests).

  python tests/train_driver.py --data-dir D --workdir W [--overrides JSON]
      [--coordinator 127.0.0.1:PORT --num-processes 2 --process-id I]

With --coordinator, `jax.distributed.initialize` is called first (CPU collectives: gloo, on 127.0.0.1),
which is what `config.distributed=True` does on a cluster that JAX detects by itself. Device count: set XLA_FLAGS
(`--xla_force_host_platform_device_count=N`) in the environment before starting this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position

from hrm_jax.config import base_config  # pylint: disable=wrong-import-position


def tiny_run_config(data_dir: str) -> ml_collections.ConfigDict:
  """20 steps of a tiny model with a puzzle table, ACT exploration, checkpoints, and a full evaluation whose
  predictions are saved."""
  c = base_config()
  c.data_dir = data_dir
  c.model.hidden_size = 32
  c.model.num_heads = 2
  c.model.H_layers = 1
  c.model.L_layers = 1
  c.model.puzzle_emb_ndim = 32
  c.model.halt_max_steps = 2
  c.model.forward_dtype = "float32"
  c.global_batch_size = 16
  c.num_steps = 20
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 2
  c.eval.every_steps = 0
  c.eval.subset_size = 0
  c.eval.full_every_steps = 0
  c.eval.batch_size = 16
  c.eval.save_predictions = True
  c.checkpoint.every_steps = 10
  c.log.every_steps = 1
  c.log.tensorboard = False
  c.log.progress_bar = False
  return c


def _initialize_on_loopback(coordinator: str, num_processes: int, process_id: int) -> None:
  """jax.distributed over 127.0.0.1 only: the coordinator and the gloo CPU collectives both bind there.

  jax 0.10 picks gloo for CPU collectives by default, but lets gloo bind to whatever the host name resolves
  to; the CPU backend is therefore registered here with gloo pinned to the loopback address (private API,
  test-only; the backend must not have started yet).
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id, coordinator_bind_address=coordinator,
                             initialization_timeout=60)
  from jax._src import distributed, xla_bridge  # pylint: disable=import-outside-toplevel
  from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel

  def loopback_cpu_client():
    collectives = _jax.make_gloo_tcp_collectives(distributed_client=distributed.global_state.client,
                                                 hostname="127.0.0.1")
    return xla_bridge.make_cpu_client(collectives=collectives)

  xla_bridge.register_backend_factory("cpu", loopback_cpu_client, priority=0, fail_quietly=False)


def _apply(config: ml_collections.ConfigDict, overrides: dict) -> None:
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--data-dir", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--overrides", default="{}", help="JSON {dotted.key: value}")
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  args = parser.parse_args(argv)

  if args.coordinator:
    _initialize_on_loopback(args.coordinator, args.num_processes, args.process_id)
  from hrm_jax.training import train  # pylint: disable=import-outside-toplevel
  config = tiny_run_config(args.data_dir)
  _apply(config, json.loads(args.overrides))
  print(f"driver: process {jax.process_index()}/{jax.process_count()}, {jax.local_device_count()} local / "
        f"{jax.device_count()} global devices", flush=True)
  summary = train.train_and_evaluate(config, args.workdir)
  print("driver: final " + json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float))}),
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
