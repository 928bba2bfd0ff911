"""Training: state, pure jitted steps, and `train_and_evaluate`, the loop with checkpoints and metrics.

Determinism: the batch of step s is a pure function of (data seed, s) and the dropout key of step s is
fold_in(seed key, s), so a run killed at any moment and rerun from its last checkpoint ends with the
same metrics as an uninterrupted run. Several seeds of one config train in one compiled program: the
state carries a leading seed axis and the steps are vmapped over it (the seeds share the data stream).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn import blocks, tasks
from attn.config import ModelConfig
from attn.metrics import MetricsWriter, read_metrics
from attn.models import EncoderTagger, Transformer

SCHEDULES = ("rsqrt", "cosine", "constant")
# Fields that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = ("num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps")


class ConfigError(ValueError):
  """A configuration mistake; the message is one line naming the field."""


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


@struct.dataclass
class TrainState:
  step: jax.Array  # Steps taken: the next batch is the task's batch of this step.
  params: Any
  opt_state: Any
  rng: jax.Array  # Dropout key; step s uses fold_in(rng, s).


# ----------------------------------------------------------------------------------------------------
# Building blocks from the config.


def model_config_from(config: ml_collections.ConfigDict, task) -> ModelConfig:
  """The ModelConfig of `config.model` completed by the task's vocabulary and classes."""
  fields = dict(config.model)
  fields.update(
    vocab_size=len(task.vocab),
    num_classes=task.num_classes,
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
  raise ConfigError(f"config.task: task kind {kind!r} has no model")


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning rate by step. "rsqrt" is the paper's: linear warmup to `learning_rate`, then decay as
  1/sqrt(step); "cosine" warms up then decays to 0 at num_train_steps; "constant" warms up and stays."""
  opt = config.optimizer
  peak, warmup = float(opt.learning_rate), max(int(opt.warmup_steps), 1)
  if opt.schedule == "rsqrt":

    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32) + 1.0
      return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

    return rsqrt
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup, max(int(config.num_train_steps), warmup + 1)
    )
  if opt.schedule == "constant":
    return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )
  raise ConfigError(
    f"config.optimizer.schedule: unknown choice {opt.schedule!r}; expected one of {SCHEDULES}"
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the paper's (0.9, 0.98, 1e-9) defaults, the schedule, and optional clipping."""
  opt = config.optimizer
  adam = optax.adam(make_schedule(config), b1=opt.b1, b2=opt.b2, eps=opt.eps)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adam)
  return adam


def validate(config: ml_collections.ConfigDict):
  """Checks a config before anything compiles; returns (task, model_config).

  Raises:
    ConfigError: one line naming the field and the problem.
  """
  positive = ("batch_size", "eval_batch_size", "num_train_steps", "num_seeds", "log_every_steps")
  for field in (*positive, "eval_every_steps", "checkpoint_every_steps"):
    value = config[field]
    if value <= 0 and (field in positive or value < 0):
      raise ConfigError(f"config.{field}: must be positive, got {value}")
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
  if config.optimizer.schedule not in SCHEDULES:
    choice = config.optimizer.schedule
    raise ConfigError(
      f"config.optimizer.schedule: unknown choice {choice!r}; expected one of {SCHEDULES}"
    )
  n = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % n:
      raise ConfigError(f"config.{field}: {config[field]} is not divisible by the {n} devices")
  data_path = config.get("data", {}).get("path", "")
  if data_path and not os.path.isdir(data_path):
    raise ConfigError(f"config.data.path: {data_path!r} is not a folder")
  try:
    task = tasks.make_task(config.task, config.get("data"), seed=int(config.data_seed))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return task, model_config_from(config, task)


# ----------------------------------------------------------------------------------------------------
# Pure steps. Each works on one seed; train_and_evaluate vmaps them over the seed axis.


def _inputs_and_targets(batch: dict, kind: str):
  if kind == "seq2seq":
    return (batch["src"], batch["tgt_in"]), batch["tgt_out"]
  if "features" in batch:  # Optional hashed per-token features [B, T, F] (attn.ner).
    return (batch["tokens"], batch["features"]), batch["tags"]
  return (batch["tokens"],), batch["tags"]


def _token_losses(logits, targets, label_smoothing: float):
  """(smoothed cross-entropy, plain cross-entropy) per token, in float32."""
  logits = logits.astype(jnp.float32)
  plain = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if label_smoothing == 0.0:
    return plain, plain
  labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, labels), plain


