"""Setting up a run: the config checked and turned into a task, a model and an optimizer; and
`restore_run`, which loads a finished (or running) run directory for inspection.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from attn import tasks
from attn.nn.config import ModelConfig
from attn.nn.models import EncoderTagger, LanguageModel, Transformer
from attn.runs import files
from attn.tasks import denoise
from attn.train import sharding
from attn.train.steps import TrainState, inputs_and_targets, state_initializer

SCHEDULES = ("rsqrt", "cosine", "constant")
OBJECTIVES = ("supervised", "denoise")


class ConfigError(ValueError):
  """A configuration mistake; the message is one line naming the field."""


def model_config_from(config: ml_collections.ConfigDict, task) -> ModelConfig:
  """The ModelConfig of `config.model` completed by the task's vocabulary and classes."""
  fields = dict(config.model)
  fields.update(
    vocab_size=len(task.vocab),
    num_classes=task.num_classes,
    class_names=tuple(task.class_names),
    pad_id=task.vocab.pad_id,
    bos_id=task.vocab.bos_id,
    eos_id=task.vocab.eos_id,
  )
  try:
    return ModelConfig(**fields)
  except TypeError as e:
    raise ConfigError(f"config.model: {e}") from None
  except ValueError as e:
    raise ConfigError(f"config.model.{e}") from None


def build_model(model_config: ModelConfig, kind: str):
  if kind == "seq2seq":
    return Transformer(model_config)
  if kind == "tagging":
    return EncoderTagger(model_config)
  if kind == "lm":
    return LanguageModel(model_config)
  raise ConfigError(f"config.task: task kind {kind!r} has no model")


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning rate by step. "rsqrt" is the paper's: linear warmup to `learning_rate`, then decay as
  1/sqrt(step); "cosine" warms up then decays to `end_learning_rate` (default 0) at num_train_steps
  (nanoGPT's schedule); "constant" warms up and stays."""
  opt = config.optimizer
  peak, warmup = float(opt.learning_rate), max(int(opt.warmup_steps), 1)
  if opt.schedule == "rsqrt":

    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32) + 1.0
      return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

    return rsqrt
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0,
      peak,
      warmup,
      max(int(config.num_train_steps), warmup + 1),
      end_value=float(opt.get("end_learning_rate", 0.0)),
    )
  if opt.schedule == "constant":
    return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )
  raise ConfigError(
    f"config.optimizer.schedule: unknown choice {opt.schedule!r}; expected one of {SCHEDULES}"
  )


def _matrices(params):
  """True for the parameters with two or more axes (kernels and embedding tables): what AdamW's
  weight decay applies to, as in nanoGPT and GPT-2; biases, norm scales and per-head scalars are
  not decayed."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the paper's (0.9, 0.98, 1e-9) defaults and the schedule; AdamW (decoupled weight
  decay on the matrices only) when `config.optimizer.weight_decay` > 0; optional global-norm
  clipping before either."""
  opt = config.optimizer
  schedule = make_schedule(config)
  decay = float(opt.get("weight_decay", 0.0))
  if decay > 0:
    adam = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=decay, mask=_matrices)
  else:
    adam = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adam)
  return adam


