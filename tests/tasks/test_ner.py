"""Tests for attn.tasks.ner: the CoNLL reader (tabs, spaces, -DOCSTART-, IOB1, a malformed line named
by file and line, a missing file), the features, the task's
batches and scores, and the smoke preset of experiments/ner.py run as `launch.train` on a fixture."""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from attn import train
from attn.core import crf
from attn.tasks import conlleval, ner
from experiments import ner as ner_experiment

REPO = pathlib.Path(__file__).resolve().parents[2]

# A tiny data set in which every word always has the same tag (so a word -> tag table is a perfect
# tagger) and every dev and test word occurs in train.
TRAIN = """\
-DOCSTART- -X- -X- O

Alice\tB-person
Smith\tI-person
visited\tO
Paris\tB-location
.\tO

Bob\tB-person
visited\tO
Acme\tB-corporation
.\tO

Alice\tB-person
Smith\tI-person
.\tO
"""
DEV = "Bob\tB-person\nvisited\tO\nParis\tB-location\n\nAcme\tB-corporation\n.\tO\n"
TEST = "Alice\tB-person\nSmith\tI-person\nvisited\tO\nAcme\tB-corporation\n"


def write(folder: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (folder / name).write_text(text, encoding="utf-8")
  return folder


@pytest.fixture
def data_dir(tmp_path):
  return write(tmp_path / "data", {"train": TRAIN, "dev": DEV, "test": TEST})


def task_config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(name="ner", max_length=64, min_count=1, max_features=32, word_dropout=0.0)
  return ml_collections.ConfigDict({**fields, **overrides})


def make(path, **overrides) -> ner.NerTask:
  return ner.make_task(task_config(**overrides), ml_collections.ConfigDict({"path": str(path)}), seed=0)


# Reading.


def test_read_tabs_blank_lines_and_docstart(data_dir):
  sentences = ner.read_conll(str(data_dir / "train"))
  assert [s.tokens for s in sentences] == [
    ("Alice", "Smith", "visited", "Paris", "."),
    ("Bob", "visited", "Acme", "."),
    ("Alice", "Smith", "."),
  ]
  assert sentences[1].tags == ("B-person", "O", "B-corporation", "O")


def test_read_spaces_extra_columns_and_no_final_blank_line(tmp_path):
  # CoNLL-2003's layout, token POS chunk tag: the tag is the last column. Blank lines make one break.
  path = tmp_path / "f"
  path.write_text(
    "-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\n\n  \nPeter NNP B-NP I-PER"
  )
  sentences = ner.read_conll(str(path))
  assert sentences == [  # IOB1 (CoNLL-2003's own scheme) read as IOB2.
    ner.Sentence(("EU", "rejects"), ("B-ORG", "O")),
    ner.Sentence(("Peter",), ("B-PER",)),
  ]


IOB1 = """Alice	I-person
Smith	I-person
Bob	B-person
met	O
Acme	I-corporation
Paris	I-location
.	O
"""


def test_an_iob1_file_is_read_as_iob2_with_the_same_entities(tmp_path):
  """IOB1 opens an entity with I- (B- only between two adjacent entities of one type). Read as it
  is, every opening I- is a move the CRF's IOB2 constraint forbids (training then reported losses in
  the hundreds); the reader gives each entity a B- instead, and conlleval reads the same entities."""
  path = tmp_path / "train"
  path.write_text(IOB1)
  (sentence,) = ner.read_conll(str(path))
  assert sentence.tags == (
    "B-person", "I-person", "B-person", "O", "B-corporation", "B-location", "O",
  )  # fmt: skip
  raw = [line.split("\t")[1] for line in IOB1.splitlines()]
  assert conlleval.entities(sentence.tags) == conlleval.entities(raw)
  names = ner._class_names({"train": [sentence]})
  allowed, may_start = crf.iob2_constraints(names)
  ids = [names.index(t) for t in sentence.tags]
  assert may_start[ids[0]] and all(allowed[a, b] for a, b in itertools.pairwise(ids))
  assert conlleval.to_iob2(sentence.tags) == sentence.tags  # IOB2 is left as it is.


def test_malformed_line_names_file_and_line(tmp_path):
  path = tmp_path / "train.conll"
  path.write_text("EU\tB-ORG\nrejects\tO\n\nlonely\n")
  with pytest.raises(ValueError, match=rf"^{path}:4: expected 'token tag', got 'lonely'$"):
    ner.read_conll(str(path))


@pytest.mark.parametrize("tag", ["PER", "B-", "X-PER", "b-PER"])
def test_bad_tag_names_file_and_line(tmp_path, tag):
  path = tmp_path / "dev"
  path.write_text(f"EU\tB-ORG\nrejects\t{tag}\n")
  with pytest.raises(ValueError, match=rf"^{path}:2: expected a tag O, B-TYPE or I-TYPE"):
    ner.read_conll(str(path))


def test_missing_file_names_the_split_and_the_config_field(tmp_path):
  folder = write(tmp_path / "d", {"train": TRAIN, "dev.conll": DEV})
  with pytest.raises(ValueError, match=r"^config.data.path: '.*' has no test file \(looked for test, "):
    make(folder)


def test_missing_or_empty_path_names_the_config_field(tmp_path):
  with pytest.raises(ValueError, match=r"^config.data.path: .* is not a folder"):
    make(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"^config.data.path: the ner task needs a folder"):
    make("")


def test_split_files_with_suffixes_are_found(tmp_path):
  folder = write(tmp_path / "d", {"train.conll": TRAIN, "dev.conll": DEV, "test.txt": TEST})
  assert len(make(folder).splits["test"]) == 1


def test_empty_split_is_an_error(tmp_path):
  folder = write(tmp_path / "d", {"train": TRAIN, "dev": DEV, "test": "\n\n"})
  with pytest.raises(ValueError, match=r"the test file .* holds no sentences"):
    make(folder)


# Features.


def test_normalize_and_shapes():
  assert ner.normalize("McDonald's 2017") == "mcdonald's 0000"
  assert ner.word_shape("McDonald's", compress=True) == "XxXx'x"
  assert ner.word_shape("iPhone7", compress=False) == "xXxxxxd"


def test_token_features_are_stable_positive_and_capped():
  a = ner.token_features("Paris", first=False, max_features=32)
  assert a == ner.token_features("Paris", first=False, max_features=32)  # Not Python's salted hash().
  assert all(0 < h < 2**31 for h in a) and len(set(a)) == len(a)
  assert a != ner.token_features("paris", first=False, max_features=32)  # Case is a feature.
  assert len(ner.token_features("internationalisation", first=False, max_features=8)) == 8


# The task.


def test_task_vocabulary_classes_and_batches(data_dir):
  task = make(data_dir)
  assert task.kind == "tagging" and task.main_metric == "f1" and task.name == "ner"
  assert task.class_names == ("O", "B-corporation", "I-corporation", "B-location", "I-location",
                              "B-person", "I-person")  # fmt: skip
  assert task.num_classes == 7
  assert {"alice", "smith", "visited", "."} <= set(task.vocab.tokens)
  assert len(make(data_dir, min_count=2).vocab) == 4 + 4  # alice, smith, visited and "." occur twice.
  batch = task.train_batch(0, 2)
  assert batch["tokens"].shape == (2, 8) and batch["features"].shape == (2, 8, 32)
  assert batch["tags"].shape == batch["weights"].shape == (2, 8)
  for k, v in task.train_batch(5, 2).items():
    np.testing.assert_array_equal(v, make(data_dir).train_batch(5, 2)[k])  # A pure function of step.
  # Three sentences, batches of 2: step 0 and 1 cover the first epoch's order (with one of the next).
  epoch = np.concatenate(
    [task.train_batch(0, 2)["weights"].sum(1), task.train_batch(1, 2)["weights"][:1].sum(1)]
  )
  assert sorted(epoch.tolist()) == [3, 4, 5]
  assert (
    task.encode_text("Alice SMITH zebra").tolist()
    == task.vocab.encode(["alice", "smith", "<unk>"]).tolist()
  )
  assert task.decode_ids(task.encode_text("Alice visited")) == "alice visited"


def test_word_dropout_replaces_tokens_with_unk_only(data_dir):
  plain, dropped = make(data_dir).train_batch(0, 64), make(data_dir, word_dropout=0.5).train_batch(0, 64)
  changed = plain["tokens"] != dropped["tokens"]
  assert 0.3 < changed.sum() / plain["weights"].sum() < 0.7
  assert (dropped["tokens"][changed] == 3).all() and (plain["weights"][changed] == 1).all()
  np.testing.assert_array_equal(plain["features"], dropped["features"])


def test_eval_batches_cover_dev_with_zero_weight_padding(data_dir):
  batches = make(data_dir).eval_batches(4)
  assert len(batches) == 1 and batches[0]["tokens"].shape == (4, 8)
  assert batches[0]["weights"].sum() == 5 and batches[0]["weights"][2:].sum() == 0


def test_eval_batches_are_bucketed_so_one_long_sentence_pads_only_its_own(tmp_path):
  long_sentence = "".join(f"w{i}\tO\n" for i in range(200)) + "\n"
  dev = DEV + "\n" + long_sentence + "Bob\tB-person\n\n" + "Acme\tB-corporation\n"
  task = make(write(tmp_path / "d", {"train": TRAIN, "dev": dev, "test": TEST}))
  batches = task.eval_batches(2)
  assert [b["tokens"].shape for b in batches] == [(2, 8), (2, 8), (2, 256)]  # Sorted by length.
  assert sum(b["weights"].sum() for b in batches) == 3 + 2 + 200 + 1 + 1  # Every token, none cut.


def test_bad_task_field_names_it(data_dir):
  with pytest.raises(ValueError, match=r"^config.task.max_features: must be positive"):
    make(data_dir, max_features=0)
  with pytest.raises(ValueError, match=r"^config.task.word_dropout: must be in \[0, 1\)"):
    make(data_dir, word_dropout=1.0)


class _TablePredictor:
  """A stand-in trained model (`attn.tasks.base.Predictor`): logits = table[token id], a word -> tag
  table; no CRF."""

  def __init__(self, table):
    self.table = np.asarray(table)

  def logits(self, batch):
    return self.table[batch["tokens"]]

  def crf_scores(self):
    return None


def _table(task: ner.NerTask) -> np.ndarray:
  """[V, C]: one-hot of each training word's tag (the fixture gives every word one tag)."""
  table = np.zeros((len(task.vocab), task.num_classes), np.float32)
  for s in task.splits["train"]:
    for token, tag in zip(s.tokens, s.tags, strict=True):
      table[task.vocab.encode([ner.normalize(token)])[0], task.class_names.index(tag)] = 1.0
  return table


def test_score_with_a_perfect_and_a_silent_tagger(data_dir):
  task = make(data_dir)
  table = _table(task)
  assert task.score(_TablePredictor(table), 2, final=False) == {
    "precision": 100.0,
    "recall": 100.0,
    "f1": 100.0,
    "tuned_f1": 100.0,
    "o_margin": 0.0,  # Ties go to the smallest margin.
  }
  final = task.score(_TablePredictor(table), 2, final=True)
  assert final["f1"] == final["test_f1"] == final["test_f1_person"] == final["test_tuned_f1"] == 100.0
  silent = np.zeros_like(table)
  silent[:, 0] = 1.0  # "O" everywhere.
  assert task.score(_TablePredictor(silent), 2, final=True)["test_recall"] == 0.0


def test_o_margin_is_chosen_on_dev_and_applied_to_test(data_dir):
  # A timid tagger: every word's right tag scores 1, but O scores 1.7 on entity words (O's own words
  # keep O). Plain argmax finds nothing; lowering O by 1.0 (the smallest margin > 0.7) finds all.
  task = make(data_dir)
  table = _table(task)
  table[:, 0] = np.where(table[:, 0] == 1.0, 1.0, 1.7)
  scores = task.score(_TablePredictor(table), 2, final=True)
  assert scores["f1"] == scores["test_f1"] == 0.0
  assert scores["o_margin"] == 1.0
  assert scores["tuned_f1"] == scores["test_tuned_f1"] == 100.0
  logits = [np.array([[2.0, 1.5, 0.0]])]
  assert task.decode_tags(logits) == [["O"]] and task.decode_tags(logits, 1.0) == [["B-corporation"]]


def test_crf_scores_decode_by_viterbi(data_dir):
  # Emissions that favour I-person at every token: argmax decodes an invalid I- opening; with IOB2's
  # forbidden moves as CRF scores, Viterbi opens with B-person instead.
  task = make(data_dir)
  names = task.class_names
  emissions = np.zeros((3, len(names)), np.float32)
  emissions[:, names.index("I-person")] = 3.0
  emissions[0, names.index("B-person")] = 1.0
  assert task.decode_tags([emissions]) == [["I-person"] * 3]
  allowed, may_start = crf.iob2_constraints(names)
  scores = (
    np.where(allowed, 0.0, crf.FORBIDDEN),
    np.where(may_start, 0.0, crf.FORBIDDEN),
    np.zeros(len(names)),
  )
  assert task.decode_tags([emissions, emissions[:1]], crf_scores=scores) == [
    ["B-person", "I-person", "I-person"],
    ["B-person"],
  ]


def test_max_chars_adds_each_words_characters_to_the_batches(data_dir):
  task = make(data_dir, max_chars=4)
  batch = task.train_batch(0, 3)
  assert batch["chars"].shape == (*batch["tokens"].shape, 4)
  words = {s.tokens[0] for s in task.splits["train"]}
  first = "".join(chr(c - 1) for c in batch["chars"][0, 0] if c)
  assert first in {w[:4] for w in words}  # Case kept, cut to 4.
  assert not batch["chars"][batch["weights"] == 0].any()
  assert "chars" not in make(data_dir).train_batch(0, 3)
  with pytest.raises(ValueError, match=r"config\.task\.max_chars: must be an int"):
    make(data_dir, max_chars=-1)


def test_save_writes_vocabulary_and_tags(data_dir, tmp_path):
  task = make(data_dir)
  task.save(str(tmp_path))
  assert (tmp_path / "vocab.txt").read_text().splitlines() == list(task.vocab.tokens)
  assert (tmp_path / "tags.txt").read_text().splitlines() == list(task.class_names)
  task.save(str(tmp_path))  # A resume finds the same files: nothing to do.
  assert task.data_files() == [str(data_dir / split) for split in ("train", "dev", "test")]


def test_save_refuses_a_vocabulary_built_from_other_data(data_dir, tmp_path):
  make(data_dir).save(str(tmp_path))
  (data_dir / "train").write_text(TRAIN.replace("Alice", "Carol"))  # Other words: another vocabulary.
  with pytest.raises(ValueError, match=r"^config\.data\.path: the vocab\.txt built from the training"):
    make(data_dir).save(str(tmp_path))


# The experiment config and the launch command (how CI runs the smoke preset).


def test_experiment_presets():
  full, smoke = ner_experiment.get_config(), ner_experiment.get_config("smoke")
  assert full.task.name == smoke.task.name == "ner"
  assert full.data.path == "../shared/data/wnut17"
  assert smoke.num_train_steps < full.num_train_steps
  with pytest.raises(ValueError, match="unknown 'big'"):
    ner_experiment.get_config("big")


@pytest.mark.slow  # Starts launch.train.
def test_launch_train_smoke_on_a_fixture(data_dir, tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.train",
      "--config=experiments/ner.py:smoke",
      f"--config.data.path={data_dir}",
      f"--workdir={workdir}",
      # The config's tagger has a CRF and a character encoder; trained here by epochs:
      "--config.num_train_epochs=2.0",  # ceil(2 * 3 sentences / batch 8) = 1 step.
    ],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"},
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["main_metric"] == "f1" and summary["num_train_steps"] == 1
  final = summary["final"]
  assert {"f1", "precision", "recall", "test_f1", "loss", "accuracy"} <= set(final)
  assert all(0.0 <= v <= 100.0 for k in ("f1", "test_f1") for v in final[k])
  assert (workdir / "vocab.txt").is_file() and (workdir / "tags.txt").is_file()


@pytest.mark.slow  # Starts launch.train.
def test_launch_train_missing_file_is_one_line(tmp_path):
  folder = write(tmp_path / "d", {"train": TRAIN, "dev": DEV})
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.train",
      "--config=experiments/ner.py:smoke",
      f"--config.data.path={folder}",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.data.path: ")
  assert "has no test file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("preset", ["", "smoke"])
def test_experiment_config_locks_and_validates_on_a_fixture(data_dir, preset):
  config = ner_experiment.get_config(preset)
  config.lock()
  config.data.path = str(data_dir)
  run = train.build_run(config)
  task, model_config = run.task, run.model_config
  assert task.name == "ner" and model_config.vocab_size == len(task.vocab)
  assert model_config.num_classes == 7 and model_config.feature_buckets == config.model.feature_buckets


def test_num_train_epochs_counts_passes_over_the_training_sentences(data_dir):
  config = ner_experiment.get_config("smoke")
  config.data.path = str(data_dir)
  config.num_train_epochs = 2.0
  run = train.build_run(config)
  assert run.task.num_train_examples == 3
  assert run.num_train_steps == 1  # ceil(2 * 3 / 8).
  config.num_train_epochs = 0.0
  assert train.build_run(config).num_train_steps == config.num_train_steps
  config.num_train_epochs = -1.0
  with pytest.raises(train.ConfigError, match=r"config\.num_train_epochs: must be a number >= 0"):
    train.build_run(config)


def test_a_runs_saved_vocabulary_and_tags_are_loaded_not_rebuilt(data_dir, tmp_path):
  """Restoring a NER run after its data changed: the run's own word vocabulary and tags (a new
  training word would otherwise renumber the vocabulary); a tag the run never had is one line."""
  task = make(data_dir)
  workdir = tmp_path / "run"
  workdir.mkdir()
  task.save(str(workdir))
  (data_dir / "train").write_text("Aardvark\tO\n\n" + TRAIN, encoding="utf-8")

  def restore():
    config = ml_collections.ConfigDict({"path": str(data_dir)})
    return ner.make_task(task_config(), config, seed=0, workdir=str(workdir))

  restored = restore()
  assert restored.vocab == task.vocab and restored.class_names == task.class_names
  assert make(data_dir).vocab != task.vocab  # Without the run's folder: rebuilt from the data.
  (data_dir / "dev").write_text("Bob\tB-animal\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"^config\.data\.path: tags \['B-animal'\] of .* saved tags"):
    restore()


# A pretrained encoder's tokenizer.

PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "alice", "smith", "visit", "##ed", "paris", "bob", "ac",
          "##me", ".")  # fmt: skip


def _wordpiece_file(folder: pathlib.Path) -> str:
  from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
  from tokenizers.models import WordPiece

  tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(PIECES)}, unk_token="[UNK]"))
  tokenizer.decoder = decoders.WordPiece()
  tokenizer.add_special_tokens(list(PIECES[:4]))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
  )
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  return str(folder / "tokenizer.json")


