"""Translation from tab-separated parallel text: reader, subword model, task, BLEU.

The data folder (`config.data.path`) holds `train.tsv`, `dev.tsv` and `test.tsv`, one `source<TAB>target`
pair per line in UTF-8 (Tatoeba English-French at ../shared/data/tatoeba_fra_eng). One joint
SentencePiece BPE model for both languages is trained on the training split (the `Transformer` has one
vocabulary and a shared embedding table); its ids 0-3 are <pad>, <bos>, <eos>, <unk>, as
`attn.tasks.Vocabulary` requires. Training it takes about a second and is deterministic (one thread, no
sampling), so a resumed run rebuilds the same model; `save(workdir)` keeps a copy in the run directory
and refuses to overwrite a different one.

Training batches are drawn from the training split shuffled once per epoch (the files are sorted
shortest first). Within a chunk of `CHUNK_BATCHES` batches the examples are sorted by length, cut into
batches and the batches put in a random order, so a batch holds sentences of similar length and is
padded only to the next multiple of `LENGTH_MULTIPLE` (a handful of shapes, each compiled once, instead
of every batch padded to the longest sentence). Everything is a pure function of (seed, step).

BLEU is sacrebleu's corpus BLEU (13a tokenisation) of the detokenised output against the raw target
text. Identical source sentences (Tatoeba lists several translations of one sentence on separate lines)
are decoded once and scored against each of their lines, one reference per line.
"""

from __future__ import annotations

import io
import os
import re
import textwrap
from collections.abc import Sequence

import numpy as np
import sacrebleu
import sentencepiece as spm

from attn.tasks.base import (
  SPECIALS,
  Predictor,
  Task,
  Vocabulary,
  pad_rows,
  read_lines,
  save_once,
  seq2seq_examples,
  split_batches,
  stream_rng,
)

SPLITS = ("train", "dev", "test")
MODEL_FILE = "subwords.model"  # The SentencePiece model, in the run directory.
VOCAB_FILE = "subwords.vocab"  # Its pieces, one per line in id order, for reading by eye.
CHUNK_BATCHES = 64  # Training batches sorted by length together.
LENGTH_MULTIPLE = 8  # Training batches are padded to a multiple of this.
_TRAIN_STREAM, _ORDER_STREAM, _DEV_SAMPLE_STREAM = 0, 1, 2


# ----------------------------------------------------------------------------------------------------
# Reading.


def read_parallel(path: str) -> list[tuple[str, str]]:
  """Reads `source<TAB>target` lines (UTF-8) into (source, target) pairs, fields stripped.

  Raises:
    ValueError: for a missing file (naming it and `config.data.path`), or "FILE:LINE: ..." for a line
      that is not exactly two non-empty tab-separated fields or is not UTF-8.
  """
  if not os.path.isfile(path):
    raise ValueError(f"config.data.path: no file {path!r} (the folder needs {', '.join(_files())})")
  pairs = []
  for number, text in enumerate(read_lines(path), 1):
    fields = [field.strip() for field in text.split("\t")]
    if len(fields) != 2 or not all(fields):
      raise ValueError(
        f"{path}:{number}: expected 'source<TAB>target' (two non-empty fields), got "
        f"{len(fields)} field(s){'' if all(fields) else ' with an empty one'}: {text[:60]!r}"
      )
    pairs.append((fields[0], fields[1]))
  return pairs


def _files() -> list[str]:
  return [f"{split}.tsv" for split in SPLITS]


# ----------------------------------------------------------------------------------------------------
# Subwords.


