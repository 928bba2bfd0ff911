"""The training loop: `train_and_evaluate(config, workdir)`, with checkpoints, metrics and resumption.

Determinism: the batch of step s is a pure function of (data seed, s) and the dropout key of step s is
fold_in(seed key, s), so a run killed at any moment and rerun from its last checkpoint ends with the
same metrics as an uninterrupted run. Several seeds of one config train in one compiled program: the
state carries a leading seed axis and the steps are vmapped over it (the seeds share the data stream).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from attn.nn.config import ModelConfig
from attn.runs import files
from attn.runs.writer import MetricsWriter
from attn.tasks import Task
from attn.train import setup, sharding, steps

PROBE_SEED_OFFSET = 12345  # The probe's inputs come from PRNGKey(data_seed + this).
# metrics.jsonl's split of an early-stopped run's final evaluation: each seed's best parameters.
BEST_SPLIT = "best"


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C (SIGINT) while training; says at which step and which checkpoint a rerun resumes from."""


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """The steps vmapped over the seed axis and jitted with their shardings over the run's mesh
  (`attn.train.sharding`): the state laid out by the rules (the seed axis whole), batches split
  along B over data and fsdp, metrics replicated."""

  train: Callable  # (state, batch) -> (state, metrics); donates the state.
  eval: Callable  # (params, batch) -> sums over the batch.
  diagnostics: Callable  # (params, batch) -> per-layer statistics.
  probe: Callable  # (params, rng) -> per-layer statistics on unit-variance inputs.
  init: Callable  # (seed rngs) -> a fresh state, laid out.
  abstract_init: Callable  # The same for jax.eval_shape (no mesh context, which jit refuses).
  keep_best: Callable  # (state, scores) -> state; donates the state.
  mesh: jax.sharding.Mesh
  state_shardings: object  # A tree like the state.
  data_sharding: NamedSharding
  replicated: NamedSharding


def _in_mesh(fn, mesh):
  """`fn` (jitted) traced and run with the mesh and the logical rules in context, so the models'
  activation constraints (`attn.nn.sharding`) bind to this mesh; `.lower` as on `fn`."""

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      return fn(*args)

  def lower(*args):  # For ahead-of-time compilation (`.lower(...).compile()`), as on a jitted fn.
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      return fn.lower(*args)

  wrapped.lower = lower
  return wrapped


def compile_steps(
  config: ml_collections.ConfigDict,
  model,
  optimizer,
  model_config: ModelConfig,
  kind: str,
  example_inputs,
  *,
  keep_best: bool = False,
  devices=None,
) -> CompiledSteps:
  """Jits the vmapped steps once, over the mesh of `config.mesh` on `devices` (default: all);
  `example_inputs` are one batch's model inputs (for the parameters' shapes)."""
  mesh = sharding.make_mesh(config.get("mesh"), devices)
  replicated = sharding.replicated(mesh)
  data_sharding = sharding.batch_sharding(mesh)
  init_state = steps.state_initializer(model, optimizer, example_inputs, keep_best=keep_best)
  boxed_init = steps.state_initializer(model, optimizer, example_inputs, keep_best=keep_best, boxed=True)
  state_shardings = sharding.state_shardings(mesh, jax.eval_shape(boxed_init, jax.random.PRNGKey(0)))
  params_shardings = state_shardings.params
  jitted_init = jax.jit(jax.vmap(init_state), out_shardings=state_shardings)
  static = dict(model=model, kind=kind)
  train = functools.partial(
    steps.train_step, optimizer=optimizer, label_smoothing=float(config.label_smoothing), **static
  )
  return CompiledSteps(
    train=_in_mesh(
      jax.jit(
        jax.vmap(train, in_axes=(0, None)),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
      ),
      mesh,
    ),
    eval=_in_mesh(
      jax.jit(
        jax.vmap(functools.partial(steps.eval_step, **static), in_axes=(0, None)),
        in_shardings=(params_shardings, data_sharding),
        out_shardings=replicated,
      ),
      mesh,
    ),
    diagnostics=_in_mesh(
      jax.jit(
        jax.vmap(functools.partial(steps.diagnostics_step, **static), in_axes=(0, None)),
        in_shardings=(params_shardings, data_sharding),
        out_shardings=replicated,
      ),
      mesh,
    ),
    probe=_in_mesh(
      jax.jit(
        jax.vmap(functools.partial(steps.probe_step, model_config=model_config), in_axes=(0, None)),
        in_shardings=(params_shardings, replicated),
        out_shardings=replicated,
      ),
      mesh,
    ),
    init=_in_mesh(jitted_init, mesh),
    abstract_init=jitted_init,
    keep_best=_in_mesh(
      jax.jit(
        jax.vmap(steps.keep_best),
        in_shardings=(state_shardings, replicated),
        out_shardings=state_shardings,
        donate_argnums=(0,),
      ),
      mesh,
    ),
    mesh=mesh,
    state_shardings=state_shardings,
    data_sharding=data_sharding,
    replicated=replicated,
  )


