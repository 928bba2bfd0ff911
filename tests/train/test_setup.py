"""Tests for attn/train/setup.py: config validation (each error names its field, before anything is
built) and the learning-rate schedules."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn import train
from attn.tasks import Vocabulary
from attn.train import loop, setup
from experiments import translate
from tests.train.common import smoke_config as _config
from tests.train.common import write_untrained_run

# ----------------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ({"model.num_heads": 3}, "config.model.num_heads: 3 heads do not divide the model dim 32"),
    ({"batch_size": 0}, "config.batch_size: must be positive, got 0"),
    ({"batch_size": -8}, "config.batch_size: must be positive, got -8"),
    ({"num_train_steps": 0}, "config.num_train_steps: must be positive, got 0"),
    ({"eval_every_steps": 0}, "config.eval_every_steps: must be positive, got 0"),
    ({"checkpoint_every_steps": 0}, "config.checkpoint_every_steps: must be positive, got 0"),
    ({"checkpoints_to_keep": 0}, "config.checkpoints_to_keep: must be at least 1"),
    ({"model.d_model": -32}, "config.model.d_model: must be positive, got -32"),
    ({"model.d_model": 0}, "config.model.d_model: must be positive, got 0"),
    ({"task.name": "revrese"}, "config.task.name: unknown task 'revrese'; expected one of 'copy', "),
    (
      {"model.scale": "sqrt"},
      "config.model.scale: unknown choice 'sqrt'; expected one of 'sqrt_d', 'none', 'd', 'learned', "
      "'init_folded'",
    ),
    ({"optimizer.schedule": "linear"}, "config.optimizer.schedule: unknown choice 'linear'"),
    ({"data.path": "/no/such/folder"}, "config.data.path: '/no/such/folder' does not exist"),
    (
      {"checkpoint_every_steps": 7},
      "config.checkpoint_every_steps: 7 must be a multiple of log_every_steps=5",
    ),
    ({"eval_every_steps": 12}, "config.eval_every_steps: 12 must be a multiple of log_every_steps=5"),
    ({"label_smoothing": 1.0}, "config.label_smoothing: must be in [0, 1), got 1.0"),
    ({"optimizer.learning_rate": 0.0}, "config.optimizer.learning_rate: must be positive"),
  ],
)
def test_validate_names_the_field(overrides, message):
  with pytest.raises(train.ConfigError) as error:
    train.build_run(_config(**overrides))
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)


def test_scale_error_lists_every_choice():
  from attn.nn.config import MODULE_SCALE_CHOICES

  with pytest.raises(train.ConfigError) as error:
    train.build_run(_config(**{"model.scale": "sqrt"}))
  assert all(repr(choice) in str(error.value) for choice in MODULE_SCALE_CHOICES)


def test_validate_batch_not_divisible_by_devices(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda *args: 2)
  with pytest.raises(
    train.ConfigError,
    match=r"^config\.batch_size: 9 is not divisible by the mesh's data x fsdp = 2 \(the batch",
  ):
    train.build_run(_config(batch_size=9))
  with pytest.raises(
    train.ConfigError,
    match=r"^config\.eval_batch_size: 15 is not divisible by the mesh's data x fsdp = 2",
  ):
    train.build_run(_config(eval_batch_size=15))
  train.build_run(_config())  # 8 and 16 split evenly.


def test_bad_config_raises_before_anything_is_built(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("got past validation")

  monkeypatch.setattr(setup, "make_optimizer", fail)
  with pytest.raises(train.ConfigError, match=r"^config\.model\.num_heads: "):
    train.train_and_evaluate(_config(**{"model.num_heads": 3}), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------
# Schedules and the loss.


def _schedule(config):
  return train.make_schedule(train.TrainConfig.from_config(config).optimizer, config.num_train_steps)


def _schedule_values(schedule: str, num_steps: int = 200) -> np.ndarray:
  config = _config(num_train_steps=100)
  config.optimizer.update(schedule=schedule, learning_rate=1e-3, warmup_steps=10)
  return np.asarray(jax.jit(jax.vmap(_schedule(config)))(jnp.arange(num_steps)), np.float64)


def test_rsqrt_schedule_warms_up_linearly_then_decays_as_rsqrt():
  lr = _schedule_values("rsqrt")
  # optax counts updates from 0: count 9 is the 10th (= warmup_steps-th) update, which gets the peak.
  np.testing.assert_allclose(lr[9], 1e-3, rtol=1e-6)
  np.testing.assert_allclose(lr[:10], 1e-3 * np.arange(1, 11) / 10, rtol=1e-6)
  assert lr.max() == pytest.approx(1e-3, rel=1e-6)
  updates = np.arange(10, 201)  # 1-based update numbers from the peak on.
  np.testing.assert_allclose(lr[9:], 1e-3 * np.sqrt(10 / updates), rtol=1e-5)
  np.testing.assert_allclose(lr[39], 0.5e-3, rtol=1e-6)  # 4x warmup: half the peak.


def test_cosine_schedule_ends_near_zero():
  lr = _schedule_values("cosine", 101)
  assert lr[0] == 0.0
  np.testing.assert_allclose(lr[10], 1e-3, rtol=1e-6)
  assert np.all(np.diff(lr[10:]) <= 0)
  assert lr[99] < 1e-6 and lr[100] == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_stays_at_peak():
  lr = _schedule_values("constant")
  np.testing.assert_allclose(lr[:11], 1e-3 * np.arange(11) / 10, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(lr[10:], 1e-3, rtol=1e-6)


def test_make_schedule_rejects_unknown():
  config = _config()
  config.optimizer.schedule = "linear"
  with pytest.raises(train.ConfigError, match=r"^config\.optimizer\.schedule: unknown choice 'linear'"):
    _schedule(config)


def test_cosine_schedule_ends_at_its_floor_as_nanogpts_does():
  config = _config(num_train_steps=100)
  config.optimizer.update(schedule="cosine", learning_rate=1e-3, warmup_steps=10, end_learning_rate=1e-4)
  lr = np.asarray(jax.vmap(_schedule(config))(jnp.arange(101)), np.float64)
  # nanoGPT's get_lr after warmup:
  # min_lr + 0.5 (1 + cos(pi (it - warmup) / (decay - warmup))) (lr - min_lr).
  it = np.arange(10, 101)
  expected = 1e-4 + 0.5 * (1 + np.cos(np.pi * (it - 10) / 90)) * (1e-3 - 1e-4)
  np.testing.assert_allclose(lr[10:], expected, rtol=1e-5)


def test_weight_decay_applies_to_matrices_only():
  """With zero gradients, AdamW's update is -lr * decay * param on the matrices (kernels, embedding
  tables) and nothing on biases and norm scales."""
  config = _config()
  config.optimizer.update(schedule="constant", learning_rate=0.1, warmup_steps=1, weight_decay=0.5)
  optimizer, _ = train.make_optimizer(train.TrainConfig.from_config(config).optimizer, 100)
  params = {"kernel": jnp.ones((3, 2, 2)), "embedding": jnp.ones((4, 3)), "bias": jnp.ones(3)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = optimizer.init(params)
  _, state = optimizer.update(zeros, state, params)  # Step 0 of the warmup has rate 0.
  updates, _ = optimizer.update(zeros, state, params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates["embedding"], -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(updates["bias"], 0.0)


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ({"optimizer.weight_decay": -0.1}, "config.optimizer.weight_decay: must be finite and >= 0"),
    ({"optimizer.end_learning_rate": 1.0}, "config.optimizer.end_learning_rate: 1.0 is above the peak"),
  ],
)
def test_optimizer_fields_are_checked(overrides, message):
  with pytest.raises(train.ConfigError) as error:
    train.build_run(_config(**overrides))
  assert str(error.value).startswith(message)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_init_from_takes_matching_parameters_by_name_and_refuses_other_shapes(tmp_path):
  """A denoising run of the cue tagger starts a tagger: the encoder and embeddings come from it, the
  head (another shape: the vocabulary, not the tags) stays fresh; another width is one line.

  The source run is written untrained (init_from reads its config.json and checkpoint, nothing of
  its training); its seed is not the fresh parameters', so a taken embedding differs from the one it
  replaces."""
  from experiments import cue

  source = cue.get_config("smoke")
  source.objective = "denoise"
  source.num_seeds = 1
  source.seed = 7
  source_dir = str(tmp_path / "pretrained")
  write_untrained_run(source, source_dir)
  _, pretrained = setup.restore_run(source_dir, 0)

  config = cue.get_config("smoke")
  config.init_from = source_dir
  run = setup.build_run(config)
  task, model = run.task, run.model
  batch = task.train_batch(0, 2)
  fresh = jax.jit(jax.vmap(lambda key: model.init(key, batch["tokens"])["params"]))(
    jax.random.split(jax.random.PRNGKey(0), 2)
  )
  params = setup.init_from(train.TrainConfig.from_config(config), fresh)
  for seed in range(2):  # The source had one seed: both take it.
    np.testing.assert_array_equal(
      params["embedder"]["tokens"]["embedding"][seed], pretrained["embedder"]["tokens"]["embedding"]
    )
    assert not np.array_equal(
      fresh["embedder"]["tokens"]["embedding"][seed], pretrained["embedder"]["tokens"]["embedding"]
    )
  np.testing.assert_array_equal(params["classifier"]["kernel"], fresh["classifier"]["kernel"])
  assert pretrained["classifier"]["kernel"].shape[-1] == len(task.vocab)  # Skipped, not refused.

  # Embedding rows are taken by index: a vocabulary of the same size with other tokens is refused,
  # unless the embedder is skipped.
  train_config = train.TrainConfig.from_config(config)
  setup.init_from(train_config, fresh, vocab=task.vocab)  # The same vocabulary: fine.
  tokens = list(task.vocab.tokens)
  tokens[4], tokens[5] = tokens[5], tokens[4]
  other = Vocabulary(tuple(tokens))
  with pytest.raises(setup.ConfigError, match=r"^config\.init_from: .* another vocabulary \(token 4 "):
    setup.init_from(train_config, fresh, vocab=other)
  config.init_from_skip = "classifier,crf,embedder"
  setup.init_from(train.TrainConfig.from_config(config), fresh, vocab=other)
  config.init_from_skip = "classifier,crf"

  config.model.d_model = 2 * config.model.d_model
  config.model.d_ff = 2 * config.model.d_ff
  run = setup.build_run(config)
  task, model = run.task, run.model
  wider = jax.jit(jax.vmap(lambda key: model.init(key, batch["tokens"])["params"]))(
    jax.random.split(jax.random.PRNGKey(0), 1)
  )
  with pytest.raises(
    setup.ConfigError,
    match=r"^config.init_from: parameter \S+ has shape \(\d+, \d+\) in .* but \(\d+, \d+\) here$",
  ):
    setup.init_from(train.TrainConfig.from_config(config), wider)
  # check_init_from finds the same from shapes alone, before a run writes anything.
  with pytest.raises(setup.ConfigError, match=r"^config.init_from: parameter \S+ has shape"):
    setup.check_init_from(train.TrainConfig.from_config(config), jax.eval_shape(lambda: wider))
  config.init_from = str(tmp_path)
  with pytest.raises(setup.ConfigError, match=r"^config\.init_from: .* holds no run"):
    setup.init_from(train.TrainConfig.from_config(config), wider)


def test_a_refused_init_from_leaves_the_workdir_free_for_the_corrected_command(tmp_path, monkeypatch):
  # config.json was written before the refusal: the corrected command was "a different config".
  from experiments import cue

  source = cue.get_config("smoke")
  source.objective = "denoise"
  source.num_seeds = 1
  source_dir = str(tmp_path / "pretrained")
  write_untrained_run(source, source_dir)
  config = cue.get_config("smoke")
  config.init_from = source_dir
  config.model.d_model = 2 * config.model.d_model  # Its shapes differ: refused.
  workdir = tmp_path / "run"
  with pytest.raises(setup.ConfigError, match=r"^config.init_from: parameter \S+ has shape"):
    train.train_and_evaluate(config, str(workdir))
  assert not (workdir / "config.json").exists()
  config.model.d_model = source.model.d_model  # Corrected: gets past the identity check.

  class PastTheChecksError(Exception):
    pass

  def trainer(*args):
    raise PastTheChecksError  # Training itself is not this test's business.

  monkeypatch.setattr(loop, "_Trainer", trainer)
  with pytest.raises(PastTheChecksError):
    train.train_and_evaluate(config, str(workdir))


def test_num_train_epochs_needs_a_fixed_training_set():
  config = _config()
  config.num_train_epochs = 1.0
  with pytest.raises(setup.ConfigError, match=r"config\.num_train_epochs: the .* task draws fresh"):
    setup.build_run(config)
  config.objective = "denoise"  # The objective draws its own text: the message says so.
  with pytest.raises(setup.ConfigError, match=r"the denoising objective over the \w+ task's unlabelled"):
    setup.build_run(config)


def test_epochs_count_passes_over_the_translation_pairs_for_either_objective(tmp_path):
  from tests.tasks.test_translation import fixture_pairs, write_folder

  config = translate.get_config("smoke")
  config.data.path = str(write_folder(tmp_path / "data"))
  config.batch_size = 8
  config.num_train_epochs = 2.0
  assert setup.build_run(config).num_train_steps == math.ceil(2 * len(fixture_pairs()) / 8)
  config.objective = "denoise"  # Was refused: "the translate task draws fresh examples".
  assert setup.build_run(config).num_train_steps == math.ceil(2 * len(fixture_pairs()) / 8)


def test_every_reader_of_an_early_stopped_run_takes_its_best_parameters(tmp_path):
  """Under early stopping a run's final metrics are its best evaluation's; restore_run (so analyze,
  sample and attend) and init_from read those parameters too, not the last step's. Seed 0 has been
  evaluated (its best record is +1 from the last parameters), seed 1 not yet (its score is still
  -inf): it gives its last parameters."""
  config = _config(num_seeds=2, early_stopping_patience=2)

  def edit(state):
    best = dict(state.best)
    best["params"] = jax.tree.map(lambda x: x + 1.0, state.params)
    best["score"] = jnp.asarray([0.5, -jnp.inf])
    return state.replace(best=best)

  saved = write_untrained_run(config, str(tmp_path / "run"), edit)
  for seed, offset in ((0, 1.0), (1, 0.0)):
    _, params = setup.restore_run(str(tmp_path / "run"), seed)
    for got, last in zip(jax.tree.leaves(params), jax.tree.leaves(saved.params), strict=True):
      np.testing.assert_allclose(got, np.asarray(last[seed]) + offset, rtol=1e-6)
  config = _config(num_seeds=2, init_from=str(tmp_path / "run"), init_from_skip="")
  fresh = jax.tree.map(jnp.zeros_like, saved.params)
  taken = setup.init_from(train.TrainConfig.from_config(config), fresh)
  for got, last in zip(jax.tree.leaves(taken), jax.tree.leaves(saved.params), strict=True):
    np.testing.assert_allclose(
      got, np.asarray(last) + np.asarray([1.0, 0.0]).reshape((2,) + (1,) * (last.ndim - 1)), rtol=1e-6
    )


# --------------------------------------------------------------------------------------------------
# Every accepted training config runs: properties over the training fields (hypothesis).
# --------------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

TRAINING = st.fixed_dictionaries(
  {
    # Repeated choices weight the draws towards valid configs; the rest probe the refusals.
    "experiment": st.sampled_from(["base", "cue", "text"]),  # seq2seq, tagger, language model.
    "objective": st.sampled_from(["supervised", "supervised", "denoise"]),
    "batch_size": st.sampled_from([1, 2, 3, 4, 0]),
    "eval_batch_size": st.sampled_from([2, 5]),
    "num_seeds": st.sampled_from([1, 1, 2]),
    "num_train_epochs": st.sampled_from([0.0, 0.0, 0.5, -1.0]),
    "early_stopping_patience": st.sampled_from([0, 0, 1]),
    "every": st.sampled_from([(1, 1, 1), (1, 1, 1), (1, 2, 2), (2, 1, 3)]),  # log, eval, checkpoint.
    "label_smoothing": st.sampled_from([0.0, 0.1, 1.0]),
    "schedule": st.sampled_from(["rsqrt", "cosine", "constant", "linear"]),
    "learning_rate": st.sampled_from([1e-3, 1e-3, 0.0]),
    "warmup_steps": st.sampled_from([0, 1, 10]),
    "end_learning_rate": st.sampled_from([0.0, 0.0, 1e-4, 1.0]),
    "weight_decay": st.sampled_from([0.0, 0.1]),
    "grad_clip_norm": st.sampled_from([0.0, 1.0]),
    "mesh": st.sampled_from(
      [{"data": -1, "fsdp": 1, "tensor": 1}] * 3 + [{"data": 1, "fsdp": 1, "tensor": 2}]
    ),
    "positions": st.sampled_from(["sinusoidal", "rope", "learned", "alibi"]),
    "attention_kind": st.sampled_from(["softmax", "softmax", "ssmax", "sigmoid"]),
  }
)


@pytest.fixture(scope="module")
def text_path(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("text") / "input.txt"
  path.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
  return str(path)


def _drawn_config(fields: dict, text_path: str):
  from experiments import base, cue, shakespeare_char

  fields = dict(fields)
  experiment = fields.pop("experiment")
  module = {"base": base, "cue": cue, "text": shakespeare_char}[experiment]
  config = module.get_config("smoke")
  if experiment == "text":
    config.data.path = text_path
    config.task.block_size, config.task.eval_windows, config.task.sample_tokens = 8, 4, 4
  config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = fields.pop("every")
  config.model.positions = fields.pop("positions")
  config.model.attention_kind = fields.pop("attention_kind")
  for name in ("schedule", "learning_rate", "warmup_steps", "end_learning_rate", "weight_decay"):
    config.optimizer[name] = fields.pop(name)
  config.optimizer.grad_clip_norm = fields.pop("grad_clip_norm")
  for name, value in fields.items():
    config[name] = value
  config.num_train_steps = 2
  return config


def _refused_in_one_line(error: Exception) -> None:
  message = str(error)
  assert re.match(r"^config(\.\w+)+: ", message) and "\n" not in message, message


@hypothesis.given(fields=TRAINING)
def test_every_training_config_builds_or_is_refused_in_one_line_naming_a_field(fields, text_path):
  """Drawn training fields with each kind of task: `build_run` builds the run (task, model, objective,
  optimizer: nothing compiled) or raises one ConfigError line that names a config field."""
  try:
    run = setup.build_run(_drawn_config(fields, text_path))
  except (setup.ConfigError, ValueError) as e:
    _refused_in_one_line(e)
    return
  assert run.num_train_steps >= 1


_SLOW_EXAMPLES = max(2, hypothesis.settings().max_examples // 2)


@pytest.mark.slow  # Trains, evaluates, checkpoints and analyses each drawn run (seconds each).
@hypothesis.settings(max_examples=_SLOW_EXAMPLES, deadline=None)
@hypothesis.given(fields=TRAINING)
def test_every_training_config_trains_evaluates_and_analyses_or_is_refused(fields, text_path):
  """Past `build_run`, a drawn run trains (two steps), evaluates, checkpoints and finishes with
  finite metrics, and `launch.analyze`'s analysis runs on it; or it is refused in one line."""
  import tempfile

  from attn.train import analysis

  try:
    config = _drawn_config(fields, text_path)
    setup.build_run(config)
  except (setup.ConfigError, ValueError) as e:
    _refused_in_one_line(e)
    return
  with tempfile.TemporaryDirectory() as workdir:
    final = train.train_and_evaluate(config, workdir)
    assert all(math.isfinite(x) for x in final["loss"])
    result = analysis.analyze_run(workdir, max_examples=3, num_rollouts=1, echo=lambda _: None)
  assert all(np.isfinite(v).all() for v in _numbers(result["importance"]))