def train_subwords(sentences: Sequence[str], vocab_size: int) -> bytes:
  """Trains a SentencePiece BPE model on `sentences`; returns the serialized model.

  Deterministic: one thread and the whole input in order. Ids 0-3 are <pad>, <bos>, <eos>, <unk>. On a
  small corpus the vocabulary may come out smaller than `vocab_size` (no error).
  """
  model = io.BytesIO()
  try:
    _train_sentencepiece(_within_limit(sentences), vocab_size, model)
  except RuntimeError as e:  # SentencePiece's checks, e.g. fewer pieces than the characters need.
    need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
    if need:
      raise ValueError(
        f"config.task.vocab_size: {vocab_size} is too small for the training split's characters; "
        f"the smallest that works is {need.group(1)}"
      ) from None
    raise ValueError(
      f"config.task.vocab_size: SentencePiece refused {vocab_size}: {' '.join(str(e).split())}"
    ) from None
  return model.getvalue()


# SentencePiece's trainer skips (in silence) sentences longer than this many bytes, its default
# `max_sentence_length`; a text of one enormous line then left it nothing, and its error blamed
# vocab_size. Longer lines are cut at whitespace into pieces this many characters long at most (4
# UTF-8 bytes per character at worst) for the training only; encoding reads whole lines.
_SENTENCEPIECE_MAX_BYTES = 4192
_PIECE_CHARS = _SENTENCEPIECE_MAX_BYTES // 4


def _within_limit(sentences: Sequence[str]):
  """`sentences`, each longer than SentencePiece's trainer takes cut into pieces it takes."""
  for sentence in sentences:
    if len(sentence.encode("utf-8")) <= _SENTENCEPIECE_MAX_BYTES:
      yield sentence
    else:
      yield from textwrap.wrap(
        sentence, _PIECE_CHARS, expand_tabs=False, replace_whitespace=False, drop_whitespace=False,
        break_on_hyphens=False,
      )  # fmt: skip


def _train_sentencepiece(sentences: Sequence[str], vocab_size: int, model: io.BytesIO) -> None:
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(sentences),
    model_writer=model,
    model_type="bpe",
    vocab_size=vocab_size,
    hard_vocab_limit=False,
    character_coverage=1.0,  # French accents and punctuation are all kept as characters.
    num_threads=1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    pad_piece=SPECIALS[0],
    bos_piece=SPECIALS[1],
    eos_piece=SPECIALS[2],
    unk_piece=SPECIALS[3],
    minloglevel=2,
  )


class Subwords:
  """A SentencePiece model and the `Vocabulary` of its pieces: text <-> ids."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
    n = self.processor.get_piece_size()
    self.vocab = Vocabulary(tuple(self.processor.id_to_piece(i) for i in range(n)))

  @classmethod
  def load(cls, path: str) -> Subwords:
    with open(path, "rb") as f:
      return cls(f.read())

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Texts -> int32 id arrays (no bos or eos)."""
    return [np.asarray(ids, np.int32) for ids in self.processor.encode(list(texts))]

  def decode(self, ids) -> str:
    """Ids -> detokenised text: stops at eos, drops pad and bos."""
    kept = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == Vocabulary.eos_id:
        break
      if i not in (Vocabulary.pad_id, Vocabulary.bos_id):
        kept.append(i)
    return self.processor.decode(kept)


# ----------------------------------------------------------------------------------------------------
# BLEU and decoding.


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacrebleu's corpus BLEU (0-100, 13a tokenisation) of detokenised text, one reference each."""
  if len(hypotheses) != len(references):
    raise ValueError(f"bleu: {len(hypotheses)} hypotheses for {len(references)} references")
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def translate_ids(
  predictor: Predictor,
  sources: Sequence[np.ndarray],
  *,
  batch_size: int,
  source_length: int,
  max_new_tokens: int,
  beam_size: int = 1,
  alpha: float = 0.6,
) -> list[np.ndarray]:
  """Decodes source id arrays (truncated to `source_length`) in batches of one shape (the last padded
  with all-pad rows), so the decoder compiles once per setting. Returns one id array per source."""
  out = []
  for start in range(0, len(sources), batch_size):
    rows = [s[:source_length] for s in sources[start : start + batch_size]]
    src_BS = pad_rows(rows + [np.zeros(0, np.int32)] * (batch_size - len(rows)), source_length)
    tokens = predictor.translate(src_BS, max_new_tokens=max_new_tokens, beam_size=beam_size, alpha=alpha)
    out.extend(np.asarray(tokens)[: len(rows)])
  return out


