"""Tests for attn.tasks.base: the vocabulary, split_batches, and the Task protocol (every registered
task satisfies it; a class missing a member does not)."""

from __future__ import annotations

import numpy as np
import pytest

from attn import tasks
from attn.tasks import SPECIALS, Vocabulary, base
from attn.tasks.base import Task

WORDS = ("a", "b", "c")


def make_vocab() -> Vocabulary:
  return Vocabulary((*SPECIALS, *WORDS))


def test_vocabulary_ids_of_specials():
  vocab = make_vocab()
  assert len(vocab) == 4 + len(WORDS)
  assert [vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id] == [0, 1, 2, 3]
  assert vocab.tokens[:4] == ("<pad>", "<bos>", "<eos>", "<unk>")


@pytest.mark.parametrize(
  "tokens",
  [
    ("a", "b"),
    ("<bos>", "<pad>", "<eos>", "<unk>", "a"),
    ("<pad>", "<bos>", "<eos>"),
    ("a", "<pad>", "<bos>", "<eos>", "<unk>"),
  ],
)
def test_vocabulary_needs_specials_first(tokens):
  with pytest.raises(ValueError, match="first tokens must be"):
    Vocabulary(tokens)


def test_vocabulary_encode_decode_round_trip():
  vocab = make_vocab()
  words = ["c", "a", "b", "a"]
  ids = vocab.encode(words)
  assert ids.dtype == np.int32
  assert ids.tolist() == [6, 4, 5, 4]
  assert vocab.decode(ids) == words


def test_vocabulary_unknown_word_is_unk():
  vocab = make_vocab()
  assert vocab.encode(["a", "zzz", "<unk>"]).tolist() == [4, vocab.unk_id, vocab.unk_id]
  assert vocab.decode([4, 3]) == ["a", "<unk>"]
  assert vocab.decode([4, 99, -1]) == ["a", "<unk>", "<unk>"]  # Ids outside the vocabulary.


def test_vocabulary_decode_strips_pad_bos_and_stops_at_eos():
  vocab = make_vocab()
  ids = [1, 4, 0, 5, 2, 6, 0]
  assert vocab.decode(ids) == ["a", "b"]
  assert vocab.decode(np.asarray(ids, np.int32)) == ["a", "b"]
  assert vocab.decode(ids, strip=False) == ["<bos>", "a", "<pad>", "b", "<eos>", "c", "<pad>"]
  assert vocab.decode([]) == []
  assert vocab.decode([2, 4]) == []


# SyntheticSeq2Seq


def test_split_batches_adds_weights_and_pads():
  examples = {
    "src": np.arange(1, 11, dtype=np.int32).reshape(5, 2),
    "tgt_out": np.array([[5, 2, 0], [6, 7, 2], [2, 0, 0], [5, 5, 2], [4, 2, 0]], np.int32),
  }
  batches = base.split_batches(examples, 2)
  assert len(batches) == 3
  np.testing.assert_array_equal(batches[0]["weights"], [[1, 1, 0], [1, 1, 1]])
  np.testing.assert_array_equal(batches[2]["src"], [[9, 10], [0, 0]])
  np.testing.assert_array_equal(batches[2]["weights"], [[1, 1, 0], [0, 0, 0]])
  assert batches[2]["weights"].dtype == np.float32
  exact = base.split_batches(examples, 5)
  assert len(exact) == 1 and exact[0]["src"].shape == (5, 2)


def test_split_batches_tagging_and_given_weights():
  tokens = np.array([[4, 5, 0], [6, 0, 0], [7, 8, 9]], np.int32)
  batches = base.split_batches({"tokens": tokens, "tags": tokens % 2}, 2)
  np.testing.assert_array_equal(batches[0]["weights"], [[1, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(batches[1]["weights"], [[1, 1, 1], [0, 0, 0]])
  weights = np.full((3, 3), 0.5, np.float32)
  (batch,) = base.split_batches({"tokens": tokens, "weights": weights}, 3)
  np.testing.assert_array_equal(batch["weights"], weights)


# make_task


# The Task protocol


def test_every_shipped_task_class_is_a_task():
  from attn.tasks import ner, seed, synthetic, translation

  for cls in (synthetic.SyntheticSeq2Seq, seed.SeedTask, ner.NerTask, translation.Translation):
    assert Task in cls.__mro__, cls  # (issubclass refuses protocols with data members.)
    for member in ("kind", "train_batch", "eval_batches", "encode_text", "decode_ids", "score", "save"):
      assert hasattr(cls, member), (cls, member)


def test_protocol_defaults_and_a_class_missing_a_member():
  task = tasks.make_task(_synthetic_config())
  assert isinstance(task, Task)
  assert task.main_metric == "sequence_accuracy"  # The default for seq2seq.
  assert task.score(None, 8, final=True) == {}  # No task-computed metrics by default.
  assert task.save("/nonexistent") is None  # Nothing to save by default.

  class NoBatches:
    kind = "seq2seq"
    vocab = make_vocab()
    num_classes = 0
    class_names = ()

  assert not isinstance(NoBatches(), Task)


def _synthetic_config():
  import ml_collections

  return ml_collections.ConfigDict(
    {"name": "copy", "num_symbols": 5, "min_length": 2, "max_length": 4, "eval_examples": 8}
  )


def test_read_lines_skips_a_byte_order_mark_and_names_bad_bytes_by_line(tmp_path):
  path = tmp_path / "data.txt"
  path.write_bytes(b"\xef\xbb\xbffirst\r\nsecond\n")
  assert base.read_lines(str(path)) == ["first", "second"]
  path.write_bytes(b"fine\nbad \xff byte\n")
  with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 \(invalid start byte at byte 4\)$"):
    base.read_lines(str(path))
