"""Plain text for language modelling: a character (or SentencePiece subword, or a pretrained model's
Hugging Face tokenizer) vocabulary, random training windows, a fixed set of validation windows, and
samples from the model.

`config.data.path` is a UTF-8 text file, or a folder holding `train.txt` and `val.txt`, or a folder
holding one `.txt` file. One file is split as nanoGPT's `data/shakespeare_char/prepare.py` splits
Tiny Shakespeare: the first 90 % of its characters train, the last 10 % validate.

- Tokens: `config.task.tokenizer = "char"` gives one token per character of the training split (ids
  0-3 the specials, then the characters in code-point order; saved as `vocab.json` in the run
  directory, which a resume must find unchanged). `"subword"` trains the project's SentencePiece BPE
  model (`attn.tasks.translation.train_subwords`) of `config.task.vocab_size` pieces on the training
  split's lines; each line's pieces are followed by the eos id, which stands for the line break.
  `"hf"` reads a Hugging Face fast tokenizer (`tokenizer.json`, through the `tokenizers` library) from
  `config.task.tokenizer_file`, or the copy in the run directory (`tokenizer.json`, saved once and
  loaded from there ever after): its ids are the model's, `config.task.vocab_size` rows (0 = the
  tokenizer's size; a converted checkpoint's may be larger than its tokenizer's: the extra ids decode
  to nothing), `config.task.bos_id`, `eos_id` and `pad_id` (None: no padding token) are the model's
  specials, and no id stands for an unknown token. The data is encoded without the tokenizer's
  special tokens, a prompt (`encode_text`) with them (as `tokenizer(text)` in transformers); a piece
  of a prompt the tokenizer maps to its unknown token is an error. An empty `tokenizer_file` (a
  checkpoint folder without tokenizer.json) makes text token ids separated by spaces. Without
  `config.data.path`, an "hf" run directory (`launch.convert`'s) still opens for inspection
  (`restore_run`: sampling, attention, analysis): its only window is `block_size` zeros, and
  training it is refused in one line naming `config.data.path`.
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
from attn.tasks.hf_tokenizer import TOKENIZER_FILE
from attn.tasks.translation import Subwords, train_subwords

TOKENIZERS = ("char", "subword", "hf")
TRAIN_FRACTION = 0.9  # nanoGPT's split of one file: the first 90 % train.
CHAR_VOCAB_FILE = "vocab.json"  # The characters, as a JSON list (a line per token cannot hold "\n").
SUBWORD_MODEL_FILE = "subwords.model"
HF_TOKENIZER_FILE = TOKENIZER_FILE  # A Hugging Face fast tokenizer, as the run keeps its copy.


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


class PretrainedVocabulary:
  """A Hugging Face tokenizer's tokens by id, as many as the model's vocabulary (`size`, at least the
  tokenizer's; ids past the tokenizer's are "<unused_ID>"), with the model's special ids. It has no
  <unk> id: `unk_id` is -1, so that every id counts as an ordinary token where one is drawn above
  `unk_id` (the analysis's random tokens)."""

  unk_id = -1

  def __init__(self, tokens: Sequence[str], *, pad_id: int | None, bos_id: int, eos_id: int):
    self.tokens = tuple(tokens)
    self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

  def __len__(self) -> int:
    return len(self.tokens)

  def decode(self, ids: Sequence[int], *, strip: bool = True) -> list[str]:
    """Ids -> the tokenizer's token strings; with `strip`, stops at eos and drops pad and bos."""
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if strip and i == self.eos_id:
        break
      if strip and i in (self.pad_id, self.bos_id):
        continue
      words.append(self.tokens[i] if 0 <= i < len(self.tokens) else "<unk>")
    return words


class HFTokenizer:
  """A `tokenizers.Tokenizer` read from a tokenizer.json, with the file's bytes (what the run keeps)."""

  def __init__(self, content: bytes, path: str):
    import tokenizers

    try:
      self.tokenizer = tokenizers.Tokenizer.from_str(content.decode("utf-8"))
    except Exception as e:  # The library raises its own exceptions (a Rust error) on a bad file.
      raise ValueError(
        f"{path}: not a Hugging Face tokenizer.json ({' '.join(str(e).split())})"
      ) from None
    self.content, self.path = content, path
    self.size = self.tokenizer.get_vocab_size(with_added_tokens=True)
    unk = getattr(self.tokenizer.model, "unk_token", None)
    self.unk_id = self.tokenizer.token_to_id(unk) if unk else None

  @classmethod
  def load(cls, path: str) -> HFTokenizer:
    try:
      with open(path, "rb") as f:
        return cls(f.read(), path)
    except OSError as e:
      raise ValueError(f"config.task.tokenizer_file: {path!r}: {e.strerror}") from None

  def tokens(self, size: int) -> list[str]:
    """The token of each id below `size` ("<unused_ID>" for an id the tokenizer does not use)."""
    tokens = [self.tokenizer.id_to_token(i) for i in range(min(size, self.size))]
    tokens = [t if t is not None else f"<unused_{i}>" for i, t in enumerate(tokens)]
    return tokens + [f"<unused_{i}>" for i in range(len(tokens), size)]

  def encode(self, text: str, *, prompt: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ids, the characters each id spells: its end offset past the previous one's), int32. A
    `prompt` gets the tokenizer's special tokens (the data does not), and may not hold text the
    tokenizer maps to its unknown token.

    Raises:
      ValueError: quoting the pieces of a prompt the tokenizer maps to its unknown token.
    """
    encoding = self.tokenizer.encode(text, add_special_tokens=prompt)
    ids = np.asarray(encoding.ids, np.int32)
    ends = np.maximum.accumulate(np.asarray([end for _, end in encoding.offsets] or [0], np.int64))
    chars = np.diff(ends[: len(ids)], prepend=0).astype(np.int32)
    if prompt and self.unk_id is not None and self.unk_id in encoding.ids:
      unknown = sorted(
        {text[s:e] for i, (s, e) in zip(encoding.ids, encoding.offsets, strict=True) if i == self.unk_id}
      )
      raise ValueError(
        f"text the tokenizer cannot spell (its unknown token): {', '.join(map(repr, unknown))}"
      )
    return ids, chars

  def decode(self, ids: Sequence[int]) -> str:
    """The text of the ids the tokenizer has (special tokens included; the model's extra ids
    dropped)."""
    return self.tokenizer.decode([i for i in ids if 0 <= i < self.size], skip_special_tokens=False)


class IdTokenizer:
  """A converted checkpoint's stand-in for a tokenizer when its folder had no tokenizer.json: text
  is token ids separated by spaces, and ids decode to the same."""

  content, path, size, unk_id = None, "", 0, None

  def tokens(self, size: int) -> list[str]:
    return [str(i) for i in range(size)]

  def encode(self, text: str, *, prompt: bool) -> tuple[np.ndarray, np.ndarray]:
    del prompt
    words = text.split()
    if not all(w.isdigit() for w in words):
      raise ValueError(
        "the run has no tokenizer (its model folder had no tokenizer.json): give token ids "
        f"separated by spaces, got {text!r}"
      )
    return np.asarray([int(w) for w in words], np.int32), np.ones(len(words), np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(f" {i}" for i in ids)


def _hf_tokenizer(task_config, workdir: str | None) -> HFTokenizer | IdTokenizer:
  """The run directory's tokenizer.json when it holds one, else `config.task.tokenizer_file`; with
  neither (an empty `tokenizer_file`), token ids as text (`IdTokenizer`)."""
  saved = os.path.join(workdir, HF_TOKENIZER_FILE) if workdir else ""
  if saved and os.path.exists(saved):
    return HFTokenizer.load(saved)
  path = task_config.get("tokenizer_file") or ""
  return HFTokenizer.load(path) if path else IdTokenizer()


def _hf_vocabulary(hf: HFTokenizer, task_config) -> PretrainedVocabulary:
  """The model's vocabulary over the tokenizer's (`config.task.vocab_size`, `bos_id`, `eos_id`,
  `pad_id`)."""
  size = task_config.get("vocab_size") or hf.size
  if isinstance(size, bool) or not isinstance(size, int) or size < max(hf.size, 1):
    raise ValueError(
      f"config.task.vocab_size: must be an int >= the tokenizer's {hf.size} tokens (or 0 for that), "
      f"got {size!r}"
    )
  specials = {}
  for name in ("bos_id", "eos_id", "pad_id"):
    value = task_config.get(name)
    if value is None and name == "pad_id":
      specials[name] = None
      continue
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
      raise ValueError(f"config.task.{name}: must be an id in [0, {size}), got {value!r}")
    specials[name] = value
  return PretrainedVocabulary(hf.tokens(size), **specials)


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
    hf: HFTokenizer | IdTokenizer | None = None,
    num_samples: int = 0,
    sample_tokens: int = 0,
    sample_prompt: str = "\n",
    eval_lengths: Sequence[int] = (),
    icl_windows: int = 0,
  ):
    self.train_ids, self.val_ids, self.val_chars = train_ids, val_ids, val_chars
    self.vocab, self.tokenizer, self.subwords, self.hf = vocab, tokenizer, subwords, hf
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
      ValueError: naming the characters the training split never had (with "hf", the text the
        tokenizer maps to its unknown token).
    """
    if self.tokenizer == "hf":
      ids = self.hf.encode(text, prompt=True)[0]
      if np.any(ids >= len(self.vocab)):
        raise ValueError(f"ids past the model's vocabulary of {len(self.vocab)}: {ids.tolist()}")
      return ids
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
    if self.tokenizer == "hf":
      return self.hf.decode(ids)
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
    """Writes the vocabulary (vocab.json), the subword model or the tokenizer.json into the run
    directory.

    Raises:
      ValueError: when the run directory holds a different one (the data changed).
    """
    if self.tokenizer == "hf":
      if self.hf.content is None:  # No tokenizer: nothing to keep.
        return
      path = os.path.join(workdir, HF_TOKENIZER_FILE)
      if os.path.exists(path):
        with open(path, "rb") as f:
          if f.read() != self.hf.content:
            raise ValueError(
              f"config.task.tokenizer_file: {self.hf.path!r} differs from the run's {path}; the "
              "tokenizer changed since the run started"
            )
      save_once(path, self.hf.content, "tokenizer")
      return
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
  for subwords, `num_samples`, `sample_tokens`, `sample_prompt`, `eval_lengths`, `icl_windows`; for
  "hf" `tokenizer_file`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`) on `config.data.path`. With a
  `workdir` holding a saved vocabulary (vocab.json), subword model or tokenizer.json, that is loaded
  instead of built again from the text: a run's vocabulary is part of its identity, never rebuilt (a
  character the saved vocabulary lacks is <unk>, as in validation text). With "hf", a `workdir` and
  no `config.data.path`, the task opens the run for inspection (see the module docstring).

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
  hf = subwords = None
  if tokenizer == "hf":
    hf = _hf_tokenizer(task_config, workdir)
    vocab = _hf_vocabulary(hf, task_config)
  if not path and hf is not None and workdir is not None:
    # A run directory opened for inspection (launch.convert's, without data): one window of zeros.
    train_ids = val_ids = np.zeros(block_size + 2, np.int32)
    return TextTask(
      train_ids=train_ids,
      val_ids=val_ids,
      val_chars=np.ones(len(val_ids), np.int32),
      vocab=vocab,
      tokenizer=tokenizer,
      block_size=block_size,
      eval_windows=eval_windows,
      seed=seed,
      files=[],
      hf=hf,
    )
  if not path:
    raise ValueError(
      "config.data.path: empty; the text task needs a text file, or a folder of train.txt and val.txt"
      + (" (a converted run without data is for inspection only)" if hf is not None else "")
    )
  if isinstance(hf, IdTokenizer):
    raise ValueError(
      "config.task.tokenizer_file: empty; text data needs a Hugging Face tokenizer.json (a run "
      "without one takes token ids, for inspection only)"
    )
  paths, layout = text_files(path)
  texts = [read_text(p) for p in paths]
  train_text, val_text = split_train_val(texts[0]) if layout == "90/10" else texts
  if hf is not None:
    train_ids = hf.encode(train_text, prompt=False)[0]
    val_ids, val_chars = hf.encode(val_text, prompt=False)
  elif tokenizer == "subword":
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
    hf=hf,
    num_samples=num_samples,
    sample_tokens=sample_tokens,
    sample_prompt=str(task_config.get("sample_prompt", "\n")),
    eval_lengths=tuple(eval_lengths),
    icl_windows=icl_windows,
  )
