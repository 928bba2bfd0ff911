"""Tests for attn/tasks/translation.py on small parallel-text fixtures the tests write (never the shared
data): the reader's errors, the subword model (round trip, ids 0-3, determinism, the saved file), BLEU
against sacrebleu and a hand-worked value, the training stream, and one end-to-end run of the smoke
preset through `python -m launch.train`."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import sacrebleu

from attn import tasks, train
from attn.tasks import translation

REPO = pathlib.Path(__file__).resolve().parents[2]

NOUNS = {
  "cat": "chat",
  "dog": "chien",
  "book": "livre",
  "pen": "stylo",
  "train": "train",
  "garden": "jardin",
}
ADJECTIVES = {"big": "grand", "small": "petit", "red": "rouge", "black": "noir", "green": "vert"}


def fixture_pairs() -> list[tuple[str, str]]:
  """42 English-French pairs from a tiny grammar, French punctuation with a narrow no-break space."""
  pairs = [(f"I see the {en}.", f"Je vois le {fr}.") for en, fr in NOUNS.items()]
  for en, fr in NOUNS.items():
    for adj_en, adj_fr in ADJECTIVES.items():
      pairs.append((f"The {en} is {adj_en}!", f"Le {fr} est {adj_fr}\u202f!"))
  return pairs


def write_folder(path: pathlib.Path) -> pathlib.Path:
  """A data folder: train.tsv (all pairs), dev.tsv and test.tsv (a few of them, one source twice)."""
  path.mkdir(parents=True, exist_ok=True)
  pairs = fixture_pairs()
  lines = lambda ps: "".join(f"{s}\t{t}\n" for s, t in ps)
  (path / "train.tsv").write_text(lines(pairs), encoding="utf-8")
  (path / "dev.tsv").write_text(lines(pairs[::5]), encoding="utf-8")
  test = [*pairs[1::4], (pairs[1][0], "Je vois un chien.")]  # A second translation of one source.
  (path / "test.tsv").write_text(lines(test), encoding="utf-8")
  return path


def task_config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(
    name="translate",
    vocab_size=60,
    max_source_length=24,
    max_target_length=24,
    beam_size=2,
    length_penalty_alpha=0.6,
    dev_bleu_examples=4,
    test_bleu_examples=0,
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def make(folder, **overrides) -> translation.Translation:
  return translation.make_task(task_config(**overrides), {"path": str(folder)}, seed=0)


# Reading.


def test_reader_reads_pairs_and_strips_fields(tmp_path):
  path = tmp_path / "x.tsv"
  path.write_bytes("Go.\tVa\u202f!\r\n  Hi. \tSalut.\n".encode())
  assert translation.read_parallel(str(path)) == [("Go.", "Va\u202f!"), ("Hi.", "Salut.")]


@pytest.mark.parametrize(
  "bad_line",
  ["only one field", "a\tb\tc", "source\t", "\ttarget", "  \t  ", ""],
  ids=["one_field", "three_fields", "empty_target", "empty_source", "blank_fields", "empty_line"],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line):
  path = tmp_path / "train.tsv"
  path.write_text(f"Go.\tVa !\nHi.\tSalut.\n{bad_line}\nRun!\tCours !\n", encoding="utf-8")
  with pytest.raises(ValueError, match=rf"^{path}:3: expected 'source<TAB>target'"):
    translation.read_parallel(str(path))


def test_non_utf8_line_names_file_and_line(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_bytes(b"Go.\tVa !\nCaf\xe9.\tCaf\xe9.\n")
  with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8"):
    translation.read_parallel(str(path))


def test_missing_file_is_one_line_naming_it_and_the_field(tmp_path):
  folder = write_folder(tmp_path / "data")
  (folder / "test.tsv").unlink()
  with pytest.raises(ValueError) as info:
    make(folder)
  message = str(info.value)
  assert message.startswith("config.data.path: no file") and str(folder / "test.tsv") in message
  assert "\n" not in message


def test_missing_or_empty_folder_names_the_field(tmp_path):
  with pytest.raises(ValueError, match=r"^config.data.path: .* is not a folder"):
    make(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"^config.data.path: empty"):
    translation.make_task(task_config(), {"path": ""})


@pytest.mark.parametrize(
  "field, value",
  [("vocab_size", 3), ("max_source_length", 0), ("beam_size", 0), ("length_penalty_alpha", -1.0)],
)
def test_bad_task_field_is_named(tmp_path, field, value):
  folder = write_folder(tmp_path / "data")
  with pytest.raises(ValueError, match=rf"^config.task.{field}: must be at least"):
    make(folder, **{field: value})


# Subwords.


def test_subwords_round_trip_specials_and_determinism(tmp_path):
  sentences = [text for pair in fixture_pairs() for text in pair]
  proto = translation.train_subwords(sentences, 60)
  assert translation.train_subwords(sentences, 60) == proto  # Rebuilt identically on resume.
  subwords = translation.Subwords(proto)
  assert subwords.vocab.tokens[:4] == tasks.SPECIALS
  assert 4 < len(subwords.vocab) <= 60
  for text in ("I see the cat.", "Le chien est vert !"):
    ids = subwords.encode([text])[0]
    assert ids.dtype == np.int32 and ids.min() >= 4  # No specials, no <unk> in known text.
    assert subwords.decode(ids) == text
    assert subwords.decode([tasks.Vocabulary.bos_id, *ids, tasks.Vocabulary.eos_id, 7, 0]) == text


def test_save_writes_the_model_and_refuses_a_different_one(tmp_path):
  folder = write_folder(tmp_path / "data")
  task = make(folder)
  workdir = tmp_path / "run"
  workdir.mkdir()
  task.save(str(workdir))
  saved = translation.Subwords.load(str(workdir / translation.MODEL_FILE))
  assert saved.vocab == task.vocab
  pieces = (workdir / translation.VOCAB_FILE).read_text(encoding="utf-8").splitlines()
  assert tuple(pieces) == task.vocab.tokens
  text = "The pen is black!"
  assert np.array_equal(saved.encode([text])[0], task.encode_text(text))
  assert task.decode_ids(task.encode_text(text)) == text
  make(folder).save(str(workdir))  # A resumed run rebuilds the same model: accepted.
  with pytest.raises(ValueError, match="differs from the run's"):
    make(folder, vocab_size=50).save(str(workdir))


# BLEU.


def test_bleu_of_a_perfect_output_is_100():
  references = ["Je vois le chat.", "Le chien est vert\u202f!"]
  assert translation.bleu(references, references) == pytest.approx(100.0)


def test_bleu_of_an_imperfect_output_matches_sacrebleu_and_the_hand_count():
  # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty).
  hypothesis, reference = "the cat sat on the mat", "the cat sat on a mat"
  expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
  assert translation.bleu([hypothesis], [reference]) == pytest.approx(expected, abs=1e-9)
  hyps = [hypothesis, "Le chien est vert !", "Je vois un livre."]
  refs = [reference, "Le chien est noir\u202f!", "Je vois le livre."]
  assert translation.bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
  with pytest.raises(ValueError, match="hypotheses"):
    translation.bleu(hyps, refs[:2])


# The task.


def test_task_batches_and_splits(tmp_path):
  folder = write_folder(tmp_path / "data")
  task = make(folder)
  assert (task.kind, task.main_metric, task.name) == ("seq2seq", "bleu", "translate")
  batch = task.train_batch(3, 8)
  again = make(folder).train_batch(3, 8)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)  # A pure function of the step.
  B, L = batch["src"].shape
  assert B == 8 and (L % translation.LENGTH_MULTIPLE == 0 or task.source_length == L)
  assert batch["tgt_in"].shape == batch["tgt_out"].shape == batch["weights"].shape
  assert (batch["tgt_in"][:, 0] == tasks.Vocabulary.bos_id).all()
  lengths = (batch["tgt_out"] != 0).sum(1)
  assert (batch["tgt_out"][np.arange(B), lengths - 1] == tasks.Vocabulary.eos_id).all()
  assert np.array_equal(batch["weights"], (batch["tgt_out"] != 0).astype(np.float32))
  # Over a chunk, every training pair comes up equally often, give or take one.
  index = {tuple(s): i for i, s in enumerate(task.train_src)}  # The fixture's sources are distinct.
  counts = np.zeros(len(task.train_src), int)
  for step in range(translation.CHUNK_BATCHES):
    for row in task.train_batch(step, 8)["src"]:
      counts[index[tuple(row[row != tasks.Vocabulary.pad_id])]] += 1
  assert counts.max() - counts.min() <= 1
  assert task.num_dropped == {"train": 0, "dev": 0}
  assert task.num_train_examples == len(fixture_pairs())  # What config.num_train_epochs counts.
  eval_batches = task.eval_batches(4)
  assert sum(b["weights"].any(1).sum() for b in eval_batches) == len(fixture_pairs()[::5])
  assert eval_batches[0]["src"].shape == (4, task.source_length)
  # BLEU sets: distinct test sources decoded once, one reference per line.
  sources, source_of_line, references = task.test_bleu_set
  assert len(references) == len(fixture_pairs()[1::4]) + 1 and len(sources) == len(references) - 1
  assert source_of_line[-1] == source_of_line[0]


def _launch_train(folder, workdir, *flags) -> subprocess.CompletedProcess:
  """`python -m launch.train` of the smoke preset on the data `folder` (XLA at its quickest compile)."""
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.train",
      "--config=experiments/translate.py:smoke",
      f"--config.data.path={folder}",
      f"--workdir={workdir}",
      *flags,
    ],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags},
    capture_output=True,
    text=True,
    check=False,
  )


@pytest.mark.slow  # Trains through launch.train, a child process.
def test_smoke_preset_trains_reports_bleu_and_restores_without_retraining(tmp_path, monkeypatch):
  folder = write_folder(tmp_path / "data")
  workdir = tmp_path / "run"
  result = _launch_train(folder, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if r["split"] == "eval"]
  assert all("bleu" in r for r in evals)
  assert {"test_bleu_greedy", "test_bleu_beam"} <= set(evals[-1])
  assert all(0.0 <= v <= 100.0 for r in evals for k, vs in r.items() if "bleu" in k for v in vs)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["main_metric"] == "bleu" and "test_bleu_beam" in summary["final"]
  assert translation.Subwords.load(str(workdir / translation.MODEL_FILE)).vocab.tokens[:4] == (
    tasks.SPECIALS
  )

  # Inspecting the run loads its saved subword model: SentencePiece is not trained again.
  def no_training(*args, **kwargs):
    raise AssertionError("restore_run retrained the subword model")

  monkeypatch.setattr(translation, "train_subwords", no_training)
  run, params = train.restore_run(str(workdir))
  task = run.task
  saved = (workdir / translation.MODEL_FILE).read_bytes()
  assert task.subwords.model_proto == saved
  assert jax.tree.leaves(params)


def test_a_vocab_size_sentencepiece_refuses_names_the_field_and_the_smallest_that_works(tmp_path):
  folder = write_folder(tmp_path / "data")
  with pytest.raises(ValueError, match=r"^config\.task\.vocab_size: 5 is too small .* is (\d+)$") as e:
    make(folder, vocab_size=5)
  smallest = int(str(e.value).rsplit(" ", 1)[-1])
  assert make(folder, vocab_size=smallest).vocab  # The size it names does work.


def test_a_dev_split_of_which_nothing_fits_is_one_line(tmp_path):
  folder = write_folder(tmp_path / "data")
  (folder / "dev.tsv").write_text("The dog is big and the cat is small and old.\tLe chien.\n")
  with pytest.raises(ValueError, match=r"^config\.task\.max_source_length: no dev pair fits 8 source"):
    make(folder, max_source_length=8)


def _train_cli(folder, workdir, *flags) -> str:
  """`launch.train` of the smoke preset on `folder`; asserts one error line and exit status 1."""
  result = _launch_train(folder, workdir, *flags)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  return errors[0]


@pytest.mark.slow  # Starts launch.train three times.
def test_data_mistakes_are_one_cli_line_each(tmp_path):
  folder = write_folder(tmp_path / "data")
  line = _train_cli(folder, tmp_path / "run", "--config.task.vocab_size=5")
  assert re.fullmatch(r"error: config\.task\.vocab_size: 5 is too small .* that works is \d+", line)
  line = _train_cli(folder, tmp_path / "run", "--config.task.max_source_length=2")
  assert line.startswith("error: config.task.max_source_length: no training pair fits 2 source")
  with open(folder / "dev.tsv", "ab") as f:
    f.write(b"caf\xe9\tcaf\xe9\n")  # Latin-1, not UTF-8.
  lines = (folder / "dev.tsv").read_bytes().count(b"\n")
  line = _train_cli(folder, tmp_path / "run")
  assert line == f"error: {folder / 'dev.tsv'}:{lines}: not UTF-8 (invalid continuation byte at byte 3)"
