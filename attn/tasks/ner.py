"""Named-entity recognition on CoNLL-style files: the reader, the hashed features and the task.

Files: one `token tag` per line (columns split by tabs or spaces; the token is the first column, the
tag the last, so CoNLL-2003's `token POS chunk tag` reads too), a blank line after each sentence,
optional `-DOCSTART-` lines (skipped). Tags are `O`, `B-TYPE` or `I-TYPE`, in IOB1 or IOB2; the
reader returns IOB2 (`conlleval.to_iob2`: the same entities by conlleval's chunk rules, each opened by
a B-), so an IOB1 file trains under the CRF's IOB2 constraint and scores as it would have.

Entity scores are conlleval's (`attn.tasks.conlleval.entity_scores`, in percent).

The task (`make_task`, kind "tagging"): tokens are lower-cased words with digits mapped to 0, from a
vocabulary of the training split (words seen `min_count` times; others are <unk>). Each token also gets
up to `max_features` hashed features, `features [B, T, F]` in its batches (0 = empty slot): word shape,
capitalisation, length, prefixes, suffixes and character n-grams. `EncoderTagger` sums
their embeddings into the token's when `ModelConfig.feature_buckets` > 0 and ignores them otherwise, so
`--config.model.feature_buckets=0` is the words-only ablation. Test entities are mostly unseen surface
forms (WNUT 2017), and these features are what a model can know about a word it has never seen.

With `max_chars` > 0 the batches also carry each word's characters, `chars [B, T, W]` (W =
max_chars; the Unicode code point + 1 of each of the word's first W characters, case kept, 0 = none),
for the tagger's character encoder (`ModelConfig.char_buckets`).

A pretrained encoder's own tokenizer (`config.task.tokenizer_file`, a Hugging Face tokenizer.json,
`attn.tasks.hf_tokenizer`; BERT's WordPiece, RoBERTa's BPE) replaces the word vocabulary: each
sentence becomes the tokenizer's pieces with its special tokens ([CLS] ... [SEP]), a word's tag sits
on its first piece and only first pieces are weighted and scored (the rest weigh 0), as BERT is
fine-tuned for NER (Devlin et al. 2019, section 5.3). The hashed features and characters are not
used then (zeros). The file is copied into the run directory, which a resume must find unchanged.

`config.data.unlabelled` (comma-separated files) adds untagged text for the denoising objective
(`attn.tasks.denoise`, through `unlabelled_batch`): a `.tsv` file gives its first column (Tatoeba's
English side), split into words and punctuation; any other file is read as CoNLL and its tags are
ignored. The vocabulary stays the training split's, so a tagger that starts from such a run shares it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
import zlib

import jax
import numpy as np

from attn.core import crf
from attn.tasks.base import (
  SPECIALS,
  Predictor,
  Task,
  Vocabulary,
  pad_rows,
  read_lines,
  save_once,
  split_batches,
)
from attn.tasks.conlleval import entity_scores, split_tag, to_iob2
from attn.tasks.hf_tokenizer import TOKENIZER_FILE, HFVocabulary

SPLITS = ("train", "dev", "test")
# Accepted file names of a split in the data folder, first match wins: "train", "train.conll", ...
SAVED_FILES = ("vocab.txt", "tags.txt")  # A run's word vocabulary and tags (`NerTask.save`).
FILE_SUFFIXES = ("", ".conll", ".txt", ".iob", ".bio")
DOCSTART = "-DOCSTART-"
_TAG = re.compile(r"^(O|[BI]-\S+)$")
# Margins by which `NerTask.score` may lower the O logit, chosen on dev (0 = plain argmax).
O_MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclasses.dataclass(frozen=True)
class Sentence:
  tokens: tuple[str, ...]
  tags: tuple[str, ...]


# ----------------------------------------------------------------------------------------------------
# Reading.


def read_conll(path: str) -> list[Sentence]:
  """The sentences of a CoNLL-style file (see the module docstring).

  Raises:
    ValueError: `path:line: ...` for a line without a token and a tag, or with a tag that is not O,
      B-TYPE or I-TYPE.
  """
  sentences, tokens, tags = [], [], []

  def close():
    if tokens:
      sentences.append(Sentence(tuple(tokens), to_iob2(tags)))
      tokens.clear()
      tags.clear()

  for number, line in enumerate(read_lines(path), start=1):
    fields = line.split()
    if not fields:
      close()
      continue
    if fields[0] == DOCSTART:
      close()
      continue
    if len(fields) < 2:
      raise ValueError(f"{path}:{number}: expected 'token tag', got {line!r}")
    if not _TAG.match(fields[-1]):
      raise ValueError(
        f"{path}:{number}: expected a tag O, B-TYPE or I-TYPE in the last column, got {fields[-1]!r}"
      )
    tokens.append(fields[0])
    tags.append(fields[-1])
  close()
  return sentences


def split_path(folder: str, split: str) -> str:
  """The file of `split` in `folder`: `split` itself or with one of FILE_SUFFIXES.

  Raises:
    ValueError: one line naming the folder, the split and config.data.path, when none exists.
  """
  for suffix in FILE_SUFFIXES:
    path = os.path.join(folder, split + suffix)
    if os.path.isfile(path):
      return path
  names = ", ".join(split + s for s in FILE_SUFFIXES)
  raise ValueError(f"config.data.path: {folder!r} has no {split} file (looked for {names})")


# ----------------------------------------------------------------------------------------------------
# Token normalisation and hashed features.


def normalize(token: str) -> str:
  """The vocabulary's form of a token: lower case, every digit 0."""
  return re.sub(r"\d", "0", token.lower())


