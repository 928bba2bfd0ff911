"""Plain text for language modelling: a character (or SentencePiece subword) vocabulary, random
training windows, a fixed set of validation windows, and samples from the model.

`config.data.path` is a UTF-8 text file, or a folder holding `train.txt` and `val.txt`, or a folder
holding one `.txt` file. One file is split as nanoGPT's `data/shakespeare_char/prepare.py` splits
Tiny Shakespeare: the first 90 % of its characters train, the last 10 % validate.

- Tokens: `config.task.tokenizer = "char"` gives one token per character of the training split (ids
  0-3 the specials, then the characters in code-point order; saved as `vocab.json` in the run
  directory, which a resume must find unchanged). `"subword"` trains the project's SentencePiece BPE
  model (`attn.tasks.translation.train_subwords`) of `config.task.vocab_size` pieces on the training
  split's lines; each line's pieces are followed by the eos id, which stands for the line break.
- Training batches: `batch_size` windows of `block_size` tokens at uniformly random offsets (a pure
  function of (seed, step), as in nanoGPT's `get_batch`); the targets are the windows shifted by one.
- Validation: non-overlapping windows tiling the validation split (all of them, or `eval_windows`
  evenly spaced ones), the same at every evaluation. Their rows carry the number of characters the
  targets spell, from which the loop reports bits per character (loss per character / ln 2) besides
  the loss per token and the perplexity; with characters as tokens, bits per character is the loss
  over ln 2.
- Longer contexts: with `eval_lengths` (e.g. (64, 128, 256, 512)), the final evaluation also scores
  the loss per token over non-overlapping windows of each length tiling the validation split
  (`loss_at_<length>`, every position of every window counted, as Press et al. 2022 evaluate length
  extrapolation); a model trained on `block_size` tokens then reads contexts it never saw.
- In-context learning: with `icl_windows` > 0, every evaluation also logs `icl_score`, Olsson et al.
  (2022)'s in-context learning score scaled to the block: on the first `icl_windows` validation
  windows, the mean loss at the last sixteenth of the positions ([T - T/16, T)) minus the mean loss
  at the second sixteenth ([T/16, T/8)): about token 500 against token 50 of their 512-token
  context, here T = `block_size`. Negative: later tokens are predicted better, thanks to the context.
- Samples: `num_samples` texts of `sample_tokens` tokens (temperature 1, all tokens) from
  `sample_prompt`, written by the loop to `samples/<step>.txt` at every evaluation, with the model's
  context limited to `block_size`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn.tasks.base import (
  SPECIALS,
  TRAIN_STREAM,
  Predictor,
  Task,
  Vocabulary,
  save_once,
  split_batches,
  stream_rng,
)
from attn.tasks.translation import Subwords, train_subwords

TOKENIZERS = ("char", "subword")
TRAIN_FRACTION = 0.9  # nanoGPT's split of one file: the first 90 % train.
CHAR_VOCAB_FILE = "vocab.json"  # The characters, as a JSON list (a line per token cannot hold "\n").
SUBWORD_MODEL_FILE = "subwords.model"


def read_text(path: str) -> str:
  """A UTF-8 file's text (a byte-order mark skipped; line ends kept as they are).

  Raises:
    ValueError: "FILE:LINE: not UTF-8 (...)" for the first line with bytes that are not UTF-8.
  """
  with open(path, "rb") as f:
    raw = f.read().removeprefix(b"\xef\xbb\xbf")
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None


def text_files(path: str) -> tuple[list[str], str]:
  """The files of `config.data.path` and how they split: ([train, val], "files") or ([one], "90/10").

  Raises:
    ValueError: naming config.data.path when it holds neither layout.
  """
  if os.path.isfile(path):
    return [path], "90/10"
  if not os.path.isdir(path):
    raise ValueError(f"config.data.path: {path!r} is neither a text file nor a folder")
  train, val = os.path.join(path, "train.txt"), os.path.join(path, "val.txt")
  if os.path.isfile(train) and os.path.isfile(val):
    return [train, val], "files"
  texts = sorted(name for name in os.listdir(path) if name.endswith(".txt"))
  if len(texts) == 1:
    return [os.path.join(path, texts[0])], "90/10"
  found = ", ".join(texts) if texts else "none"
  raise ValueError(
    f"config.data.path: {path!r} must hold train.txt and val.txt, or exactly one .txt file "
    f"(found {found}), or be a text file"
  )


def split_train_val(text: str) -> tuple[str, str]:
  """nanoGPT's split: the first 90 % of the characters, the last 10 %."""
  n = int(len(text) * TRAIN_FRACTION)
  return text[:n], text[n:]


