"""The training loop: `train_and_evaluate(config, workdir)`, with checkpoints, metrics and resumption.

Determinism: the batch of step s is a pure function of (data seed, s) and the dropout key of step s is
fold_in(seed key, s), so a run killed at any moment and rerun from its last checkpoint ends with the
same metrics as an uninterrupted run. Several seeds of one config train in one compiled program: the
state carries a leading seed axis and the steps are vmapped over it (the seeds share the data stream).

The parts: `setup.build_run` (the run, built once), `compiled.compile_steps` (the jitted steps),
`checkpoints` (orbax), `evaluate.Evaluator` and `evaluate.EarlyStopping`, `attn.runs.identity`
(config.json and summary.json); this module only drives them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from attn.runs import files, identity
from attn.runs.writer import MetricsWriter
from attn.train import checkpoints, sharding
from attn.train import compiled as compiled_lib
from attn.train.config import ConfigError, TrainConfig
from attn.train.evaluate import (
  EarlyStopping,
  Evaluator,
  NonFiniteLossError,
  check_finite,
  is_writer,
  per_seed,
)
from attn.train.setup import Run, build_run, check_init_from, init_from

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "train_and_evaluate"]


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C (SIGINT) while training; says at which step and which checkpoint a rerun resumes from."""


def json_config(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON values (what config.json holds, without `resolved_model`)."""
  return json.loads(config.to_json_best_effort())


def write_config(run: Run, workdir: str, *, write: bool = True) -> None:
  """Writes config.json: the config, the resolved model and the hashes of the task's data files
  (with `write=False`, only the checks of `identity.check_config`).

  Raises:
    ConfigError: when `workdir` holds another run (see `identity.check_config`).
  """
  resolved = json_config(run.config)
  # Through JSON, as config.json will read back (tuples become lists), so a resume compares alike.
  resolved["resolved_model"] = json.loads(json.dumps(dataclasses.asdict(run.model_config)))
  resolved[files.DATA_HASHES] = identity.data_hashes(run.task.data_files())
  defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
  try:
    identity.check_config(
      workdir,
      resolved,
      defaults=defaults,
      write=write,
      has_checkpoints=checkpoints.has_checkpoints(workdir),
    )
  except identity.RunMismatchError as e:
    raise ConfigError(str(e)) from None


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

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None


class _SilentWriter:
  """The MetricsWriter of a process that does not write (see `is_writer`)."""

  def write(self, step, split, metrics):
    del step, split, metrics

  def flush(self):
    pass

  def close(self):
    pass


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _make_workdir(workdir: str) -> None:
  if not workdir:
    raise ConfigError("--workdir: empty; name the run's folder")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None


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
  run = build_run(config)
  if run.num_train_steps != run.train.num_train_steps:
    logging.info("%s epochs: %d steps.", run.train.num_train_epochs, run.num_train_steps)
  if run.train.init_from and not checkpoints.has_checkpoints(workdir):
    # Before config.json is written: a refused init_from must not pin the workdir to its config.
    check_init_from(run.train, run.abstract_state().params, vocab=getattr(run.task, "vocab", None))
  _make_workdir(workdir)
  # One process writes the run's files; the others check them (a different run is refused on all).
  with files.run_lock(workdir) if is_writer() else contextlib.nullcontext():
    write_config(run, workdir, write=is_writer())
    try:
      if is_writer():
        run.task.save(workdir)  # E.g. a vocabulary built from the training split, kept with the run.
    except ValueError as e:
      raise ConfigError(str(e)) from None
    final = identity.finished(workdir, run.num_train_steps)
    if final is not None:
      logging.info("%s finished already: %d steps.", workdir, run.num_train_steps)
      return final
    if is_writer():  # Only the writer: two processes removing one file raced (one crashed, then both
      identity.clear_summary(workdir)  # waited for each other in barriers until the timeouts).
    return _Trainer(run, workdir).train(start_time)


class _Trainer:
  """One run's compiled steps, state, evaluator, early stopping, checkpoints and writer."""

  def __init__(self, run: Run, workdir: str):
    self.run, self.workdir, train = run, workdir, run.train
    self.steps = compiled_lib.compile_steps(run)
    self.abstract_state = sharding.with_shardings(
      jax.eval_shape(self.steps.abstract_init, run.seed_rngs()), self.steps.state_shardings
    )
    manager = checkpoints.manager(workdir, train.checkpoints_to_keep)
    state, self.resumed_at, self.checkpoints = checkpoints.restore_newest(
      manager, self.abstract_state, workdir, train.checkpoints_to_keep
    )
    self.state = state if state is not None else self._fresh_state()
    self.step = int(np.asarray(self.state.step)[0])
    fresh = self.resumed_at is None
    self.writer = (
      MetricsWriter(workdir, keep_through_step=-1 if fresh else self.step)
      if is_writer()
      else _SilentWriter()
    )
    self.early = EarlyStopping(train.patience, run.objective, self.steps)
    self.stopped = self.early.stopped(self.state)  # Read only after evaluations: a host sync.
    self.evaluator = Evaluator(run, self.steps, self.writer, workdir, self.checkpoints.latest_step)
    self.rates: list[float] = []

  def _fresh_state(self):
    state = self.steps.init(self.run.seed_rngs())
    if self.run.train.init_from:  # A fresh run only: a resumed one has its own parameters.
      params = sharding.to_global(
        init_from(self.run.train, state.params, vocab=getattr(self.run.task, "vocab", None)),
        self.steps.state_shardings.params,
      )
      state = state.replace(params=params)
      logging.info("Parameters taken by name from %s.", self.run.train.init_from)
    return state

  def _evaluate(self, step: int) -> dict[str, list[float]]:
    """The evaluation at `step` (early stopping's bookkeeping too); at the end of an early-stopped
    run, the best parameters' evaluation, which is then the final one."""
    total, early = self.run.num_train_steps, self.early
    metrics = self.evaluator.run(step, self.state.params, final=step == total and not early)
    self.state = early.update(self.state, metrics)
    self.stopped = early.stopped(self.state)
    if early and (self.stopped or step == total):
      if self.stopped:
        logging.info("No seed improved for %d evaluations: stopping at step %d.", early.patience, step)
      metrics = self.evaluator.run_best(step, self.state.best)
    return metrics

  def _log(self, step: int, pending: list[dict], seconds: float, num_steps: int) -> None:
    """The interval's mean train metrics per seed, written and checked finite (one host sync)."""
    stacked = jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), axis=0), *pending)
    steps_per_sec = num_steps / max(seconds, 1e-9)
    self.rates.append(steps_per_sec)
    losses = per_seed(stacked["loss"])
    watched = {"training loss": losses, "gradient norm": per_seed(stacked["grad_norm"])}
    check_finite(watched, step, self.run.train.seeds, self.checkpoints.latest_step, self.workdir)
    train_metrics = {k: per_seed(v) for k, v in stacked.items()}
    train_metrics.update(learning_rate=float(self.run.schedule(step - 1)), steps_per_sec=steps_per_sec)
    self.writer.write(step, "train", train_metrics)
    total = self.run.num_train_steps
    logging.info(
      "step %d/%d  loss %s  %.1f steps/s  %s left",
      step,
      total,
      " ".join(f"{x:.4f}" for x in losses),
      steps_per_sec,
      _duration((total - step) / max(steps_per_sec, 1e-9)),
    )

  def train(self, start_time: float) -> dict[str, list[float]]:
    run, train, total = self.run, self.run.train, self.run.num_train_steps
    try:
      with _CtrlC() as ctrl_c:
        final = self._evaluate(0) if self.resumed_at is None else None
        self._announce()
        pending, interval_start = [], time.time()
        while self.step < total and not self.stopped:
          if ctrl_c.pressed:  # Stop between steps, never inside a checkpoint's save.
            raise KeyboardInterrupt
          batch = self.steps.to_batch(run.task.train_batch(self.step, train.batch_size))
          self.state, metrics = self.steps.train(self.state, batch)
          pending.append(metrics)
          self.step += 1
          step, last = self.step, self.step == total
          if step % train.log_every_steps and not last:
            continue
          self._log(step, pending, time.time() - interval_start, len(pending))
          checkpoint_now = step % train.checkpoint_every_steps == 0 or last
          if step % train.eval_every_steps == 0 or last:
            final = self._evaluate_keeping(step, checkpoint_now)
          if checkpoint_now or self.stopped:
            checkpoints.save(self.checkpoints, step, self.state)
          self.writer.flush()
          pending, interval_start = [], time.time()
        final = self._final(final)
    except KeyboardInterrupt:
      kept = self.checkpoints.latest_step()
      where = f"its checkpoint of step {kept}" if kept is not None else "the start (no checkpoint yet)"
      raise TrainingInterrupted(
        f"interrupted at step {self.step}; rerun the same command to resume from {where}"
      ) from None
    finally:
      self.writer.close()
    self.checkpoints.close()
    if is_writer():
      self._summarize(final, start_time)
    return final

  def _evaluate_keeping(self, step: int, checkpoint_now: bool) -> dict[str, list[float]]:
    """`_evaluate(step)`; when it fails (other than by a non-finite loss) at a step that checkpoints,
    the trained state is saved first, so no training is lost to a failing evaluation: a rerun
    resumes at `step` and evaluates again."""
    try:
      return self._evaluate(step)
    except NonFiniteLossError:
      raise  # Those parameters are not worth keeping: the last good checkpoint stays the newest.
    except Exception:
      if checkpoint_now:
        checkpoints.save(self.checkpoints, step, self.state)
        logging.error(
          "The evaluation at step %d failed; the state of step %d is saved in %s/%s, and rerunning "
          "the same command resumes there and evaluates again.",
          step,
          step,
          self.workdir,
          files.CHECKPOINTS_DIR,
        )
      raise

  def _final(self, final: dict | None) -> dict[str, list[float]]:
    """The final evaluation: this session's, or, for a run resumed at its very end (or after its
    early stop), the one on record, or made now when none is (its evaluation failed after the
    state was saved: `_evaluate_keeping`)."""
    if final is not None and (not self.early or "best_step" in final):
      return final
    if identity.logged(self.workdir, self.step, "eval") is None:
      return self._evaluate(self.step)
    split = files.BEST_SPLIT if self.early else "eval"
    final = identity.logged(self.workdir, self.step, split)
    if final is not None:
      return final
    if self.early:
      return self.evaluator.run_best(self.step, self.state.best)
    return self.evaluator.run(self.step, self.state.params, final=True)

  def _announce(self) -> None:
    num_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(self.abstract_state.params))
    logging.info(
      "Training %s: %d steps, %d seed(s), %d parameters per seed, %d device(s) in %d process(es), "
      "mesh %s.",
      self.workdir,
      self.run.num_train_steps,
      self.run.train.num_seeds,
      num_params,
      jax.device_count(),
      jax.process_count(),
      sharding.describe(self.steps.mesh.shape),
    )

  def _summarize(self, final: dict, start_time: float) -> None:
    run, total = self.run, self.run.num_train_steps
    identity.write_summary(
      self.workdir,
      num_train_steps=total,
      num_params=sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(self.abstract_state.params)),
      num_seeds=run.train.num_seeds,
      seeds=run.train.seeds,
      main_metric=run.objective.main_metric,
      final=final,
      steps_per_sec=float(np.median(self.rates)) if self.rates else None,
      stopped_at_step=self.step if self.early and self.step < total else None,
      wall_time_s=time.time() - start_time,
    )