def test_a_tokenizer_file_gives_pieces_tagged_on_each_words_first(data_dir, tmp_path):
  task = make(data_dir, tokenizer_file=_wordpiece_file(tmp_path / "tok"))
  assert task.subwords and len(task.vocab) == len(PIECES) and task.vocab.pad_id == 0
  batch = task.train_batch(0, 3)
  tokens, tags, weights = batch["tokens"], batch["tags"], batch["weights"]
  sentence = [PIECES[i] for i in tokens[0] if i]  # The first training sentence, shuffled or not.
  assert sentence[0] == "[CLS]" and sentence[-1] == "[SEP]"
  # Every weighted position is a word's first piece; "##" pieces and the specials weigh 0.
  for row in range(3):
    for i, w in zip(tokens[row], weights[row], strict=True):
      assert (w == 1.0) == (
        PIECES[i] not in ("[PAD]", "[CLS]", "[SEP]") and not PIECES[i].startswith("##")
      )
  assert task.class_names[tags[weights == 1.0][0]] in task.class_names
  # A perfect table on first pieces scores 100 on the words, through `starts`.
  table = np.zeros((len(PIECES), task.num_classes), np.float32)
  for s in task.splits["train"]:
    ids, starts = task.vocab.encode_words(s.tokens)
    for start, tag in zip(starts, s.tags, strict=True):
      table[ids[start], task.class_names.index(tag)] = 1.0
  assert task.score(_TablePredictor(table), 2, final=True)["test_f1"] == 100.0
  (tmp_path / "run").mkdir()
  task.save(str(tmp_path / "run"))
  assert (tmp_path / "run" / "tokenizer.json").is_file() and not (
    tmp_path / "run" / "vocab.txt"
  ).exists()
  assert task.decode_ids(task.encode_text("Alice visited Paris")) == "alice visited paris"


def test_a_bad_tokenizer_file_names_the_field(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"^config.task.tokenizer_file: '.*nope' is not a file"):
    make(data_dir, tokenizer_file=str(tmp_path / "nope"))
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(ValueError, match=r"^config.task.tokenizer_file: .*not a Hugging Face tokenizer"):
    make(data_dir, tokenizer_file=str(tmp_path / "bad.json"))