def data_hashes(task: Task) -> dict[str, str]:
  """sha256 of each file the task reads its data from, by absolute path."""
  return {os.path.abspath(path): files.sha256(path) for path in task.data_files()}


def write_config(
  config: ml_collections.ConfigDict,
  workdir: str,
  model_config: ModelConfig,
  task: Task,
  *,
  write: bool = True,
) -> None:
  """Writes config.json: the config, the resolved model and the hashes of the task's data files
  (with `write=False`, only the checks below).

  Raises:
    ConfigError: when `workdir` holds a run of a different config or over different data (only the
      fields of `files.resumable_fields` may differ), or holds checkpoints but no readable config.json.
  """
  resolved = json_config(config)
  # Through JSON, as config.json will read back (tuples become lists), so a resume compares alike.
  resolved["resolved_model"] = json.loads(json.dumps(dataclasses.asdict(model_config)))
  resolved[files.DATA_HASHES] = data_hashes(task)
  path = files.path(workdir, files.CONFIG_FILE)
  old = files.read_json(path)
  if old is None and _has_checkpoints(workdir):
    state = "an unreadable" if os.path.exists(path) else "no"
    raise setup.ConfigError(
      f"--workdir {workdir} holds checkpoints but {state} {files.CONFIG_FILE}, so nothing says which "
      "config they belong to; use a new --workdir"
    )
  if isinstance(old, dict):
    changed_data = files.changed_data(old, resolved[files.DATA_HASHES])
    if changed_data:
      raise setup.ConfigError(
        f"--workdir {workdir} holds a run over other data ({', '.join(changed_data)} changed since "
        "it started); use a new --workdir"
      )
    changed = files.config_differences(old, resolved)
    if changed:
      raise setup.ConfigError(
        f"--workdir {workdir} holds a run of a different config (fields {', '.join(changed)} differ); "
        "use a new --workdir"
      )
    if old == resolved:
      return  # Nothing to record: the file stays as it is.
  if write:
    files.write_json(path, resolved, sort_keys=True)