def word_shape(token: str, *, compress: bool) -> str:
  """X for upper case, x for lower, d for digits, other characters kept ("McDonald's" -> "XxXx'x" when
  compressed: runs of one class collapse; uncompressed, the first 8 characters' classes)."""
  classes = []
  for ch in token:
    c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
    if not compress or not classes or classes[-1] != c:
      classes.append(c)
  return "".join(classes if compress else classes[:8])


def _capitalisation(token: str) -> str:
  letters = [c for c in token if c.isalpha()]
  if not letters:
    return "none"
  if all(c.isupper() for c in letters):
    return "upper" if len(letters) > 1 else "title"
  if all(c.islower() for c in letters):
    return "lower"
  return "title" if token[0].isupper() and all(c.islower() for c in letters[1:]) else "mixed"


def _hash(kind: str, value: str) -> int:
  """A stable hash in [1, 2**31): crc32 (Python's hash() differs between processes). 0 is no feature."""
  return zlib.crc32(f"{kind}\x00{value}".encode()) % (2**31 - 1) + 1


def token_features(token: str, *, first: bool, max_features: int) -> list[int]:
  """Up to `max_features` hashed features of one token (see the module docstring); `first` marks the
  sentence's first token, where capitals say less."""
  lower = token.lower()
  feats = [
    ("shape", word_shape(token, compress=True)),
    ("long_shape", word_shape(token, compress=False)),
    ("caps", _capitalisation(token) + (":first" if first else "")),
    ("length", str(min(len(token), 10))),
  ]
  if token[0] in "@#":
    feats.append(("sigil", token[0]))
  for n in range(1, 4):
    if len(lower) > n:
      feats.append((f"prefix{n}", lower[:n]))
  for n in range(1, 5):
    if len(lower) > n:
      feats.append((f"suffix{n}", lower[-n:]))
  marked = f"<{lower}>"
  for n in (3, 4, 5):
    feats.extend(("ngram", marked[i : i + n]) for i in range(len(marked) - n + 1))
  return [_hash(kind, value) for kind, value in feats[:max_features]]


# ----------------------------------------------------------------------------------------------------
# The task.


def _class_names(splits: dict[str, list[Sentence]]) -> tuple[str, ...]:
  """O, then B- and I- of every type seen in any split (labels only), sorted by type."""
  types = {split_tag(t)[1] for sents in splits.values() for s in sents for t in s.tags} - {""}
  return ("O", *(f"{p}-{t}" for t in sorted(types) for p in "BI"))


