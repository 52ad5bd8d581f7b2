"""tools/smoke_times.py: the figures it reports come from the run's own output (no timing assertions)."""

import json
import pathlib

import pytest

from tools import smoke_times


def _write_metrics(workdir: pathlib.Path, records: list[dict]) -> None:
  workdir.mkdir(parents=True)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_median_data_wait_leaves_out_the_compile_and_the_closing_window(tmp_path):
  waits = [0.9, 0.01, 0.03, 0.02, 0.0]  # compile window first, the window closed after the loop last
  records = [{"step": i, "time": 0.0, "split": "train", "data_wait_fraction": w} for i, w in enumerate(waits)]
  records.insert(2, {"step": 2, "time": 0.0, "split": "eval", "exact_accuracy": 0.5})
  records.append({"step": 9, "time": 0.0, "split": "train", "loss": 1.0})  # no timing in this record
  _write_metrics(tmp_path / "run", records)
  assert smoke_times.median_data_wait(tmp_path / "run") == pytest.approx(0.02)


def test_median_data_wait_of_a_short_run_keeps_every_window(tmp_path):
  _write_metrics(tmp_path / "run", [{"step": 1, "time": 0.0, "split": "train", "data_wait_fraction": 0.25},
                                    {"step": 2, "time": 0.0, "split": "train", "data_wait_fraction": 0.75}])
  assert smoke_times.median_data_wait(tmp_path / "run") == pytest.approx(0.5)
  assert smoke_times.median_data_wait(tmp_path / "missing") is None


def test_an_unknown_config_is_one_error_line(capsys):
  assert smoke_times.main(["--configs", "demo", "no_such_task"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no config no_such_task" in err[0]
