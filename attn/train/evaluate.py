"""Evaluation out of the loop: the `Evaluator` (eval loss and the objective's metrics, the task's own
scores, diagnostics, the scale probe, samples and the finite check, in one `run(step, params)`) and
`EarlyStopping` (keeps each seed's best parameters; says when no seed improved for `patience`
evaluations).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from attn.runs import files
from attn.train import sharding
from attn.train.config import ConfigError
from attn.train.predict import Predictor

PROBE_SEED_OFFSET = 12345  # The probe's inputs come from PRNGKey(data_seed + this).


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


def per_seed(x) -> list[float]:
  return [float(v) for v in np.asarray(x).reshape(-1)]


def is_writer() -> bool:
  """Whether this process writes the run's files (logs, metrics, summaries): process 0 of a
  multi-process run, or the only one. Checkpoints are written by every process together."""
  return jax.process_index() == 0


def host_params(params):
  """`params` as this process can read them whole: unchanged in a one-process run, else gathered
  from every process (a task decodes on the host, which needs the whole parameters)."""
  if jax.process_count() == 1:
    return params
  return multihost_utils.process_allgather(params, tiled=True)


def _seeds_of(params) -> list:
  """One seed's parameters at a time, from parameters with a leading seed axis (on the host)."""
  params = host_params(params)
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], params) for i in range(num_seeds)]


