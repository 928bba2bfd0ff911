"""Which way a metric improves: the one rule that compare tables (best = max or min over steps) and the
training loop (early stopping, keeping each seed's best parameters) both follow.

A metric is better when higher if its name contains, in any case, one of HIGHER_IS_BETTER_WORDS:
"accuracy", "f1", "bleu", "precision" or "recall". So are accuracy, sequence_accuracy, f1, tuned_f1,
test_f1, test_f1_PER (an entity type's F1), bleu, test_bleu_beam, precision, test_recall. Every other
metric is better when lower: loss, nll, perplexity, bits_per_char, val_loss, loss_at_128, and any
name this rule does not know.

A summary.json may record the direction of its main_metric, but readers ask this rule, not the file:
the rule is the one home of the direction, and files written before it, or by other code, agree with it
only through it.
"""

from __future__ import annotations

import math

# Metric names containing one of these (lower-cased) are better when higher; every other when lower.
HIGHER_IS_BETTER_WORDS = ("accuracy", "f1", "bleu", "precision", "recall")


def higher_is_better(metric: str) -> bool:
  """Whether larger values of `metric` are better: one of HIGHER_IS_BETTER_WORDS is in its name."""
  name = metric.lower()
  return any(word in name for word in HIGHER_IS_BETTER_WORDS)


def score_sign(metric: str) -> float:
  """+1.0 when `metric` is better when higher, else -1.0: the factor that makes larger better (a score
  to maximise, as early stopping keeps)."""
  return 1.0 if higher_is_better(metric) else -1.0


def better(metric: str, a: float, b: float) -> bool:
  """Whether value `a` of `metric` is strictly better than `b`. A NaN is never better, and any number is
  better than a NaN."""
  if math.isnan(a):
    return False
  if math.isnan(b):
    return True
  return a > b if higher_is_better(metric) else a < b
