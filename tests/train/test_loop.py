"""Tests for attn/train/loop.py: the run directory a training run writes, resuming (after a finished
run and after a SIGKILL), the non-finite loss stop, the task hooks, seeds vmapped versus separate runs,
data parallelism over two forced host devices, and the attention diagnostics it logs.

Training runs are expensive (each compiles several programs), so one reference run of a 40-step smoke
config is shared: by the tests of this module (module scope) and by the pytest-xdist workers (a file
lock, the first worker trains and the others read its directory). A persistent compilation cache,
shared in the same way and handed to the subprocesses, lets later runs of the same programs skip XLA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from attn import tasks, train
from attn.nn.config import ModelConfig
from attn.runs.files import BEST_SPLIT, is_done, read_metrics
from attn.train import compiled, evaluate, loop, steps
from tests.train.common import ATTENTION_LAYERS, OVERRIDES, STEPS
from tests.train.common import smoke_config as _config

REPO = pathlib.Path(__file__).resolve().parents[2]


def _flags(workdir) -> list[str]:
  return [
    "--config=experiments/base.py:smoke",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
  ]


def _shared_dir(tmp_path_factory) -> pathlib.Path:
  """A folder shared by all pytest-xdist workers of this session (the session's folder without xdist)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / "train_shared"
  path.mkdir(exist_ok=True)
  return path


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> pathlib.Path:
  return _shared_dir(tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def cache_env(shared) -> dict[str, str]:
  """Turns on JAX's persistent compilation cache for this module (restored afterwards); returns the
  environment that gives subprocesses the same cache."""
  options = {
    "jax_compilation_cache_dir": str(shared / "jax_cache"),
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
  }
  saved = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()  # The cache's on/off state is decided once; decide it again.
  yield {**os.environ, "JAX_PLATFORMS": "cpu", **{k.upper(): str(v) for k, v in options.items()}}
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def reference(shared) -> tuple[pathlib.Path, dict]:
  """The uninterrupted run of _config() (2 seeds, 40 steps): its workdir (read only: copy it to change
  it) and what train_and_evaluate returned."""
  workdir = shared / "reference"
  returned = shared / "reference_returned.json"
  with _locked(shared / "reference.lock"):
    if not returned.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # Left by a worker that died mid-run.
      final = train.train_and_evaluate(_config(), str(workdir))
      returned.write_text(json.dumps(final))
  return workdir, json.loads(returned.read_text())


def _scalar_events(path) -> list[tuple[int, dict[str, float]]]:
  """(step, {tag: value}) of each scalar event of a TensorBoard event file, read by tensorboard."""
  loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
  events = list(loader.LegacyEventFileLoader(str(path)).Load())[1:]  # The first holds the version.
  return [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events]


def _summary(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())


def _checkpoint_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _records(workdir, split: str) -> list[dict]:
  return [r for r in read_metrics(str(workdir)) if r["split"] == split]


# The largest attention logit is a maximum over one batch's entries: it follows the parameters' last
# bits more closely than the mean metrics do (seen: 2e-3 relative between vmapped and separate runs
# whose losses agree to 1e-5), so runs that should match are held to a looser tolerance on it.
_MAX_METRICS_RTOL = {"max_attention_logit": 1e-2}


def _assert_close(actual: dict, expected: dict, *, rtol: float = 0.0, atol: float = 1e-6) -> None:
  assert sorted(actual) == sorted(expected)
  for name in expected:
    tolerance = max(rtol, _MAX_METRICS_RTOL.get(name, 0.0))
    np.testing.assert_allclose(actual[name], expected[name], rtol=tolerance, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------------------------------
# The run directory and resuming.


@pytest.mark.slow  # Reads the reference run, which trains.
def test_run_directory_contents(reference):
  workdir, returned = reference
  config = json.loads((workdir / "config.json").read_text())
  assert {"model", "task", "resolved_model"} <= set(config)
  assert config["num_train_steps"] == STEPS and config["model"]["d_model"] == 32
  assert config["resolved_model"]["vocab_size"] == 14  # 10 symbols and 4 special tokens.

  records = read_metrics(str(workdir))
  assert {r["split"] for r in records} == {"train", "eval", "diagnostics", "probe"}
  steps_in_file_order = [r["step"] for r in records]
  assert steps_in_file_order == sorted(steps_in_file_order)
  for record in records:
    per_seed = [v for k, v in record.items() if isinstance(v, list)]
    assert per_seed, record
    assert all(len(v) == 2 for v in per_seed), record
  train_records = _records(workdir, "train")
  assert [r["step"] for r in train_records] == list(range(5, STEPS + 1, 5))
  assert {"loss", "nll", "accuracy", "grad_norm", "learning_rate", "steps_per_sec"} <= set(
    train_records[0]
  )
  for split in ("eval", "diagnostics", "probe"):
    assert [r["step"] for r in _records(workdir, split)] == [0, STEPS], split
  eval_records = _records(workdir, "eval")
  assert {"loss", "accuracy", "sequence_accuracy"} <= set(eval_records[0])
  assert all(math.isfinite(x) for r in eval_records for x in r["loss"])

  event_files = sorted(workdir.glob("events.out.tfevents.*"))
  assert len(event_files) == 1
  events = _scalar_events(event_files[0])
  tags = {tag for _, values in events for tag in values}
  assert {"train/loss/seed_0", "train/loss/seed_1", "eval/sequence_accuracy/seed_1"} <= tags
  assert "train/learning_rate" in tags
  loss_steps = [step for step, values in events if "train/loss/seed_0" in values]
  assert loss_steps == list(range(5, STEPS + 1, 5))

  assert _checkpoint_steps(workdir) == [30, STEPS]  # checkpoints_to_keep=2.
  summary = _summary(workdir)
  assert summary["status"] == "done"
  assert summary["num_params"] > 0
  assert summary["num_seeds"] == 2 and summary["seeds"] == [0, 1]
  assert summary["main_metric"] == "sequence_accuracy"
  assert summary["final"] == returned
  assert summary["final"]["loss"] == eval_records[-1]["loss"]


@pytest.mark.slow  # Reads the reference run, which trains.
def test_rerun_after_finishing_does_not_retrain_or_compile(reference, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  checkpoints_before = _checkpoint_steps(workdir)

  def fail(*args, **kwargs):
    raise AssertionError("compiled a finished run")

  monkeypatch.setattr(loop.jax, "jit", fail)
  final = train.train_and_evaluate(_config(), str(workdir))

  assert final == reference[1]
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before  # Untouched.
  assert _checkpoint_steps(workdir) == checkpoints_before


@pytest.mark.slow  # Reads the reference run, which trains.
def test_extending_a_finished_run_is_not_done_until_its_new_end(reference, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)

  def fail(*args, **kwargs):
    assert not (workdir / "summary.json").exists()  # The shorter run's summary is gone while training.
    raise RuntimeError("stop here")

  monkeypatch.setattr(compiled, "compile_steps", fail)
  with pytest.raises(RuntimeError, match="stop here"):
    train.train_and_evaluate(_config(num_train_steps=STEPS + 10), str(workdir))
  assert not is_done(workdir)


def _spoil(step_dir: pathlib.Path) -> None:
  """Overwrites every file of a checkpoint with a few bytes: a truncated, unreadable checkpoint."""
  for path in step_dir.rglob("*"):
    if path.is_file():
      path.write_bytes(b"\0\1")


@pytest.mark.slow  # Reads the reference run, which trains.
def test_an_unreadable_checkpoint_falls_back_to_the_one_before(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  (workdir / "summary.json").unlink()  # As if killed after saving its last checkpoint...
  _spoil(workdir / "checkpoints" / str(STEPS))  # ...which was then corrupted.

  final = train.train_and_evaluate(_config(), str(workdir))

  _assert_close(final, reference[1], rtol=1e-5)  # Resumed from step 30: the same end.
  assert _checkpoint_steps(workdir) == [30, STEPS]  # Step 40 saved again.
  (aside,) = (workdir / "checkpoints_unreadable").iterdir()
  assert aside.name.startswith(f"{STEPS}.")


@pytest.mark.slow  # Reads the reference run, which trains.
def test_no_checkpoint_that_restores_is_one_error_naming_the_folder(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  (workdir / "summary.json").unlink()
  for step in _checkpoint_steps(workdir):
    _spoil(workdir / "checkpoints" / str(step))
  with pytest.raises(
    train.ConfigError, match=r"no checkpoint in \S+/checkpoints restores \(steps 40, 30\)"
  ):
    train.train_and_evaluate(_config(), str(workdir))


@pytest.mark.slow  # Reads the reference run, which trains.
def test_rerun_with_a_different_config_is_refused(reference, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  workdir.mkdir()
  shutil.copy(reference[0] / "config.json", workdir / "config.json")

  def fail(*args, **kwargs):
    raise AssertionError("compiled before checking the workdir")

  monkeypatch.setattr(loop.jax, "jit", fail)
  with pytest.raises(
    train.ConfigError, match=r"different config \(fields model, resolved_model differ\)"
  ):
    train.train_and_evaluate(_config(**{"model.num_heads": 2}), str(workdir))


# What `python -m launch.train` does, with every training batch 50 ms late, so that the run can be
# killed while it trains. The data (and so every number) stays that of the plain command.
_SLOW_LAUNCH = """
import runpy, time
from attn import tasks
real = tasks.SyntheticSeq2Seq.train_batch
def slow(self, step, batch_size):
  time.sleep(0.05)
  return real(self, step, batch_size)
tasks.SyntheticSeq2Seq.train_batch = slow
runpy.run_module("launch.train", run_name="__main__", alter_sys=True)
"""


def _signal_after_first_checkpoint(workdir, cache_env, log, signum) -> int:
  """Runs the slowed `launch.train` into `workdir` (stderr to `log`), sends `signum` once its first
  checkpoint is on disk, and returns the exit status."""
  with open(log, "w") as stderr:
    process = subprocess.Popen(
      [sys.executable, "-c", _SLOW_LAUNCH, *_flags(workdir)],
      cwd=REPO,
      env=cache_env,
      stdout=subprocess.DEVNULL,
      stderr=stderr,
    )
    try:
      deadline = time.monotonic() + 240
      while not _checkpoint_steps(workdir):
        assert process.poll() is None, (
          f"exited with {process.returncode} before a checkpoint:\n{log.read_text()}"
        )
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
      os.kill(process.pid, signum)
      process.wait(timeout=120)
    finally:
      process.kill()
      process.wait()
  return process.returncode


@pytest.mark.slow  # Trains in a child process.
def test_resume_after_sigkill_matches_uninterrupted_run(reference, cache_env, tmp_path):
  workdir = tmp_path / "run"
  returncode = _signal_after_first_checkpoint(
    workdir, cache_env, tmp_path / "killed.log", signal.SIGKILL
  )
  assert returncode == -signal.SIGKILL
  assert not (workdir / "summary.json").exists()  # It was killed mid-run.
  assert 0 < _checkpoint_steps(workdir)[-1] < STEPS

  result = subprocess.run(
    [sys.executable, "-m", "launch.train", *_flags(workdir)],
    cwd=REPO,
    env=cache_env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming" in result.stderr

  _assert_close(_summary(workdir)["final"], reference[1], atol=1e-6)
  for split in ("train", "eval"):
    keys = [(r["step"], r["split"]) for r in _records(workdir, split)]
    assert len(keys) == len(set(keys)), keys
  train_records = _records(workdir, "train")
  assert [r["step"] for r in train_records] == list(range(5, STEPS + 1, 5))
  assert [r["step"] for r in _records(workdir, "eval")] == [0, STEPS]
  reference_losses = [r["loss"] for r in _records(reference[0], "train")]
  np.testing.assert_allclose([r["loss"] for r in train_records], reference_losses, rtol=0, atol=1e-6)


@pytest.mark.slow  # Trains in a child process.
def test_ctrl_c_is_one_line_saying_where_a_rerun_resumes(cache_env, tmp_path):
  workdir = tmp_path / "run"
  returncode = _signal_after_first_checkpoint(
    workdir, cache_env, tmp_path / "interrupted.log", signal.SIGINT
  )
  log = (tmp_path / "interrupted.log").read_text()
  assert returncode == 130, log[-3000:]
  assert "Traceback" not in log
  last = log.strip().splitlines()[-1]
  assert re.fullmatch(
    r"error: interrupted at step \d+; rerun the same command to resume from its checkpoint of "
    r"step \d+",
    last,
  ), last
  assert not (workdir / "lock").exists()  # Released on the way out.


# ----------------------------------------------------------------------------------------------------
# Stopping on a non-finite loss.


@pytest.mark.slow  # Trains.
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  real_train_step = train.train_step

  def nan_from_step_5(state, batch, **kwargs):
    new_state, metrics = real_train_step(state, batch, **kwargs)
    return new_state, {**metrics, "loss": jnp.where(state.step >= 5, jnp.nan, metrics["loss"])}

  # train_and_evaluate reads attn.train.steps.train_step when it builds its jitted step.
  monkeypatch.setattr(steps, "train_step", nan_from_step_5)
  config = _config(num_train_steps=10, log_every_steps=2, checkpoint_every_steps=2, eval_every_steps=10)
  workdir = tmp_path / "run"
  # The 6th step (state.step 5) is the first NaN; the loss is checked after steps 2, 4, 6.
  with pytest.raises(train.NonFiniteLossError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert "at step 6" in message
  assert f"last good checkpoint is step 4 in {workdir}/checkpoints" in message
  assert "\n" not in message
  assert _checkpoint_steps(workdir) == [2, 4]
  assert [r["step"] for r in _records(workdir, "train")] == [2, 4]
  assert not (workdir / "summary.json").exists()


@pytest.mark.slow  # Trains.
def test_task_hooks_score_save_and_main_metric(tmp_path, monkeypatch):
  """A task's own `score` joins the eval metrics per seed (with `final` at the last evaluation),
  `save` writes into the run directory, and `main_metric` names the summary's metric."""
  real_make_task = tasks.make_task
  calls = []

  class Scored:
    def __init__(self, task):
      self._task = task

    def __getattr__(self, name):
      return getattr(self._task, name)

    main_metric = "seed_param_norm"

    def score(self, predictor, batch_size, *, final):
      calls.append(final)
      norm = sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(predictor.params))
      return {"seed_param_norm": norm}

    def save(self, workdir):
      pathlib.Path(workdir, "vocab.txt").write_text("\n".join(self._task.vocab.tokens))

  monkeypatch.setattr(tasks, "make_task", lambda *a, **k: Scored(real_make_task(*a, **k)))
  workdir = tmp_path / "run"
  final = train.train_and_evaluate(_config(num_train_steps=10, eval_every_steps=5), str(workdir))
  assert calls == [False] * 2 + [False] * 2 + [True] * 2  # steps 0, 5, 10; two seeds each
  norms = final["seed_param_norm"]
  assert len(norms) == 2 and norms[0] != norms[1]  # one value per seed, from that seed's params
  assert _summary(workdir)["main_metric"] == "seed_param_norm"
  assert (workdir / "vocab.txt").read_text().startswith("<pad>")


@pytest.mark.slow  # Trains.
def test_a_failing_final_evaluation_keeps_the_trained_state_and_a_rerun_evaluates_it(
  tmp_path, monkeypatch
):
  real_make_task = tasks.make_task
  fail = {"final": True}

  class FailsAtTheEnd:
    def __init__(self, task):
      self._task = task

    def __getattr__(self, name):
      return getattr(self._task, name)

    def score(self, predictor, batch_size, *, final):
      if final and fail["final"]:
        raise RuntimeError("the final scoring failed")
      return self._task.score(predictor, batch_size, final=final)

  monkeypatch.setattr(tasks, "make_task", lambda *a, **k: FailsAtTheEnd(real_make_task(*a, **k)))
  config = _config(num_train_steps=6, log_every_steps=3, eval_every_steps=3, checkpoint_every_steps=99)
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError, match="the final scoring failed"):
    train.train_and_evaluate(config, str(workdir))
  assert _checkpoint_steps(workdir) == [6]  # Saved although its evaluation failed.
  assert not (workdir / "summary.json").exists()
  assert [r["step"] for r in _records(workdir, "eval")] == [0, 3]

  trained = _records(workdir, "train")
  fail["final"] = False
  final = train.train_and_evaluate(config, str(workdir))  # Resumes at step 6 and evaluates it...
  assert _records(workdir, "train") == trained  # ... without training again.
  assert [r["step"] for r in _records(workdir, "eval")] == [0, 3, 6]
  assert _summary(workdir)["status"] == "done" and math.isfinite(final["loss"][0])


# ----------------------------------------------------------------------------------------------------
# Seeds and devices.


@pytest.mark.slow  # Trains.
def test_vmapped_seeds_equal_separate_runs(reference, tmp_path):
  for seed in (0, 1):
    final = train.train_and_evaluate(_config(num_seeds=1, seed=seed), str(tmp_path / f"seed_{seed}"))
    assert _summary(tmp_path / f"seed_{seed}")["seeds"] == [seed]
    expected = {name: [values[seed]] for name, values in reference[1].items()}
    _assert_close(final, expected, atol=1e-5)


@pytest.mark.slow  # Trains in a child process.
def test_two_host_devices_match_one(reference, tmp_path):
  workdir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
  result = subprocess.run(
    [sys.executable, "-m", "launch.train", *_flags(workdir)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 device(s)" in result.stderr
  _assert_close(_summary(workdir)["final"], reference[1], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Diagnostics and the scale probe.


@pytest.mark.slow  # Reads the reference run, which trains.
def test_probe_at_step_0_under_sqrt_d(reference):
  (probe,) = [r for r in _records(reference[0], "probe") if r["step"] == 0]
  for layer in ATTENTION_LAYERS:
    for value in probe[f"{layer}/logit_std"]:
      assert 0.8 <= value <= 1.2, (layer, value)
    for value in probe[f"{layer}/entropy"]:
      assert 3.4 <= value <= 4.0, (layer, value)  # ln 64 = 4.16 is the uniform maximum.
  assert len([k for k in probe if k.endswith("/logit_std")]) == len(ATTENTION_LAYERS)


@pytest.mark.slow  # Reads the reference run, which trains.
def test_diagnostics_have_query_and_key_grad_norms_per_layer(reference):
  records = _records(reference[0], "diagnostics")
  assert [r["step"] for r in records] == [0, STEPS]
  for record in records:
    for layer in ATTENTION_LAYERS:
      for name in ("query_grad_norm", "key_grad_norm", "logit_std", "entropy", "max_weight"):
        values = record[f"{layer}/{name}"]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), (layer, name)
      assert all(v > 0 for v in record[f"{layer}/query_grad_norm"] + record[f"{layer}/key_grad_norm"])


@pytest.mark.slow  # Reads the reference run, which trains.
def test_diagnostics_have_a_gradient_norm_per_block_and_eval_the_largest_logit(reference):
  """Per block (Xiong et al. 2020 compare these across depth) the norm of all its parameters'
  gradients; the eval lines carry max_attention_logit, the largest of the layers' max_logit."""
  diagnostics = _records(reference[0], "diagnostics")
  evals = {r["step"]: r for r in _records(reference[0], "eval")}
  for record in diagnostics:
    blocks = sorted(k for k in record if k.endswith("/grad_norm") and k.count("/") == 2)
    assert blocks == ["decoder/layer_0/grad_norm", "encoder/layer_0/grad_norm"]
    assert all(v > 0 and math.isfinite(v) for k in blocks for v in record[k])
    largest = [
      max(values)
      for values in zip(*(record[f"{layer}/max_logit"] for layer in ATTENTION_LAYERS), strict=True)
    ]
    assert evals[record["step"]]["max_attention_logit"] == largest
    logit_std = record[f"{ATTENTION_LAYERS[0]}/logit_std"]
    assert all(m > s for m, s in zip(record[f"{ATTENTION_LAYERS[0]}/max_logit"], logit_std, strict=True))


# ----------------------------------------------------------------------------------------------------
# What a resume checks (config.json), before anything compiles.


class _FileTask:
  """What write_config asks of a task: the files it reads."""

  def __init__(self, *paths):
    self.paths = [str(p) for p in paths]

  def data_files(self):
    return self.paths


def _write(config, workdir, task=None):
  workdir.mkdir(exist_ok=True)
  run = dataclasses.replace(train.build_run(config), task=task or _FileTask())
  loop.write_config(run, str(workdir))


def test_num_train_steps_may_change_except_under_a_cosine_schedule(tmp_path):
  _write(_config(), tmp_path / "rsqrt")
  _write(_config(num_train_steps=80), tmp_path / "rsqrt")  # Extending an rsqrt run: allowed...
  assert json.loads((tmp_path / "rsqrt" / "config.json").read_text())["num_train_steps"] == 80
  cosine = {"optimizer.schedule": "cosine"}
  _write(_config(**cosine), tmp_path / "cosine")
  with pytest.raises(train.ConfigError, match=r"different config \(fields num_train_steps differ\)"):
    _write(_config(**cosine, num_train_steps=80), tmp_path / "cosine")  # ...but not the decay's end.
  _write(_config(**cosine, eval_every_steps=20), tmp_path / "cosine")


def test_changed_data_is_refused_and_an_unchanged_resume_rewrites_nothing(tmp_path):
  data = tmp_path / "train.txt"
  data.write_text("the first text\n")
  workdir = tmp_path / "run"
  _write(_config(), workdir, _FileTask(data))
  saved = json.loads((workdir / "config.json").read_text())
  assert list(saved["data_sha256"]) == [str(data)]
  before = (workdir / "config.json").stat().st_mtime_ns
  _write(_config(), workdir, _FileTask(data))
  assert (workdir / "config.json").stat().st_mtime_ns == before
  data.write_text("another text\n")
  with pytest.raises(train.ConfigError, match=r"run over other data \(train.txt changed"):
    _write(_config(), workdir, _FileTask(data))


def test_checkpoints_without_a_readable_config_are_refused(tmp_path):
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  with pytest.raises(train.ConfigError, match=r"holds checkpoints but no config\.json"):
    _write(_config(), tmp_path)
  (tmp_path / "config.json").write_text('{"seed": ')
  with pytest.raises(train.ConfigError, match=r"holds checkpoints but an unreadable config\.json"):
    _write(_config(), tmp_path)


@pytest.mark.slow  # Compiles a training run (that stops at its first evaluation).
def test_a_non_finite_eval_loss_stops_the_run(tmp_path, monkeypatch):
  real_eval_step = steps.eval_step

  def nan_eval(params, batch, **kwargs):
    sums = real_eval_step(params, batch, **kwargs)
    return {**sums, "loss_sum": sums["loss_sum"] * jnp.nan}

  monkeypatch.setattr(steps, "eval_step", nan_eval)
  with pytest.raises(train.NonFiniteLossError, match=r"^eval loss is nan at step 0 \(seed 0\)"):
    train.train_and_evaluate(
      _config(num_train_steps=2, log_every_steps=2, checkpoint_every_steps=2), str(tmp_path)
    )


def test_eval_lengths_past_the_learned_positions_are_refused():
  config = ModelConfig(vocab_size=8, positions="learned", max_length=8)
  evaluate.check_lengths(config, [], (4, 8))
  with pytest.raises(
    train.ConfigError,
    match=r"^config\.model\.max_length: 8 is shorter than config\.task\.eval_lengths' 16",
  ):
    evaluate.check_lengths(config, [], (8, 16))


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_sequences_longer_than_the_learned_positions_are_refused(tmp_path):
  config = _config(**{"model.positions": "learned", "model.max_length": 4})  # The task's are 6.
  with pytest.raises(
    train.ConfigError, match=r"^config\.model\.max_length: 4 is shorter than the task's src"
  ):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow  # Trains.
def test_early_stopping_stops_without_improvement_and_scores_the_best(tmp_path):
  """With a learning rate too small to change anything, the accuracy of step 0 is never beaten: a
  patience of 1 stops at the first evaluation after it, and the final metrics are step 0's params'."""
  config = _config(
    **{
      "num_train_steps": 20,
      "log_every_steps": 2,
      "eval_every_steps": 2,
      "checkpoint_every_steps": 2,
      "early_stopping_patience": 1,
      "optimizer.learning_rate": 1e-12,
      "num_seeds": 2,
    }
  )
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(config, workdir)
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["stopped_at_step"] == 2 and summary["num_train_steps"] == 20
  assert final["best_step"] == [0, 0]
  records = read_metrics(workdir)
  assert max(r["step"] for r in records if r["split"] == "train") == 2  # Nothing trained past it.
  (best,) = [r for r in records if r["split"] == BEST_SPLIT]
  step0 = next(r for r in records if r["split"] == "eval" and r["step"] == 0)
  np.testing.assert_allclose(best["loss"], step0["loss"], rtol=1e-6)
  assert loop.train_and_evaluate(config, workdir) == final  # Done: a rerun trains nothing.


def test_keep_best_keeps_the_better_parameters_and_counts_the_rest():
  params = {"w": jnp.zeros(2)}
  zero = jnp.asarray(0, jnp.int32)
  state = steps.TrainState(
    zero,
    params,
    None,
    None,
    {"params": params, "score": jnp.asarray(-jnp.inf), "step": zero, "since": zero},
  )
  state = steps.keep_best(state.replace(step=jnp.asarray(3), params={"w": jnp.ones(2)}), 0.5)
  assert float(state.best["score"]) == 0.5 and int(state.best["step"]) == 3
  np.testing.assert_array_equal(state.best["params"]["w"], 1.0)
  state = steps.keep_best(state.replace(step=jnp.asarray(5), params={"w": jnp.full(2, 2.0)}), 0.4)
  assert int(state.best["since"]) == 1 and int(state.best["step"]) == 3
  np.testing.assert_array_equal(state.best["params"]["w"], 1.0)


@pytest.mark.slow  # Trains.
def test_a_denoising_run_trains_and_a_tagger_starts_from_it(tmp_path):
  """config.objective = "denoise" trains end to end (loss on the corrupted words, a finite eval), and
  a tagger with config.init_from = that run starts from its parameters: at a learning rate of 1e-9
  its encoder after two steps is the source's, its head (the tags, not the words) is its own."""
  from experiments import cue

  source = cue.get_config("smoke")
  source.objective = "denoise"
  source.num_seeds = 1
  source.seed = 7
  source.num_train_steps = source.log_every_steps = source.checkpoint_every_steps = 2
  source.eval_every_steps = 2
  source_dir = str(tmp_path / "pretrained")
  final = train.train_and_evaluate(source, source_dir)
  assert np.all(np.isfinite(final["loss"])) and 0.0 <= final["accuracy"][0] <= 1.0
  _, pretrained = train.restore_run(source_dir, 0)

  config = cue.get_config("smoke")
  config.num_seeds = 1
  config.init_from = source_dir
  config.optimizer.learning_rate = 1e-9
  config.num_train_steps = config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 2
  workdir = str(tmp_path / "tagger")
  train.train_and_evaluate(config, workdir)
  _, params = train.restore_run(workdir, 0)
  layer = ["encoder", "layer_0", "self_attention", "query", "kernel"]
  ours, theirs = params, pretrained
  for name in layer:
    ours, theirs = ours[name], theirs[name]
  np.testing.assert_allclose(ours, theirs, atol=1e-6)
  np.testing.assert_allclose(
    params["embedder"]["tokens"]["embedding"], pretrained["embedder"]["tokens"]["embedding"], atol=1e-6
  )
  assert params["classifier"]["kernel"].shape != pretrained["classifier"]["kernel"].shape