def _has_checkpoints(workdir: str) -> bool:
  folder = files.checkpoints_dir(workdir)
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def json_config(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON values (what config.json holds, without `resolved_model`)."""
  return json.loads(config.to_json_best_effort())


def _per_seed(x) -> list[float]:
  return [float(v) for v in np.asarray(x).reshape(-1)]


def evaluate(eval_fn, params, eval_batches, kind: str) -> dict[str, list[float]]:
  """Loss, token accuracy and (seq2seq) sequence accuracy over the eval set, one value per seed; for
  a language model also perplexity (exp of the loss per token) and, when the batches count the
  characters their targets spell, bits per character."""
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
  if kind == "lm":
    out["perplexity"] = [math.exp(min(x, 700.0)) for x in out["loss"]]  # exp(710) overflows.
    if "character_sum" in totals:
      nats_per_char = totals["loss_sum"] / np.maximum(totals["character_sum"], 1)
      out["bits_per_char"] = _per_seed(nats_per_char / math.log(2))
  return out


def largest_logit(diagnostics: dict[str, list[float]]) -> dict[str, list[float]]:
  """{"max_attention_logit": per seed, the largest allowed logit of any attention layer on the first
  eval batch} (the quantity Wortsman et al. 2023 watch grow before a run diverges); {} for a model
  without attention."""
  per_layer = [v for k, v in diagnostics.items() if k.endswith("/max_logit")]
  if not per_layer:
    return {}
  return {"max_attention_logit": [max(values) for values in zip(*per_layer, strict=True)]}


def task_scores(task: Task, model, params, batch_size: int, final: bool) -> dict[str, list[float]]:
  """The task's own metrics (`task.score`, e.g. entity F1 or BLEU from decoded output), per seed;
  `final` marks the last evaluation (where a task may also score its test split)."""
  params = host_params(params)
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  per_seed = [
    task.score(model, jax.tree.map(lambda x, i=i: x[i], params), batch_size, final=final)
    for i in range(num_seeds)
  ]
  if not per_seed[0]:
    return {}
  return {k: [float(s[k]) for s in per_seed] for k in per_seed[0]}


def host_params(params):
  """`params` as this process can read them whole: unchanged in a one-process run, else gathered
  from every process (a task decodes on the host, which needs the whole parameters)."""
  if jax.process_count() == 1:
    return params
  return multihost_utils.process_allgather(params, tiled=True)


def write_samples(task: Task, model, params, workdir: str, step: int) -> None:
  """The task's samples (`task.samples`) of every seed into samples/STEP.txt; nothing when it has
  none."""
  if not is_writer():
    return
  params = host_params(params)
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  texts = [task.samples(model, jax.tree.map(lambda x, i=i: x[i], params)) for i in range(num_seeds)]
  if not any(texts):
    return
  parts = []
  for seed_index, seed_texts in enumerate(texts):
    for number, text in enumerate(seed_texts):
      parts.append(f"=== seed {seed_index}, sample {number} ===\n{text}\n")
  files.write_text(files.samples_file(workdir, step), "".join(parts))


def check_finite(
  values: dict[str, list[float]],
  step: int,
  seeds: list[int],
  last_checkpoint: Callable[[], int | None],
  workdir: str,
) -> None:
  """Raises NonFiniteLossError for the first non-finite value, naming it, the step, the seed and the
  last good checkpoint (`last_checkpoint()`, asked only then: it lists the folder)."""
  for name, per_seed in values.items():
    bad = [i for i, x in enumerate(per_seed) if not math.isfinite(x)]
    if not bad:
      continue
    kept = last_checkpoint()
    where = "no checkpoint was saved yet" if kept is None else f"the last good checkpoint is step {kept}"
    raise NonFiniteLossError(
      f"{name} is {per_seed[bad[0]]} at step {step} (seed {seeds[bad[0]]}); stopped, and "
      f"{where} in {workdir}/{files.CHECKPOINTS_DIR}."
    )


def check_lengths(model_config: ModelConfig, batches: list[dict], eval_lengths=()) -> None:
  """Refuses batches (and a text task's `eval_lengths`) longer than the learned position table
  (`model.max_length`): past its end a position would read a clamped row silently (JAX clamps
  out-of-range gathers)."""
  if model_config.positions != "learned":
    return
  for length in eval_lengths:
    if length > model_config.max_length:
      raise setup.ConfigError(
        f"config.model.max_length: {model_config.max_length} is shorter than config.task."
        f"eval_lengths' {length}; raise it (the rows past the training length stay untrained)"
      )
  for batch in batches:
    for key in ("src", "tgt_in", "tokens"):
      if key in batch and batch[key].shape[-1] > model_config.max_length:
        raise setup.ConfigError(
          f"config.model.max_length: {model_config.max_length} is shorter than the task's "
          f"{key} batches ({batch[key].shape[-1]} tokens); raise it, or shorten the task's sequences"
        )


def write_summary(workdir: str, **fields) -> None:
  """summary.json: the run is done; its final metrics, size and speed."""
  files.write_json(files.path(workdir, files.SUMMARY_FILE), {"status": "done", **fields})


class _CtrlC:
  """While installed (in the main thread), a first Ctrl-C only sets `pressed`, which the loop reads
  between steps, so the stop never lands inside a checkpoint's save. (Raised wherever it fell, one
  that arrived while a checkpoint was being written was lost: the run went on to its end.) A second
  Ctrl-C interrupts at once."""

  def __init__(self):
    self.pressed = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    if self.pressed:
      raise KeyboardInterrupt
    self.pressed = True

  def install(self) -> None:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None


def is_writer() -> bool:
  """Whether this process writes the run's files (logs, metrics, summaries): process 0 of a
  multi-process run, or the only one. Checkpoints are written by every process together."""
  return jax.process_index() == 0


class _SilentWriter:
  """The MetricsWriter of a process that does not write (see `is_writer`)."""

  def write(self, step, split, metrics):
    del step, split, metrics

  def flush(self):
    pass

  def close(self):
    pass


def _logged_eval(workdir: str, step: int, split: str = "eval") -> dict | None:
  """The `split` metrics already on record for `step` (a run resumed at its very end), or None."""
  logged = [r for r in files.read_metrics(workdir) if r["split"] == split and r["step"] == step]
  if not logged:
    return None
  return {k: v for k, v in logged[-1].items() if k not in ("step", "split", "time")} or None


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def checkpoint_manager(config: ml_collections.ConfigDict, workdir: str) -> ocp.CheckpointManager:
  """orbax's manager of `workdir/checkpoints`, keeping `config.checkpoints_to_keep` (default 2)."""
  return ocp.CheckpointManager(
    files.checkpoints_dir(workdir),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=int(config.get("checkpoints_to_keep", 2)), enable_async_checkpointing=False
    ),
  )