# ----------------------------------------------------------------------------------------------------
# The task.


class Translation(Task):
  """Seq2seq task over a parallel-text folder (see the module docstring); `make_task` builds it.

  Sequence lengths count subword tokens: sources up to `max_source_length`; targets up to
  `max_target_length` tokens including eos (so tgt_in and tgt_out have that length). Training and dev
  pairs longer than that are left out; test sources longer than that are truncated (and counted).
  """

  kind = "seq2seq"
  num_classes = 0
  class_names = ()
  main_metric = "bleu"

  def __init__(
    self,
    pairs: dict[str, list[tuple[str, str]]],
    subwords: Subwords,
    *,
    name: str = "translate",
    max_source_length: int,
    max_target_length: int,
    beam_size: int,
    alpha: float,
    dev_bleu_examples: int,
    test_bleu_examples: int,
    seed: int = 0,
  ):
    self.name = name
    self.files: tuple[str, ...] = ()  # The train, dev and test files read (set by make_task).
    self.subwords = subwords
    self.vocab = subwords.vocab
    self.source_length, self.target_length = max_source_length, max_target_length
    self.beam_size, self.alpha = beam_size, alpha
    self.seed = seed
    encoded = {}
    for split, split_pairs in pairs.items():
      encoded[split] = (
        self.subwords.encode([p[0] for p in split_pairs]),
        self.subwords.encode([p[1] for p in split_pairs]),
      )
    # Training and dev (teacher-forced) pairs that fit; +1 for eos.
    self.train_src, self.train_tgt = self._fitting(*encoded["train"])
    if not self.train_src:
      raise ValueError(
        f"config.task.max_source_length: no training pair fits {max_source_length} source and "
        f"{max_target_length} target tokens"
      )
    self.dev_src, self.dev_tgt = self._fitting(*encoded["dev"])
    if not self.dev_src:
      shortest = min(max(len(s), len(t) + 1) for s, t in zip(*encoded["dev"], strict=True))
      raise ValueError(
        f"config.task.max_source_length: no dev pair fits {max_source_length} source and "
        f"{max_target_length} target tokens (the shortest needs {shortest}); raise the limits"
      )
    self.num_dropped = {
      "train": len(encoded["train"][0]) - len(self.train_src),
      "dev": len(encoded["dev"][0]) - len(self.dev_src),
    }
    # BLEU sets: dev, a fixed random sample (the files are sorted by length); test, the first lines.
    dev_sample = np.sort(
      stream_rng(seed, _DEV_SAMPLE_STREAM).permutation(len(pairs["dev"]))[:dev_bleu_examples]
    )
    self.dev_bleu_set = self._bleu_set([pairs["dev"][i] for i in dev_sample])
    test_pairs = pairs["test"][: test_bleu_examples or None]
    self.test_bleu_set = self._bleu_set(test_pairs)
    self.num_truncated_test = sum(
      len(s) > max_source_length for s in encoded["test"][0][: len(test_pairs)]
    )
    self._lengths = np.maximum(
      np.array([len(s) for s in self.train_src]), np.array([len(t) + 1 for t in self.train_tgt])
    )
    self._chunk_cache: dict = {}

  def _fitting(self, srcs, tgts):
    keep = [
      i
      for i, (s, t) in enumerate(zip(srcs, tgts, strict=True))
      if 0 < len(s) <= self.source_length and len(t) + 1 <= self.target_length
    ]
    return [srcs[i] for i in keep], [tgts[i] for i in keep]

  def _bleu_set(self, split_pairs):
    """Distinct sources (ids) and, per line, the index of its source and its reference text."""
    index: dict[str, int] = {}
    for source, _ in split_pairs:
      index.setdefault(source, len(index))
    sources = self.subwords.encode(list(index))
    return sources, [index[s] for s, _ in split_pairs], [t for _, t in split_pairs]

  # Batches.

  @property
  def num_train_examples(self) -> int:
    """The training pairs that fit the lengths: the stream shuffles them anew each epoch."""
    return len(self.train_src)

  def _chunk(self, chunk: int, batch_size: int) -> np.ndarray:
    """Training example indices [CHUNK_BATCHES, batch_size] of one chunk of batches."""
    key = (chunk, batch_size)
    if key not in self._chunk_cache:
      n = len(self.train_src)
      positions = np.arange(chunk * CHUNK_BATCHES * batch_size, (chunk + 1) * CHUNK_BATCHES * batch_size)
      epochs, offsets = positions // n, positions % n
      indices = np.empty_like(positions)
      for epoch in np.unique(epochs):  # The stream is the training split, shuffled anew each epoch.
        here = epochs == epoch
        indices[here] = stream_rng(self.seed, _TRAIN_STREAM, int(epoch)).permutation(n)[offsets[here]]
      indices = indices[np.argsort(self._lengths[indices], kind="stable")]
      batches = indices.reshape(CHUNK_BATCHES, batch_size)
      order = stream_rng(self.seed, _ORDER_STREAM, chunk).permutation(CHUNK_BATCHES)
      self._chunk_cache = {key: batches[order]}  # One chunk at a time: steps come in order.
    return self._chunk_cache[key]

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Batch `step` of the shuffled stream: src [B, L], tgt_in/tgt_out/weights [B, L], where L is the
    longest sentence of the batch (target + 1) rounded up to a multiple of LENGTH_MULTIPLE."""
    rows = self._chunk(step // CHUNK_BATCHES, batch_size)[step % CHUNK_BATCHES]
    longest = int(self._lengths[rows].max())
    length = -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    batch = seq2seq_examples(
      [self.train_src[i] for i in rows],
      [self.train_tgt[i] for i in rows],
      min(length, self.source_length),
      min(length, self.target_length),
    )
    batch["weights"] = (batch["tgt_out"] != Vocabulary.pad_id).astype(np.float32)
    return batch

  def eval_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The dev pairs that fit, teacher-forced, at the full lengths [B, max_source_length] and
    [B, max_target_length]."""
    examples = seq2seq_examples(self.dev_src, self.dev_tgt, self.source_length, self.target_length)
    return split_batches(examples, batch_size)

  def encode_text(self, text: str) -> np.ndarray:
    return self.subwords.encode([text])[0]

  def decode_ids(self, ids) -> str:
    return self.subwords.decode(ids)

  # Scores from decoded text.

  def translate(
    self, predictor: Predictor, sources: Sequence[np.ndarray], batch_size: int, *, beam_size: int = 1
  ) -> list[str]:
    """Source id arrays -> detokenised translations (greedy, or beam search with `beam_size` > 1)."""
    ids = translate_ids(
      predictor,
      sources,
      batch_size=batch_size,
      source_length=self.source_length,
      max_new_tokens=self.target_length,
      beam_size=beam_size,
      alpha=self.alpha,
    )
    return [self.subwords.decode(row) for row in ids]

  def _set_bleu(self, predictor: Predictor, bleu_set, batch_size: int, beam_size: int) -> float:
    sources, source_of_line, references = bleu_set
    if not references:
      return 0.0
    translations = self.translate(predictor, sources, batch_size, beam_size=beam_size)
    return bleu([translations[i] for i in source_of_line], references)

  def score(self, predictor: Predictor, batch_size: int, *, final: bool) -> dict[str, float]:
    """ "bleu": greedy BLEU on the dev sample; when `final`, also the test split's greedy and beam
    BLEU ("test_bleu_greedy", "test_bleu_beam")."""
    scores = {"bleu": self._set_bleu(predictor, self.dev_bleu_set, batch_size, 1)}
    if final:
      scores["test_bleu_greedy"] = self._set_bleu(predictor, self.test_bleu_set, batch_size, 1)
      scores["test_bleu_beam"] = self._set_bleu(
        predictor, self.test_bleu_set, batch_size, self.beam_size
      )
    return scores

  def data_files(self) -> list[str]:
    return list(self.files)

  def save(self, workdir: str) -> None:
    """Writes the subword model (and its pieces, for reading) into the run directory; a run that
    resumes must rebuild the very same model.

    Raises:
      ValueError: when the run directory holds a different subword model (the data changed).
    """
    if not save_once(os.path.join(workdir, MODEL_FILE), self.subwords.model_proto, "subword model"):
      return
    with open(os.path.join(workdir, VOCAB_FILE), "w", encoding="utf-8") as f:
      f.write("".join(f"{piece}\n" for piece in self.vocab.tokens))