def validate(config: ml_collections.ConfigDict, *, workdir: str | None = None):
  """Checks a config before anything compiles; returns (task, model_config). `workdir`: a run
  directory whose saved task files the task may load instead of building them (see `make_task`).

  Raises:
    ConfigError: one line naming the field and the problem.
  """
  positive = (
    "batch_size",
    "eval_batch_size",
    "num_train_steps",
    "num_seeds",
    "log_every_steps",
    "eval_every_steps",  # 0 would divide by zero after compiling; the last step always evaluates.
    "checkpoint_every_steps",  # Likewise; the last step is always saved.
  )
  for field in positive:
    value = config[field]
    if value <= 0:
      raise ConfigError(f"config.{field}: must be positive, got {value}")
  keep = config.get("checkpoints_to_keep", 2)
  if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
    raise ConfigError(
      f"config.checkpoints_to_keep: must be at least 1 (the last one is the final state), got {keep!r}"
    )
  if config.checkpoint_every_steps % config.log_every_steps:
    raise ConfigError(
      f"config.checkpoint_every_steps: {config.checkpoint_every_steps} must be a multiple of "
      f"log_every_steps={config.log_every_steps} (checkpoints are taken where the loss is checked)"
    )
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f"config.label_smoothing: must be in [0, 1), got {config.label_smoothing}")
  if config.optimizer.learning_rate <= 0:
    raise ConfigError(
      f"config.optimizer.learning_rate: must be positive, got {config.optimizer.learning_rate}"
    )
  for field in ("weight_decay", "end_learning_rate"):
    value = config.optimizer.get(field, 0.0)
    if not 0.0 <= value < float("inf"):
      raise ConfigError(f"config.optimizer.{field}: must be finite and >= 0, got {value}")
  if config.optimizer.get("end_learning_rate", 0.0) > config.optimizer.learning_rate:
    raise ConfigError(
      f"config.optimizer.end_learning_rate: {config.optimizer.end_learning_rate} is above the peak "
      f"learning_rate={config.optimizer.learning_rate}"
    )
  if config.optimizer.schedule not in SCHEDULES:
    choice = config.optimizer.schedule
    raise ConfigError(
      f"config.optimizer.schedule: unknown choice {choice!r}; expected one of {SCHEDULES}"
    )
  data_path = config.get("data", {}).get("path", "")
  if data_path and not os.path.exists(data_path):
    raise ConfigError(f"config.data.path: {data_path!r} does not exist")
  patience = config.get("early_stopping_patience", 0)
  if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
    raise ConfigError(
      f"config.early_stopping_patience: must be an int >= 0 (0 = never stop early), got {patience!r}"
    )
  epochs = config.get("num_train_epochs", 0)
  if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 <= epochs < float("inf"):
    raise ConfigError(
      f"config.num_train_epochs: must be a number >= 0 (0 = use num_train_steps), got {epochs!r}"
    )
  objective = config.get("objective", "supervised")
  if objective not in OBJECTIVES:
    raise ConfigError(f"config.objective: unknown choice {objective!r}; expected one of {OBJECTIVES}")
  init_from = config.get("init_from", "")
  if init_from and not os.path.isdir(init_from):
    raise ConfigError(f"config.init_from: {init_from!r} is not a run directory")
  try:
    task = tasks.make_task(config.task, config.get("data"), seed=int(config.data_seed), workdir=workdir)
    if objective == "denoise":
      corruption = denoise.corruption_from(config.get("denoise"))
      task = denoise.DenoisingTask(task, corruption, seed=int(config.data_seed))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if epochs and not isinstance(getattr(task, "num_train_examples", None), int):
    raise ConfigError(
      f"config.num_train_epochs: the {config.task.name} task draws fresh examples (no fixed training "
      "set); give num_train_steps instead"
    )
  model_config = model_config_from(config, task)
  try:
    sharding.check_fits(config, model_config)
  except sharding.MeshError as e:
    raise ConfigError(str(e)) from None
  return task, model_config


def train_steps(config: ml_collections.ConfigDict, task) -> int:
  """The run's optimizer steps: `config.num_train_steps`, or with `config.num_train_epochs` > 0 that
  many passes over the task's training examples (rounded up to whole batches), so a larger data set
  is not cut short by a step count tuned to a smaller one."""
  epochs = float(config.get("num_train_epochs", 0) or 0)
  if epochs <= 0:
    return int(config.num_train_steps)
  return max(1, math.ceil(epochs * task.num_train_examples / int(config.batch_size)))


def abstract_train_state(config, task, model, optimizer, shardings=None) -> TrainState:
  """The shapes and dtypes of a run's state (with its leading seed axis), without computing it: what
  orbax restores into. `shardings`: where each leaf goes (a tree like the state); default, whole on
  every device of a mesh over this machine's devices, whatever mesh wrote the checkpoint (so a run
  trained on many devices opens on a laptop)."""
  example_inputs, _ = inputs_and_targets(jax.tree.map(jnp.asarray, task.train_batch(0, 1)), task.kind)
  rngs = jnp.stack([jax.random.PRNGKey(0)] * int(config.num_seeds))
  init = state_initializer(model, optimizer, example_inputs, keep_best=early_stopping(config) > 0)
  abstract = jax.eval_shape(jax.vmap(init), rngs)
  if shardings is None:
    whole = sharding.replicated(jax.sharding.Mesh(np.array(jax.local_devices()), ("data",)))
    shardings = jax.tree.map(lambda _: whole, abstract)
  return sharding.with_shardings(abstract, shardings)


