"""`python -m hrm_jax.evaluate`: the original's metrics on its own checkpoint, a demo run's own evaluation
reproduced exactly, inference-time scaling and early halting, and one-line errors for bad input."""

import json
import pathlib

import numpy as np
import pytest

from hrm_jax import evaluate as evaluate_cli
from hrm_jax.data import format as data_format
from tools import tolerance

import demo_run



def _fixture_dataset(reference: dict, root: pathlib.Path) -> pathlib.Path:
  """The fixture's eval batch (4 rows, one fully unsupervised) as a dataset in the original's format."""
  inputs, labels = reference["inputs"], reference["labels"]
  assert not np.any(labels == 0)  # so 0 can stand for the ignored label
  meta = data_format.DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11,
                                     seq_len=16, num_puzzle_identifiers=3, total_groups=4,
                                     mean_puzzle_examples=1.0, sets=["all"])
  arrays = {"inputs": inputs.astype(np.uint8), "labels": np.where(labels < 0, 0, labels).astype(np.uint8),
            "puzzle_identifiers": reference["puzzle_identifiers"].astype(np.int32),
            "puzzle_indices": np.arange(5, dtype=np.int32), "group_indices": np.arange(5, dtype=np.int32)}
  for split in ("train", "test"):
    data_format.write_split(root, split, meta, {"all": arrays})
  data_format.write_identifiers(root, ["<blank>", "p1", "p2"])
  return root


def _evaluate(capsys, *args) -> tuple[int, dict | None, str, str]:
  code = evaluate_cli.main([*map(str, args), "--no-progress"])
  out, err = capsys.readouterr()
  report = None
  if "--out" in args:
    path = pathlib.Path(args[list(args).index("--out") + 1]) / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else None
  return code, report, out, err


def test_the_originals_checkpoint_reproduces_the_fixtures_eval_metrics(original_fixture_dir, tmp_path, capsys):
  fixture = original_fixture_dir / "float32"
  with np.load(fixture / "reference.npz") as npz:
    reference = {k: npz[k] for k in npz.files}
  data = _fixture_dataset(reference, tmp_path / "data")
  code, report, out, err = _evaluate(capsys, "--checkpoint", fixture / "checkpoint_dir" / "step_0", "--data", data,
                                     "--out", tmp_path / "out", "--batch-size", 4)
  assert code == 0, err
  last = int(reference["eval_num_steps"]) - 1
  raw = lambda name: float(reference[f"eval_step{last}_metric_{name}"])
  count = raw("count")
  assert report["count"] == count == 3  # the fully unsupervised row is not counted
  # Count-based metrics are exact; losses and the token-accuracy sum within the parity tolerance (tools.tolerance).
  policy = tolerance.measure(fixture)
  for name in ("exact_accuracy", "q_halt_accuracy", "steps"):
    assert report[name] == raw(name) / count, name
  for name in ("accuracy", "lm_loss", "q_halt_loss"):
    tol = policy.tolerance(f"eval_step{last}_metric_{name}")
    assert abs(report[name] - raw(name) / count) <= tol * abs(raw(name) / count), name
  assert report["halt_max_steps"] == int(reference["eval_num_steps"])
  assert out.splitlines()[1].startswith("exact accuracy")  # the headline comes first
  predictions = np.load(tmp_path / "out" / "predictions.npz")
  np.testing.assert_array_equal(predictions["preds"], np.argmax(reference[f"eval_step{last}_logits"], -1))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return demo_run.trained_demo(tmp_path_factory)


def test_a_finished_demo_run_reproduces_its_own_last_full_evaluation_exactly(demo, tmp_path):
  workdir, data = demo
  proc = demo_run.run_cli("hrm_jax.evaluate", "--checkpoint", workdir, "--data", data, "--out", tmp_path,
                          "--step", demo_run.SHORT_STEPS, "--no-progress")
  assert proc.returncode == 0, proc.stderr
  report = json.loads((tmp_path / "report.json").read_text())
  logged = demo_run.last_full_eval(workdir)
  assert logged["step"] == report["step"] == demo_run.SHORT_STEPS
  for name in ("count", "exact_accuracy", "accuracy", "lm_loss", "q_halt_accuracy", "q_halt_loss", "steps"):
    assert report[name] == logged[name], name  # bit for bit: same program, same batches
  for digit in range(1, 5):  # per-class accuracy under names: token d+1 is digit d
    assert report["per_class_accuracy"][f"digit {digit}"] == logged[f"class_accuracy/{digit + 1}"]
  assert 0.2 < report["exact_accuracy"] < 1.0
  predictions = np.load(tmp_path / "predictions.npz")
  assert predictions["preds"].shape == (256, 16) and set(predictions.files) >= {"inputs", "labels", "q_halt_logits"}


