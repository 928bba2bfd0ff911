"""Tests for attn/tasks/text.py on small text files the tests write (never the shared data): the
vocabulary, the split, the windows, bits per character worked by hand, samples, and the errors."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attn.nn.config import ModelConfig
from attn.nn.models import LanguageModel
from attn.tasks import SPECIALS, text
from attn.tasks.registry import make_task
from attn.train import evaluate, objectives, steps
from attn.train.predict import Predictor

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 3


def task_config(**changes) -> ml_collections.ConfigDict:
  fields = dict(
    name="text",
    tokenizer="char",
    vocab_size=0,
    block_size=8,
    eval_windows=0,
    num_samples=0,
    sample_tokens=0,
    sample_prompt="\n",
  )
  fields.update(changes)
  return ml_collections.ConfigDict(fields)


def build(path, **changes):
  return make_task(task_config(**changes), ml_collections.ConfigDict({"path": str(path)}), seed=0)


@pytest.fixture
def text_file(tmp_path):
  path = tmp_path / "input.txt"
  path.write_text(TEXT, encoding="utf-8")
  return path


def test_vocabulary_is_the_specials_then_the_training_characters(text_file):
  task = build(text_file)
  train_text, _ = text.split_train_val(TEXT)
  assert task.vocab.tokens[:4] == SPECIALS
  assert list(task.vocab.tokens[4:]) == sorted(set(train_text))
  assert task.decode_ids(task.encode_text("hear me")) == "hear me"


def test_one_file_splits_as_nanogpt_does(text_file):
  task = build(text_file)
  n = int(len(TEXT) * 0.9)
  assert task.decode_ids(task.train_ids) == TEXT[:n]
  assert len(task.val_ids) == len(TEXT) - n
  # A folder holding that one .txt file reads the same.
  assert np.array_equal(build(text_file.parent).train_ids, task.train_ids)


def test_train_and_val_files_are_used_as_given(tmp_path):
  (tmp_path / "train.txt").write_text("abcabcabcabcabcabc\n", encoding="utf-8")
  (tmp_path / "val.txt").write_text("cbacbacbacbacba\n", encoding="utf-8")
  task = build(tmp_path, block_size=4)
  assert task.decode_ids(task.train_ids) == "abcabcabcabcabcabc\n"
  assert task.decode_ids(task.val_ids) == "cbacbacbacbacba\n"
  assert task.data_files() == [str(tmp_path / "train.txt"), str(tmp_path / "val.txt")]


def test_training_windows_are_random_slices_and_a_pure_function_of_the_step(text_file):
  task = build(text_file)
  batch = task.train_batch(3, 5)
  assert batch["tokens"].shape == batch["targets"].shape == batch["weights"].shape == (5, 8)
  train_text = task.decode_ids(task.train_ids)
  for tokens, targets in zip(batch["tokens"], batch["targets"], strict=True):
    window = task.decode_ids(tokens)
    assert window in train_text
    assert task.decode_ids(targets)[:-1] == window[1:]  # The next character of each position.
  assert np.all(batch["weights"] == 1)
  again = build(text_file).train_batch(3, 5)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)
  assert not np.array_equal(batch["tokens"], task.train_batch(4, 5)["tokens"])


def test_validation_windows_tile_the_split_and_pad_the_last_batch(text_file):
  task = build(text_file)
  val = task.val_ids
  expected = (len(val) - 1) // 8  # Non-overlapping windows of 8, each with its 8 targets.
  batches = task.eval_batches(4)
  tokens = np.concatenate([b["tokens"] for b in batches])
  weights = np.concatenate([b["weights"] for b in batches])
  real = weights.sum(-1) > 0
  assert real.sum() == expected and not real[expected:].any()
  np.testing.assert_array_equal(tokens[:expected].reshape(-1), val[: expected * 8])
  np.testing.assert_array_equal(np.concatenate([b["characters"] for b in batches])[real], 8)
  assert all(
    np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(batches, task.eval_batches(4), strict=True)
  )
  subset = build(text_file, eval_windows=2).eval_batches(4)
  assert sum(int(b["weights"].sum(-1).astype(bool).sum()) for b in subset) == 2


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_bits_per_character_of_a_uniform_model_is_log2_of_the_vocabulary(text_file):
  """All parameters zero: logits 0, every character has probability 1 / V, so the loss is ln V per
  token, the perplexity V and bits per character log2 V, worked by hand."""
  task = build(text_file)
  V = len(task.vocab)
  config = ModelConfig(
    vocab_size=V, d_model=8, num_heads=2, d_ff=16, num_decoder_layers=1, dropout_rate=0.0, norm="pre"
  )
  model = LanguageModel(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  zeros = jax.tree.map(lambda x: jnp.zeros((1, *x.shape)), params)  # One seed.
  lm = objectives.LanguageModeling(main_metric="loss")
  eval_fn = jax.jit(jax.vmap(lambda p, b: steps.eval_step(p, b, model=model, objective=lm), (0, None)))
  metrics = evaluate.evaluate(eval_fn, zeros, task.eval_batches(4), lm)
  np.testing.assert_allclose(metrics["loss"], [math.log(V)], rtol=1e-6)
  np.testing.assert_allclose(metrics["perplexity"], [V], rtol=1e-5)
  np.testing.assert_allclose(metrics["bits_per_char"], [math.log2(V)], rtol=1e-6)


def test_subword_tokens_count_the_characters_they_spell(tmp_path):
  """(And a prompt character the subwords cannot spell is refused, not mapped to <unk> in silence.)"""
  path = tmp_path / "input.txt"
  path.write_text(TEXT, encoding="utf-8")
  task = build(path, tokenizer="subword", vocab_size=60)
  assert task.vocab.tokens[:4] == SPECIALS
  ids = text.encode_lines(task.subwords, TEXT)
  assert task.decode_ids(ids) == TEXT
  assert int(text.subword_characters(task.subwords, ids).sum()) == len(TEXT)
  batch = task.eval_batches(64)[0]
  real = batch["weights"].sum(-1) > 0
  assert np.all(batch["characters"][real] >= 8)  # A subword spells at least one character.
  np.testing.assert_array_equal(task.encode_text("Speak"), text.encode_lines(task.subwords, "Speak"))
  with pytest.raises(ValueError, match=r"^characters not in the run's vocabulary .*'Z', 'é'"):
    task.encode_text("Speak Zé")


def test_subwords_train_on_a_text_of_one_enormous_line(tmp_path):
  # SentencePiece skips lines over 4192 bytes in silence: it had nothing left, and its error blamed
  # config.task.vocab_size. Such lines are cut for its training only; the text is encoded whole.
  one_line = " ".join(TEXT.split()) * 40
  assert len(one_line.encode()) > 4192
  path = tmp_path / "input.txt"
  path.write_text(one_line, encoding="utf-8")
  task = build(path, tokenizer="subword", vocab_size=60)
  assert len(task.vocab.tokens) > len(SPECIALS) + len(set(one_line))  # Merges were learned.
  ids = text.encode_lines(task.subwords, one_line)
  assert task.decode_ids(ids) == one_line


def test_prompt_characters_outside_the_vocabulary_are_named(text_file):
  task = build(text_file)
  with pytest.raises(ValueError, match=r"not in the run's vocabulary .*: '§', 'é'$"):
    task.encode_text("Speak é§")


def test_save_writes_the_vocabulary_and_refuses_a_different_one(text_file, tmp_path):
  task = build(text_file)
  workdir = tmp_path / "run"
  workdir.mkdir()
  task.save(str(workdir))
  assert tuple(json.loads((workdir / "vocab.json").read_text(encoding="utf-8"))) == task.vocab.tokens
  task.save(str(workdir))  # The same vocabulary: fine.
  text_file.write_text(TEXT + "xyz\n" * 50, encoding="utf-8")
  with pytest.raises(ValueError, match=r"^config\.data\.path: the vocabulary .* differs"):
    build(text_file).save(str(workdir))


def test_a_runs_saved_vocabulary_is_loaded_not_rebuilt_from_changed_text(text_file, tmp_path):
  """Restoring a run (launch.sample, analyze, attend) after its training text changed: the run's
  own vocabulary, not one rebuilt from the new text (which renumbers every character after a new
  one, so the trained embedding rows would be read for other characters)."""
  task = build(text_file)
  workdir = tmp_path / "run"
  workdir.mkdir()
  task.save(str(workdir))
  text_file.write_text("!" + TEXT, encoding="utf-8")  # "!" sorts first: every id would shift.
  changed = make_task(
    task_config(), ml_collections.ConfigDict({"path": str(text_file)}), seed=0, workdir=str(workdir)
  )
  assert changed.vocab == task.vocab
  assert changed.train_ids[0] == task.vocab.unk_id  # The new character is <unk>, as in validation.
  assert build(text_file).vocab != task.vocab  # Without the run's folder: built from the text.


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_samples_start_with_the_prompt(text_file):
  task = build(text_file, num_samples=2, sample_tokens=5, sample_prompt="All:")
  config = ModelConfig(
    vocab_size=len(task.vocab), d_model=8, num_heads=2, d_ff=16, num_decoder_layers=1,
    positions="learned", max_length=8,
  )  # fmt: skip
  model = LanguageModel(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  samples = task.samples(Predictor(model, objectives.LanguageModeling("loss"), params))
  assert len(samples) == 2
  assert all(s.startswith("All:") and len(s) >= len("All:") for s in samples)


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"tokenizer": "bytes"}, "config.task.tokenizer: unknown choice 'bytes'"),
    ({"block_size": 0}, "config.task.block_size: must be an int >= 1"),
    ({"block_size": 1000}, "config.task.block_size: 1000 needs a training split longer than 1001"),
    ({"eval_windows": -1}, "config.task.eval_windows: must be an int >= 0"),
    ({"tokenizer": "subword", "vocab_size": 2}, "config.task.vocab_size: must be an int >= 5"),
  ],
)
def test_bad_fields_are_named(text_file, changes, message):
  with pytest.raises(ValueError) as error:
    build(text_file, **changes)
  assert str(error.value).startswith(message)


def test_bad_paths_and_bytes_are_named(tmp_path):
  with pytest.raises(ValueError, match=r"^config\.data\.path: empty"):
    build("")
  with pytest.raises(ValueError, match=r"must hold train\.txt and val\.txt, or exactly one \.txt file"):
    build(tmp_path)
  (tmp_path / "a.txt").write_text("x", encoding="utf-8")
  (tmp_path / "b.txt").write_text("y", encoding="utf-8")
  with pytest.raises(ValueError, match=r"\(found a.txt, b.txt\)"):
    build(tmp_path)
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"good line\nsecond \xff line\n")
  with pytest.raises(ValueError, match=r"bad.txt:2: not UTF-8"):
    build(bad)


def test_loss_at_a_length_tiles_the_validation_split_with_windows_of_that_length(text_file):
  """Uniform logits give loss log V at every length; the windows are consecutive, non-overlapping
  slices of the validation split, in batches of about batch_size x block_size tokens."""
  task = build(text_file, eval_lengths=(4, 8, 16))
  V = len(task.vocab)
  seen = []

  class Uniform:
    def logits(self, batch):
      seen.append(np.asarray(batch["tokens"]))
      return np.zeros((*batch["tokens"].shape, V), np.float32)

  loss = task.loss_at(Uniform(), 16, batch_size=2)
  assert loss == pytest.approx(math.log(V), rel=1e-6)
  windows = np.concatenate(seen)
  starts = np.arange(0, len(task.val_ids) - 16, 16)
  assert windows.shape == (len(starts), 16)
  np.testing.assert_array_equal(windows, task.val_ids[starts[:, None] + np.arange(16)])
  assert all(len(batch) == 1 for batch in seen)  # 2 windows of 8 tokens = 16 tokens a batch.
  assert task.score(None, 4, final=False) == {}


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_loss_at_the_training_length_is_the_eval_loss(text_file):
  """loss_at_<block_size> scores the same windows as the eval batches: the same loss."""
  task = build(text_file, eval_lengths=(8, 16))
  config = ModelConfig(
    vocab_size=len(task.vocab), d_model=16, num_heads=2, d_ff=32, num_encoder_layers=0,
    num_decoder_layers=1, positions="alibi", norm="pre",
  )  # fmt: skip
  model = LanguageModel(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  lm = objectives.LanguageModeling(main_metric="loss")
  scores = task.score(Predictor(model, lm, params), 4, final=True)
  assert set(scores) == {"loss_at_8", "loss_at_16"}
  eval_fn = lambda params, batch: steps.eval_step(params, batch, model=model, objective=lm)
  stacked = jax.tree.map(lambda x: x[None], params)  # evaluate() reads one row per seed.
  metrics = evaluate.evaluate(jax.vmap(eval_fn, in_axes=(0, None)), stacked, task.eval_batches(4), lm)
  assert scores["loss_at_8"] == pytest.approx(metrics["loss"][0], rel=1e-5)
  assert math.isfinite(scores["loss_at_16"])


@pytest.mark.parametrize("value", [(0,), 16, ("8",), (True,)])
def test_eval_lengths_must_be_positive_ints(text_file, value):
  with pytest.raises(ValueError, match=r"^config\.task\.eval_lengths: must be a tuple of ints >= 1"):
    build(text_file, eval_lengths=value)


def test_an_eval_length_past_the_validation_split_is_refused_when_the_task_is_built(text_file):
  # Before any training: it was found at the final evaluation, after the run's last step.
  with pytest.raises(ValueError, match=r"^config\.task\.eval_lengths: 4096 needs a validation split"):
    build(text_file, eval_lengths=(4096,))
  task = build(text_file)
  with pytest.raises(ValueError, match=r"^config\.task\.eval_lengths: 4096 needs a validation split"):
    task.loss_at(None, 4096, batch_size=2)  # The method called on its own says the same.


def test_icl_score_is_late_loss_minus_early_loss_at_every_evaluation(text_file):
  """Logits that spike on token 0 (never a target) before position T/2 and are uniform after: the
  late positions' loss is ln V, the early ones' ln(e^s + V - 1), so the score is their difference."""
  task = build(text_file, block_size=16, icl_windows=3)
  V, spike = len(task.vocab), 5.0
  seen = []

  class EarlyWrong:
    def logits(self, batch):
      seen.append(np.asarray(batch["tokens"]).shape)
      logits = np.zeros((*batch["tokens"].shape, V), np.float32)
      logits[:, :8, 0] = spike
      return logits

  scores = task.score(EarlyWrong(), 2, final=False)
  assert set(scores) == {"icl_score"}
  assert scores["icl_score"] == pytest.approx(math.log(V) - math.log(math.exp(spike) + V - 1), rel=1e-5)
  # The first icl_windows validation windows (or all, when fewer), in batches of 2.
  assert sum(b for b, _ in seen) == min(3, len(task.eval_starts)) and all(b <= 2 for b, _ in seen)
  for value, message in ((-1, "must be an int >= 0"), (True, "must be an int >= 0")):
    with pytest.raises(ValueError, match=rf"^config\.task\.icl_windows: {message}"):
      build(text_file, icl_windows=value)
  with pytest.raises(ValueError, match=r"^config\.task\.icl_windows: needs block_size >= 16"):
    build(text_file, block_size=8, icl_windows=2)


# --------------------------------------------------------------------------------------------------
# tokenizer "hf": a Hugging Face tokenizer.json (a converted checkpoint's, attn/train/convert.py).
# --------------------------------------------------------------------------------------------------


def hf_config(tokenizer_file, **changes) -> ml_collections.ConfigDict:
  fields = dict(tokenizer="hf", tokenizer_file=str(tokenizer_file), vocab_size=0, bos_id=0, eos_id=0)
  fields.update(pad_id=None)
  fields.update(changes)
  return task_config(**fields)


def hf_build(tokenizer_file, path, *, workdir=None, **changes):
  data = ml_collections.ConfigDict({"path": str(path)})
  return make_task(hf_config(tokenizer_file, **changes), data, seed=0, workdir=workdir)


@pytest.fixture
def byte_level(tmp_path):
  """A byte-level BPE tokenizer.json (GPT-2's kind) of at most 300 tokens, trained on LINES."""
  from tests.launch.test_convert import write_tokenizer

  path = tmp_path / "tokenizer.json"
  return path, write_tokenizer(str(path), 300)


def test_hf_tokenizer_gives_its_ids_and_the_models_vocabulary_size(byte_level, text_file):
  path, tokenizer = byte_level
  size = tokenizer.get_vocab_size()
  task = hf_build(path, text_file, vocab_size=size + 7, bos_id=1, eos_id=2)
  train_text, val_text = text.split_train_val(TEXT)
  assert len(task.vocab) == size + 7 and task.vocab.pad_id is None
  assert (task.vocab.bos_id, task.vocab.eos_id) == (1, 2)
  assert task.vocab.tokens[size:] == tuple(f"<unused_{i}>" for i in range(size, size + 7))
  assert task.vocab.tokens[5] == tokenizer.id_to_token(5)
  assert task.train_ids.tolist() == tokenizer.encode(train_text).ids
  assert task.val_ids.tolist() == tokenizer.encode(val_text).ids
  assert task.val_chars.sum() == len(val_text)  # Bits per character count each character once.
  assert task.decode_ids(task.encode_text("hear me speak")) == "hear me speak"
  assert task.decode_ids([*task.encode_text("hear"), size + 3]) == "hear"  # Extra ids: nothing.
  assert task.vocab.decode(task.encode_text("hear me")) == [
    tokenizer.id_to_token(i) for i in tokenizer.encode("hear me").ids
  ]
  assert hf_build(path, text_file).vocab.tokens == tuple(tokenizer.id_to_token(i) for i in range(size))


def test_hf_save_keeps_the_tokenizer_and_a_run_loads_its_copy(byte_level, text_file, tmp_path):
  path, _ = byte_level
  workdir = tmp_path / "run"
  workdir.mkdir()
  task = hf_build(path, text_file)
  task.save(str(workdir))
  assert (workdir / "tokenizer.json").read_bytes() == path.read_bytes()
  task.save(str(workdir))  # Again: the same bytes.
  path.rename(tmp_path / "moved.json")  # The run's copy is read, not config.task.tokenizer_file.
  restored = hf_build(path, text_file, workdir=str(workdir))
  assert restored.vocab.tokens == task.vocab.tokens
  other = tmp_path / "other.json"
  from tests.launch.test_convert import write_tokenizer

  write_tokenizer(str(other), 280)
  with pytest.raises(ValueError, match=r"config.task.tokenizer_file: .* differs from the run's"):
    hf_build(other, text_file).save(str(workdir))


def test_hf_without_data_opens_a_run_for_inspection_only(byte_level, tmp_path):
  path, _ = byte_level
  task = hf_build(path, "", workdir=str(tmp_path))
  batch = task.train_batch(3, 2)
  assert batch["tokens"].shape == (2, 8) and not batch["tokens"].any()
  assert [b["tokens"].shape for b in task.eval_batches(4)] == [(4, 8)]
  assert task.data_files() == []
  with pytest.raises(ValueError, match=r"^config.data.path: empty; .* for inspection only"):
    hf_build(path, "")  # Training (no run directory): refused.


def test_hf_unknown_pieces_and_bad_fields_are_named(tmp_path, text_file):
  from tokenizers import Tokenizer, models, pre_tokenizers

  words = {"[UNK]": 0, "<eos>": 1, "hear": 2, "me": 3, "speak": 4}
  word_level = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
  word_level.pre_tokenizer = pre_tokenizers.Whitespace()
  path = tmp_path / "words.json"
  word_level.save(str(path))
  task = hf_build(path, text_file, block_size=2, eos_id=1)
  assert task.encode_text("hear me").tolist() == [2, 3]
  with pytest.raises(ValueError, match=r"cannot spell .*'you'"):
    task.encode_text("hear you")
  with pytest.raises(ValueError, match=r"config.task.vocab_size: must be an int >= the tokenizer's 5"):
    hf_build(path, text_file, block_size=2, vocab_size=4)
  with pytest.raises(ValueError, match=r"config.task.bos_id: must be an id in \[0, 5\), got 5"):
    hf_build(path, text_file, block_size=2, bos_id=5)
  with pytest.raises(ValueError, match=r"config.task.pad_id"):
    hf_build(path, text_file, block_size=2, pad_id=-1)
  bad = tmp_path / "bad.json"
  bad.write_text("{}", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.json: not a Hugging Face tokenizer.json"):
    hf_build(bad, text_file)
  with pytest.raises(ValueError, match=r"config.task.tokenizer_file: .*missing.json"):
    hf_build(tmp_path / "missing.json", text_file)


def test_without_a_tokenizer_text_is_token_ids(text_file, tmp_path):
  task = hf_build("", "", workdir=str(tmp_path), vocab_size=50)
  assert task.encode_text("3 4 49").tolist() == [3, 4, 49]
  assert task.decode_ids([3, 4]) == " 3 4"
  assert task.vocab.tokens[7] == "7"
  with pytest.raises(ValueError, match=r"^the run has no tokenizer .*'hear'"):
    task.encode_text("hear")
  with pytest.raises(ValueError, match=r"past the model's vocabulary of 50"):
    task.encode_text("50")
  task.save(str(tmp_path))  # Nothing to keep.
  assert not (tmp_path / "tokenizer.json").exists()
  with pytest.raises(ValueError, match=r"^config.task.tokenizer_file: empty; text data needs"):
    hf_build("", text_file, vocab_size=50)
