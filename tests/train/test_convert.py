"""Tests for attn/train/convert.py: a random GPT-2 folder (tests/launch/test_convert.py writes it with
numpy, no torch) converted in process: the run restores with the converted ModelConfig and parameters,
its fine-tuning config takes them through init_from and needs data, and each refusal comes before
anything is written. (Against transformers' logits and through the command lines:
tests/launch/test_convert.py.)"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import pytest

from attn.nn import pretrained
from attn.train import ConfigError, TrainConfig, build_run, convert, restore_run, setup
from tests.launch.test_convert import GPT2, LINES, VOCAB_SIZE, write_random_gpt2


@pytest.fixture
def folder(tmp_path):
  path = tmp_path / "gpt2"
  write_random_gpt2(str(path))
  return path


@pytest.mark.slow  # Builds, saves and restores a run (about 5 s).
def test_the_run_restores_the_converted_model_and_fine_tunes_from_it(folder, tmp_path):
  workdir = tmp_path / "run"
  said = []
  convert.convert_folder(str(folder), str(workdir), block_size=16, echo=said.append)
  assert said[0].startswith("converted gpt2") and "37,760 parameters" in said[0]
  model_config, params = pretrained.convert(*pretrained.read_folder(str(folder)))
  restored, restored_params = restore_run(str(workdir))
  assert restored.model_config == model_config and restored.model_config.pad_id is None
  assert restored.task.block_size == 16 and len(restored.task.vocab) == VOCAB_SIZE
  jax.tree.map(np.testing.assert_array_equal, restored_params, params)
  recorded = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  assert recorded["resolved_model"]["max_length"] == GPT2["n_positions"]
  assert set(recorded["model"]) & set(convert.FROM_TASK) == set()

  tuned = convert.finetune_config(str(workdir))
  assert tuned.init_from == str(workdir) and tuned.init_from_skip == ""
  assert tuned.task.tokenizer_file == str(workdir / "tokenizer.json")
  with pytest.raises(ConfigError, match=r"^config.data.path: empty; .*inspection only"):
    build_run(tuned)  # Training a run without data.
  data = tmp_path / "text.txt"
  data.write_text("\n".join(LINES * 8), encoding="utf-8")
  tuned.data.path = str(data)
  run = build_run(tuned)
  assert run.model_config == model_config
  fresh = jax.tree.map(lambda a: np.zeros((1, *a.shape[1:]), a.dtype), run.abstract_state().params)
  taken = setup.init_from(run.train, fresh, vocab=run.task.vocab)
  jax.tree.map(lambda t, p: np.testing.assert_array_equal(t[0], p), taken, params)

  # Out again (launch.convert --to=hf): the same tensors, config and tokenizer.
  out = tmp_path / "out"
  hf_config = convert.export_run(str(workdir), str(out), echo=said.append)
  assert said[-1].startswith(f"wrote {out}: gpt2") and (out / "tokenizer.json").is_file()
  assert hf_config["n_embd"] == GPT2["n_embd"] and hf_config["model_type"] == "gpt2"
  again_config, again = pretrained.convert(*pretrained.read_folder(str(out)))
  jax.tree.map(np.testing.assert_array_equal, again, params)
  assert again_config == model_config
  with pytest.raises(ConfigError, match=r"^--workdir: .* is not empty"):
    convert.export_run(str(workdir), str(out))
  with pytest.raises(ConfigError, match=r"^--to=hf: config.model.positions: "):
    convert.export_run(str(workdir), str(tmp_path / "as_llama"), model_type="llama")


def test_refusals_come_before_anything_is_written(folder, tmp_path):
  full = tmp_path / "full"
  full.mkdir()
  (full / "x").write_text("x", encoding="utf-8")
  with pytest.raises(ConfigError, match=r"^--workdir: .* is not empty"):
    convert.convert_folder(str(folder), str(full))
  with pytest.raises(ConfigError, match=r"^--data: .* does not exist"):
    convert.convert_folder(str(folder), str(tmp_path / "a"), data=str(tmp_path / "missing.txt"))
  (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
  with pytest.raises(ConfigError, match=r"gpt2/tokenizer\.json: not a Hugging Face tokenizer"):
    convert.convert_folder(str(folder), str(tmp_path / "a"))
  from tests.launch.test_convert import write_tokenizer

  write_tokenizer(str(folder / "tokenizer.json"), VOCAB_SIZE + 40)
  with pytest.raises(
    ConfigError, match=r"tokenizer\.json: 3\d\d tokens, more than the model's vocabulary"
  ):
    convert.convert_folder(str(folder), str(tmp_path / "a"))
  (folder / "config.json").unlink()
  with pytest.raises(pretrained.CheckpointError, match=r"config\.json: missing"):
    convert.convert_folder(str(folder), str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_block_size_is_at_most_the_models_context(folder):
  model_config, _ = pretrained.convert(*pretrained.read_folder(str(folder)))
  config = convert.config_for(model_config, tokenizer_file="t.json", block_size=8)
  assert config.task.block_size == 8 and config.num_seeds == 1 and config.model.dropout_rate == 0.0
  assert convert.config_for(model_config, tokenizer_file="").task.block_size == GPT2["n_positions"]
  TrainConfig.from_config(ml_collections.ConfigDict(config))  # Every training field known.
  for bad in (0, GPT2["n_positions"] + 1):
    with pytest.raises(ConfigError, match=r"^--block_size: must be in \[1, 64\]"):
      convert.config_for(model_config, tokenizer_file="", block_size=bad)


def test_an_encoder_is_refused_with_the_way_to_fine_tune_it(tmp_path):
  from safetensors.numpy import save_file

  bert = dict(model_type="bert", vocab_size=20, hidden_size=8, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)  # fmt: skip
  (tmp_path / "config.json").write_text(json.dumps(bert), encoding="utf-8")
  save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
  with pytest.raises(ConfigError, match=r"^model_type: 'bert' is an encoder.*config\.init_from=FOLDER"):
    convert.convert_folder(str(tmp_path), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