def train_step(state: TrainState, batch: dict, *, model, optimizer, kind: str, label_smoothing: float):
  """One optimizer step on one seed's state; returns (new state, metrics)."""
  inputs, targets = _inputs_and_targets(batch, kind)
  weights = batch["weights"]
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits = model.apply({"params": params}, *inputs, deterministic=False, rngs={"dropout": dropout_rng})
    smoothed, plain = _token_losses(logits, targets, label_smoothing)
    denom = jnp.maximum(weights.sum(), 1.0)
    return jnp.sum(smoothed * weights) / denom, (logits, jnp.sum(plain * weights) / denom)

  (loss, (logits, nll)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  correct = (jnp.argmax(logits, -1) == targets) * weights
  metrics = {
    "loss": loss,
    "nll": nll,
    "accuracy": correct.sum() / jnp.maximum(weights.sum(), 1.0),
    "grad_norm": optax.tree.norm(grads),
  }
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model, kind: str) -> dict:
  """Sums over one eval batch (rows with zero weight count for nothing); the caller divides."""
  inputs, targets = _inputs_and_targets(batch, kind)
  weights = batch["weights"]
  logits = model.apply({"params": params}, *inputs)
  _, plain = _token_losses(logits, targets, 0.0)
  correct = (jnp.argmax(logits, -1) == targets) | (weights == 0)
  real_row = weights.sum(-1) > 0
  return {
    "loss_sum": jnp.sum(plain * weights),
    "weight_sum": weights.sum(),
    "correct_sum": jnp.sum(correct * weights),
    "sequence_correct_sum": jnp.sum(jnp.all(correct, -1) & real_row),
    "sequence_count": jnp.sum(real_row),
  }


def diagnostics_step(params, batch: dict, *, model, kind: str) -> dict:
  """Per attention layer: logit std, attention entropy and maximum weight on an eval batch, and the
  gradient norms of its query and key projections (dropout off)."""
  inputs, targets = _inputs_and_targets(batch, kind)
  weights = batch["weights"]

  def loss_fn(params):
    logits, state = model.apply({"params": params}, *inputs, mutable=["diagnostics"])
    _, plain = _token_losses(logits, targets, 0.0)
    # A model without attention layers records nothing.
    return jnp.sum(plain * weights) / jnp.maximum(weights.sum(), 1.0), state.get("diagnostics", {})

  grads, diagnostics = jax.grad(loss_fn, has_aux=True)(params)
  out = {}
  for path, value in jax.tree_util.tree_leaves_with_path(diagnostics):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    out["/".join(names)] = value  # e.g. encoder/layer_0/self_attention/entropy
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if len(names) >= 2 and names[-2] in ("query", "key") and names[-1] == "kernel":
      out["/".join(names[:-2]) + f"/{names[-2]}_grad_norm"] = jnp.linalg.norm(g)
  return out


def probe_step(params, rng, *, model_config: ModelConfig, length: int = 64, batch: int = 8) -> dict:
  """Each attention layer applied with its own parameters to unit-variance inputs over `length`
  tokens: the logit std and entropy the scale ablation predicts (about 1 and 3.7 nats under
  "sqrt_d" at T=64 whatever K; about sqrt(K) and falling with K under "none")."""
  out = {}
  x_BTD = jax.random.normal(rng, (batch, length, model_config.d_model))
  layer = blocks.attention_layer(model_config, "probe")

  def visit(tree, path):
    if isinstance(tree, dict) and "query" in tree and "key" in tree:
      _, state = layer.apply({"params": tree}, x_BTD, mutable=["diagnostics"])
      for name, value in state["diagnostics"].items():
        out["/".join((*path, name))] = value[0]
      return
    if isinstance(tree, dict):
      for k, v in tree.items():
        visit(v, (*path, k))

  visit(params, ())
  return out


# ----------------------------------------------------------------------------------------------------
# The loop.


def _state_initializer(model, optimizer, example_inputs):
  """rng -> a fresh TrainState for one seed (parameters from init_rng, dropout from the other half)."""

  def init_state(rng):
    init_rng, dropout_rng = jax.random.split(rng)
    params = model.init(init_rng, *example_inputs)["params"]
    return TrainState(jnp.asarray(0, jnp.int32), params, optimizer.init(params), dropout_rng)

  return init_state