def _field(task_config, name: str, kind, *, minimum):
  value = task_config.get(name)
  if value is None:
    raise ValueError(f"config.task.{name}: missing")
  try:
    value = kind(value)
  except (TypeError, ValueError):
    raise ValueError(f"config.task.{name}: expected {kind.__name__}, got {value!r}") from None
  if value < minimum:
    raise ValueError(f"config.task.{name}: must be at least {minimum}, got {value}")
  return value


def make_task(
  task_config, data_config=None, *, seed: int = 0, workdir: str | None = None
) -> Translation:
  """The translation task of `config.task` (fields `vocab_size`, `max_source_length`,
  `max_target_length`, `beam_size`, `length_penalty_alpha`, `dev_bleu_examples`,
  `test_bleu_examples`) on the folder `config.data.path`. With a `workdir` holding a saved
  `subwords.model` (a run's), that model is loaded instead of trained again from the data.

  Raises:
    ValueError: naming the config field, a missing file, or FILE:LINE of a malformed line.
  """
  values = {
    "vocab_size": _field(task_config, "vocab_size", int, minimum=len(SPECIALS) + 1),
    "max_source_length": _field(task_config, "max_source_length", int, minimum=1),
    "max_target_length": _field(task_config, "max_target_length", int, minimum=2),
    "beam_size": _field(task_config, "beam_size", int, minimum=1),
    "length_penalty_alpha": _field(task_config, "length_penalty_alpha", float, minimum=0.0),
    "dev_bleu_examples": _field(task_config, "dev_bleu_examples", int, minimum=1),
    "test_bleu_examples": _field(task_config, "test_bleu_examples", int, minimum=0),
  }
  path = (data_config or {}).get("path", "") if data_config is not None else ""
  if not path:
    raise ValueError(f"config.data.path: empty; set it to a folder with {', '.join(_files())}")
  if not os.path.isdir(path):
    raise ValueError(f"config.data.path: {path!r} is not a folder")
  pairs = {split: read_parallel(os.path.join(path, f"{split}.tsv")) for split in SPLITS}
  if not pairs["train"]:
    raise ValueError(f"config.data.path: {os.path.join(path, 'train.tsv')!r} holds no pairs")
  saved = os.path.join(workdir, MODEL_FILE) if workdir else ""
  if saved and os.path.exists(saved):
    subwords = Subwords.load(saved)
  else:
    sentences = [text for pair in pairs["train"] for text in pair]
    subwords = Subwords(train_subwords(sentences, values["vocab_size"]))
  task = Translation(
    pairs,
    subwords,
    name=str(task_config.get("name", "translate")),
    max_source_length=values["max_source_length"],
    max_target_length=values["max_target_length"],
    beam_size=values["beam_size"],
    alpha=values["length_penalty_alpha"],
    dev_bleu_examples=values["dev_bleu_examples"],
    test_bleu_examples=values["test_bleu_examples"],
    seed=seed,
  )
  task.files = tuple(os.path.join(path, f"{split}.tsv") for split in SPLITS)
  return task