def init_or_restore(config, checkpoints, init_fn, seed_rngs, abstract_state, shardings, workdir: str):
  """The state of the newest checkpoint that restores (onto the shardings `abstract_state` carries,
  whatever mesh wrote it), or a fresh one from
  `init_fn(seed_rngs)` when there is none; returns (state, its step or None, the checkpoint manager).

  A checkpoint that does not restore (a truncated or missing file, an empty step folder) is said in
  one warning line and moved aside to `checkpoints_unreadable/`, and the next older one is tried.

  Raises:
    ConfigError: when there are checkpoints and none restores.
  """
  saved = sorted(checkpoints.all_steps(), reverse=True)
  if not saved:
    state = init_fn(seed_rngs)
    if config.get("init_from", ""):  # A fresh run only: a resumed one has its own parameters.
      params = sharding.to_global(setup.init_from(config, state.params), shardings.params)
      state = state.replace(params=params)
      logging.info("Parameters taken by name from %s.", config.init_from)
    return state, None, checkpoints
  unreadable = []
  for step in saved:
    try:
      state = checkpoints.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # Any corruption of the files: orbax has no one error type for it.
      reason = " ".join(str(e).split())[:160] or type(e).__name__
      logging.warning("Checkpoint %d does not restore (%s); trying an older one.", step, reason)
      unreadable.append(step)
      continue
    if unreadable:
      checkpoints = _set_aside(config, checkpoints, workdir, unreadable)
    logging.info("Resuming %s from the checkpoint of step %d.", workdir, step)
    return state, step, checkpoints  # Restored straight onto `abstract_state`'s shardings.
  raise setup.ConfigError(
    f"--workdir {workdir}: no checkpoint in {files.checkpoints_dir(workdir)} restores (steps "
    f"{', '.join(map(str, saved))}); move the folder away to start again"
  )


def _set_aside(config, checkpoints, workdir: str, steps: list[int]):
  """Moves unreadable step folders out of orbax's way (the run saves those steps again); returns a
  fresh manager that no longer lists them."""
  checkpoints.close()
  aside = files.path(workdir, files.UNREADABLE_CHECKPOINTS_DIR)
  os.makedirs(aside, exist_ok=True)
  for step in steps:
    source = os.path.join(files.checkpoints_dir(workdir), str(step))
    target = os.path.join(aside, f"{step}.{int(time.time())}")
    if os.path.exists(source):
      os.replace(source, target)
  return checkpoint_manager(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[float]]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final eval metrics
  (a list per metric, one value per seed).

  Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ and, when done, summary.json.

  Raises:
    ConfigError: for a bad config or a run directory that holds another run, before anything
      compiles.
    RunInUseError: when another live process trains in `workdir`.
    NonFiniteLossError: when the training loss becomes NaN or inf.
  """
  start_time = time.time()
  task, model_config = setup.validate(config)
  if setup.train_steps(config, task) != config.num_train_steps:  # Given in epochs: steps from those.
    config = ml_collections.ConfigDict(config.to_dict())
    config.num_train_steps = setup.train_steps(config, task)
    logging.info("%s epochs: %d steps.", config.num_train_epochs, config.num_train_steps)
  if not workdir:
    raise setup.ConfigError("--workdir: empty; name the run's folder")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise setup.ConfigError(f"--workdir {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise setup.ConfigError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
  # One process writes the run's files; the others check them (a different run is refused on all).
  with files.run_lock(workdir) if is_writer() else contextlib.nullcontext():
    write_config(config, workdir, model_config, task, write=is_writer())
    try:
      if is_writer():
        task.save(workdir)  # E.g. a vocabulary built from the training split, kept with the run.
    except ValueError as e:
      raise setup.ConfigError(str(e)) from None
    summary_path = files.path(workdir, files.SUMMARY_FILE)
    summary = files.read_json(summary_path)
    if _finished(summary, config):
      logging.info("%s finished already: %d steps.", workdir, int(config.num_train_steps))
      return summary["final"]
    if os.path.exists(summary_path):  # A shorter run's: this one is not done until it ends.
      os.remove(summary_path)
    return _train(config, workdir, task, model_config, start_time)


def _finished(summary, config: ml_collections.ConfigDict) -> bool:
  """Whether summary.json records this config's run as done (so nothing needs compiling)."""
  return (
    isinstance(summary, dict)
    and summary.get("status") == "done"
    and summary.get("num_train_steps") == int(config.num_train_steps)
    and isinstance(summary.get("final"), dict)
  )


