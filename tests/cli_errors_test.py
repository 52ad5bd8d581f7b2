"""Every failure a user can cause at start-up: one `error:` line naming the problem and the fix, exit 1 or 2,
no traceback, nothing written where it should not be. All cases start together to share the cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

import pytest

import background_runs
import tiny_data

REPO_ROOT = background_runs.REPO_ROOT


@dataclasses.dataclass
class Case:
  args: list[str]
  code: int
  says: list[str]  # fragments of the error line


class _Malicious:
  def __init__(self, marker: pathlib.Path):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _mount(*args: str) -> bool:
  return subprocess.run(["mount", *args], capture_output=True).returncode == 0


# Root bypasses file modes through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH; without them a 0o555 folder
# refuses root's writes as it does any user's (util-linux's setpriv drops them for one command).
_AS_ROOT_WITHOUT_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search",
                        "--bounding-set=-dac_override,-dac_read_search")


def _modes_apply_to_root() -> bool:
  if os.geteuid() != 0 or shutil.which("setpriv") is None:
    return False
  probe = pathlib.Path(tempfile.mkdtemp())
  try:
    probe.chmod(0o555)
    return subprocess.run([*_AS_ROOT_WITHOUT_DAC, "touch", str(probe / "x")], capture_output=True).returncode != 0
  finally:
    probe.chmod(0o755)
    shutil.rmtree(probe)


_MODES_APPLY = _modes_apply_to_root()


@pytest.fixture(scope="module")
def mounts(tmp_path_factory):
  """A read-only bind mount and a full tmpfs, where this process may mount (root in a container)."""
  root = tmp_path_factory.mktemp("mounts")
  made = {}
  (root / "ro_src").mkdir()
  (root / "ro").mkdir()
  if _mount("--bind", str(root / "ro_src"), str(root / "ro")):
    if _mount("-o", "remount,bind,ro", str(root / "ro")):
      made["read_only"] = root / "ro"
    else:
      _mount("-l", str(root / "ro"))  # unused
  (root / "full").mkdir()
  if _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root / "full")):
    with contextlib.suppress(OSError), open(root / "full" / "filler", "wb") as f:
      while True:
        f.write(b"\0" * 4096)
        f.flush()
    made["full"] = root / "full"
  yield made
  for path in made.values():
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory, mounts, original_fixture_dir):
  root = tmp_path_factory.mktemp("cli_errors")
  data = tiny_data.write_tiny_dataset(root / "data")
  empty = tiny_data.write_tiny_dataset(root / "empty")
  _empty_train_split(empty)
  (root / "a_file").write_text("not a folder")
  malicious = root / "malicious.pt"
  malicious.write_bytes(pickle.dumps(_Malicious(root / "PWNED")))
  base = ["--config=configs/demo.py:smoke", f"--config.data_dir={data}", "--config.build_data_if_missing="]
  work = lambda name: f"--workdir={root / name}"
  torch_step = original_fixture_dir / "float32" / "checkpoint_dir" / "step_0"
  cases = {
      # The other config traps are checked in-process (config_test.py); this one shows the CLI path and
      # that JAX's own flags parse.
      "batch_neg_with_jax_flag": Case([*base, work("b4"), "--jax_enable_x64", "--config.global_batch_size=-4"],
                                      2, ["global_batch_size=-4", "positive"]),
      "class_weights_length": Case([*base, work("cw"), "--config.loss.class_weights=(1.0,2.0)"], 1,
                                   ["class_weights has 2 weights", "8 token ids"]),
      "missing_config": Case(["--config=configs/no_such.py", work("mc")], 2, ["config file", "no_such.py"]),
      "empty_dataset": Case([*base[:1], f"--config.data_dir={empty}", base[2], work("ed")], 1,
                            ["training split", "empty"]),
      "data_dir_is_file": Case([*base[:1], f"--config.data_dir={root / 'a_file'}", work("df")], 1,
                               ["is a file", "--config.data_dir"]),
      "workdir_below_file": Case([*base, f"--workdir={root / 'a_file' / 'run'}"], 1,
                                 ["cannot write to the workdir", "is a file"]),
      "init_from_missing": Case([*base, work("im"), f"--config.init_from={root / 'nope.pt'}"], 1,
                                ["init_from=", "does not exist"]),
      "init_from_malicious": Case([*base, work("ix"), f"--config.init_from={malicious}"], 1,
                                  ["init_from=", "cannot be read"]),
      "init_from_misshaped": Case([*base, work("is"), f"--config.init_from={torch_step}"], 1,
                                  ["does not fit this run's model", "H_layers"]),
  }
  if "read_only" in mounts:
    cases["read_only_mount"] = Case([*base, f"--workdir={mounts['read_only'] / 'run'}"], 1,
                                    ["cannot write to the workdir", "read-only"])
  if "full" in mounts:
    cases["full_disk"] = Case([*base, f"--workdir={mounts['full'] / 'run'}"], 1,
                              ["cannot write to the workdir", "disk is full"])
  prefixes = {}
  if os.geteuid() != 0 or _MODES_APPLY:
    (root / "locked").mkdir(mode=0o555)
    cases["chmod_read_only"] = Case([*base, f"--workdir={root / 'locked' / 'run'}"], 1, ["permission denied"])
    if os.geteuid() == 0:  # root ignores file modes unless it drops the capabilities that let it
      prefixes["chmod_read_only"] = _AS_ROOT_WITHOUT_DAC
  started = {name: background_runs.Run(name, ["-m", "hrm_jax.main", *case.args], root / "logs",
                                       background_runs.cpu_env(), 240, prefix=prefixes.get(name, ()))
             for name, case in cases.items()}
  yield root, mounts, {name: (case, run.wait(), run) for name, case, run in
                       ((n, cases[n], r) for n, r in started.items())}


def _empty_train_split(root: pathlib.Path) -> None:
  import dataclasses as dc  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from hrm_jax.data import format as data_format  # pylint: disable=import-outside-toplevel
  meta = dc.replace(data_format.load_metadata(root, "train"), total_groups=0, mean_puzzle_examples=0.0)
  shutil.rmtree(root / "train")
  none = np.zeros((0, meta.seq_len), np.uint8)
  data_format.write_split(root, "train", meta, {"all": {
      "inputs": none, "labels": none, "puzzle_identifiers": np.zeros(0, np.int32),
      "puzzle_indices": np.zeros(1, np.int32), "group_indices": np.zeros(1, np.int32)}})


CASES = ["batch_neg_with_jax_flag", "class_weights_length", "missing_config", "empty_dataset", "data_dir_is_file",
         "workdir_below_file", "init_from_missing", "init_from_malicious", "init_from_misshaped", "read_only_mount",
         "full_disk", "chmod_read_only"]


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_line_with_the_fix(results, name):
  root, _, by_name = results
  if name not in by_name:
    pytest.skip("needs mount rights (root in a container)" if name in ("read_only_mount", "full_disk")
                else "root ignores file modes (no setpriv to drop CAP_DAC_OVERRIDE)")
  case, result, run = by_name[name]
  assert result.returncode == case.code, run.describe()
  assert "Traceback" not in result.stderr + result.stdout, run.describe()
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, run.describe()
  assert len(result.stderr.strip().splitlines()) <= 2, run.describe()  # the line and at most a short hint
  for fragment in case.says:
    assert fragment in errors[0], run.describe()
  assert not (root / "PWNED").exists()  # the malicious pickle ran nothing
  # Refused before training: no checkpoint anywhere.
  assert not list(root.glob("*/checkpoints/*/commit_success.txt"))


def test_help_lists_every_config_key_with_default_and_comment():
  from hrm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  result = subprocess.run([sys.executable, "-m", "hrm_jax.main", "--help"], cwd=REPO_ROOT,
                          env=background_runs.cpu_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  for key, default, comment in config_lib.documented_keys():
    (line,) = [l for l in lines if l.startswith(f"  {key} = ")]
    assert line == f"  {key} = {default!r}  # {comment}"
    assert comment
  assert "  optimizer.lr = 0.0001  # peak learning rate of the dense parameters" in lines
