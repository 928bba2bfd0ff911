"""Setting up a run, once: `build_run(config) -> Run` checks the config, builds the task, the model,
its objective, the optimizer with its schedule and the example inputs; every consumer (the loop,
restoring a run, `init_from`, the analysis, the benchmarks, the tests) asks it rather than rebuilding
any of them. `restore_run` opens a finished (or running) run directory for inspection.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attn import tasks
from attn.nn import pretrained
from attn.nn.config import ModelConfig
from attn.runs import files
from attn.tasks import denoise
from attn.tasks.hf_tokenizer import TOKENIZER_FILE, HFVocabulary
from attn.train import checkpoints, sharding
from attn.train.config import SCHEDULES, ConfigError, OptimizerConfig, TrainConfig
from attn.train.objectives import Objective, objective_for
from attn.train.steps import TrainState, result_params, state_initializer

__all__ = ["SCHEDULES", "ConfigError", "Run", "build_run", "restore_run"]


def make_task(config: ml_collections.ConfigDict, train: TrainConfig, *, workdir: str | None = None):
  """The task `config.task` names over `config.data` (wrapped for `config.objective = "denoise"`).
  `workdir`: a run directory whose saved task files (a subword model) are loaded instead of built.

  Raises:
    ConfigError: naming the field, for a missing data path or a bad task field.
  """
  data_path = config.get("data", {}).get("path", "")
  if data_path and not os.path.exists(data_path):
    raise ConfigError(f"config.data.path: {data_path!r} does not exist")
  try:
    task = tasks.make_task(config.task, config.get("data"), seed=train.data_seed, workdir=workdir)
    if train.objective == "denoise":
      corruption = denoise.corruption_from(train.denoise)
      task = denoise.DenoisingTask(task, corruption, seed=train.data_seed)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return task


# The config.model fields a run sets for itself when `config.init_from` is a Hugging Face model folder;
# every other field is the checkpoint's (its shapes and its computation).
FINE_TUNING_FIELDS = (
  "dropout_rate",
  "attention_dropout_rate",
  "dtype",
  "attention_implementation",
  "crf",
)


def model_config_from(config: ml_collections.ConfigDict, task) -> ModelConfig:
  """The ModelConfig of `config.model` completed by the task's vocabulary and classes. When
  `config.init_from` is a Hugging Face model folder, the architecture is the checkpoint's (its
  config.json through `attn.nn.pretrained`), and `config.model` gives only FINE_TUNING_FIELDS."""
  fields = dict(config.model)
  vocab_size = len(task.vocab)
  init_from = config.get("init_from", "")
  if init_from and os.path.isdir(init_from) and is_pretrained_folder(init_from):
    hf_config = files.read_json(os.path.join(init_from, pretrained.CONFIG_FILE))
    try:
      checkpoint = pretrained.convert_config(hf_config)
    except pretrained.CheckpointError as e:
      raise ConfigError(f"config.init_from: {e}") from None
    if vocab_size > checkpoint.vocab_size:
      raise ConfigError(
        f"config.init_from: the task's vocabulary has {vocab_size} tokens, the checkpoint's "
        f"embedding {checkpoint.vocab_size} rows"
      )
    vocab_size = checkpoint.vocab_size  # Tokenizers may have fewer tokens than the table has rows.
    fields = {
      **dataclasses.asdict(checkpoint),
      **{name: fields[name] for name in FINE_TUNING_FIELDS if name in fields},
    }
  fields.update(
    vocab_size=vocab_size,
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


def make_schedule(opt: OptimizerConfig, num_train_steps: int) -> optax.Schedule:
  """Learning rate by step. "rsqrt" is the paper's: linear warmup to `learning_rate`, then decay as
  1/sqrt(step); "cosine" warms up then decays to `end_learning_rate` at `num_train_steps` (nanoGPT's
  schedule); "constant" warms up and stays."""
  peak, warmup = float(opt.learning_rate), max(int(opt.warmup_steps), 1)
  if opt.schedule == "rsqrt":

    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32) + 1.0
      return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

    return rsqrt
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup, max(int(num_train_steps), warmup + 1), end_value=float(opt.end_learning_rate)
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


def make_optimizer(
  opt: OptimizerConfig, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, its schedule): Adam with the paper's (0.9, 0.98, 1e-9) defaults; AdamW (decoupled
  weight decay on the matrices only) when `opt.weight_decay` > 0; optional global-norm clipping
  before either."""
  schedule = make_schedule(opt, num_train_steps)
  if opt.weight_decay > 0:
    adam = optax.adamw(
      schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=_matrices
    )
  else:
    adam = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adam), schedule
  return adam, schedule


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything one config trains with, built once by `build_run`.

  Attributes:
    config: the ConfigDict as given (what config.json records).
    train: its training fields, typed and checked.
    task: where batches come from.
    model_config: `config.model` completed by the task (vocabulary, classes).
    objective: what the task kind means to training (inputs, loss, eval sums, main metric).
    model: the Flax module (`objective.model_class`).
    optimizer, schedule: optax's transformation and its learning rate by step.
    num_train_steps: the optimizer steps (`num_train_steps`, or derived from `num_train_epochs`).
    example_batch: the first training batch (host numpy), whose inputs give the parameters' shapes.
  """

  config: ml_collections.ConfigDict
  train: TrainConfig
  task: Any
  model_config: ModelConfig
  objective: Objective
  model: nn.Module
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  num_train_steps: int
  example_batch: dict

  @property
  def example_inputs(self) -> tuple:
    """One batch's model inputs (jax arrays)."""
    return self.objective.inputs_and_targets(jax.tree.map(jnp.asarray, self.example_batch))[0]

  def state_initializer(self, *, boxed: bool = False):
    """rng -> a fresh one-seed TrainState (with the best-so-far record under early stopping)."""
    return state_initializer(
      self.model, self.optimizer, self.example_inputs, keep_best=self.train.patience > 0, boxed=boxed
    )

  def seed_rngs(self) -> jax.Array:
    """[num_seeds, 2] the seeds' keys: PRNGKey(seed + i)."""
    return jnp.stack([jax.random.PRNGKey(s) for s in self.train.seeds])

  def abstract_state(self, shardings=None) -> TrainState:
    """The shapes and dtypes of the state (with its leading seed axis), without computing it: what
    orbax restores into. `shardings`: where each leaf goes (a tree like the state); default, whole on
    every device of a mesh over this machine's devices, whatever mesh wrote the checkpoint (so a run
    trained on many devices opens on a laptop)."""
    abstract = jax.eval_shape(jax.vmap(self.state_initializer()), self.seed_rngs())
    if shardings is None:
      whole = sharding.replicated(jax.sharding.Mesh(np.array(jax.local_devices()), ("data",)))
      shardings = jax.tree.map(lambda _: whole, abstract)
    return sharding.with_shardings(abstract, shardings)