def _train(config, workdir: str, task: Task, model_config: ModelConfig, start_time: float):
  """The loop of `train_and_evaluate`, in a run directory that holds this config's run (or none)."""
  kind = task.kind
  model = setup.build_model(model_config, kind)
  optimizer = setup.make_optimizer(config)
  num_seeds = int(config.num_seeds)
  seeds = [int(config.seed) + i for i in range(num_seeds)]
  host_example = task.train_batch(0, int(config.batch_size))
  example_inputs, _ = steps.inputs_and_targets(jax.tree.map(jnp.asarray, host_example), kind)
  seed_rngs = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  patience = setup.early_stopping(config)
  compiled = compile_steps(
    config, model, optimizer, model_config, kind, example_inputs, keep_best=patience > 0
  )
  lower_is_better = task.main_metric == "loss"
  abstract_state = sharding.with_shardings(
    jax.eval_shape(compiled.abstract_init, seed_rngs), compiled.state_shardings
  )
  checkpoints = checkpoint_manager(config, workdir)
  state, latest, checkpoints = init_or_restore(
    config, checkpoints, compiled.init, seed_rngs, abstract_state, compiled.state_shardings, workdir
  )
  step = int(np.asarray(state.step)[0])
  writer = (
    MetricsWriter(workdir, keep_through_step=-1 if latest is None else step)
    if is_writer()
    else _SilentWriter()
  )
  to_batch = functools.partial(sharding.to_global, shardings=compiled.data_sharding)
  ctrl_c = _CtrlC()
  try:
    ctrl_c.install()
    num_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(abstract_state.params))
    schedule = setup.make_schedule(config)
    host_eval_batches = task.eval_batches(int(config.eval_batch_size))
    check_lengths(model_config, [host_example, *host_eval_batches], getattr(task, "eval_lengths", ()))
    eval_batches = [to_batch(b) for b in host_eval_batches]
    probe_rng = jax.random.PRNGKey(int(config.data_seed) + PROBE_SEED_OFFSET)
    total = int(config.num_train_steps)

    def evaluate_best(step: int) -> dict[str, list[float]]:
      """The final evaluation of an early-stopped run: each seed's best parameters, test included."""
      best = state.best
      metrics = evaluate(compiled.eval, best["params"], eval_batches, kind)
      metrics.update(task_scores(task, model, best["params"], int(config.eval_batch_size), final=True))
      metrics["best_step"] = [int(s) for s in np.asarray(best["step"])]
      writer.write(step, BEST_SPLIT, metrics)
      return metrics

    def evaluate_and_log(step: int) -> dict[str, list[float]]:
      metrics = evaluate(compiled.eval, state.params, eval_batches, kind)
      batch_size = int(config.eval_batch_size)
      final = step == total and not patience  # Early stopping scores test on the best instead.
      metrics.update(task_scores(task, model, state.params, batch_size, final=final))
      diagnostics = {
        k: _per_seed(v) for k, v in compiled.diagnostics(state.params, eval_batches[0]).items()
      }
      metrics.update(largest_logit(diagnostics))
      writer.write(step, "eval", metrics)
      check_finite({"eval loss": metrics["loss"]}, step, seeds, checkpoints.latest_step, workdir)
      write_samples(task, model, state.params, workdir, step)
      writer.write(step, "diagnostics", diagnostics)
      probe = compiled.probe(state.params, probe_rng)
      writer.write(step, "probe", {k: _per_seed(v) for k, v in probe.items()})
      return metrics

    def stops(metrics) -> bool:
      """Keeps each seed's best parameters; True when no seed improved for `patience` evaluations."""
      nonlocal state
      score = np.asarray(metrics[task.main_metric], np.float32) * (-1.0 if lower_is_better else 1.0)
      state = compiled.keep_best(state, sharding.to_global(score, compiled.replicated))
      return bool(np.all(np.asarray(state.best["since"]) >= patience))

    final = evaluate_and_log(0) if latest is None else None
    if final is not None:
      stopped = patience > 0 and stops(final)
    else:  # Resumed: a run that had stopped stays stopped.
      stopped = patience > 0 and bool(np.all(np.asarray(state.best["since"]) >= patience))
    logging.info(
      "Training %s: %d steps, %d seed(s), %d parameters per seed, %d device(s) in %d process(es), "
      "mesh %s.",
      workdir,
      total,
      num_seeds,
      num_params,
      jax.device_count(),
      jax.process_count(),
      sharding.describe(compiled.mesh.shape),
    )
    pending: list[dict] = []
    interval_start, interval_steps = time.time(), 0
    rates: list[float] = []
    while step < total and not stopped:
      if ctrl_c.pressed:  # Stop between steps, never inside a checkpoint's save.
        raise KeyboardInterrupt
      # Host numpy straight to its shards: each process puts only its own devices' rows.
      batch = to_batch(task.train_batch(step, int(config.batch_size)))
      state, metrics = compiled.train(state, batch)
      pending.append(metrics)
      step += 1
      interval_steps += 1
      if step % int(config.log_every_steps) and step != total:
        continue
      # Host sync once per log interval: mean of the interval's metrics, per seed.
      stacked = jax.tree.map(
        lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), axis=0), *pending
      )
      pending = []
      steps_per_sec = interval_steps / max(time.time() - interval_start, 1e-9)
      rates.append(steps_per_sec)
      losses = _per_seed(stacked["loss"])
      watched = {"training loss": losses, "gradient norm": _per_seed(stacked["grad_norm"])}
      check_finite(watched, step, seeds, checkpoints.latest_step, workdir)
      train_metrics = {k: _per_seed(v) for k, v in stacked.items()}
      train_metrics.update(learning_rate=float(schedule(step - 1)), steps_per_sec=steps_per_sec)
      writer.write(step, "train", train_metrics)
      logging.info(
        "step %d/%d  loss %s  %.1f steps/s  %s left",
        step,
        total,
        " ".join(f"{x:.4f}" for x in losses),
        steps_per_sec,
        _duration((total - step) / max(steps_per_sec, 1e-9)),
      )
      if step % int(config.eval_every_steps) == 0 or step == total:
        final = evaluate_and_log(step)
        stopped = patience > 0 and stops(final)
        if patience and (stopped or step == total):
          if stopped:
            logging.info("No seed improved for %d evaluations: stopping at step %d.", patience, step)
          final = evaluate_best(step)
      if step % int(config.checkpoint_every_steps) == 0 or step == total or stopped:
        checkpoints.save(step, args=ocp.args.StandardSave(state))
        checkpoints.wait_until_finished()
      writer.flush()
      interval_start, interval_steps = time.time(), 0
    if final is None or (patience and "best_step" not in final):
      # Resumed at the very end (or after the stop): the final evaluation is on record already.
      split = BEST_SPLIT if patience else "eval"
      final = _logged_eval(workdir, step, split)
      if final is None:
        final = evaluate_best(step) if patience else evaluate_and_log(step)
  except KeyboardInterrupt:
    kept = checkpoints.latest_step()
    where = f"its checkpoint of step {kept}" if kept is not None else "the start (no checkpoint yet)"
    raise TrainingInterrupted(
      f"interrupted at step {step}; rerun the same command to resume from {where}"
    ) from None
  finally:
    ctrl_c.uninstall()
    writer.close()
  checkpoints.close()
  if not is_writer():
    return final
  write_summary(
    workdir,
    num_train_steps=total,
    num_params=num_params,
    num_seeds=num_seeds,
    seeds=seeds,
    main_metric=task.main_metric,
    final=final,
    steps_per_sec=float(np.median(rates)) if rates else None,
    stopped_at_step=step if patience and step < total else None,
    wall_time_s=time.time() - start_time,
  )
  return final
