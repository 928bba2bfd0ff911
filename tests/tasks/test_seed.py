"""Tests for attn.seed_tasks: the cue, two-cue and word-sense tagging tasks and `sense_shift`."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from attn import tasks
from attn.tasks import seed as seed_tasks

NAMES = ("cue", "two_cue", "word_sense")


def make(name: str, **fields) -> seed_tasks.SeedTask:
  config = dict(name=name, min_length=10, max_length=14, min_distance=5, eval_examples=40)
  config.update(fields)
  return tasks.make_task(ml_collections.ConfigDict(config), seed=fields.pop("seed", 0))


def key_positions(batch) -> np.ndarray:
  """The one scored position of each row."""
  assert np.all(batch["weights"].sum(-1) == 1)
  return batch["weights"].argmax(-1)


@pytest.mark.parametrize("name", NAMES)
def test_batches_have_the_tagging_layout(name):
  task = make(name)
  assert task.kind == "tagging" and task.main_metric == "accuracy"
  assert task.num_classes == len(task.class_names) and task.class_names[0] == "O"
  assert task.num_classes == {"cue": 4, "two_cue": 5, "word_sense": 7}[name]
  batch = task.train_batch(0, 8)
  assert set(batch) == {"tokens", "tags", "weights"}
  for value in batch.values():
    assert value.shape == (8, 14)
  assert batch["tokens"].dtype == np.int32 and batch["weights"].dtype == np.float32
  lengths = (batch["tokens"] != task.vocab.pad_id).sum(-1)
  assert np.all((lengths >= 10) & (lengths <= 14))
  assert np.all(batch["tokens"][np.arange(14) >= lengths[:, None]] == task.vocab.pad_id)
  assert np.all(batch["tokens"][np.arange(14) < lengths[:, None]] >= len(tasks.SPECIALS))
  # Only the key word is scored, and it carries a real class; every other tag is O.
  rows = np.arange(8)
  keys = key_positions(batch)
  assert np.all(batch["tags"][rows, keys] > 0)
  assert batch["tags"].sum() == batch["tags"][rows, keys].sum()


@pytest.mark.parametrize("name", NAMES)
def test_train_batch_is_a_pure_function_of_the_step(name):
  task = make(name)
  first, again = task.train_batch(7, 6), task.train_batch(7, 6)
  for k in first:
    np.testing.assert_array_equal(first[k], again[k])
  assert not np.array_equal(task.train_batch(8, 6)["tokens"], first["tokens"])
  other_seed = make(name, seed=1).train_batch(7, 6)
  assert not np.array_equal(other_seed["tokens"], first["tokens"])
  # Evaluation data is its own stream: never the first training batch.
  evals = task.eval_batches(16)
  assert not np.array_equal(evals[0]["tokens"][:6], first["tokens"])


@pytest.mark.parametrize("name", NAMES)
def test_eval_batches_cover_the_eval_set_once(name):
  task = make(name)
  batches = task.eval_batches(16)
  assert len(batches) == 3  # 40 examples: 16 + 16 + 8 real rows and 8 all-pad rows.
  assert sum(float(b["weights"].sum()) for b in batches) == 40
  assert np.all(batches[-1]["tokens"][8:] == 0) and np.all(batches[-1]["weights"][8:] == 0)
  again = task.eval_batches(16)
  np.testing.assert_array_equal(again[1]["tokens"], batches[1]["tokens"])


def _cue_words(task, words):
  cues = {w for ws in seed_tasks.CUE_WORDS.values() for w in ws} if task.name == "cue" else set()
  if task.name == "two_cue":
    cues = {w for d in (seed_tasks.KIND_WORDS, seed_tasks.HOME_WORDS) for ws in d.values() for w in ws}
  if task.name == "word_sense":
    cues = {w for senses in seed_tasks.SENSE_WORDS.values() for ws in senses.values() for w in ws}
  return [(i, w) for i, w in enumerate(words) if w in cues]


@pytest.mark.parametrize("name", NAMES)
def test_the_cue_words_decide_the_tag_and_stand_far_from_the_key(name):
  task = make(name, eval_examples=200)
  examples = task._examples(np.random.default_rng(3), 200)
  for tokens, tags, weights in zip(
    examples["tokens"], examples["tags"], examples["weights"], strict=True
  ):
    words = task.vocab.decode(tokens)
    key = int(weights.argmax())
    tag = task.class_names[tags[key]]
    cues = _cue_words(task, words)
    assert cues and all(abs(i - key) >= 5 for i, _ in cues)
    cue_words = [w for _, w in cues]
    if name == "cue":
      assert len(cues) == 1 and cue_words[0] in seed_tasks.CUE_WORDS[tag]
      assert words[key] in seed_tasks.NAMES
    elif name == "two_cue":
      kind, home = tag.split("_")
      assert len(cues) == 2
      assert cue_words[0] in seed_tasks.KIND_WORDS[kind] or cue_words[1] in seed_tasks.KIND_WORDS[kind]
      assert any(w in seed_tasks.HOME_WORDS[home] for w in cue_words)
    else:
      word, sense = tag.split("/")
      assert words[key] == word and 1 <= len(cues) <= 2
      assert all(w in seed_tasks.SENSE_WORDS[word][sense] for w in cue_words)
    # Everything else is a filler, which says nothing about the tag.
    others = {w for i, w in enumerate(words) if i != key and (i, w) not in cues}
    assert others <= set(seed_tasks.FILLERS)


def test_labels_are_balanced_and_independent_of_the_key_position():
  # A model that ignores the cue can only guess: each tag about equally often, and at every position.
  task = make("cue", eval_examples=900)
  examples = task._examples(np.random.default_rng(0), 900)
  keys = examples["weights"].argmax(-1)
  labels = examples["tags"][np.arange(900), keys]
  counts = np.bincount(labels, minlength=4)[1:]
  assert counts.min() > 250
  early, late = labels[keys < 5], labels[keys >= 9]
  for part in (early, late):
    assert np.bincount(part, minlength=4)[1:].min() > len(part) / 3 - 40


def test_encode_and_decode_round_trip():
  task = make("cue")
  ids = task.encode_text("Roopali went to the market she is a cow")
  assert task.decode_ids(ids) == "roopali went to the market she is a cow"
  assert task.encode_text("zebra")[0] == task.vocab.unk_id


@pytest.mark.parametrize(
  "fields,field",
  [
    ({"min_length": 0}, "min_length"),
    ({"min_length": 20, "max_length": 14}, "min_length"),
    ({"min_distance": 0}, "min_distance"),
    ({"min_distance": 10}, "min_length"),  # No room for a cue 10 positions away in 10 words.
    ({"eval_examples": -1}, "eval_examples"),
    ({"max_length": 12.5}, "max_length"),
  ],
)
def test_bad_fields_name_the_config_field(fields, field):
  with pytest.raises(ValueError, match=rf"^config\.task\.{field}:"):
    make("cue", **fields)


def test_word_sense_max_context_is_checked():
  with pytest.raises(ValueError, match=r"^config\.task\.max_context:"):
    make("word_sense", max_context=0)
  with pytest.raises(ValueError, match=r"^config\.task\.min_length:"):
    make("word_sense", max_context=6)  # 5 + 6 > 10 words.


def test_defaults_fill_missing_fields():
  task = tasks.make_task(ml_collections.ConfigDict({"name": "two_cue"}))
  assert (task.min_length, task.max_length, task.min_distance) == (12, 24, 6)


def test_sense_shift_identical_before_and_different_after_attention():
  shift = seed_tasks.sense_shift()
  assert shift["before"] == 0.0
  assert shift["after"] > 0.01
  assert 0 < shift["context_a"] < 1 and 0 < shift["context_b"] < 1
  # Same sentence twice: no context difference, so no difference after attention either.
  same = seed_tasks.sense_shift("the bank of the river", "the bank of the river")
  assert same["after"] == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="bank"):
    seed_tasks.sense_shift("the river", "the state bank")