@dataclasses.dataclass(eq=False)
class NerTask(Task):
  """NER on a folder of CoNLL files; built by `make_task`. Batches: tokens [B, T], features [B, T, F],
  tags [B, T], weights [B, T]. Training batches are as long as the longest training sentence (rounded up
  to a multiple of 8) but at most `max_length`, which cuts longer sentences; evaluation batches group
  sentences of similar length and cut none, so every tag is scored."""

  splits: dict[str, list[Sentence]]
  vocab: Vocabulary | HFVocabulary  # Words, or a pretrained encoder's pieces.
  class_names: tuple[str, ...]
  max_length: int
  max_features: int
  word_dropout: float
  seed: int
  max_chars: int = 0  # Characters per word in `chars` [B, T, W]; 0 = no `chars` in the batches.
  unlabelled: tuple[tuple[str, ...], ...] = ()  # Untagged sentences (words) for `unlabelled_batch`.
  name: str = "ner"
  files: tuple[str, ...] = ()  # The train, dev and test files read.

  kind = "tagging"
  main_metric = "f1"

  def __post_init__(self):
    self._class_ids = {c: i for i, c in enumerate(self.class_names)}
    self._encoded = {split: self._encode(sents) for split, sents in self.splits.items()}
    # No longer than needed: WNUT's longest training sentence is 41 tokens, so 48, not max_length.
    longest = max(len(row[0]) for row in self._encoded["train"])
    self._train_length = min(self.max_length, -(-longest // 8) * 8)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train_examples(self) -> int:
    """Training sentences: what `config.num_train_epochs` counts passes over."""
    return len(self._encoded["train"])

  @property
  def num_unlabelled_examples(self) -> int:
    """The sentences `unlabelled_batch` draws from: the training split and the unlabelled ones."""
    return len(self._encoded["train"]) + len(self.unlabelled)

  @property
  def subwords(self) -> bool:
    """Whether sentences are a pretrained tokenizer's pieces rather than words."""
    return isinstance(self.vocab, HFVocabulary)

  def _encode(self, sentences: list[Sentence]) -> list[tuple[np.ndarray, ...]]:
    """Per sentence: (tokens [n], features [n, F], tags [n], characters [n, W], weights [n], starts
    [words]): n tokens, one per word, or the tokenizer's pieces, each word's tag and weight on its
    first piece, whose index is in `starts`."""
    if self.subwords:
      return [self._encode_pieces(s) for s in sentences]
    out = []
    for s in sentences:
      tokens = self.vocab.encode([normalize(t) for t in s.tokens])
      feats = np.zeros((len(s.tokens), self.max_features), np.int32)
      chars = np.zeros((len(s.tokens), self.max_chars), np.int32)
      for i, t in enumerate(s.tokens):
        row = token_features(t, first=i == 0, max_features=self.max_features)
        feats[i, : len(row)] = row
        codes = [ord(c) + 1 for c in t[: self.max_chars]]
        chars[i, : len(codes)] = codes
      tags = np.array([self._class_ids[t] for t in s.tags], np.int32)
      n = len(s.tokens)
      out.append((tokens, feats, tags, chars, np.ones(n, np.float32), np.arange(n, dtype=np.int32)))
    return out

  def _encode_pieces(self, s: Sentence) -> tuple[np.ndarray, ...]:
    tokens, starts = self.vocab.encode_words(s.tokens)
    n = len(tokens)
    tags, weights = np.zeros(n, np.int32), np.zeros(n, np.float32)
    tags[starts] = [self._class_ids[t] for t in s.tags]
    weights[starts] = 1.0
    feats = np.zeros((n, self.max_features), np.int32)
    chars = np.zeros((n, self.max_chars), np.int32)
    return tokens, feats, tags, chars, weights, starts

  def _batch(self, rows, length: int) -> dict[str, np.ndarray]:
    """Stacks encoded sentences, cut to `length`, into one batch."""
    features = np.zeros((len(rows), length, self.max_features), np.int32)
    chars = np.zeros((len(rows), length, self.max_chars), np.int32)
    for i, (_, f, _, c, _, _) in enumerate(rows):
      features[i, : min(len(f), length)] = f[:length]
      chars[i, : min(len(c), length)] = c[:length]
    tokens = pad_rows([r[0][:length] for r in rows], length, self.vocab.pad_id)
    batch = {
      "tokens": tokens,
      "features": features,
      "tags": pad_rows([r[2][:length] for r in rows], length, 0),
      "weights": pad_rows([r[4][:length] for r in rows], length, 0).astype(np.float32),
    }
    if self.max_chars:
      batch["chars"] = chars
    return batch

  @functools.lru_cache(maxsize=4)  # noqa: B019 (a few epochs' orders, kept with the task)
  def _epoch_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self._encoded["train"]))

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Sentences in a fresh shuffled order each epoch, a pure function of (seed, step); with
    `word_dropout`, that fraction of tokens becomes <unk> (their features stay), so the <unk> vector
    is trained in the contexts where unseen words occur."""
    train = self._encoded["train"]
    rows = []
    for i in range(step * batch_size, (step + 1) * batch_size):
      epoch, index = divmod(i, len(train))
      rows.append(train[self._epoch_order(epoch)[index]])
    batch = self._batch(rows, self._train_length)
    if self.word_dropout > 0:
      drop = (
        np.random.default_rng([self.seed, 2, step]).random(batch["tokens"].shape) < self.word_dropout
      )
      batch["tokens"] = np.where(drop & (batch["weights"] > 0), self.vocab.unk_id, batch["tokens"])
    return batch

  @functools.lru_cache(maxsize=4)  # noqa: B019 (a few epochs' orders, kept with the task)
  def _unlabelled_order(self, epoch: int, total: int) -> np.ndarray:
    return np.random.default_rng([self.seed, 3, epoch]).permutation(total)

  def unlabelled_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """A batch of the training sentences and the `unlabelled` ones together, in a fresh shuffled
    order each epoch (a pure function of (seed, step)); tags are all O (nothing is tagged)."""
    total = len(self._encoded["train"]) + len(self.unlabelled)
    rows = []
    for i in range(step * batch_size, (step + 1) * batch_size):
      epoch, index = divmod(i, total)
      j = int(self._unlabelled_order(epoch, total)[index])
      if j < len(self._encoded["train"]):
        rows.append(self._encoded["train"][j])
      else:  # Encoded when drawn: 160k sentences of features up front would take a while.
        tokens = self.unlabelled[j - len(self._encoded["train"])]
        rows.extend(self._encode([Sentence(tokens, ("O",) * len(tokens))]))
    return self._batch(rows, self._train_length)

  def _buckets(self, split: str, batch_size: int) -> list[tuple[np.ndarray, int]]:
    """(sentence indices, padded length) of each batch of `split`: sentences sorted by length, each
    batch padded to the power of two (at least 8) at or above its longest sentence, so that one long
    sentence pads only its own batch and a handful of shapes are compiled."""
    rows = self._encoded[split]
    order = np.argsort([len(r[0]) for r in rows], kind="stable")
    buckets = []
    for start in range(0, len(order), batch_size):
      indices = order[start : start + batch_size]
      longest = max(len(rows[i][0]) for i in indices)
      buckets.append((indices, max(8, 1 << (longest - 1).bit_length())))
    return buckets

  def split_batches(self, split: str, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Every sentence of `split` in batches of similar length (see `_buckets`), none cut; the last
    batch is filled with rows of weight 0."""
    rows = self._encoded[split]
    return [
      split_batches(self._batch([rows[i] for i in indices], length), batch_size)[0]
      for indices, length in self._buckets(split, batch_size)
    ]

  def eval_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
    return self.split_batches("dev", batch_size)

  def logits(self, predictor: Predictor, split: str, batch_size: int) -> list[np.ndarray]:
    """The model's tag logits (a CRF's emissions) for `split`, one float32 [length, C] array per
    sentence, in file order."""
    sentences = self.splits[split]
    out: list[np.ndarray | None] = [None] * len(sentences)
    buckets = self._buckets(split, batch_size)
    for (indices, _), batch in zip(buckets, self.split_batches(split, batch_size), strict=True):
      logits = predictor.logits(batch)
      for row, i in enumerate(indices):
        out[i] = logits[row, self._encoded[split][i][5]]  # Each word's (first piece's) logits.
    return out

  def decode_tags(
    self, logits: list[np.ndarray], o_margin: float = 0.0, crf_scores: tuple | None = None
  ) -> list[list[str]]:
    """Tags per token after lowering the O logit by `o_margin` (0: none): the argmax of each token,
    or with `crf_scores` (transitions, start, end) the Viterbi sequence of each sentence."""
    o = self.class_names.index("O")
    shifted = []
    for x in logits:
      x = x.copy()
      x[:, o] -= o_margin
      shifted.append(x)
    if crf_scores is None:
      ids = [x.argmax(-1) for x in shifted]
    else:  # All sentences at once, padded to a power of two (a handful of compiled shapes).
      length = max(8, 1 << (max(len(x) for x in shifted) - 1).bit_length())
      emissions = np.zeros((len(shifted), length, self.num_classes), np.float32)
      mask = np.zeros((len(shifted), length), bool)
      for i, x in enumerate(shifted):
        emissions[i, : len(x)], mask[i, : len(x)] = x, True
      decoded = np.asarray(_viterbi(emissions, *crf_scores, mask)[0])
      ids = [decoded[i, : len(x)] for i, x in enumerate(shifted)]
    return [[self.class_names[c] for c in row] for row in ids]

  def predict(self, predictor: Predictor, split: str, batch_size: int) -> list[list[str]]:
    """The model's tags for every token of `split` (argmax, or a CRF's Viterbi), one list per
    sentence."""
    return self.decode_tags(self.logits(predictor, split, batch_size), crf_scores=predictor.crf_scores())

  def score(self, predictor: Predictor, batch_size: int, *, final: bool) -> dict[str, float]:
    """Entity scores (percent) on dev, and at the final evaluation on test too.

    "precision", "recall", "f1": dev, argmax tags. "tuned_f1": dev with the O logit lowered by the
    margin of O_MARGINS that maximises dev F1 ("o_margin"; a per-token tagger trained on mostly-O data
    finds too few entities, and this trades precision for recall). At the final evaluation, "test_f1",
    "test_precision", "test_recall" and per type "test_f1_TYPE" (argmax), and "test_tuned_f1" with
    dev's margin: test never chooses anything.
    """
    dev_gold = [s.tags for s in self.splits["dev"]]
    dev_logits = self.logits(predictor, "dev", batch_size)
    decode = functools.partial(self.decode_tags, crf_scores=predictor.crf_scores())
    scores = entity_scores(dev_gold, decode(dev_logits))
    out = {k: scores[k] for k in ("precision", "recall", "f1")}
    tuned = {m: entity_scores(dev_gold, decode(dev_logits, m))["f1"] for m in O_MARGINS}
    margin = max(O_MARGINS, key=lambda m: (tuned[m], -m))
    out.update(tuned_f1=tuned[margin], o_margin=margin)
    if final:
      test_gold = [s.tags for s in self.splits["test"]]
      test_logits = self.logits(predictor, "test", batch_size)
      scores = entity_scores(test_gold, decode(test_logits))
      out.update({f"test_{k}": v for k, v in scores.items() if not k.startswith("num_")})
      out["test_tuned_f1"] = entity_scores(test_gold, decode(test_logits, margin))["f1"]
    return out

  def save(self, workdir: str) -> None:
    """Writes vocab.txt (one token per line, line i = id i) and tags.txt (class i on line i); a run
    that resumes must find the very same files.

    Raises:
      ValueError: when the run directory holds a different vocabulary or tag set (the data changed).
    """
    if self.subwords:
      with open(self.vocab.path, "rb") as f:
        save_once(os.path.join(workdir, TOKENIZER_FILE), f.read(), TOKENIZER_FILE)
    saved = (
      ((SAVED_FILES[1], self.class_names),)
      if self.subwords
      else zip(SAVED_FILES, (self.vocab.tokens, self.class_names), strict=True)
    )
    for name, items in saved:
      text = "".join(f"{item}\n" for item in items)
      save_once(os.path.join(workdir, name), text.encode("utf-8"), name)

  def data_files(self) -> list[str]:
    return list(self.files)

  def encode_text(self, text: str) -> np.ndarray:
    if self.subwords:
      return self.vocab.encode_words(text.split())[0]
    return self.vocab.encode([normalize(t) for t in text.split()])

  def decode_ids(self, ids) -> str:
    if self.subwords:
      return self.vocab.decode_text(ids)
    return " ".join(self.vocab.decode(ids))


