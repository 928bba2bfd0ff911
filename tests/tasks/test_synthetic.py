"""Tests for attn.tasks.synthetic: the copy, reverse and sort tasks and their field checks."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from attn import tasks
from attn.tasks import SPECIALS, SyntheticSeq2Seq, synthetic


def task_config(**fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    {"name": "reverse", "num_symbols": 10, "min_length": 2, "max_length": 10, "eval_examples": 256}
  )
  config.update(fields)
  return config


def expected_target(name: str, symbols: list[int]) -> list[int]:
  return {"copy": symbols, "reverse": symbols[::-1], "sort": sorted(symbols)}[name]


def real_length(row: np.ndarray) -> int:
  return int(np.count_nonzero(row))


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_synthetic_batch_targets_are_the_transform_of_the_source(name):
  task = tasks.make_task(task_config(name=name, num_symbols=12, min_length=3, max_length=7))
  assert task.kind == "seq2seq" and task.num_classes == 0
  assert task.source_length == 7 and task.target_length == 8
  batch = task.train_batch(step=5, batch_size=64)
  assert set(batch) == {"src", "tgt_in", "tgt_out", "weights"}
  assert batch["src"].shape == (64, 7) and batch["src"].dtype == np.int32
  for key in ("tgt_in", "tgt_out", "weights"):
    assert batch[key].shape == (64, 8)
  assert batch["weights"].dtype == np.float32
  vocab = task.vocab
  lengths = []
  for src, tgt_in, tgt_out, weights in zip(
    batch["src"], batch["tgt_in"], batch["tgt_out"], batch["weights"], strict=True
  ):
    n = real_length(src)
    lengths.append(n)
    assert (src[:n] >= 4).all() and (src[:n] < 4 + 12).all()  # Symbols only, no specials.
    assert (src[n:] == vocab.pad_id).all()
    symbols = [int(word) for word in vocab.decode(src)]
    target = expected_target(name, symbols)
    assert [int(word) for word in vocab.decode(tgt_out)] == target
    expected_out = [*vocab.encode([str(s) for s in target]).tolist(), vocab.eos_id]
    assert tgt_out.tolist() == expected_out + [0] * (8 - n - 1)
    assert tgt_in.tolist() == [vocab.bos_id, *expected_out[:-1]] + [0] * (8 - n - 1)
    assert weights.tolist() == [1.0] * (n + 1) + [0.0] * (8 - n - 1)  # Target and eos count.
  assert min(lengths) == 3 and max(lengths) == 7


def test_synthetic_symbols_and_vocabulary():
  task = SyntheticSeq2Seq("copy", synthetic.TRANSFORMS["copy"], num_symbols=5)
  assert task.vocab.tokens == (*SPECIALS, "0", "1", "2", "3", "4")
  assert len(task.vocab) == 9


def test_train_batch_is_a_pure_function_of_step_and_seed():
  task = tasks.make_task(task_config(), seed=3)
  same = tasks.make_task(task_config(), seed=3)
  other_seed = tasks.make_task(task_config(), seed=4)
  first = task.train_batch(7, 16)
  for again in (task.train_batch(7, 16), same.train_batch(7, 16)):
    for key in first:
      np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["src"], task.train_batch(8, 16)["src"])
  assert not np.array_equal(first["src"], other_seed.train_batch(7, 16)["src"])


def test_eval_batches_are_fixed_and_the_last_is_padded_with_zero_weight_rows():
  task = tasks.make_task(task_config(eval_examples=10))
  batches = task.eval_batches(4)
  assert len(batches) == 3
  again = task.eval_batches(4)
  for batch, other in zip(batches, again, strict=True):
    assert set(batch) == {"src", "tgt_in", "tgt_out", "weights"}
    for key in batch:
      assert batch[key].shape[0] == 4
      np.testing.assert_array_equal(batch[key], other[key])
  for batch in batches[:2]:
    assert (batch["weights"].sum(axis=1) > 0).all()
  last = batches[-1]
  assert (last["weights"][:2].sum(axis=1) > 0).all()
  for key in last:
    assert (last[key][2:] == 0).all()  # Padded rows: all pad, weight 0.
  # One batch of all of it holds the same examples.
  (whole,) = task.eval_batches(10)
  np.testing.assert_array_equal(whole["src"], np.concatenate([b["src"] for b in batches])[:10])


def test_eval_set_differs_from_training_stream():
  task = tasks.make_task(task_config(eval_examples=32))
  (eval_batch,) = task.eval_batches(32)
  train = task.train_batch(0, 32)
  assert not np.array_equal(eval_batch["src"], train["src"])
  eval_rows = {tuple(row) for row in eval_batch["src"].tolist()}
  train_rows = [tuple(row) for step in range(3) for row in task.train_batch(step, 32)["src"].tolist()]
  assert sum(row in eval_rows for row in train_rows) < len(train_rows) // 4


def test_encode_text_decode_ids_round_trip():
  task = tasks.make_task(task_config(name="copy"))
  ids = task.encode_text("3 1 4 1 5")
  assert ids.dtype == np.int32 and ids.tolist() == [7, 5, 8, 5, 9]
  assert task.decode_ids(ids) == "3 1 4 1 5"
  assert task.decode_ids([1, *ids.tolist(), 2, 0, 0]) == "3 1 4 1 5"
  assert task.decode_ids(task.encode_text("3 x 4")) == "3 <unk> 4"


# split_batches


def test_make_task_min_length_above_max_length():
  with pytest.raises(ValueError, match=r"^config\.task\.min_length: 5 exceeds max_length 4"):
    tasks.make_task(task_config(min_length=5, max_length=4))
  task = tasks.make_task(task_config(min_length=4, max_length=4))
  src = task.train_batch(0, 8)["src"]
  assert (np.count_nonzero(src, axis=1) == 4).all()


@pytest.mark.parametrize("field", ["num_symbols", "min_length", "max_length", "eval_examples"])
@pytest.mark.parametrize("value", [0, -3])
def test_make_task_non_positive_sizes(field, value):
  with pytest.raises(ValueError, match=rf"^config\.task\.{field}: must be positive, got {value}"):
    tasks.make_task(task_config(**{field: value}))


def test_make_task_fields_and_seed():
  task = tasks.make_task(
    task_config(name="sort", num_symbols=7, min_length=1, max_length=3, eval_examples=9), seed=11
  )
  assert isinstance(task, SyntheticSeq2Seq)
  assert (task.name, task.num_symbols, task.min_length, task.max_length) == ("sort", 7, 1, 3)
  assert (task.eval_examples, task.seed) == (9, 11)
