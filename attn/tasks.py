"""Tasks: where batches come from.

A task is any object with these members (duck-typed; the synthetic tasks below and those of
MODULE_TASKS implement them):

  kind: "seq2seq" (trained with `Transformer`) or "tagging" (trained with `EncoderTagger`).
  vocab: a `Vocabulary` (token strings <-> ids; pad_id, bos_id, eos_id).
  num_classes: tag classes for "tagging" (0 for "seq2seq"); `class_names` names them.
  train_batch(step, batch_size) -> dict of numpy arrays, a pure function of (task, step): the same
    step gives the same batch, so a resumed run sees exactly the data an uninterrupted one would.
  eval_batches(batch_size) -> list of such dicts: the fixed evaluation set, the last batch padded
    with rows whose weights are 0.
  encode_text(text) -> int32 [S]; decode_ids(ids) -> str.

Optional members, used by `attn.train` when present:
  main_metric: the eval metric that sweeps and compare tables rank by (default "sequence_accuracy"
    for seq2seq, "accuracy" for tagging).
  score(model, params, batch_size, *, final) -> dict[str, float]: metrics the task computes from the
    model's output itself (entity F1 from predicted tags, BLEU from decoded text), for one seed's
    params; called at every evaluation, with `final` True at the last one (the place for a test split).
  save(workdir): writes what a run needs to read its outputs later (a vocabulary built from the
    training split), once per run, before training.

Batches, with static shapes ([B, S] / [B, T], padded with pad_id):
  seq2seq: src [B, S], tgt_in [B, T] (bos + target), tgt_out [B, T] (target + eos), weights [B, T].
  tagging: tokens [B, T], tags [B, T], weights [B, T] (0 where no tag is scored).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Token strings and their ids; ids 0-3 are <pad>, <bos>, <eos>, <unk>."""

  tokens: tuple[str, ...]

  def __post_init__(self):
    if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
      raise ValueError(f"Vocabulary: the first tokens must be {SPECIALS}, got {self.tokens[:4]}")
    object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

  pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

  def __len__(self) -> int:
    return len(self.tokens)

  def encode(self, words: Sequence[str]) -> np.ndarray:
    return np.array([self._ids.get(w, self.unk_id) for w in words], np.int32)

  def decode(self, ids: Sequence[int], *, strip: bool = True) -> list[str]:
    """Ids -> tokens; with `strip`, stops at eos and drops pad and bos."""
    words = []
    for i in np.asarray(ids).tolist():
      if strip and i == self.eos_id:
        break
      if strip and i in (self.pad_id, self.bos_id):
        continue
      words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
    return words


def _rng(seed: int, *stream: int) -> np.random.Generator:
  return np.random.default_rng([seed, *stream])


# The stream ids keep training and evaluation data apart for every seed.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


def pad_rows(rows: Sequence[np.ndarray], length: int, pad_id: int = 0) -> np.ndarray:
  """Stacks 1-D int rows into int32 [len(rows), length], right-padded with pad_id."""
  out = np.full((len(rows), length), pad_id, np.int32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


def seq2seq_examples(
  srcs: Sequence[np.ndarray], tgts: Sequence[np.ndarray], source_length: int, target_length: int
) -> dict[str, np.ndarray]:
  """Source and target id rows -> src [N, source_length], tgt_in (bos + target) and tgt_out
  (target + eos) [N, target_length], right-padded with pad_id."""
  bos, eos = [Vocabulary.bos_id], [Vocabulary.eos_id]
  return {
    "src": pad_rows(srcs, source_length),
    "tgt_in": pad_rows([np.concatenate([bos, t]) for t in tgts], target_length),
    "tgt_out": pad_rows([np.concatenate([t, eos]) for t in tgts], target_length),
  }


@dataclasses.dataclass(frozen=True)
class SyntheticSeq2Seq:
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

  def _examples(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    offset = len(SPECIALS)
    lengths = rng.integers(self.min_length, self.max_length + 1, size=n)
    srcs = [rng.integers(0, self.num_symbols, size=L) + offset for L in lengths]
    tgts = [np.asarray(self.transform(s), np.int32) for s in srcs]
    return seq2seq_examples(srcs, tgts, self.source_length, self.target_length)

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    batch = self._examples(_rng(self.seed, _TRAIN_STREAM, step), batch_size)
    batch["weights"] = (batch["tgt_out"] != Vocabulary.pad_id).astype(np.float32)
    return batch

  def eval_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
    return split_batches(self._examples(_rng(self.seed, _EVAL_STREAM), self.eval_examples), batch_size)

  def encode_text(self, text: str) -> np.ndarray:
    return self.vocab.encode(text.split())

  def decode_ids(self, ids) -> str:
    return " ".join(self.vocab.decode(ids))


def split_batches(examples: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
  """Cuts stacked examples into batches of `batch_size`, padding the last with all-pad rows, and adds
  `weights` if absent: 1 where a target (seq2seq) or a token (tagging) is real, 0 on padding."""
  if "weights" not in examples:
    real = examples["tgt_out"] if "tgt_out" in examples else examples["tokens"]
    examples = {**examples, "weights": (real != Vocabulary.pad_id).astype(np.float32)}
  n = len(examples["weights"])
  out = []
  for start in range(0, n, batch_size):
    batch = {k: v[start : start + batch_size] for k, v in examples.items()}
    short = batch_size - len(batch["weights"])
    if short:
      batch = {
        k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
      }
    out.append(batch)
  return out


SYNTHETIC_TRANSFORMS = {
  "copy": lambda s: s,
  "reverse": lambda s: s[::-1],
  "sort": np.sort,
}


# Tasks defined in their own modules, each with a `make_task(task_config, data_config, *, seed)`.
MODULE_TASKS = {
  "cue": "attn.seed_tasks",
  "two_cue": "attn.seed_tasks",
  "word_sense": "attn.seed_tasks",
  "ner": "attn.ner",
  "translate": "attn.translation",
}


def make_task(task_config, data_config=None, *, seed: int = 0):
  """Builds the task a config names. `task_config` has `name` and that task's fields; `data_config`
  (with `path`) is for tasks that read files; `seed` fixes the data stream.

  Raises:
    ValueError: naming the field, for an unknown task or a bad task field.
  """
  name = task_config.name
  if name in MODULE_TASKS:
    module = importlib.import_module(MODULE_TASKS[name])
    return module.make_task(task_config, data_config, seed=seed)
  if name in SYNTHETIC_TRANSFORMS:
    fields = ("num_symbols", "min_length", "max_length", "eval_examples")
    values = {f: int(task_config[f]) for f in fields}
    for f in fields:
      if values[f] <= 0:
        raise ValueError(f"config.task.{f}: must be positive, got {values[f]}")
    if values["min_length"] > values["max_length"]:
      raise ValueError(
        f"config.task.min_length: {values['min_length']} exceeds max_length {values['max_length']}"
      )
    return SyntheticSeq2Seq(name, SYNTHETIC_TRANSFORMS[name], seed=seed, **values)
  choices = ", ".join(map(repr, TASK_NAMES))
  raise ValueError(f"config.task.name: unknown task {name!r}; expected one of {choices}")


TASK_NAMES = (*SYNTHETIC_TRANSFORMS, *MODULE_TASKS)
