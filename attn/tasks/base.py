"""What every task shares: the `Task` protocol, the `Vocabulary`, data streams and batch helpers.

Batches are dicts of numpy arrays with static shapes ([B, S] / [B, T], padded with pad_id):
  seq2seq: src [B, S], tgt_in [B, T] (bos + target), tgt_out [B, T] (target + eos), weights [B, T].
  tagging: tokens [B, T], tags [B, T], weights [B, T] (0 where no tag is scored), and optionally
    features [B, T, F] (hashed per-token features, `attn.tasks.ner`).
  lm: tokens [B, T], targets [B, T] (the next token of each position), weights [B, T], and in eval
    batches characters [B] (the characters each row's targets spell: bits per character).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

Batch = dict[str, np.ndarray]
# Trained with `attn.nn.Transformer`, `attn.nn.EncoderTagger` and `attn.nn.LanguageModel`.
KINDS = ("seq2seq", "tagging", "lm")

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


class Predictor(Protocol):
  """One seed's trained model, as a task's metrics and samples may use it. `attn.train.predict`
  builds it from a run's model, objective and parameters: tasks never apply a model themselves."""

  def logits(self, batch: Batch) -> np.ndarray:
    """Per-token scores on the batch's inputs: [B, T, C] tag logits (a CRF's emissions) or [B, T, V]
    next-token logits, float32."""
    ...

  def crf_scores(self) -> tuple[np.ndarray, ...] | None:
    """A CRF tagger's (transitions [C, C], start [C], end [C]); None for a per-token tagger."""
    ...

  def self_attention_patterns(self, batch: Batch) -> np.ndarray:
    """Every self-attention layer's attention pattern on the batch's inputs, [L, B, H, T, T]."""
    ...

  def translate(
    self, src_BS: np.ndarray, *, max_new_tokens: int, beam_size: int = 1, alpha: float = 0.6
  ) -> np.ndarray:
    """An encoder-decoder's output ids [B, max_new_tokens] (greedy, or beam search)."""
    ...

  def sample(self, prompt_BP: np.ndarray, *, max_new_tokens: int, rng: Any, context=None) -> np.ndarray:
    """A language model's sampled continuation ids [B, max_new_tokens]."""
    ...


@runtime_checkable
class Task(Protocol):
  """Where a run's batches come from; `attn.train` needs nothing else of a task.

  A task class subclasses `Task` (to inherit the defaults of `main_metric`, `score` and `save`) or
  merely has every member; `attn.tasks.registry` names the tasks a config can ask for.

  Attributes:
    kind: "seq2seq" (trained with `Transformer`), "tagging" (`EncoderTagger`) or "lm"
      (`LanguageModel`).
    vocab: the `Vocabulary` (token strings <-> ids; pad_id, bos_id, eos_id).
    num_classes: tag classes for "tagging" (0 otherwise); `class_names` names them.
    main_metric: the eval metric that sweeps and compare tables rank by.
    eval_lengths: context lengths a language model is also scored at (`attn.tasks.text`); () else.

  The members with a body are optional: a subclass inherits these defaults, and a wrapper (the
  denoising task) forwards them.
  """

  kind: ClassVar[str]
  vocab: Vocabulary
  num_classes: int
  class_names: tuple[str, ...]
  eval_lengths: tuple[int, ...] = ()

  @property
  def num_train_examples(self) -> int | None:
    """The size of a fixed training set (what `config.num_train_epochs` counts passes over), or
    None for a task that draws fresh examples at every step (the default)."""
    return None

  @property
  def num_unlabelled_examples(self) -> int | None:
    """The examples `unlabelled_batch` draws from, when fixed (default: the training set's)."""
    return self.num_train_examples

  def unlabelled_batch(self, step: int, batch_size: int) -> Batch:
    """Text for the denoising objective (`attn.tasks.denoise`), which may be more than the training
    split (the NER task's `config.data.unlabelled`); by default the training batch of `step`."""
    return self.train_batch(step, batch_size)

  @property
  def main_metric(self) -> str:
    return {"seq2seq": "sequence_accuracy", "lm": "loss"}.get(self.kind, "accuracy")

  def train_batch(self, step: int, batch_size: int) -> Batch:
    """The batch of `step`: a pure function of (task, step), so a resumed run sees exactly the data
    an uninterrupted one would."""
    ...

  def eval_batches(self, batch_size: int) -> list[Batch]:
    """The fixed evaluation set, the last batch padded with rows whose weights are 0."""
    ...

  def encode_text(self, text: str) -> np.ndarray:
    """Text -> int32 ids [S], tokenised as the task's data is."""
    ...

  def decode_ids(self, ids: Sequence[int]) -> str:
    """Ids -> text (stops at eos, drops pad and bos)."""
    ...

  def score(self, predictor: Predictor, batch_size: int, *, final: bool) -> dict[str, float]:
    """Metrics the task computes from one seed's model outputs (entity F1 from predicted tags, BLEU
    from decoded text); called at every evaluation, with `final` True at the last one (the place
    for a test split). None by default."""
    del predictor, batch_size, final
    return {}

  def samples(self, predictor: Predictor) -> list[str]:
    """A few texts generated by one seed's model, written to the run directory at every evaluation
    (a language model's samples). None by default."""
    del predictor
    return []

  def save(self, workdir: str) -> None:
    """Writes what a run needs to read its outputs later (a vocabulary built from the training
    split) into the run directory, once per run before training; a resume must find the same files
    (raise ValueError naming the file when they differ). Nothing by default."""
    del workdir

  def data_files(self) -> list[str]:
    """The files the task reads its data from: part of a run's identity (their hashes go into
    config.json, so a resume over changed data is refused). None by default (generated data)."""
    return []


# Stream ids: `stream_rng(seed, TRAIN_STREAM, step)` draws step's training batch, and
# `stream_rng(seed, EVAL_STREAM)` the fixed evaluation set, so the two never share examples' draws.
TRAIN_STREAM, EVAL_STREAM = 0, 1


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
  """numpy's generator for a data stream: a pure function of the seed and the stream ids (and the
  step, for training batches), which is what makes a resumed run see the same data."""
  return np.random.default_rng([seed, *stream])


def read_lines(path: str) -> list[str]:
  """The lines of a UTF-8 text file, without their line ends; a UTF-8 byte-order mark is skipped.

  Raises:
    ValueError: "FILE:LINE: not UTF-8 (...)" naming the first line with bytes that are not UTF-8.
  """
  with open(path, "rb") as f:
    raw = f.read()
  raw = raw.removeprefix(b"\xef\xbb\xbf")  # Some editors start UTF-8 files with a BOM.
  lines = raw.split(b"\n")
  if lines and lines[-1] == b"":  # The newline that ends the last line.
    lines.pop()
  out = []
  for number, line in enumerate(lines, 1):
    try:
      out.append(line.decode("utf-8").rstrip("\r"))
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}:{number}: not UTF-8 ({e.reason} at byte {e.start})") from None
  return out


def save_once(path: str, content: bytes, what: str) -> bool:
  """Writes `content` to `path` atomically unless the file exists; an existing file must hold the
  same bytes (a resumed run rebuilt the same `what` from its data). Returns whether it wrote.

  Raises:
    ValueError: naming config.data.path when the file holds something else (the data changed).
  """
  if os.path.exists(path):
    with open(path, "rb") as f:
      if f.read() != content:
        raise ValueError(
          f"config.data.path: the {what} built from the training split differs from the run's "
          f"{path}; the data changed since the run started"
        )
    return False
  with open(path + ".tmp", "wb") as f:
    f.write(content)
  os.replace(path + ".tmp", path)
  return True


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