def evaluate(eval_fn, params, eval_batches, objective) -> dict[str, list[float]]:
  """The objective's eval metrics over the eval set (loss, accuracy and its extras), per seed."""
  totals = None
  for batch in eval_batches:
    sums = eval_fn(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return objective.reduce(totals)


def largest_logit(diagnostics: dict[str, list[float]]) -> dict[str, list[float]]:
  """{"max_attention_logit": per seed, the largest allowed logit of any attention layer on the first
  eval batch} (the quantity Wortsman et al. 2023 watch grow before a run diverges); {} for a model
  without attention."""
  per_layer = [v for k, v in diagnostics.items() if k.endswith("/max_logit")]
  if not per_layer:
    return {}
  return {"max_attention_logit": [max(values) for values in zip(*per_layer, strict=True)]}


def task_scores(run, params, batch_size: int, final: bool) -> dict[str, list[float]]:
  """The task's own metrics (`task.score`, e.g. entity F1 or BLEU from decoded output), per seed;
  `final` marks the last evaluation (where a task may also score its test split)."""
  per = [
    run.task.score(Predictor(run.model, run.objective, p), batch_size, final=final)
    for p in _seeds_of(params)
  ]
  if not per[0]:
    return {}
  return {k: [float(s[k]) for s in per] for k in per[0]}


def check_finite(
  values: dict[str, list[float]],
  step: int,
  seeds: list[int],
  last_checkpoint: Callable[[], int | None],
  workdir: str,
) -> None:
  """Raises NonFiniteLossError for the first non-finite value, naming it, the step, the seed and the
  last good checkpoint (`last_checkpoint()`, asked only then: it lists the folder)."""
  for name, values_per_seed in values.items():
    bad = [i for i, x in enumerate(values_per_seed) if not math.isfinite(x)]
    if not bad:
      continue
    kept = last_checkpoint()
    where = "no checkpoint was saved yet" if kept is None else f"the last good checkpoint is step {kept}"
    raise NonFiniteLossError(
      f"{name} is {values_per_seed[bad[0]]} at step {step} (seed {seeds[bad[0]]}); stopped, and "
      f"{where} in {workdir}/{files.CHECKPOINTS_DIR}."
    )


def check_lengths(model_config, batches: list[dict], eval_lengths=()) -> None:
  """Refuses batches (and a text task's `eval_lengths`) longer than the learned position table
  (`model.max_length`): past its end a position would read a clamped row silently (JAX clamps
  out-of-range gathers)."""
  if model_config.positions != "learned":
    return
  for length in eval_lengths:
    if length > model_config.max_length:
      raise ConfigError(
        f"config.model.max_length: {model_config.max_length} is shorter than config.task."
        f"eval_lengths' {length}; raise it (the rows past the training length stay untrained)"
      )
  for batch in batches:
    for key in ("src", "tgt_in", "tokens"):
      if key in batch and batch[key].shape[-1] > model_config.max_length:
        raise ConfigError(
          f"config.model.max_length: {model_config.max_length} is shorter than the task's "
          f"{key} batches ({batch[key].shape[-1]} tokens); raise it, or shorten the task's sequences"
        )


class Evaluator:
  """Everything a run records at an evaluation, on the run's fixed eval set.

  `run(step, params)` writes the "eval" metrics (the objective's, the task's scores, the largest
  attention logit), checks the eval loss is finite, writes the task's samples, the per-layer
  "diagnostics" and the scale "probe"; `run_best(step, best)` scores each seed's best parameters
  (early stopping's final evaluation, test included) as split "best".
  """

  def __init__(self, run, compiled, writer, workdir: str, last_checkpoint: Callable[[], int | None]):
    self.run_, self.compiled, self.writer, self.workdir = run, compiled, writer, workdir
    self.last_checkpoint = last_checkpoint
    task, train = run.task, run.train
    host_batches = task.eval_batches(train.eval_batch_size)
    check_lengths(run.model_config, [run.example_batch, *host_batches], task.eval_lengths)
    self.batches = [compiled.to_batch(b) for b in host_batches]
    self.probe_rng = jax.random.PRNGKey(train.data_seed + PROBE_SEED_OFFSET)

  def _scores(self, step: int, params, *, final: bool) -> dict[str, list[float]]:
    run = self.run_
    metrics = evaluate(self.compiled.eval, params, self.batches, run.objective)
    metrics.update(task_scores(run, params, run.train.eval_batch_size, final=final))
    return metrics

  def run(self, step: int, params, *, final: bool) -> dict[str, list[float]]:
    """The evaluation of `params` at `step`; `final`: the run's last (the task may score test)."""
    metrics = self._scores(step, params, final=final)
    diagnostics = {k: per_seed(v) for k, v in self.compiled.diagnostics(params, self.batches[0]).items()}
    metrics.update(largest_logit(diagnostics))
    self.writer.write(step, "eval", metrics)
    seeds = self.run_.train.seeds
    check_finite({"eval loss": metrics["loss"]}, step, seeds, self.last_checkpoint, self.workdir)
    self.write_samples(step, params)
    self.writer.write(step, "diagnostics", diagnostics)
    probe = self.compiled.probe(params, self.probe_rng)
    self.writer.write(step, "probe", {k: per_seed(v) for k, v in probe.items()})
    return metrics

  def run_best(self, step: int, best: dict) -> dict[str, list[float]]:
    """The final evaluation of an early-stopped run: each seed's best parameters, test included."""
    metrics = self._scores(step, best["params"], final=True)
    metrics["best_step"] = [int(s) for s in np.asarray(best["step"])]
    self.writer.write(step, files.BEST_SPLIT, metrics)
    return metrics

  def write_samples(self, step: int, params) -> None:
    """The task's samples (`task.samples`) of every seed into samples/STEP.txt; nothing when it has
    none."""
    if not is_writer():
      return
    run = self.run_
    texts = [run.task.samples(Predictor(run.model, run.objective, p)) for p in _seeds_of(params)]
    if not any(texts):
      return
    parts = []
    for seed_index, seed_texts in enumerate(texts):
      for number, text in enumerate(seed_texts):
        parts.append(f"=== seed {seed_index}, sample {number} ===\n{text}\n")
    files.write_text(files.samples_file(self.workdir, step), "".join(parts))


class EarlyStopping:
  """Keeps each seed's best parameters in the state (`TrainState.best`, checkpointed, so a resume
  keeps them) by the objective's main metric and direction; `stopped` once no seed improved for
  `patience` evaluations. With `patience` 0 it does nothing and never stops."""

  def __init__(self, patience: int, objective, compiled):
    self.patience, self.objective, self.compiled = patience, objective, compiled

  def __bool__(self) -> bool:
    return self.patience > 0

  def update(self, state, metrics: dict[str, list[float]]):
    """`state` with the best parameters kept after an evaluation scoring `metrics`."""
    if not self:
      return state
    values = np.asarray(metrics[self.objective.main_metric], np.float32)
    score = sharding.to_global(values * self.objective.score_sign(), self.compiled.replicated)
    return self.compiled.keep_best(state, score)

  def stopped(self, state) -> bool:
    return bool(self) and bool(np.all(np.asarray(state.best["since"]) >= self.patience))
