"""Tests for attn/train/objectives.py: which objective a task kind gets, the inputs each takes from a
batch, the direction of its main metric (the one rule compare uses), and that padding rows count for
nothing in the loss and eval sums."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from attn import train
from attn.runs import metrics
from attn.train import objectives
from tests.train.common import smoke_config


def test_tagging_inputs_carry_optional_features_and_characters():
  # A tagging task's batch may hold hashed per-token features [B, T, F] and characters [B, T, W]
  # (attn.tasks.ner): they go to the tagger as its second and third inputs.
  tagging = objectives.Tagging("f1")
  batch = {"tokens": np.ones((2, 3), np.int32), "tags": np.zeros((2, 3), np.int32)}
  inputs, targets = tagging.inputs_and_targets(batch)
  assert len(inputs) == 1 and inputs[0] is batch["tokens"] and targets is batch["tags"]
  batch["features"] = np.ones((2, 3, 4), np.int32)
  inputs, _ = tagging.inputs_and_targets(batch)
  assert len(inputs) == 2 and inputs[1] is batch["features"]
  del batch["features"]
  batch["chars"] = np.ones((2, 3, 5), np.int32)
  inputs, _ = tagging.inputs_and_targets(batch)
  assert len(inputs) == 3 and inputs[1] is None and inputs[2] is batch["chars"]


def _kind_of(config) -> type:
  return type(train.build_run(config).objective)


def test_each_task_kind_gets_its_objective():
  from experiments import cue

  assert _kind_of(smoke_config()) is objectives.Seq2Seq
  tagger = cue.get_config("smoke")
  assert _kind_of(tagger) is objectives.Tagging
  tagger.model.crf = "free"
  assert _kind_of(tagger) is objectives.CRFTagging
  tagger.model.crf = "none"
  tagger.objective = "denoise"
  assert _kind_of(tagger) is objectives.Denoising


@pytest.mark.parametrize(
  ("metric", "sign"),
  [("sequence_accuracy", 1.0), ("accuracy", 1.0), ("f1", 1.0), ("loss", -1.0), ("bits_per_char", -1.0)],
)
def test_the_main_metrics_direction_is_the_runs_rule(metric, sign):
  objective = objectives.Seq2Seq(metric)
  assert objective.score_sign() == sign == metrics.score_sign(metric)
  assert objective.higher_is_better == metrics.higher_is_better(metric)


def test_padding_rows_count_for_nothing():
  """A batch padded with zero-weight rows gives the same loss sums, eval sums and metrics."""
  lm = objectives.LanguageModeling("loss")
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
  batch = {
    "tokens": np.ones((2, 4), np.int32),
    "targets": rng.integers(0, 7, (2, 4)).astype(np.int32),
    "weights": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32),
  }
  padded_logits = jnp.concatenate([logits, jnp.full((1, 4, 7), 9.0)])
  padded = {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
  sums = lm.eval_sums(logits, batch)
  padded_sums = lm.eval_sums(padded_logits, padded)
  for key in sums:
    np.testing.assert_allclose(padded_sums[key], sums[key], rtol=1e-6)
  reduced = lm.reduce(jax_tree_stack(sums))
  assert reduced["perplexity"][0] == pytest.approx(np.exp(reduced["loss"][0]), rel=1e-5)


def jax_tree_stack(sums: dict) -> dict:
  """One seed's sums with the leading seed axis `reduce` reads."""
  return {k: np.asarray(v)[None] for k, v in sums.items()}