def test_halt_max_steps_and_early_halt_change_the_segments_run(demo, tmp_path, capsys):
  workdir, data = demo
  reports = {}
  for name, flags in {"trained": [], "scaled": ["--halt-max-steps", 8],
                      "early": ["--halt-max-steps", 8, "--early-halt"]}.items():
    code, reports[name], out, err = _evaluate(capsys, "--checkpoint", workdir, "--data", data, "--out",
                                              tmp_path / name, "--batch-size", 64, *flags)
    assert code == 0, err
  trained, scaled, early = reports["trained"], reports["scaled"], reports["early"]
  # The original's evaluation runs every segment: 4 batches x halt_max_steps.
  assert (trained["segments_run"], trained["steps"]) == (4 * 4, 4.0)
  assert (scaled["segments_run"], scaled["steps"]) == (4 * 8, 8.0)
  # Early halting stops each row at its first q_halt > q_continue, so rows use fewer segments on average.
  assert early["steps"] < scaled["steps"]
  assert early["segments_run"] <= scaled["segments_run"]
  per_row = np.load(tmp_path / "early" / "predictions.npz")["steps"]
  assert per_row.min() >= 1 and per_row.max() <= 8 and per_row.mean() == pytest.approx(early["steps"])
  assert "early halting" in out and "fewer" in out


@pytest.mark.parametrize("problem", ["missing", "half_written", "no_checkpoint_dir", "vocab", "flags"])
def test_bad_checkpoints_get_one_line_and_exit_1(problem, demo, original_fixture_dir, tmp_path, capsys):
  workdir, data = demo
  checkpoint, extra = workdir, []
  if problem == "missing":
    checkpoint = tmp_path / "nothing_here"
    expect = "does not exist"
  elif problem == "half_written":
    run = tmp_path / "killed" / "checkpoints"
    (run / "250.orbax-checkpoint-tmp").mkdir(parents=True)
    checkpoint, expect = tmp_path / "killed", "half-written"
  elif problem == "no_checkpoint_dir":
    (tmp_path / "plain").mkdir()
    checkpoint, expect = tmp_path / "plain", "not an hrm_jax run"
  elif problem == "vocab":
    # The original's tiny checkpoint (vocab 11, 16 positions) on the demo's data (vocab 6, 16 positions).
    checkpoint = original_fixture_dir / "float32" / "checkpoint_dir" / "step_0"
    expect = "vocab_size 11 vs the data's 6"
  else:
    extra, expect = ["--set", "num_heads=8"], "num_heads: "
  code = evaluate_cli.main(["--checkpoint", str(checkpoint), "--data", str(data), "--no-progress", *extra])
  out, err = capsys.readouterr()
  assert code == 1
  assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
  assert expect in err, err


def test_a_model_for_other_sequences_is_refused_naming_both_lengths(demo, tmp_path, capsys):
  workdir, _ = demo  # the demo model: vocab 6, 16 learned positions
  rows = np.random.default_rng(0).integers(1, 6, (4, 20)).astype(np.uint8)
  meta = data_format.DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=20,
                                     num_puzzle_identifiers=1, total_groups=4, mean_puzzle_examples=1.0,
                                     sets=["all"])
  data_format.write_split(tmp_path, "test", meta, {"all": {
      "inputs": rows, "labels": rows, "puzzle_identifiers": np.zeros(4, np.int32),
      "puzzle_indices": np.arange(5, dtype=np.int32), "group_indices": np.arange(5, dtype=np.int32)}})
  code = evaluate_cli.main(["--checkpoint", str(workdir), "--data", str(tmp_path), "--no-progress"])
  err = capsys.readouterr().err
  assert code == 1 and len(err.strip().splitlines()) == 1, err
  assert "sequences of 16 tokens, the data has 20" in err, err


def test_a_missing_dataset_is_one_line(tmp_path, capsys):
  code = evaluate_cli.main(["--checkpoint", str(tmp_path), "--data", str(tmp_path / "none"), "--no-progress"])
  err = capsys.readouterr().err
  assert code == 1 and len(err.strip().splitlines()) == 1 and "does not exist" in err
