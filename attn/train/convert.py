"""A Hugging Face checkpoint folder made a run directory: `convert_folder(folder, workdir)` writes what
`launch.train` would have written at step 0, so the tools that read runs open it unchanged
(`restore_run`: `launch.sample`, `launch.attend`, `launch.analyze`) and `config.init_from` starts a
fine-tuning run from it.

What it writes:
- config.json: a text-task config (`config_for`) whose `config.model` holds every field of the
  converted `ModelConfig` but those the task supplies (vocabulary size, classes, special ids; the
  task's "hf" tokenizer gives the model's own back: `attn.tasks.text`), one seed, and training
  fields for fine-tuning (Adam at 1e-4 after 10 warmup steps, no label smoothing, no dropout: the
  checkpoint's model has none);
- checkpoints/0/: the TrainState with the converted parameters (a seed axis of one) and a fresh
  optimizer state, as the loop saves one;
- tokenizer.json: the folder's Hugging Face fast tokenizer, copied (without one, the run's text is
  token ids separated by spaces);
- finetune.py: `launch.train`'s config file for fine-tuning: this run's config with
  `config.init_from` = this folder (`finetune_config`), so
  `python -m launch.train --config=RUN/finetune.py --workdir=NEW --config.data.path=TEXT` trains it.

The reverse, `export_run(run_dir, folder)` (`launch.convert --to=hf`): a language model's run, trained
or converted here (or edited: head gates are folded in by `attn.nn.export`), written as a Hugging Face
folder (GPT-2's or Llama's layout, `attn.nn.export`) with the run's tokenizer.json when it has one,
which `transformers` opens with the same logits.

`config.task.block_size` is the model's context (`max_length`, GPT-2's `n_positions`) unless a smaller
one is given; `config.data.path` the text to fine-tune and evaluate on, or "" for a run opened only for
inspection (its task's one window is zeros; training it is refused naming `config.data.path`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attn.nn import export, pretrained
from attn.nn.config import ModelConfig
from attn.tasks import text
from attn.train import checkpoints, setup
from attn.train.config import ConfigError
from attn.train.loop import write_config
from attn.train.steps import TrainState

FINETUNE_FILE = "finetune.py"  # launch.train's --config for fine-tuning the converted run.
# The ModelConfig fields the task fills in (`setup.model_config_from`), left out of config.model.
FROM_TASK = ("vocab_size", "num_classes", "class_names", "pad_id", "bos_id", "eos_id")

_FINETUNE_SOURCE = '''"""launch.train's config for fine-tuning the checkpoint converted into this
folder (written by launch.convert): `python -m launch.train --config=THIS_FOLDER/finetune.py
--workdir=NEW [--config.data.path=TEXT] [--config.FIELD=VALUE ...]`. The config is this folder's
config.json, with config.init_from = this folder (attn.train.convert.finetune_config)."""

import os

from attn.train import convert


def get_config(preset=""):
  del preset
  return convert.finetune_config(os.path.dirname(os.path.abspath(__file__)))
'''


def config_for(
  model_config: ModelConfig, *, tokenizer_file: str, data: str = "", block_size: int | None = None
) -> ml_collections.ConfigDict:
  """The run config of a converted model (see the module docstring).

  Raises:
    ConfigError: naming --block_size when it is not in [1, the model's max_length].
  """
  max_length = model_config.max_length
  block_size = max_length if block_size is None else block_size
  if not 1 <= block_size <= max_length:
    raise ConfigError(
      f"--block_size: must be in [1, {max_length}] (the model's context), got {block_size}"
    )
  model = {
    f.name: getattr(model_config, f.name)
    for f in dataclasses.fields(ModelConfig)
    if f.name not in FROM_TASK
  }
  return ml_collections.ConfigDict(
    {
      "task": {
        "name": "text",
        "tokenizer": "hf",
        "tokenizer_file": tokenizer_file,
        "vocab_size": model_config.vocab_size,
        "bos_id": model_config.bos_id,
        "eos_id": model_config.eos_id,
        "pad_id": model_config.pad_id,
        "block_size": block_size,
        "eval_windows": 32,
        "icl_windows": 0,
        "num_samples": 1 if tokenizer_file else 0,
        "sample_tokens": 32,
        "sample_prompt": "\n",
        "eval_lengths": (),
      },
      "data": {"path": os.path.abspath(data) if data else ""},
      "model": model,
      "optimizer": {
        "learning_rate": 1e-4,
        "schedule": "constant",
        "warmup_steps": 10,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "grad_clip_norm": 1.0,
        "weight_decay": 0.0,
        "end_learning_rate": 0.0,
      },
      "label_smoothing": 0.0,
      "batch_size": 8,
      "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
      "eval_batch_size": 8,
      "num_train_steps": 100,
      "num_train_epochs": 0.0,
      "early_stopping_patience": 0,
      "log_every_steps": 10,
      "eval_every_steps": 50,
      "checkpoint_every_steps": 50,
      "checkpoints_to_keep": 2,
      "seed": 0,
      "num_seeds": 1,
      "data_seed": 0,
      "objective": "supervised",
      "init_from": "",
      "init_from_skip": "",
    }
  )


def finetune_config(run_dir: str) -> ml_collections.ConfigDict:
  """A converted run's config with `init_from` = `run_dir` (every parameter taken) and the run's own
  copy of the tokenizer: what `RUN/finetune.py` gives launch.train.

  Raises:
    ConfigError: when `run_dir` holds no readable config.json.
  """
  config = setup.run_config(run_dir)
  config.init_from = run_dir
  config.init_from_skip = ""
  if config.task.get("tokenizer_file"):
    config.task.tokenizer_file = os.path.join(run_dir, text.HF_TOKENIZER_FILE)
  return config


def _check_workdir(workdir: str) -> None:
  if not workdir:
    raise ConfigError("--workdir: empty; name the new run's folder")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir: {workdir!r} is a file, not a folder")
  if os.path.isdir(workdir) and os.listdir(workdir):
    raise ConfigError(f"--workdir: {workdir!r} is not empty; convert into a new folder")


def _check_params(params, abstract) -> None:
  """ConfigError naming the first parameter the converted tree and the model disagree on."""
  ours = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
  theirs = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
  for name in sorted(set(ours) | set(theirs)):
    if ours.get(name) != theirs.get(name):
      raise ConfigError(
        f"converted parameter {name}: shape {ours.get(name)} but the model's is {theirs.get(name)}"
      )


def initial_state(run: setup.Run, params) -> TrainState:
  """The state with the seed axis the loop saves at step 0 for `params` (one seed's tree): the
  converted parameters, a fresh optimizer state, the seeds' dropout keys.

  Raises:
    ConfigError: when `params` does not fit the run's model.
  """
  abstract = run.abstract_state()
  num_seeds = run.train.num_seeds
  seeded = jax.tree.map(
    lambda x: np.broadcast_to(np.asarray(x)[None], (num_seeds, *np.shape(x))), params
  )
  _check_params(seeded, abstract.params)
  seeded = jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), seeded, abstract.params)
  seeded = jax.tree.unflatten(jax.tree.structure(abstract.params), jax.tree.leaves(seeded))
  opt_state = jax.vmap(run.optimizer.init)(seeded)
  dropout_rngs = jax.vmap(lambda rng: jax.random.split(rng)[1])(run.seed_rngs())  # As initialised.
  best = None
  if run.train.patience > 0:
    zero = jnp.zeros(num_seeds, jnp.int32)
    best = {"params": seeded, "score": jnp.full(num_seeds, -jnp.inf), "step": zero, "since": zero}
  return TrainState(jnp.zeros(num_seeds, jnp.int32), seeded, opt_state, dropout_rngs, best)


def convert_folder(
  folder: str,
  workdir: str,
  *,
  data: str = "",
  block_size: int | None = None,
  dtype: str = "float32",
  echo: Callable[[str], None] = print,
) -> setup.Run:
  """Writes the run directory of the Hugging Face model folder `folder` into `workdir` (new or
  empty); returns the run as `restore_run` builds it.

  Raises:
    CheckpointError: naming the folder's file, field or tensor that cannot be read or converted.
    ConfigError: for a non-empty workdir, a bad --block_size, --data, or a tokenizer that does not fit.
  """
  _check_workdir(workdir)
  if data and not os.path.exists(data):
    raise ConfigError(f"--data: {data!r} does not exist")
  tokenizer = os.path.join(folder, text.HF_TOKENIZER_FILE)
  has_tokenizer = os.path.isfile(tokenizer)
  if data and not has_tokenizer:
    raise ConfigError(
      f"--data: {folder!r} has no {text.HF_TOKENIZER_FILE}, so text cannot become the model's ids"
    )
  hf_config, tensors = pretrained.read_folder(folder)
  if pretrained.convert_config(hf_config).num_decoder_layers == 0:  # BERT, RoBERTa: encoders.
    raise ConfigError(
      f"model_type: {hf_config.get('model_type')!r} is an encoder, and launch.convert writes language "
      "models; fine-tune it with config.init_from=FOLDER (experiments/ner_pretrained.py)"
    )
  model_config, params = pretrained.convert(hf_config, tensors, dtype=dtype)
  del tensors
  if has_tokenizer:
    try:
      size = text.HFTokenizer.load(tokenizer).size
    except ValueError as e:
      raise ConfigError(str(e).removeprefix("config.task.tokenizer_file: ")) from None
    if size > model_config.vocab_size:
      raise ConfigError(
        f"{tokenizer}: {size} tokens, more than the model's vocabulary of {model_config.vocab_size}"
      )
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    tokenizer_file = ""
    if has_tokenizer:
      tokenizer_file = os.path.abspath(os.path.join(workdir, text.HF_TOKENIZER_FILE))
      shutil.copyfile(tokenizer, tokenizer_file)
    config = config_for(model_config, tokenizer_file=tokenizer_file, data=data, block_size=block_size)
    run = setup.build_run(config, workdir=workdir)
    if run.model_config != model_config:  # The task gives back the converted vocabulary and ids.
      raise ConfigError(f"the run's model config differs from the converted one: {run.model_config}")
    state = initial_state(run, params)
    write_config(run, workdir)
    manager = checkpoints.manager(workdir, keep=1)
    checkpoints.save(manager, 0, state)
    manager.close()
    with open(os.path.join(workdir, FINETUNE_FILE), "w", encoding="utf-8") as f:
      f.write(_FINETUNE_SOURCE)
  except BaseException:
    if created:  # Nothing half-written stays behind in a folder this call made.
      shutil.rmtree(workdir, ignore_errors=True)
    else:
      for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
    raise
  count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  echo(
    f"converted {hf_config.get('model_type')} from {folder}: {model_config.num_decoder_layers} layers, "
    f"d_model {model_config.d_model}, {model_config.num_heads} heads, vocabulary "
    f"{model_config.vocab_size}, context {model_config.max_length}, {count:,} parameters"
  )
  echo(
    f"wrote {workdir} (block_size {run.task.block_size}; "
    + (f"tokenizer {text.HF_TOKENIZER_FILE})" if has_tokenizer else "no tokenizer: text is token ids)")
  )
  return run


def export_model_type(config: ModelConfig) -> str:
  """The Hugging Face layout a language model's config is exported in: Llama's for a model with
  RoPE or RMSNorm or a gated feed-forward, else GPT-2's."""
  llama = config.positions == "rope" or config.norm_kind == "rms" or config.ff_glu
  return "llama" if llama else "gpt2"


def export_run(
  run_dir: str,
  folder: str,
  *,
  model_type: str | None = None,
  seed_index: int = 0,
  echo: Callable[[str], None] = print,
) -> dict:
  """Writes seed `seed_index` of the language-model run `run_dir` into `folder` (new or empty) as a
  Hugging Face model folder in `model_type`'s layout ("gpt2", "llama"; None: `export_model_type`);
  returns the written config.json (a dict).

  Raises:
    ConfigError: naming what the run or the target layout cannot do, or a non-empty folder.
  """
  _check_workdir(folder)
  run, params = setup.restore_run(run_dir, seed_index)
  if run.task.kind != "lm":
    raise ConfigError(f"--from: {run_dir!r} holds a {run.task.kind} run, not a language model")
  model_type = model_type or export_model_type(run.model_config)
  try:
    hf_config, tensors = export.to_hf(run.model_config, jax.device_get(params), model_type=model_type)
  except ValueError as e:
    raise ConfigError(f"--to=hf: config.model.{e}") from None
  export.write_folder(folder, hf_config, tensors)
  tokenizer = os.path.join(run_dir, text.HF_TOKENIZER_FILE)
  if os.path.isfile(tokenizer):
    shutil.copyfile(tokenizer, os.path.join(folder, text.HF_TOKENIZER_FILE))
  echo(
    f"wrote {folder}: {model_type}, {len(tensors)} tensors"
    + (", tokenizer.json" if os.path.isfile(tokenizer) else "")
  )
  return hf_config
