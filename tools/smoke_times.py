"""Times every `:smoke` config as a new user runs it: wall time, longest quiet stretch, data wait.

    python -m tools.smoke_times [--configs demo sudoku trm_sudoku:attn,smoke ...] [--root DIR] [--json OUT.json]

Each config runs `python -m hrm_jax.main --config=configs/<name>.py:<variant>` (variant `smoke` unless
given) in a fresh workdir, with its
dataset built on first use in a fresh data directory (the build counts in the wall time, as it does for a
new user). Every output line is timestamped as it arrives; the longest gap between two lines (or from the
start to the first line) is the longest the console stays quiet. `data wait` is the median
`data_wait_fraction` of the run's train records in metrics.jsonl (the share of training time the loop waited
for the next batch), without the first window (compilation) and the last (closed after the loop).
The 1-minute load average before and after each run is printed with it: the figures hold only on an
otherwise idle machine.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ("demo", "sudoku", "maze", "arc1", "arc2", "trm_demo", "trm_sudoku", "trm_sudoku:attn,smoke", "trm_maze",
           "trm_arc1", "trm_arc2")


def median_data_wait(workdir: pathlib.Path) -> Optional[float]:
  """Median data_wait_fraction of the train records in workdir/metrics.jsonl, or None.

  The first window (it holds the compilation) and the last (closed after the loop, with no batch left to
  wait for) are left out when there are more.
  """
  path = workdir / "metrics.jsonl"
  values = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and record.get("split") == "train" and record.get("data_wait_fraction") is not None:
        values.append(float(record["data_wait_fraction"]))
  if len(values) > 2:
    values = values[1:-1]
  return statistics.median(values) if values else None


def time_config(entry: str, root: pathlib.Path, timeout_s: float) -> dict[str, Any]:
  """Runs configs/<name>.py:<variant> (`entry` is name[:variant], variant smoke by default) once under `root`."""
  name, _, variant = entry.partition(":")
  variant = variant or "smoke"
  tag = f"{name}-{variant.replace(',', '-')}"
  workdir, data_dir = root / f"{tag}-run", root / f"{tag}-data"
  cmd = [sys.executable, "-u", "-m", "hrm_jax.main", f"--config=configs/{name}.py:{variant}",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}"]
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  load_before = os.getloadavg()[0]
  started = time.monotonic()
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  stamps, lines = [started], []
  assert proc.stdout is not None
  killer = threading.Timer(timeout_s, proc.kill)  # also when the run hangs without printing
  killer.start()
  try:
    for line in proc.stdout:
      stamps.append(time.monotonic())
      lines.append(line.rstrip())
    returncode = proc.wait()
    ended = time.monotonic()
  finally:
    killer.cancel()
  gaps = [b - a for a, b in zip(stamps, stamps[1:])]
  return {"config": f"configs/{name}.py:{variant}", "returncode": returncode,
          "wall_s": round(ended - started, 1), "longest_quiet_s": round(max(gaps, default=0.0), 1),
          "data_wait_fraction": median_data_wait(workdir), "load_before": round(load_before, 2),
          "load_after": round(os.getloadavg()[0], 2), "last_line": lines[-1] if lines else "",
          "command": " ".join(cmd[1:])}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tools.smoke_times", description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="config names, each name[:variant]")
  parser.add_argument("--root", default=None, help="where workdirs and datasets go (default: a temp dir)")
  parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is killed")
  parser.add_argument("--json", default=None, help="also write the figures here")
  args = parser.parse_args(argv)
  names = args.configs
  unknown = [n for n in names if not (REPO_ROOT / "configs" / f"{n.partition(':')[0]}.py").exists()]
  if unknown:
    print(f"smoke_times: error: no config {', '.join(unknown)} in configs/; choose from {', '.join(CONFIGS)}",
          file=sys.stderr)
    return 2
  results = []
  with tempfile.TemporaryDirectory(prefix="smoke_times_") as tmp:
    root = pathlib.Path(args.root) if args.root else pathlib.Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    print(f"{'config':34s} {'rc':>3s} {'wall s':>7s} {'quiet s':>8s} {'data wait':>10s} {'load':>10s}  last line")
    for name in names:
      r = time_config(name, root, args.timeout)
      results.append(r)
      wait = "-" if r["data_wait_fraction"] is None else f"{100 * r['data_wait_fraction']:.2f}%"
      print(f"{r['config']:34s} {r['returncode']:3d} {r['wall_s']:7.1f} {r['longest_quiet_s']:8.1f} {wait:>10s} "
            f"{r['load_before']:4.1f}/{r['load_after']:<4.1f}  {r['last_line'][:60]}", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
