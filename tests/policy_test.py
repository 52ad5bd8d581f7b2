"""The loop's policies as units: evaluation gating, early stop, best, checkpoint timing, divergence."""

from __future__ import annotations

import math

from hrm_jax.config import base_config
from hrm_jax.training.policy import CheckpointPolicy, EvalPolicy, EvalRecord, divergence


def _policy(**changes) -> EvalPolicy:
  fields = dict(every_steps=10, subset_size=64, full_every_steps=100, full_on_fast_gain=0.05,
                early_stop_patience=2)
  fields.update(changes)
  return EvalPolicy(**fields)


def test_evaluations_are_due_on_their_interval_and_at_the_end():
  policy = _policy()
  assert [s for s in range(1, 35) if policy.due(s, is_last=False)] == [10, 20, 30]
  assert policy.due(33, is_last=True)
  assert not _policy(every_steps=0).due(10, is_last=False)


def test_fast_subset_except_at_the_end_and_without_a_subset():
  assert _policy().runs_fast(is_last=False)
  assert not _policy().runs_fast(is_last=True)
  assert not _policy(subset_size=0).runs_fast(is_last=False)


def test_full_evaluation_on_an_absolute_gain_an_interval_or_the_end():
  policy = _policy()
  record = EvalRecord(best_fast=0.50, last_full_step=40)
  assert not policy.runs_full(record, 50, False, fast_exact=0.54)  # +4 points: below the 5-point gain
  assert policy.runs_full(record, 50, False, fast_exact=0.55)  # +5 points (absolute, not 10% relative)
  assert policy.runs_full(record, 140, False, fast_exact=0.0)  # full_every_steps since the last full one
  assert policy.runs_full(record, 50, True, fast_exact=0.0)
  assert policy.runs_full(record, 50, False, fast_exact=None)  # no subset: every evaluation is full
  assert not _policy(full_every_steps=0).runs_full(record, 10_000, False, fast_exact=0.0)


def test_record_tracks_best_and_counts_evaluations_without_a_gain_to_an_early_stop():
  policy = _policy()
  record = EvalPolicy.after_fast(EvalRecord(), 0.3)
  assert record.best_fast == 0.3 and EvalPolicy.after_fast(record, 0.1).best_fast == 0.3
  record = policy.after_full(record, 10, 0.2)
  assert (record.best_exact, record.best_step, record.evals_without_improvement) == (0.2, 10, 0)
  record = policy.after_full(record, 20, 0.2)  # equal is not better
  assert not policy.stops_early(record)
  record = policy.after_full(record, 30, 0.1)
  assert (record.best_step, record.last_full_step, record.evals_without_improvement) == (10, 30, 2)
  assert policy.stops_early(record)
  assert not _policy(early_stop_patience=0).stops_early(record)
  assert policy.after_full(record, 40, 0.25).evals_without_improvement == 0


def test_record_survives_checkpoint_metadata_and_old_metadata_defaults():
  record = EvalRecord(best_fast=0.4, last_full_step=30, best_exact=0.2, best_step=20, evals_without_improvement=1)
  assert EvalRecord.from_metadata(record.to_metadata(), start_step=99) == record
  assert EvalRecord.from_metadata({}, start_step=7) == EvalRecord(last_full_step=7)


def test_policy_from_config_uses_the_absolute_gain_key():
  config = base_config()
  config.eval.full_on_fast_gain = 0.02
  assert EvalPolicy.from_config(config, every_steps=5).full_on_fast_gain == 0.02


def test_checkpoints_periodically_and_on_every_event():
  policy = CheckpointPolicy(every_steps=4)
  assert [s for s in range(1, 13) if policy.due(s, is_last=False, full_eval=False, stopping=False)] == [4, 8, 12]
  assert policy.due(5, is_last=True, full_eval=False, stopping=False)
  assert policy.due(5, is_last=False, full_eval=True, stopping=False)
  assert policy.due(5, is_last=False, full_eval=False, stopping=True)


def test_divergence_names_what_is_not_finite_including_huge_weights():
  assert divergence({"loss": 1.0, "grad_norm": 2.0}, 3.0) is None
  assert divergence({"loss": math.nan, "grad_norm": 2.0}) == "loss=nan"
  assert "grad_norm=inf" in divergence({"loss": 1.0, "grad_norm": math.inf})
  # Weights of 5e29 (what the issue's "last good" checkpoint held): their float32 norm is inf.
  import numpy as np  # pylint: disable=import-outside-toplevel
  norm = float(np.sqrt(np.sum(np.full(4, 5e29, np.float32) ** 2)))
  assert divergence({"loss": 1.0}, norm) == "weights' global norm=inf"