_viterbi = jax.jit(crf.viterbi)


def build_vocabulary(sentences: list[Sentence], min_count: int) -> Vocabulary:
  """Normalised words seen at least `min_count` times in `sentences`, most frequent first."""
  counts = collections.Counter(normalize(t) for s in sentences for t in s.tokens)
  words = sorted(
    (w for w, c in counts.items() if c >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w)
  )
  return Vocabulary((*SPECIALS, *words))


def _saved_vocabulary(
  workdir: str | None, subwords: bool = False
) -> tuple[Vocabulary | HFVocabulary | None, tuple[str, ...] | None]:
  """The vocabulary and tag names a run saved (vocab.txt or its tokenizer.json, and tags.txt), or
  (None, None)."""
  if subwords:
    tokenizer, tags = (os.path.join(workdir or "", n) for n in (TOKENIZER_FILE, SAVED_FILES[1]))
    if workdir and os.path.exists(tokenizer) and os.path.exists(tags):
      return HFVocabulary(tokenizer), tuple(read_lines(tags))
    return None, None
  if not workdir or not all(os.path.exists(os.path.join(workdir, n)) for n in SAVED_FILES):
    return None, None
  vocab_lines, tag_lines = (read_lines(os.path.join(workdir, name)) for name in SAVED_FILES)
  return Vocabulary(tuple(vocab_lines)), tuple(tag_lines)


