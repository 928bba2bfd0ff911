"""Tests for attn/train/config.py: TrainConfig is the one home of the training defaults (the base
experiment sets the same values), refuses unknown and bad fields naming them, derives the step count
from epochs, and an old run directory's config.json (written before a field existed) still resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from attn import train
from attn.train import loop
from attn.train.config import NOT_TRAINING, OptimizerConfig, TrainConfig
from experiments import base
from tests.train.common import smoke_config


def test_the_base_experiment_sets_the_defaults():
  config = base.get_config()
  from_base = TrainConfig.from_config(config)
  assert from_base == TrainConfig()  # Every training field of base.py is TrainConfig's default...
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  assert set(config) - set(NOT_TRAINING) == fields  # ...and base.py sets every one of them.
  assert set(config.optimizer) == {f.name for f in dataclasses.fields(OptimizerConfig)}


def test_absent_fields_take_their_defaults():
  config = base.get_config().to_dict()
  del config["early_stopping_patience"], config["optimizer"]["end_learning_rate"]
  read = TrainConfig.from_config(config)
  assert read.early_stopping_patience == 0 and read.optimizer.end_learning_rate == 0.0


@pytest.mark.parametrize(
  ("fields", "message"),
  [
    ({"batch_sise": 8}, "config.batch_sise: unknown field; the fields are batch_size, "),
    ({"optimizer": {"lr": 1.0}}, "config.optimizer.lr: unknown field; the fields are b1, "),
    ({"num_seeds": 2.5}, "config.num_seeds: must be positive, got 2.5"),
    ({"num_seeds": True}, "config.num_seeds: must be positive, got True"),
    ({"seed": "0"}, "config.seed: must be an int, got '0'"),
    ({"objective": "mlm"}, "config.objective: unknown choice 'mlm'; expected one of"),
    ({"optimizer": {"b2": 1.0}}, "config.optimizer.b2: must be in [0, 1), got 1.0"),
    ({"optimizer": {"warmup_steps": -1}}, "config.optimizer.warmup_steps: must be an int >= 0"),
  ],
)
def test_bad_fields_are_one_line_naming_them(fields, message):
  config = base.get_config().to_dict()
  for key, value in fields.items():
    config[key] = {**config[key], **value} if isinstance(value, dict) else value
  with pytest.raises(train.ConfigError) as error:
    TrainConfig.from_config(config)
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_steps_from_epochs_round_up_to_whole_batches():
  config = TrainConfig(batch_size=8, num_train_epochs=2.0)
  assert config.train_steps(13) == 4  # ceil(2 * 13 / 8).
  assert TrainConfig(num_train_steps=7).train_steps(13) == 7  # Epochs 0: the step count.
  with pytest.raises(train.ConfigError, match=r"^config\.num_train_epochs: the copy task draws"):
    config.train_steps(None, "copy")
  denoising = TrainConfig(batch_size=8, num_train_epochs=2.0, objective="denoise")
  with pytest.raises(
    train.ConfigError,
    match=r"^config\.num_train_epochs: the denoising objective over the copy task's unlabelled",
  ):
    denoising.train_steps(None, "copy")


def test_a_config_json_written_before_a_field_existed_still_resumes(tmp_path):
  """Its missing training fields read as their defaults: the same run, not a different config."""
  run = train.build_run(smoke_config())
  loop.write_config(run, str(tmp_path))
  path = tmp_path / "config.json"
  saved = json.loads(path.read_text())
  del saved["early_stopping_patience"], saved["optimizer"]["end_learning_rate"]
  path.write_text(json.dumps(saved))
  loop.write_config(run, str(tmp_path))  # No "different config" error.
  changed = train.build_run(smoke_config(early_stopping_patience=2))
  with pytest.raises(train.ConfigError, match=r"fields early_stopping_patience differ"):
    loop.write_config(changed, str(tmp_path))
