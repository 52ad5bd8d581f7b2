"""Config traps refused before anything runs, and the run plan's warmup units."""

from __future__ import annotations

import pytest

from hrm_jax import config as config_lib
from hrm_jax.data import format as data_format
from hrm_jax.training import setup


def _with(**flat):
  c = config_lib.base_config()
  c.update_from_flattened_dict(flat)
  return c


@pytest.mark.parametrize("flat, fragment", [
    ({"global_batch_size": 0}, "global_batch_size=0: must be a positive"),
    ({"global_batch_size": -4}, "global_batch_size=-4: must be a positive"),
    ({"optimizer.lr": float("nan")}, "optimizer.lr=nan: must be a finite number"),
    ({"optimizer.grad_clip_norm": float("inf")}, "optimizer.grad_clip_norm=inf"),
    ({"optimizer.restart_every_steps": 100}, "warm restarts do nothing with lr_min_ratio=1.0"),
    ({"optimizer.warmup_epochs": 1.0, "optimizer.warmup_samples": 10}, "give the warmup in one unit"),
    ({"loss.label_smoothing": float("nan")}, "loss.label_smoothing=nan"),
    ({"eval.evaluator": "bleu"}, "eval.evaluator='bleu'"),
    ({"log.status_every_s": 60.0}, "log.status_every_s=60.0: must lie in (0, 30]"),
    ({"checkpoint.every_steps": 0}, "checkpoint.every_steps=0"),
])
def test_config_traps_are_named(flat, fragment):
  found = config_lib.problems(_with(**flat))
  assert len(found) == 1 and fragment in found[0], found


def test_defaults_and_every_task_config_have_no_problem():
  assert config_lib.problems(config_lib.base_config()) == []
  assert config_lib.problems(_with(**{"optimizer.restart_every_steps": 100, "optimizer.lr_min_ratio": 0.1})) == []


def _meta(total_groups: int = 1000) -> data_format.DatasetMetadata:
  return data_format.DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11,
                                     seq_len=81, num_puzzle_identifiers=2, total_groups=total_groups,
                                     mean_puzzle_examples=1.0, sets=["all"])


def test_warmup_epochs_alone_replaces_the_default_warmup_steps():
  c = _with(**{"global_batch_size": 100, "num_steps": 500, "optimizer.warmup_epochs": 2.0})
  assert c.optimizer.warmup_steps == 2000  # the default is still set...
  assert setup.plan_run(c, _meta()).warmup_steps == 20  # ...and 2 epochs of 10 steps replace it
  c = _with(**{"global_batch_size": 100, "num_steps": 500, "optimizer.warmup_samples": 250})
  assert setup.plan_run(c, _meta()).warmup_steps == 3
  assert setup.plan_run(_with(**{"num_steps": 5}), _meta()).warmup_steps == 2000


def test_empty_training_split_is_a_training_error():
  with pytest.raises(setup.TrainingError, match="training split .* is empty"):
    setup.plan_run(_with(**{"num_steps": 5}), _meta(total_groups=0))


def test_class_weights_of_the_wrong_length_are_refused():
  c = _with(**{"loss.class_weights": (1.0, 2.0)})
  with pytest.raises(setup.TrainingError, match="2 weights, the dataset has 11 token ids"):
    setup.loss_config_from(c, vocab_size=11)
  assert setup.loss_config_from(_with(**{"loss.class_weights": (1.0,) * 11}), 11).class_weights == (1.0,) * 11
