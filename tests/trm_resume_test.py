"""A TRM run with EMA, SIGKILLed three times (at a random instant, after random steps, during an async save) and
resumed, ends bitwise equal to an uninterrupted one: parameters, EMA shadow, optimiser states, puzzle table,
buffers, ACT carry, PRNG key, step, data iterator state and next batch (the HRM test's machinery, on
configs/trm_demo.py)."""

from __future__ import annotations

import numpy as np
import pytest

import resume_test as rt

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

CONFIG_FILE = "configs/trm_demo.py"
TRM_TINY = {**rt.TINY, "model.L_layers": 2, "model.H_cycles": 2, "model.L_cycles": 2,
            "model.puzzle_emb_len": 1, "model.pos_encodings": "rope", "model.mlp_t": False, "ema_rate": 0.9}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  return tmp_path_factory.mktemp("trm_resume")


@pytest.fixture(scope="module")
def env(scratch):
  return dict(rt.os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              JAX_COMPILATION_CACHE_DIR=str(scratch / "xla_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def test_trm_sigkill_three_times_ends_bitwise_equal_including_ema(scratch, env, tmp_path):
  data_dir = rt.write_dataset(scratch / "data", num_identifiers=4)
  config = rt.load_config(data_dir, TRM_TINY, CONFIG_FILE)
  assert config.model.arch == "trm" and config.ema
  started = []

  def start(workdir):
    started.append(rt.Run(env, workdir, data_dir, TRM_TINY, config_file=CONFIG_FILE))
    return started[-1]

  try:
    reference = start(scratch / "reference")
    assert reference.wait() == 0, reference.output
    assert rt.committed_steps(reference.workdir) == list(range(1, rt.TOTAL_STEPS + 1))

    workdir = tmp_path / "killed"
    rt.kill_three_times_then_finish(lambda: start(workdir), workdir)
    got = rt.assert_same_run_state(workdir, reference.workdir, config)
    rt.assert_losses_match_reference(workdir, reference.workdir)
  finally:
    for run in started:
      run.kill()
      run.wait(60)

  # The EMA shadow is saved, has moved from the weights, and is what the checkpoint restores.
  leaves = rt.flat_leaves(got.state)
  ema = {k[len(".ema_params"):]: v for k, v in leaves.items() if k.startswith(".ema_params")}
  params = {k[len(".params"):]: v for k, v in leaves.items() if k.startswith(".params")}
  assert ema and set(ema) == set(params)
  assert any(not np.array_equal(ema[k], params[k]) for k in ema)
  assert not any("H_level" in k for k in leaves) and any("L_level" in k for k in leaves)