def char_vocabulary(text: str) -> Vocabulary:
  """The specials, then every character of `text` in code-point order."""
  return Vocabulary((*SPECIALS, *sorted(set(text) - set(SPECIALS))))


def load_char_vocabulary(path: str) -> Vocabulary:
  """The character vocabulary a run saved (`TextTask.save`), or ValueError naming the file."""
  try:
    with open(path, encoding="utf-8") as f:
      return Vocabulary(tuple(json.load(f)))
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(f"{path}: not a saved character vocabulary ({e})") from None


class TextTask(Task):
  """A language-modelling task over one token stream per split (see the module docstring)."""

  kind = "lm"
  num_classes = 0
  class_names: tuple[str, ...] = ()

  def __init__(
    self,
    *,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    val_chars: np.ndarray,
    vocab: Vocabulary,
    tokenizer: str,
    block_size: int,
    eval_windows: int,
    seed: int,
    files: Sequence[str],
    subwords: Subwords | None = None,
    num_samples: int = 0,
    sample_tokens: int = 0,
    sample_prompt: str = "\n",
    eval_lengths: Sequence[int] = (),
    icl_windows: int = 0,
  ):
    self.train_ids, self.val_ids, self.val_chars = train_ids, val_ids, val_chars
    self.vocab, self.tokenizer, self.subwords = vocab, tokenizer, subwords
    self.block_size, self.seed, self.files = block_size, seed, tuple(files)
    self.num_samples, self.sample_tokens, self.sample_prompt = num_samples, sample_tokens, sample_prompt
    self.eval_windows, self.eval_lengths = eval_windows, tuple(eval_lengths)
    self.icl_windows = icl_windows
    starts = np.arange(0, len(val_ids) - block_size, block_size)  # Each window needs one more target.
    if eval_windows and eval_windows < len(starts):
      starts = starts[np.linspace(0, len(starts) - 1, eval_windows).round().astype(int)]
    self.eval_starts = starts

  @property
  def main_metric(self) -> str:
    return "loss"

  def _windows(self, ids: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    offsets_BT = starts[:, None] + np.arange(self.block_size)
    return {"tokens": ids[offsets_BT], "targets": ids[offsets_BT + 1]}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    rng = stream_rng(self.seed, TRAIN_STREAM, step)
    starts = rng.integers(0, len(self.train_ids) - self.block_size, batch_size)
    batch = self._windows(self.train_ids, starts)
    batch["weights"] = np.ones(batch["tokens"].shape, np.float32)
    return batch

  def eval_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
    examples = self._windows(self.val_ids, self.eval_starts)
    examples["weights"] = np.ones(examples["tokens"].shape, np.float32)
    offsets = self.eval_starts[:, None] + 1 + np.arange(self.block_size)
    examples["characters"] = self.val_chars[offsets].sum(-1).astype(np.float32)
    return split_batches(examples, batch_size)

  def score(self, predictor: Predictor, batch_size: int, *, final: bool) -> dict[str, float]:
    """`icl_score` at every evaluation when `icl_windows` > 0; at the final evaluation also
    `loss_at_<L>` for each L of `eval_lengths` (see the module docstring)."""
    scores = {}
    if self.icl_windows:
      scores["icl_score"] = self.icl_score(predictor, batch_size)
    if final:
      scores.update({f"loss_at_{n}": self.loss_at(predictor, n, batch_size) for n in self.eval_lengths})
    return scores

  def icl_score(self, predictor: Predictor, batch_size: int) -> float:
    """Mean loss at positions [T - T/16, T) minus at [T/16, T/8) of the first `icl_windows`
    validation windows (T = block_size; see the module docstring)."""
    T, sixteenth = self.block_size, max(1, self.block_size // 16)
    starts = self.eval_starts[: self.icl_windows]
    late, early = [], []
    for i in range(0, len(starts), batch_size):
      batch = self._windows(self.val_ids, starts[i : i + batch_size])
      losses_BT = optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(predictor.logits({"tokens": batch["tokens"]}), jnp.float32),
        jnp.asarray(batch["targets"]),
      )
      late.append(np.asarray(losses_BT[:, T - sixteenth :]))
      early.append(np.asarray(losses_BT[:, sixteenth : 2 * sixteenth]))
    return float(np.concatenate(late).mean() - np.concatenate(early).mean())

  def loss_at(self, predictor: Predictor, length: int, batch_size: int) -> float:
    """Mean loss per token over the validation split cut into non-overlapping windows of `length`
    (at most as many tokens as the eval set holds when `eval_windows` caps it), in batches of about
    `batch_size` x `block_size` tokens; `predictor.logits({"tokens": [B, length]}) -> [B, length, V]`."""
    starts = np.arange(0, len(self.val_ids) - length, length)
    if len(starts) == 0:
      raise ValueError(
        f"config.task.eval_lengths: {length} needs a validation split longer than {length + 1} "
        f"tokens; it has {len(self.val_ids)}"
      )
    if self.eval_windows:
      cap = max(1, self.eval_windows * self.block_size // length)
      if cap < len(starts):
        starts = starts[np.linspace(0, len(starts) - 1, cap).round().astype(int)]
    per_batch = max(1, batch_size * self.block_size // length)
    total, count = 0.0, 0
    for i in range(0, len(starts), per_batch):
      offsets_BT = starts[i : i + per_batch, None] + np.arange(length)
      logits_BTV = jnp.asarray(predictor.logits({"tokens": self.val_ids[offsets_BT]}))
      losses = optax.softmax_cross_entropy_with_integer_labels(
        logits_BTV.astype(jnp.float32), jnp.asarray(self.val_ids[offsets_BT + 1])
      )
      total += float(jnp.sum(losses))
      count += losses.size
    return total / count

  def encode_text(self, text: str) -> np.ndarray:
    """Text -> ids. A character the run's vocabulary cannot spell is an error, with characters and
    with subwords alike (SentencePiece would map it to <unk> in silence).

    Raises:
      ValueError: naming the characters the training split never had.
    """
    if self.tokenizer == "subword":
      ids = encode_lines(self.subwords, text)
      unk = self.vocab.unk_id
      unknown = (
        []
        if unk not in ids
        else sorted(c for c in set(text) - {"\n"} if unk in encode_lines(self.subwords, c))
      )
    else:
      ids, unknown = None, sorted(set(text) - set(self.vocab.tokens[len(SPECIALS) :]))
    if unknown:
      raise ValueError(
        f"characters not in the run's vocabulary (its training text never has them): "
        f"{', '.join(map(repr, unknown))}"
      )
    return self.vocab.encode(list(text)) if ids is None else ids

  def decode_ids(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.tokenizer == "subword":
      lines, line = [], []
      for i in ids:
        if i == self.vocab.eos_id:
          lines.append(self.subwords.decode(line))
          line = []
        elif i not in (self.vocab.pad_id, self.vocab.bos_id):
          line.append(i)
      return "\n".join([*lines, self.subwords.decode(line)])
    specials = range(len(SPECIALS))
    return "".join(self.vocab.tokens[i] for i in ids if i not in specials and i < len(self.vocab))

  def samples(self, predictor: Predictor) -> list[str]:
    if not self.num_samples or not self.sample_tokens:
      return []
    prompt = self.encode_text(self.sample_prompt)
    if len(prompt) == 0:
      prompt = np.array([self.vocab.bos_id], np.int32)
    prompt_BP = np.repeat(prompt[None], self.num_samples, axis=0)
    tokens = predictor.sample(
      prompt_BP,
      max_new_tokens=self.sample_tokens,
      rng=jax.random.PRNGKey(self.seed),
      context=self.block_size,
    )
    return [self.sample_prompt + self.decode_ids(row) for row in np.asarray(tokens)]

  def data_files(self) -> list[str]:
    return list(self.files)

  def save(self, workdir: str) -> None:
    """Writes the vocabulary (vocab.json) or the subword model into the run directory.

    Raises:
      ValueError: when the run directory holds a different one (the data changed).
    """
    if self.tokenizer == "subword":
      name, content = SUBWORD_MODEL_FILE, self.subwords.model_proto
    else:
      name, content = CHAR_VOCAB_FILE, json.dumps(list(self.vocab.tokens)).encode("utf-8")
    save_once(os.path.join(workdir, name), content, "vocabulary")


def encode_lines(subwords: Subwords, text: str) -> np.ndarray:
  """Each line's pieces followed by the eos id (the line break); the last line gets none unless the
  text ends with a line break."""
  lines = text.split("\n")
  rows = subwords.encode(lines)
  eos = np.array([Vocabulary.eos_id], np.int32)
  parts = []
  for number, row in enumerate(rows):
    parts.append(row)
    if number < len(rows) - 1:
      parts.append(eos)
  return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


def subword_characters(subwords: Subwords, ids: np.ndarray) -> np.ndarray:
  """Characters each id spells: its piece's length ("▁" is a space), 1 for eos (the line break), 0
  for the other specials; the "▁" SentencePiece puts before each line's first piece is no character
  of the text, so it is not counted."""
  pieces = subwords.vocab.tokens
  lengths = np.array([0 if i < len(SPECIALS) else len(p) for i, p in enumerate(pieces)], np.int32)
  lengths[Vocabulary.eos_id] = 1
  chars = lengths[ids]
  line_start = np.concatenate([[True], ids[:-1] == Vocabulary.eos_id])
  dummy = np.array([p.startswith("\u2581") for p in pieces])[ids]
  return chars - (line_start & dummy)


def _int_field(task_config, name: str, minimum: int) -> int:
  value = task_config.get(name)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"config.task.{name}: must be an int >= {minimum}, got {value!r}")
  return value


def make_task(task_config, data_config=None, *, seed: int = 0, workdir: str | None = None) -> TextTask:
  """The text task of `config.task` (fields `tokenizer`, `block_size`, `eval_windows`, `vocab_size`
  for subwords, `num_samples`, `sample_tokens`, `sample_prompt`, `eval_lengths`, `icl_windows`) on
  `config.data.path`. With a `workdir` holding a saved vocabulary (vocab.json) or subword model,
  that is loaded instead of built again from the text: a run's vocabulary is part of its identity,
  never rebuilt (a character the saved vocabulary lacks is <unk>, as in validation text).

  Raises:
    ValueError: naming the config field, the path, or FILE:LINE of bytes that are not UTF-8.
  """
  tokenizer = task_config.get("tokenizer", "char")
  if tokenizer not in TOKENIZERS:
    raise ValueError(
      f"config.task.tokenizer: unknown choice {tokenizer!r}; expected one of "
      f"{', '.join(map(repr, TOKENIZERS))}"
    )
  block_size = _int_field(task_config, "block_size", 1)
  eval_windows = _int_field(task_config, "eval_windows", 0)
  icl_windows = task_config.get("icl_windows", 0)
  if isinstance(icl_windows, bool) or not isinstance(icl_windows, int) or icl_windows < 0:
    raise ValueError(f"config.task.icl_windows: must be an int >= 0, got {icl_windows!r}")
  if icl_windows and block_size < 16:
    raise ValueError(f"config.task.icl_windows: needs block_size >= 16 (sixteenths), got {block_size}")
  num_samples = _int_field(task_config, "num_samples", 0)
  sample_tokens = _int_field(task_config, "sample_tokens", 0)
  eval_lengths = task_config.get("eval_lengths", ())
  if isinstance(eval_lengths, int) or not all(
    isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in eval_lengths
  ):
    raise ValueError(f"config.task.eval_lengths: must be a tuple of ints >= 1, got {eval_lengths!r}")
  path = (data_config or {}).get("path", "") if data_config is not None else ""
  if not path:
    raise ValueError(
      "config.data.path: empty; the text task needs a text file, or a folder of train.txt and val.txt"
    )
  paths, layout = text_files(path)
  texts = [read_text(p) for p in paths]
  train_text, val_text = split_train_val(texts[0]) if layout == "90/10" else texts
  subwords = None
  if tokenizer == "subword":
    saved = os.path.join(workdir, SUBWORD_MODEL_FILE) if workdir else ""
    if saved and os.path.exists(saved):
      subwords = Subwords.load(saved)
    else:
      vocab_size = _int_field(task_config, "vocab_size", len(SPECIALS) + 1)
      subwords = Subwords(train_subwords([ln for ln in train_text.split("\n") if ln], vocab_size))
    vocab = subwords.vocab
    train_ids, val_ids = encode_lines(subwords, train_text), encode_lines(subwords, val_text)
    val_chars = subword_characters(subwords, val_ids)
  else:
    saved = os.path.join(workdir, CHAR_VOCAB_FILE) if workdir else ""
    vocab = load_char_vocabulary(saved) if saved and os.path.exists(saved) else None
    vocab = vocab or char_vocabulary(train_text)
    train_ids = vocab.encode(list(train_text))
    val_ids = vocab.encode(list(val_text))  # A character the training split lacks is <unk>.
    val_chars = np.ones(len(val_ids), np.int32)
  for split, ids in (("training", train_ids), ("validation", val_ids)):
    if len(ids) <= block_size + 1:
      raise ValueError(
        f"config.task.block_size: {block_size} needs a {split} split longer than {block_size + 1} "
        f"tokens; {path!r} gives {len(ids)}"
      )
  for length in eval_lengths:  # Found now, not at the final evaluation after the training.
    if len(val_ids) <= length + 1:
      raise ValueError(
        f"config.task.eval_lengths: {length} needs a validation split longer than {length + 1} "
        f"tokens; {path!r} gives {len(val_ids)}"
      )
  return TextTask(
    train_ids=train_ids,
    val_ids=val_ids,
    val_chars=val_chars,
    vocab=vocab,
    tokenizer=tokenizer,
    block_size=block_size,
    eval_windows=eval_windows,
    seed=seed,
    files=paths,
    subwords=subwords,
    num_samples=num_samples,
    sample_tokens=sample_tokens,
    sample_prompt=str(task_config.get("sample_prompt", "\n")),
    eval_lengths=tuple(eval_lengths),
    icl_windows=icl_windows,
  )