def _write_config(config: ml_collections.ConfigDict, workdir: str, model_config: ModelConfig) -> None:
  """Writes config.json; refuses to resume a run of a different config."""
  resolved = json.loads(config.to_json_best_effort())
  resolved["resolved_model"] = dataclasses.asdict(model_config)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    changed = sorted(
      k for k in set(old) | set(resolved) if old.get(k) != resolved.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
      raise ConfigError(
        f"--workdir {workdir} holds a run of a different config (fields {', '.join(changed)} differ); "
        "use a new --workdir"
      )
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(resolved, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _per_seed(x) -> list[float]:
  return [float(v) for v in np.asarray(x).reshape(-1)]


def _evaluate(eval_fn, params, eval_batches, kind: str) -> dict[str, list[float]]:
  totals = None
  for batch in eval_batches:
    sums = eval_fn(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.tree.map(np.asarray, totals)
  out = {
    "loss": _per_seed(totals["loss_sum"] / np.maximum(totals["weight_sum"], 1)),
    "accuracy": _per_seed(totals["correct_sum"] / np.maximum(totals["weight_sum"], 1)),
  }
  if kind == "seq2seq":
    out["sequence_accuracy"] = _per_seed(
      totals["sequence_correct_sum"] / np.maximum(totals["sequence_count"], 1)
    )
  return out


def _main_metric(task) -> str:
  default = "sequence_accuracy" if task.kind == "seq2seq" else "accuracy"
  return getattr(task, "main_metric", default)


def _task_scores(task, model, params, batch_size: int, final: bool) -> dict[str, list[float]]:
  """The task's own metrics (`task.score`, e.g. entity F1 or BLEU from decoded output), per seed;
  `final` marks the last evaluation (where a task may also score its test split)."""
  if not hasattr(task, "score"):
    return {}
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  per_seed = [
    task.score(model, jax.tree.map(lambda x, i=i: x[i], params), batch_size, final=final)
    for i in range(num_seeds)
  ]
  return {k: [float(s[k]) for s in per_seed] for k in per_seed[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[float]]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final eval metrics
  (a list per metric, one value per seed).

  Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ and, when done, summary.json.

  Raises:
    ConfigError: for a bad config, before anything compiles.
    NonFiniteLossError: when the training loss becomes NaN or inf.
  """
  start_time = time.time()
  task, model_config = validate(config)
  kind = task.kind
  model = build_model(model_config, kind)
  optimizer = make_optimizer(config)
  os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir, model_config)
  if hasattr(task, "save"):  # E.g. a vocabulary built from the training split, kept with the run.
    task.save(workdir)

  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  # Batches split over devices along B; the state (with its seed axis) is replicated: data parallel.
  data_sharding = NamedSharding(mesh, P("data"))
  num_seeds = int(config.num_seeds)
  seeds = [int(config.seed) + i for i in range(num_seeds)]

  example = task.train_batch(0, int(config.batch_size))
  example_inputs, _ = _inputs_and_targets(jax.tree.map(jnp.asarray, example), kind)

  seed_rngs = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  init_fn = jax.jit(
    jax.vmap(_state_initializer(model, optimizer, example_inputs)), out_shardings=replicated
  )
  abstract_state = jax.eval_shape(init_fn, seed_rngs)

  checkpoints = ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=int(config.get("checkpoints_to_keep", 2)), enable_async_checkpointing=False
    ),
  )
  latest = checkpoints.latest_step()
  if latest is None:
    state = init_fn(seed_rngs)
  else:
    state = checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract_state))
    state = jax.device_put(state, replicated)
    logging.info("Resuming %s from the checkpoint of step %d.", workdir, latest)
  step = int(np.asarray(state.step)[0])
  writer = MetricsWriter(workdir, keep_through_step=-1 if latest is None else step)
  num_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(abstract_state.params))

  static = dict(model=model, kind=kind)
  p_train_step = jax.jit(
    jax.vmap(
      functools.partial(
        train_step, optimizer=optimizer, label_smoothing=float(config.label_smoothing), **static
      ),
      in_axes=(0, None),
    ),
    in_shardings=(replicated, data_sharding),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )
  p_eval_step = jax.jit(
    jax.vmap(functools.partial(eval_step, **static), in_axes=(0, None)),
    in_shardings=(replicated, data_sharding),
    out_shardings=replicated,
  )
  p_diagnostics = jax.jit(
    jax.vmap(functools.partial(diagnostics_step, **static), in_axes=(0, None)),
    in_shardings=(replicated, data_sharding),
    out_shardings=replicated,
  )
  p_probe = jax.jit(
    jax.vmap(functools.partial(probe_step, model_config=model_config), in_axes=(0, None)),
    out_shardings=replicated,
  )
  schedule = make_schedule(config)
  eval_batches = [
    jax.device_put(b, data_sharding) for b in task.eval_batches(int(config.eval_batch_size))
  ]
  probe_rng = jax.random.PRNGKey(int(config.data_seed) + 12345)

  def evaluate_and_log(step: int) -> dict[str, list[float]]:
    metrics = _evaluate(p_eval_step, state.params, eval_batches, kind)
    metrics.update(
      _task_scores(task, model, state.params, int(config.eval_batch_size), final=step == total)
    )
    writer.write(step, "eval", metrics)
    diagnostics = p_diagnostics(state.params, eval_batches[0])
    writer.write(step, "diagnostics", {k: _per_seed(v) for k, v in diagnostics.items()})
    probe = p_probe(state.params, probe_rng)
    writer.write(step, "probe", {k: _per_seed(v) for k, v in probe.items()})
    return metrics

  total = int(config.num_train_steps)
  final = None
  if latest is None:
    final = evaluate_and_log(0)
  logging.info(
    "Training %s: %d steps, %d seed(s), %d parameters per seed, %d device(s).",
    workdir,
    total,
    num_seeds,
    num_params,
    jax.device_count(),
  )
  pending: list[dict] = []
  interval_start, interval_steps = time.time(), 0
  rates: list[float] = []
  while step < total:
    # Host numpy straight to its shards: one transfer, not a copy to device 0 and a reshard.
    batch = jax.device_put(task.train_batch(step, int(config.batch_size)), data_sharding)
    state, metrics = p_train_step(state, batch)
    pending.append(metrics)
    step += 1
    interval_steps += 1
    if step % int(config.log_every_steps) and step != total:
      continue
    # Host sync once per log interval: mean of the interval's metrics, per seed.
    stacked = jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), axis=0), *pending)
    pending = []
    elapsed = time.time() - interval_start
    steps_per_sec = interval_steps / max(elapsed, 1e-9)
    rates.append(steps_per_sec)
    losses = _per_seed(stacked["loss"])
    if not all(math.isfinite(x) for x in losses):
      bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
      kept = checkpoints.latest_step()
      writer.close()
      where = (
        "no checkpoint was saved yet" if kept is None else f"the last good checkpoint is step {kept}"
      )
      raise NonFiniteLossError(
        f"training loss is {losses[bad[0]]} at step {step} (seed {seeds[bad[0]]}); stopped, and "
        f"{where} in {workdir}/checkpoints."
      )
    train_metrics = {k: _per_seed(v) for k, v in stacked.items()}
    train_metrics.update(learning_rate=float(schedule(step - 1)), steps_per_sec=steps_per_sec)
    writer.write(step, "train", train_metrics)
    eta = (total - step) / max(steps_per_sec, 1e-9)
    logging.info(
      "step %d/%d  loss %s  %.1f steps/s  %s left",
      step,
      total,
      " ".join(f"{x:.4f}" for x in losses),
      steps_per_sec,
      _duration(eta),
    )
    if step % int(config.eval_every_steps) == 0 or step == total:
      final = evaluate_and_log(step)
    if step % int(config.checkpoint_every_steps) == 0 or step == total:
      checkpoints.save(step, args=ocp.args.StandardSave(state))
      checkpoints.wait_until_finished()
    writer.flush()
    interval_start, interval_steps = time.time(), 0
  if final is None:  # Resumed at the very end: the final evaluation is on record already.
    logged = [r for r in read_metrics(workdir) if r["split"] == "eval" and r["step"] == step]
    final = (
      {k: v for k, v in logged[-1].items() if k not in ("step", "split", "time")} if logged else None
    )
    final = final or evaluate_and_log(step)
  writer.close()
  checkpoints.close()
  summary = {
    "status": "done",
    "num_params": num_params,
    "num_seeds": num_seeds,
    "seeds": seeds,
    "main_metric": _main_metric(task),
    "final": final,
    "steps_per_sec": float(np.median(rates)) if rates else None,
    "wall_time_s": time.time() - start_time,
  }
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return final


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def restore_run(workdir: str, seed_index: int = 0):
  """Loads a run directory for inspection: returns (config, task, model, params of one seed).

  Raises:
    ConfigError: when `workdir` holds no config.json or no checkpoint, or the seed does not exist.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"--workdir: {workdir!r} holds no run (no config.json)")
  with open(path, encoding="utf-8") as f:
    resolved = json.load(f)
  resolved.pop("resolved_model", None)
  config = ml_collections.ConfigDict(resolved)
  task, model_config = validate(config)
  if not 0 <= seed_index < config.num_seeds:
    raise ConfigError(f"--seed_index: {seed_index} is not in [0, {config.num_seeds})")
  model = build_model(model_config, task.kind)
  optimizer = make_optimizer(config)
  example_inputs, _ = _inputs_and_targets(jax.tree.map(jnp.asarray, task.train_batch(0, 1)), task.kind)

  rngs = jnp.stack([jax.random.PRNGKey(0)] * int(config.num_seeds))
  abstract_state = jax.eval_shape(jax.vmap(_state_initializer(model, optimizer, example_inputs)), rngs)
  checkpoints = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  latest = checkpoints.latest_step()
  if latest is None:
    raise ConfigError(f"--workdir: {workdir!r} holds no checkpoint yet")
  state = checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract_state))
  checkpoints.close()
  return config, task, model, jax.tree.map(lambda x: x[seed_index], state.params)
