"""A pretrained model's own tokenizer as a task's vocabulary: a Hugging Face fast tokenizer
(`tokenizer.json`, read with the `tokenizers` library) behind the interface of `base.Vocabulary`.

Its special tokens are found by their usual spellings (BERT's [PAD] [CLS] [SEP] [UNK], RoBERTa's and
Llama's <pad> <s> </s> <unk>, GPT-2's <|endoftext|>); one it lacks is None (GPT-2 has no padding or
unknown token), except that `pad_id` falls back to the end token, which pads rows where a padding
token is needed at all (losses and masks ignore those positions by their weights).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

TOKENIZER_FILE = "tokenizer.json"

# Spellings of each special token, in the order they are looked for.
_SPECIALS = {
  "pad": ("[PAD]", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>"),
  "bos": ("[CLS]", "<s>", "<|begin_of_text|>", "<|endoftext|>", "<bos>"),
  "eos": ("[SEP]", "</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"),
  "unk": ("[UNK]", "<unk>", "<|unk|>"),
}


class HFVocabulary:
  """A `tokenizers.Tokenizer` as a vocabulary: `tokens` in id order, the special ids, and encoding
  of text or of pre-split words (with where each word starts among the pieces)."""

  def __init__(self, path: str):
    """Reads `path` (a tokenizer.json).

    Raises:
      ValueError: naming the file when it is missing or not a tokenizer.
    """
    import tokenizers

    if not os.path.isfile(path):
      raise ValueError(f"{path}: missing (the model folder's {TOKENIZER_FILE})")
    try:
      self.tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # The library raises a bare Exception for a malformed file.
      raise ValueError(f"{path}: not a Hugging Face tokenizer ({e})") from None
    self.path = path
    by_id = {i: t for t, i in self.tokenizer.get_vocab(with_added_tokens=True).items()}
    self.tokens = tuple(by_id.get(i, "") for i in range(max(by_id) + 1 if by_id else 0))
    found = {
      name: next((i for i in map(self.tokenizer.token_to_id, spellings) if i is not None), None)
      for name, spellings in _SPECIALS.items()
    }
    self.bos_id, self.eos_id, self.unk_id = found["bos"], found["eos"], found["unk"]
    self.pad_id = found["pad"] if found["pad"] is not None else self.eos_id

  def __len__(self) -> int:
    return len(self.tokens)

  def encode_text(self, text: str) -> np.ndarray:
    """The ids of `text`, as the tokenizer splits it, without added special tokens."""
    return np.array(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_words(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n], starts [len(words)]) of a sentence given as words, with the tokenizer's special
    tokens ([CLS] ... [SEP] for BERT); starts[w] is the index of word w's first piece (a word with no
    piece, such as a lone control character, gets its previous word's last piece, or 0)."""
    encoding = self.tokenizer.encode(list(words), is_pretokenized=True)
    starts = np.zeros(len(words), np.int32)
    seen = set()
    for i, word in enumerate(encoding.word_ids):
      if word is not None and word not in seen:
        seen.add(word)
        starts[word] = i
    for w in range(1, len(words)):
      if w not in seen:
        starts[w] = starts[w - 1]
    return np.array(encoding.ids, np.int32), starts

  def decode(self, ids: Sequence[int], *, strip: bool = True) -> list[str]:
    """Ids -> token strings; with `strip`, stops at the end token and drops padding and the start."""
    out = []
    for i in np.asarray(ids).tolist():
      if strip and i == self.eos_id and i != self.bos_id:
        break
      if strip and i in (self.pad_id, self.bos_id):
        continue
      out.append(self.tokens[i] if 0 <= i < len(self.tokens) else "")
    return out

  def decode_text(self, ids: Sequence[int]) -> str:
    """Ids -> text, as the tokenizer joins them (special tokens dropped)."""
    return self.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=True)
