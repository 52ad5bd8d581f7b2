"""A short demo training run shared by the tests of evaluate, solve, export and convert (test helper).

Trained once per pytest session into the session's base temp directory (later modules find it finished
there), with the same XLA flags (`background_runs.cpu_env`) as every subprocess that compares against it.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from background_runs import REPO_ROOT, cpu_env

SHORT_STEPS = 500  # ~51% exact accuracy on the demo's held-out set; enough to solve some fresh puzzles
FULL_STEPS = 2000  # the demo's own length (~93%)


def trained_demo(tmp_path_factory, steps: int = SHORT_STEPS) -> tuple[pathlib.Path, pathlib.Path]:
  """(workdir, data_dir) of a finished configs/demo.py run of `steps` steps."""
  base = tmp_path_factory.getbasetemp() / f"demo_run_{steps}"
  workdir, data_dir = base / "run", base / "data"
  status = workdir / "status.json"
  if not (status.is_file() and json.loads(status.read_text()).get("state") == "finished"):
    args = [sys.executable, "-m", "hrm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
            f"--config.data_dir={data_dir}", f"--config.num_steps={steps}", "--config.log.progress_bar=false",
            "--config.eval.at_start=false", "--config.eval.every_steps=250", "--config.checkpoint.every_steps=250"]
    proc = subprocess.run(args, cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return workdir, data_dir


def last_full_eval(workdir: pathlib.Path) -> dict:
  evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [e for e in evals if e.get("split") == "eval"][-1]


def run_cli(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT, env=cpu_env(),
                        capture_output=True, text=True, timeout=timeout)
