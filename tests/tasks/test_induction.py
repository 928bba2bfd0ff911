"""Tests for attn/tasks/induction.py: the repeated segment is where the examples say, the eval
weights cover exactly the predictable second-copy tokens, a hand-built induction head scores 1 and a
previous-token head 0, and bad fields are one line."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from attn.tasks import induction, registry
from attn.tasks.base import stream_rng


def _task(**fields):
  config = ml_collections.ConfigDict({"name": "induction", **fields})
  return registry.make_task(config, seed=3)


def test_examples_repeat_a_segment_at_a_varying_offset():
  task = _task(length=24, min_segment=3, max_segment=6, eval_examples=40)
  batch, second, start, seg = task.examples(stream_rng(0, 1, 0), 200)
  tokens, targets = batch["tokens"], batch["targets"]
  np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])  # Next-token targets.
  assert (tokens[:, 0] == task.vocab.bos_id).all()
  assert seg.min() == 3 and seg.max() == 6 and len(set(start.tolist())) > 5
  for i in range(200):
    a, n = start[i], seg[i]
    np.testing.assert_array_equal(tokens[i, a + n : a + 2 * n], tokens[i, a : a + n])
    # Predictable: the targets inside the second copy after its first token.
    assert second[i].sum() == n - 1
    np.testing.assert_array_equal(targets[i][second[i]], tokens[i, a + 1 : a + n])
  weights = np.concatenate([b["weights"] for b in task.eval_batches(16)])
  assert weights.shape[1] == 24 and set(np.unique(weights)) <= {0.0, 1.0}
  _, second, _, _ = task._eval()
  np.testing.assert_array_equal(weights[:40], second)  # The rest is padding, weighted 0.
  assert weights[40:].sum() == 0
  assert (task.train_batch(0, 4)["weights"] == 1).all()


class _Heads:
  """A Predictor stand-in whose two layers' heads attend as built by hand."""

  def __init__(self, task, kind):
    self.task, self.kind = task, kind

  def self_attention_patterns(self, batch):
    B, T = batch["tokens"].shape
    _, _, start, seg = self.task._eval()
    out = np.zeros((2, B, 1, T, T), np.float32)
    out[..., 0] = 1.0  # Everything on BOS by default.
    for i in range(B):
      for q in range(T):
        if self.kind == "induction" and start[i] + seg[i] <= q < start[i] + 2 * seg[i]:
          out[1, i, 0, q] = 0.0
          out[1, i, 0, q, q - seg[i] + 1] = 1.0
        if self.kind == "previous" and q > 0:
          out[:, i, 0, q] = 0.0
          out[:, i, 0, q, q - 1] = 1.0
    return out


def test_an_induction_head_scores_one_and_a_previous_token_head_zero():
  task = _task(eval_examples=20, score_examples=10)
  scores = task.score(_Heads(task, "induction"), 8, final=False)
  assert scores["induction_L1H0"] == pytest.approx(1.0) and scores["induction_L0H0"] == pytest.approx(
    0.0
  )
  assert scores["induction_max"] == pytest.approx(1.0)
  assert task.score(_Heads(task, "previous"), 8, final=False)["induction_max"] == pytest.approx(0.0)


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"length": 0}, r"^config\.task\.length: must be an int >= 1"),
    ({"min_segment": 1}, r"^config\.task\.min_segment: must be at least 2"),
    ({"min_segment": 9, "max_segment": 8}, r"^config\.task\.min_segment: .* at most max_segment=8"),
    ({"length": 20, "max_segment": 10}, r"^config\.task\.max_segment: two copies of 10 tokens"),
  ],
)
def test_bad_fields_are_one_line(fields, message):
  with pytest.raises(ValueError, match=message):
    _task(**fields)


def test_the_registry_builds_it():
  assert "induction" in registry.TASK_NAMES
  assert isinstance(_task(), induction.RepeatedSegments)


@pytest.mark.slow  # Trains.
def test_the_smoke_preset_trains_and_logs_each_heads_induction_score(tmp_path):
  import math

  from attn import train
  from experiments import induction as experiment

  final = train.train_and_evaluate(experiment.get_config("smoke"), str(tmp_path))
  heads = [k for k in final if k.startswith("induction_L")]
  assert len(heads) == 2 * 2  # Layers x heads.
  assert all(0.0 <= final[k][0] <= 1.0 for k in heads) and math.isfinite(final["loss"][0])
  assert final["induction_max"][0] == pytest.approx(max(final[k][0] for k in heads))
