"""Tests for attn/tasks/hf_tokenizer.py: a BERT-style WordPiece tokenizer.json, built with the
`tokenizers` library as `transformers` saves one, read as a vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from attn.tasks.hf_tokenizer import HFVocabulary

WORDPIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "river", "bank", "of", "state",
              "indus", "##s", "##ia", "ind", ",", ".")  # fmt: skip


def bert_tokenizer_file(folder) -> str:
  """Writes a BERT-like tokenizer.json (lower-casing WordPiece, [CLS] ... [SEP]) into `folder`."""
  from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
  from tokenizers.models import WordPiece

  tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(WORDPIECES)}, unk_token="[UNK]"))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.add_special_tokens(list(WORDPIECES[:5]))  # As transformers saves them: special.
  tokenizer.decoder = decoders.WordPiece()
  tokenizer.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
  )
  path = str(folder / "tokenizer.json")
  tokenizer.save(path)
  return path


def test_specials_tokens_and_words(tmp_path):
  vocab = HFVocabulary(bert_tokenizer_file(tmp_path))
  assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 2, 3, 1)
  assert vocab.tokens == WORDPIECES and len(vocab) == len(WORDPIECES)
  ids, starts = vocab.encode_words(["The", "banks", "of", "India", "Zzz"])
  pieces = [WORDPIECES[i] for i in ids]
  assert pieces == ["[CLS]", "the", "bank", "##s", "of", "ind", "##ia", "[UNK]", "[SEP]"]
  np.testing.assert_array_equal(starts, [1, 2, 4, 5, 7])
  assert vocab.encode_text("river bank").tolist() == [6, 7]
  assert vocab.decode(ids) == pieces[1:-1]
  assert vocab.decode_text(ids) == "the banks of india"


def test_a_missing_or_bad_file_is_one_line(tmp_path):
  with pytest.raises(ValueError, match=r"tokenizer.json: missing"):
    HFVocabulary(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer.json").write_text("{}")
  with pytest.raises(ValueError, match=r"tokenizer.json: not a Hugging Face tokenizer"):
    HFVocabulary(str(tmp_path / "tokenizer.json"))