def make_task(task_config, data_config, *, seed: int, workdir: str | None = None) -> NerTask:
  """The NER task of `task_config` (fields max_length, min_count, max_features, word_dropout and
  optionally max_chars) on the folder `data_config.path` holding train, dev and test files. With a
  `workdir` holding a run's saved vocabulary and tags (vocab.txt, tags.txt), those are used, not
  rebuilt from the data.

  Raises:
    ValueError: naming the config field (a bad value, no data.path, a missing file) or, for a
      malformed line, the file and line number.
  """
  path = data_config.get("path", "") if data_config is not None else ""
  if not path:
    raise ValueError("config.data.path: the ner task needs a folder holding train, dev and test files")
  if not os.path.isdir(path):
    raise ValueError(f"config.data.path: {path!r} is not a folder")
  for field in ("max_length", "min_count", "max_features"):
    if int(task_config[field]) <= 0:
      raise ValueError(f"config.task.{field}: must be positive, got {task_config[field]}")
  max_chars = task_config.get("max_chars", 0)
  if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0:
    raise ValueError(
      f"config.task.max_chars: must be an int >= 0 (0 = no characters), got {max_chars!r}"
    )
  if not 0.0 <= float(task_config.word_dropout) < 1.0:
    raise ValueError(f"config.task.word_dropout: must be in [0, 1), got {task_config.word_dropout}")
  unlabelled_files = [f.strip() for f in str(data_config.get("unlabelled", "")).split(",") if f.strip()]
  for file in unlabelled_files:
    if not os.path.isfile(file):
      raise ValueError(f"config.data.unlabelled: {file!r} is not a file")
  files = {split: split_path(path, split) for split in SPLITS}
  splits = {split: read_conll(file) for split, file in files.items()}
  for split, sentences in splits.items():
    if not sentences:
      raise ValueError(f"config.data.path: the {split} file in {path!r} holds no sentences")
  tokenizer_file = str(task_config.get("tokenizer_file", "") or "")
  if tokenizer_file and not os.path.isfile(tokenizer_file):
    raise ValueError(f"config.task.tokenizer_file: {tokenizer_file!r} is not a file")
  vocab, class_names = _saved_vocabulary(workdir, bool(tokenizer_file))  # The run's own, if saved.
  if vocab is None and tokenizer_file:
    try:
      vocab = HFVocabulary(tokenizer_file)
    except ValueError as e:
      raise ValueError(f"config.task.tokenizer_file: {e}") from None
  vocab = vocab or build_vocabulary(splits["train"], int(task_config.min_count))
  if isinstance(vocab, HFVocabulary) and vocab.unk_id is None and float(task_config.word_dropout):
    raise ValueError(
      f"config.task.word_dropout: {task_config.word_dropout} needs an unknown token, which "
      f"{tokenizer_file!r} lacks; set it to 0"
    )
  class_names = class_names or _class_names(splits)
  unknown = sorted({t for sents in splits.values() for s in sents for t in s.tags} - set(class_names))
  if unknown:
    raise ValueError(
      f"config.data.path: tags {unknown} of {path!r} are not among the run's saved tags "
      f"{list(class_names)} (tags.txt in {workdir!r}); the data changed since the run was trained"
    )
  return NerTask(
    splits=splits,
    vocab=vocab,
    class_names=class_names,
    max_length=int(task_config.max_length),
    max_features=int(task_config.max_features),
    word_dropout=float(task_config.word_dropout),
    seed=seed,
    max_chars=max_chars,
    unlabelled=tuple(s for file in unlabelled_files for s in read_unlabelled(file)),
    files=(*files.values(), *unlabelled_files),
  )


_WORDS = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def read_unlabelled(path: str) -> list[tuple[str, ...]]:
  """The sentences of an untagged file, as words: a .tsv's first column split into words and
  punctuation, or a CoNLL file's tokens (tags ignored)."""
  if not path.endswith(".tsv"):
    return [s.tokens for s in read_conll(path)]
  sentences = []
  for line in read_lines(path):
    words = tuple(_WORDS.findall(line.split("\t")[0]))
    if words:
      sentences.append(words)
  return sentences