def early_stopping(config: ml_collections.ConfigDict) -> int:
  """`config.early_stopping_patience`: evaluations without a better main metric before a run stops
  (0, the default, never stops early)."""
  return int(config.get("early_stopping_patience", 0) or 0)


def restore_run(workdir: str, seed_index: int = 0):
  """Loads a run directory for inspection: returns (config, task, model, params of one seed).

  A task's files saved in the run directory (a translation run's subword model) are loaded, not
  built again from the training data.

  Raises:
    ConfigError: when `workdir` holds no config.json or no checkpoint, or the seed does not exist.
  """
  config = _run_config(workdir)
  if not 0 <= seed_index < config.num_seeds:
    raise ConfigError(f"--seed_index: {seed_index} is not in [0, {config.num_seeds})")
  config, task, model, state = _restore_state(workdir, config)
  return config, task, model, jax.tree.map(lambda x: x[seed_index], state.params)


def _run_config(workdir: str) -> ml_collections.ConfigDict:
  resolved = files.read_json(files.path(workdir, files.CONFIG_FILE))
  if not isinstance(resolved, dict):
    raise ConfigError(f"--workdir: {workdir!r} holds no run (no readable {files.CONFIG_FILE})")
  for derived in ("resolved_model", files.DATA_HASHES):  # Written by the loop, not config fields.
    resolved.pop(derived, None)
  # Where the run trained, not what it is: inspecting it here uses this machine's devices.
  resolved.pop("mesh", None)
  return ml_collections.ConfigDict(resolved)


def _restore_state(workdir: str, config: ml_collections.ConfigDict):
  """(config, task, model, the latest checkpoint's state with its seed axis) of a run directory."""
  task, model_config = validate(config, workdir=workdir)
  model = build_model(model_config, task.kind)
  abstract_state = abstract_train_state(config, task, model, make_optimizer(config))
  checkpoints = ocp.CheckpointManager(files.checkpoints_dir(workdir))
  latest = checkpoints.latest_step()
  if latest is None:
    raise ConfigError(f"--workdir: {workdir!r} holds no checkpoint yet")
  state = checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract_state))
  checkpoints.close()
  return config, task, model, state


def init_from(config: ml_collections.ConfigDict, params):
  """`params` (with their leading seed axis) with every parameter that `config.init_from`'s run also
  has, by name, taken from that run: seed i from its seed i mod its seed count. Top-level names in
  `config.init_from_skip` (comma-separated; the output head by default) stay as initialised, as do
  parameters the other run lacks. Returns `params` unchanged when `config.init_from` is empty.

  Raises:
    ConfigError: naming the parameter and both shapes when the two runs disagree on one, or when no
      parameter matches at all.
  """
  source = config.get("init_from", "")
  if not source:
    return params
  skip = {name.strip() for name in config.get("init_from_skip", "").split(",") if name.strip()}
  try:
    source_config, _, _, state = _restore_state(source, _run_config(source))
  except ConfigError as e:
    raise ConfigError(f"config.init_from: {str(e).removeprefix('--workdir: ')}") from None
  num_source = int(source_config.num_seeds)
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  which = jnp.arange(num_seeds) % num_source  # Seed i takes the source's seed i mod its count.
  source_leaves = {
    jax.tree_util.keystr(path): leaf[which]
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
  }
  taken = []

  def take(path, leaf):
    name = jax.tree_util.keystr(path)
    if path[0].key in skip or name not in source_leaves:
      return leaf
    if source_leaves[name].shape[1:] != leaf.shape[1:]:
      raise ConfigError(
        f"config.init_from: parameter {name} has shape {tuple(source_leaves[name].shape[1:])} in "
        f"{source!r} but {tuple(leaf.shape[1:])} here"
      )
    taken.append(name)
    return jnp.asarray(source_leaves[name], leaf.dtype)

  out = jax.tree_util.tree_map_with_path(take, params)
  if not taken:
    raise ConfigError(f"config.init_from: no parameter of {source!r} matches this model's by name")
  return out