def _numbers(tree):
  """Every number list of a nested dict, as arrays."""
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _numbers(value)
  else:
    yield np.asarray(tree, np.float64)


# ----------------------------------------------------------------------------------------------------
# init_from a Hugging Face model folder.


def _bert_folder(folder, num_labels: int = 3):
  """A tiny random transformers BERT for token classification, saved as save_pretrained saves it,
  with tokenizer.json (the NER tests' WordPiece vocabulary); returns the torch model."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tests.tasks.test_ner import PIECES, _wordpiece_file

  torch.manual_seed(0)
  hf_config = transformers.BertConfig(
    vocab_size=len(PIECES), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
  )  # fmt: skip
  model = transformers.BertForTokenClassification(hf_config).eval()
  model.save_pretrained(folder)
  _wordpiece_file(folder)
  return model


@pytest.mark.slow  # Imports torch and transformers, and starts launch.train.
def test_a_bert_folder_fine_tunes_the_ner_tagger_end_to_end(tmp_path):
  import json
  import os
  import subprocess
  import sys

  from tests.tasks.test_ner import DEV, REPO, TEST, TRAIN, write

  folder = tmp_path / "bert"
  _bert_folder(folder)
  data = write(tmp_path / "data", {"train": TRAIN, "dev": DEV, "test": TEST})
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable, "-m", "launch.train", "--config=experiments/ner_pretrained.py:smoke",
      f"--config.data.path={data}", f"--workdir={workdir}", f"--config.init_from={folder}",
      f"--config.task.tokenizer_file={folder / 'tokenizer.json'}",
    ],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"},
    capture_output=True, text=True, check=False,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["num_train_steps"] == 2 and {"f1", "test_f1"} <= set(summary["final"])
  resolved = json.loads((workdir / "config.json").read_text())["resolved_model"]
  assert (resolved["d_model"], resolved["embed_norm"], resolved["activation"]) == (
    32,
    True,
    "gelu_exact",
  )
  assert (workdir / "tokenizer.json").is_file()


@pytest.mark.slow  # Imports torch and transformers.
def test_init_from_a_bert_folder_takes_the_encoder_and_keeps_a_fresh_head(tmp_path):
  import torch

  from experiments import ner_pretrained
  from tests.tasks.test_ner import DEV, TEST, TRAIN, write

  folder = tmp_path / "bert"
  hf = _bert_folder(folder, num_labels=2)
  data = write(tmp_path / "data", {"train": TRAIN, "dev": DEV, "test": TEST})
  config = ner_pretrained.get_config("smoke")
  config.data.path, config.init_from = str(data), str(folder)
  config.task.tokenizer_file = str(folder / "tokenizer.json")
  config.model.d_model = 999  # Ignored: the architecture is the checkpoint's.
  config.model.dropout_rate = 0.0  # Taken: a fine-tuning field.
  run = train.build_run(config)
  assert (run.model_config.d_model, run.model_config.dropout_rate) == (32, 0.0)
  params = jax.vmap(run.state_initializer())(run.seed_rngs()).params
  started = setup.init_from(run.train, params, vocab=run.task.vocab)
  with torch.no_grad():
    words = hf.bert.embeddings.word_embeddings.weight.numpy()
  np.testing.assert_array_equal(started["embedder"]["tokens"]["embedding"][0], words)
  np.testing.assert_array_equal(started["classifier"]["kernel"], params["classifier"]["kernel"])
  # The converted encoder, with its fresh head, gives transformers' hidden states to its head.
  batch = run.task.train_batch(0, 2)
  one = jax.tree.map(lambda x: x[0], started)
  from attn.nn import hooks

  _, cache = hooks.run_with_cache(run.model, one, batch["tokens"])
  mask = batch["tokens"] != 0
  with torch.no_grad():
    theirs = hf.bert(
      torch.as_tensor(batch["tokens"]), attention_mask=torch.as_tensor(mask.astype(np.int64))
    ).last_hidden_state.numpy()
  last = cache[f"blocks.{hf.config.num_hidden_layers - 1}.resid_post"]
  np.testing.assert_allclose(np.asarray(last)[mask], theirs[mask], atol=2e-5)


def test_init_from_refuses_a_folder_of_an_unsupported_model_type(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "bloom"}')
  config = _config(init_from=str(tmp_path))
  with pytest.raises(
    train.ConfigError, match=r"^config.init_from: model_type: 'bloom' is not supported"
  ):
    train.build_run(config)