def build_run(config: ml_collections.ConfigDict, *, workdir: str | None = None, task=None) -> Run:
  """Checks `config` and builds its run before anything compiles. `workdir`: a run directory whose
  saved task files the task loads instead of building them (how a run is restored); `task`: a task
  built already (a benchmark's in-memory stream) instead of the one `config.task` names.

  Raises:
    ConfigError: one line naming the field and the problem.
  """
  train = TrainConfig.from_config(config)
  if train.init_from and not os.path.isdir(train.init_from):
    raise ConfigError(
      f"config.init_from: {train.init_from!r} is not a run directory or a Hugging Face model folder"
    )
  if task is None:
    task = make_task(config, train, workdir=workdir)
  num_train_steps = train.train_steps(getattr(task, "num_train_examples", None), config.task.name)
  model_config = model_config_from(config, task)
  try:
    sharding.check_fits(train, model_config)
  except sharding.MeshError as e:
    raise ConfigError(str(e)) from None
  objective = objective_for(task, model_config, train.objective)
  optimizer, schedule = make_optimizer(train.optimizer, num_train_steps)
  return Run(
    config=config,
    train=train,
    task=task,
    model_config=model_config,
    objective=objective,
    model=objective.build_model(model_config),
    optimizer=optimizer,
    schedule=schedule,
    num_train_steps=num_train_steps,
    example_batch=task.train_batch(0, train.batch_size),
  )


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run directory's config.json records (without what the loop derived).

  Raises:
    ConfigError: when `workdir` holds no readable config.json.
  """
  resolved = files.read_json(files.path(workdir, files.CONFIG_FILE))
  if not isinstance(resolved, dict):
    raise ConfigError(f"--workdir: {workdir!r} holds no run (no readable {files.CONFIG_FILE})")
  for derived in ("resolved_model", files.DATA_HASHES):  # Written by the loop, not config fields.
    resolved.pop(derived, None)
  # Where the run trained, not what it is: inspecting it here uses this machine's devices.
  resolved.pop("mesh", None)
  return ml_collections.ConfigDict(resolved)


def restore_state(workdir: str, config: ml_collections.ConfigDict | None = None):
  """(run, the latest checkpoint's state with its seed axis) of a run directory.

  Raises:
    ConfigError: when `workdir` holds no run or no checkpoint.
  """
  run = build_run(run_config(workdir) if config is None else config, workdir=workdir)
  state = checkpoints.restore_latest(workdir, run.abstract_state())
  if state is None:
    raise ConfigError(f"--workdir: {workdir!r} holds no checkpoint yet")
  return run, state


def restore_run(workdir: str, seed_index: int = 0):
  """Loads a run directory for inspection: returns (run, the run's parameters of one seed: the best
  evaluation's under early stopping, see `result_params`).

  A task's files saved in the run directory (a translation run's subword model) are loaded, not
  built again from the training data.

  Raises:
    ConfigError: when `workdir` holds no config.json or no checkpoint, or the seed does not exist.
  """
  config = run_config(workdir)
  num_seeds = TrainConfig.from_config(config).num_seeds
  if not 0 <= seed_index < num_seeds:
    raise ConfigError(f"--seed_index: {seed_index} is not in [0, {num_seeds})")
  run, state = restore_state(workdir, config)
  return run, jax.tree.map(lambda x: x[seed_index], result_params(state))


EMBEDDER = "embedder"  # The models' top-level name of the token embedding (rows by token id).


def _check_same_vocabulary(source: str, theirs, ours) -> None:
  """ConfigError naming the first token id the two vocabularies disagree on."""
  if tuple(theirs) == tuple(ours):
    return
  i = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b), None)
  if i is None:
    why = f"{len(theirs)} tokens there, {len(ours)} here"
  else:
    why = f"token {i} is {theirs[i]!r} there, {ours[i]!r} here"
  raise ConfigError(
    f"config.init_from: {source!r} has another vocabulary ({why}); its embedding rows would be "
    f"taken by index for other tokens. Train on the same vocabulary, or add {EMBEDDER!r} to "
    "config.init_from_skip"
  )


def _init_from_skip(train: TrainConfig) -> set[str]:
  return {name.strip() for name in train.init_from_skip.split(",") if name.strip()}


def _taken(train: TrainConfig, ours: dict, theirs: dict) -> list[str]:
  """The names of `ours` (keystr -> shape without the seed axis) that `init_from` takes from
  `theirs` (the same of the source run).

  Raises:
    ConfigError: naming the parameter and both shapes when the two runs disagree on one, or when no
      parameter matches at all.
  """
  skip, taken = _init_from_skip(train), []
  for name, shape in ours.items():
    if name.split("']")[0].removeprefix("['") in skip or name not in theirs:
      continue
    if theirs[name] != shape:
      raise ConfigError(
        f"config.init_from: parameter {name} has shape {theirs[name]} in {train.init_from!r} but "
        f"{shape} here"
      )
    taken.append(name)
  if not taken:
    raise ConfigError(
      f"config.init_from: no parameter of {train.init_from!r} matches this model's by name"
    )
  return taken


def _shapes(params) -> dict[str, tuple[int, ...]]:
  """keystr -> shape without the leading seed axis, of a parameter tree (arrays or abstract)."""
  return {
    jax.tree_util.keystr(p): tuple(x.shape[1:]) for p, x in jax.tree_util.tree_leaves_with_path(params)
  }


def _source_run(train: TrainConfig, vocab) -> Run:
  """`train.init_from`'s run, checked: it has a checkpoint, and (unless the embedder is skipped) the
  same vocabulary as `vocab`, this run's task's."""
  source = train.init_from
  try:
    source_run = build_run(run_config(source), workdir=source)
  except ConfigError as e:
    raise ConfigError(f"config.init_from: {str(e).removeprefix('--workdir: ')}") from None
  if not checkpoints.has_checkpoints(source):
    raise ConfigError(f"config.init_from: {source!r} holds no checkpoint yet")
  source_vocab = getattr(source_run.task, "vocab", None)
  if vocab is not None and source_vocab is not None and EMBEDDER not in _init_from_skip(train):
    _check_same_vocabulary(source, source_vocab.tokens, vocab.tokens)
  return source_run


def is_pretrained_folder(path: str) -> bool:
  """Whether `path` is a Hugging Face model folder (its config.json has a `model_type`) rather than
  a run directory."""
  hf_config = files.read_json(os.path.join(path, pretrained.CONFIG_FILE))
  return isinstance(hf_config, dict) and "model_type" in hf_config


def _pretrained_params(train: TrainConfig, vocab) -> dict:
  """The parameters (with a seed axis of 1) of `train.init_from`, a Hugging Face model folder,
  converted by `attn.nn.pretrained`; its tokenizer.json, when it has one, must be this run's
  vocabulary token for token (unless the embedder is skipped)."""
  source = train.init_from
  try:
    _, params = pretrained.convert(*pretrained.read_folder(source))
  except pretrained.CheckpointError as e:
    raise ConfigError(f"config.init_from: {e}") from None
  tokenizer = os.path.join(source, TOKENIZER_FILE)
  if vocab is not None and EMBEDDER not in _init_from_skip(train) and os.path.exists(tokenizer):
    try:
      theirs = HFVocabulary(tokenizer).tokens
    except ValueError as e:
      raise ConfigError(f"config.init_from: {e}") from None
    _check_same_vocabulary(source, theirs, vocab.tokens)
  return jax.tree.map(lambda x: np.asarray(x)[None], params)


def check_init_from(train: TrainConfig, abstract_params, *, vocab=None) -> None:
  """Everything `init_from` checks, from shapes alone (nothing is restored): a run refused here
  has written nothing yet, so the corrected command starts afresh in the same workdir.

  Raises:
    ConfigError: as `init_from`.
  """
  if not train.init_from:
    return
  if is_pretrained_folder(train.init_from):
    _taken(train, _shapes(abstract_params), _shapes(_pretrained_params(train, vocab)))
    return
  source_run = _source_run(train, vocab)
  _taken(train, _shapes(abstract_params), _shapes(source_run.abstract_state().params))


def init_from(train: TrainConfig, params, *, vocab=None):
  """`params` (with their leading seed axis) with every parameter that `train.init_from`'s run also
  has, by name, taken from that run's parameters (`result_params`): seed i from its seed i mod its
  seed count. Top-level names in `train.init_from_skip` (comma-separated; the output head by default)
  stay as initialised, as do parameters the other run lacks. Returns `params` unchanged when
  `train.init_from` is empty. With `vocab` (this run's task's `Vocabulary`), the other run's must
  be the same token for token, unless the embedder is skipped: embedding rows are taken by index.

  Raises:
    ConfigError: naming the parameter and both shapes when the two runs disagree on one, or when no
      parameter matches at all (`check_init_from` finds the same without restoring anything).
  """
  if not train.init_from:
    return params
  if is_pretrained_folder(train.init_from):
    source_params, num_source = _pretrained_params(train, vocab), 1
  else:
    source_run = _source_run(train, vocab)
    state = checkpoints.restore_latest(train.init_from, source_run.abstract_state())
    if state is None:
      raise ConfigError(f"config.init_from: {train.init_from!r} holds no checkpoint yet")
    source_params, num_source = result_params(state), source_run.train.num_seeds
  taken = set(_taken(train, _shapes(params), _shapes(source_params)))
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  which = jnp.arange(num_seeds) % num_source  # Seed i takes the source's seed i mod its count.
  source_leaves = {
    jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(source_params)
  }

  def take(path, leaf):
    name = jax.tree_util.keystr(path)
    return jnp.asarray(source_leaves[name][which], leaf.dtype) if name in taken else leaf

  return jax.tree_util.tree_map_with_path(take, params)
