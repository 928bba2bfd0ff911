"""Tests for attn/tasks/denoise.py: the denoising wrapper corrupts only real words, targets the
originals at the corrupted positions alone, hides their features, is a pure function of the step,
reads a task's unlabelled text, and names a bad config field."""

import ml_collections
import numpy as np
import pytest

from attn.tasks import denoise, ner
from tests.tasks.test_ner import DEV, TEST, TRAIN, write


@pytest.fixture
def inner(tmp_path):
  folder = write(tmp_path / "data", {"train": TRAIN, "dev": DEV, "test": TEST})
  (tmp_path / "more.tsv").write_text("Alice visited Paris.\tAlice a visité Paris.\nHi!\tSalut !\n")
  task_config = ml_collections.ConfigDict(
    dict(name="ner", max_length=64, min_count=1, max_features=8, word_dropout=0.0, max_chars=4)
  )
  data = ml_collections.ConfigDict({"path": str(folder), "unlabelled": str(tmp_path / "more.tsv")})
  return ner.make_task(task_config, data, seed=0)


def test_batches_corrupt_real_words_and_target_the_originals(inner):
  task = denoise.DenoisingTask(inner, denoise.Corruption(rate=0.5), seed=0)
  assert task.kind == "tagging" and task.num_classes == len(inner.vocab)
  batch = task.train_batch(0, 16)
  original = inner.unlabelled_batch(0, 16)
  chosen = batch["weights"] > 0
  np.testing.assert_array_equal(batch["tags"], original["tokens"])
  assert chosen.any() and not chosen[original["tokens"] == inner.vocab.pad_id].any()
  np.testing.assert_array_equal(batch["tokens"][~chosen], original["tokens"][~chosen])
  assert (batch["tokens"][chosen] != original["tokens"][chosen]).mean() > 0.5  # Most are changed.
  assert not batch["features"][chosen].any() and not batch["chars"][chosen].any()
  np.testing.assert_array_equal(batch["features"][~chosen], original["features"][~chosen])
  again = task.train_batch(0, 16)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)  # A pure function of the step.
  assert not np.array_equal(task.train_batch(1, 16)["weights"], batch["weights"])
  for b in task.eval_batches(4):
    assert set(np.unique(b["weights"])) <= {0.0, 1.0}


def test_unlabelled_text_joins_the_training_sentences(inner):
  assert ("Alice", "visited", "Paris", ".") in inner.unlabelled and ("Hi", "!") in inner.unlabelled
  total = len(inner.splits["train"]) + len(inner.unlabelled)
  batch = inner.unlabelled_batch(0, total)
  lengths = sorted(int(n) for n in (batch["weights"] > 0).sum(-1))
  assert lengths == sorted([len(s.tokens) for s in inner.splits["train"]] + [4, 2])


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"rate": 0.0}, "config.denoise.rate: must be positive"),
    ({"rate": 1.5}, r"config.denoise.rate: must be a number in \[0, 1\]"),
    ({"random_fraction": 0.7, "keep_fraction": 0.7}, "must be at most 1"),
    ({"ratio": 0.1}, "config.denoise: unknown field"),
  ],
)
def test_bad_corruption_fields_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    denoise.corruption_from(ml_collections.ConfigDict(fields))
