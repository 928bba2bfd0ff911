"""Tests for attn/runs/metrics.py: which way each metric name in use improves."""

from __future__ import annotations

import math

import pytest

from attn.runs import metrics

HIGHER = [
  "accuracy",
  "sequence_accuracy",
  "f1",
  "tuned_f1",
  "token_f1",
  "test_f1",
  "test_tuned_f1",
  "test_f1_PER",
  "test_f1_person",
  "bleu",
  "test_bleu_beam",
  "test_bleu_greedy",
  "precision",
  "test_precision",
  "recall",
  "test_recall",
  "Accuracy",  # Any case.
]
LOWER = [
  "loss",
  "val_loss",
  "loss_at_128",
  "nll",
  "perplexity",
  "bits_per_char",
  "o_margin",
  "max_attention_logit",
  "seed_param_norm",  # A name the rule does not know.
]


@pytest.mark.parametrize("metric", HIGHER)
def test_higher_is_better(metric):
  assert metrics.higher_is_better(metric) is True
  assert metrics.score_sign(metric) == 1.0
  assert metrics.better(metric, 0.9, 0.5) and not metrics.better(metric, 0.5, 0.9)


@pytest.mark.parametrize("metric", LOWER)
def test_lower_is_better(metric):
  assert metrics.higher_is_better(metric) is False
  assert metrics.score_sign(metric) == -1.0
  assert metrics.better(metric, 0.5, 0.9) and not metrics.better(metric, 0.9, 0.5)


def test_score_sign_makes_larger_better():
  for metric, values in (("loss", [3.0, 1.0, 2.0]), ("accuracy", [0.1, 0.9, 0.5])):
    scores = [metrics.score_sign(metric) * v for v in values]
    assert scores.index(max(scores)) == 1


def test_better_is_strict_and_nan_never_wins():
  assert not metrics.better("accuracy", 0.5, 0.5) and not metrics.better("loss", 1.0, 1.0)
  for metric in ("accuracy", "loss"):
    assert not metrics.better(metric, math.nan, 1.0) and metrics.better(metric, 1.0, math.nan)
    assert not metrics.better(metric, math.nan, math.nan)
