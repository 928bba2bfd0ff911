"""Generated sequence-to-sequence tasks: copy, reverse and sort sequences of random symbols."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from attn.tasks.base import (
  EVAL_STREAM,
  SPECIALS,
  TRAIN_STREAM,
  Batch,
  Task,
  Vocabulary,
  seq2seq_examples,
  split_batches,
  stream_rng,
)

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
  "copy": lambda s: s,
  "reverse": lambda s: s[::-1],
  "sort": np.sort,
}


@dataclasses.dataclass(frozen=True)
class SyntheticSeq2Seq(Task):
  """Sequences of random symbols and a target made from them by `transform` (copy, reverse, sort).

  Lengths vary uniformly in [min_length, max_length]; symbols are the strings "0", "1", ...
  """

  name: str
  transform: Callable[[np.ndarray], np.ndarray]
  num_symbols: int = 10
  min_length: int = 2
  max_length: int = 10
  eval_examples: int = 256
  seed: int = 0

  kind = "seq2seq"
  num_classes = 0
  class_names = ()

  @property
  def vocab(self) -> Vocabulary:
    return Vocabulary((*SPECIALS, *(str(i) for i in range(self.num_symbols))))

  @property
  def source_length(self) -> int:
    return self.max_length

  @property
  def target_length(self) -> int:
    return self.max_length + 1  # bos or eos

  def _examples(self, rng: np.random.Generator, n: int) -> Batch:
    offset = len(SPECIALS)
    lengths = rng.integers(self.min_length, self.max_length + 1, size=n)
    srcs = [rng.integers(0, self.num_symbols, size=L) + offset for L in lengths]
    tgts = [np.asarray(self.transform(s), np.int32) for s in srcs]
    return seq2seq_examples(srcs, tgts, self.source_length, self.target_length)

  def train_batch(self, step: int, batch_size: int) -> Batch:
    batch = self._examples(stream_rng(self.seed, TRAIN_STREAM, step), batch_size)
    batch["weights"] = (batch["tgt_out"] != Vocabulary.pad_id).astype(np.float32)
    return batch

  def eval_batches(self, batch_size: int) -> list[Batch]:
    return split_batches(
      self._examples(stream_rng(self.seed, EVAL_STREAM), self.eval_examples), batch_size
    )

  def encode_text(self, text: str) -> np.ndarray:
    return self.vocab.encode(text.split())

  def decode_ids(self, ids) -> str:
    return " ".join(self.vocab.decode(ids))


def make_task(
  task_config, data_config=None, *, seed: int = 0, workdir: str | None = None
) -> SyntheticSeq2Seq:
  """The task `config.task.name` ("copy", "reverse" or "sort") with its fields `num_symbols`,
  `min_length`, `max_length`, `eval_examples`; `seed` fixes the data stream.

  Raises:
    ValueError: naming the field, for a bad task field.
  """
  del data_config, workdir  # Generated in code: no files, nothing saved.
  fields = ("num_symbols", "min_length", "max_length", "eval_examples")
  values = {f: int(task_config[f]) for f in fields}
  for f in fields:
    if values[f] <= 0:
      raise ValueError(f"config.task.{f}: must be positive, got {values[f]}")
  if values["min_length"] > values["max_length"]:
    raise ValueError(
      f"config.task.min_length: {values['min_length']} exceeds max_length {values['max_length']}"
    )
  name = task_config.name
  return SyntheticSeq2Seq(name, TRANSFORMS[name], seed=seed, **values)
