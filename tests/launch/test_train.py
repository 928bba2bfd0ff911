"""Tests for launch/train.py, the absl entry point, run as the command it is: a short run writes the run
directory; a mistyped field, a bad value or a missing --workdir exits non-zero with a message and no
Python traceback."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # Every test starts `python -m launch.train`: a child process.

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "--config=experiments/base.py:smoke"


def _launch(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "launch.train", *args],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    check=False,
  )


def test_short_run_writes_the_run_directory(tmp_path):
  workdir = tmp_path / "run"
  result = _launch(
    CONFIG,
    f"--workdir={workdir}",
    "--config.num_train_steps=4",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=4",
    # The smallest smoke model (one encoder layer) and one seed: this tests the command, not the model.
    "--config.model.num_decoder_layers=0",
    "--config.num_seeds=1",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 4/4" in result.stderr
  assert "Saving checkpoint" not in result.stderr  # Orbax's chatter is filtered out.
  config = json.loads((workdir / "config.json").read_text())
  assert config["num_train_steps"] == 4 and config["model"]["num_decoder_layers"] == 0
  assert config["resolved_model"]["num_decoder_layers"] == 0
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "done" and summary["seeds"] == [0]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in records if r["split"] in ("train", "eval")] == [
    (0, "eval"),
    (2, "train"),
    (4, "train"),
    (4, "eval"),
  ]
  assert summary["final"]["loss"] == records[-3]["loss"]  # The last eval (then diagnostics, probe).
  assert (workdir / "checkpoints" / "4").is_dir()
  assert list(workdir.glob("events.out.tfevents.*"))


def test_mistyped_field_is_an_error_without_traceback(tmp_path):
  result = _launch(CONFIG, f"--workdir={tmp_path / 'run'}", "--config.model.num_headz=3")
  assert result.returncode != 0
  assert "num_headz" in result.stderr
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert not (tmp_path / "run").exists()


def test_bad_value_is_one_error_line(tmp_path):
  result = _launch(CONFIG, f"--workdir={tmp_path / 'run'}", "--config.model.num_heads=3")
  assert result.returncode == 1
  assert result.stdout == ""
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("error: config.model.num_heads: 3 heads do not divide the model dim 32")
  assert not (tmp_path / "run").exists()


def test_missing_workdir_is_an_error(tmp_path):
  result = _launch(CONFIG)
  assert result.returncode != 0
  assert "--workdir" in result.stderr
  assert "Traceback" not in result.stderr


def _one_error_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  return errors[0]


def test_a_run_directory_in_use_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (workdir / "lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
    line = _one_error_line(_launch(CONFIG, f"--workdir={workdir}"))
  finally:
    holder.kill()
    holder.wait()
  assert line.startswith(f"error: --workdir {workdir} is in use by process {holder.pid}")
  assert not (workdir / "config.json").exists()


def test_checkpoints_without_a_config_and_a_file_as_workdir_are_refused(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  line = _one_error_line(_launch(CONFIG, f"--workdir={workdir}"))
  assert line == (
    f"error: --workdir {workdir} holds checkpoints but no config.json, so nothing says which config "
    "they belong to; use a new --workdir"
  )
  (tmp_path / "a_file").write_text("")
  line = _one_error_line(_launch(CONFIG, f"--workdir={tmp_path / 'a_file'}"))
  assert line == f"error: --workdir {tmp_path / 'a_file'} is a file, not a folder"


def test_a_config_file_that_does_not_load_or_an_unknown_preset_is_one_line(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(preset=''):\n  return {\n")
  line = _one_error_line(_launch(f"--config={broken}", f"--workdir={tmp_path / 'run'}"))
  assert line.startswith(f"error: --config: {broken} does not load: SyntaxError: ")
  assert "line 2" in line
  line = _one_error_line(_launch("--config=experiments/base.py:no_such_preset", "--workdir=x"))
  assert line.startswith("error: --config: experiments/base.py:no_such_preset: ValueError: ")
  assert "no_such_preset" in line.removeprefix("error: --config: experiments/base.py:no_such_preset")


def test_an_empty_workdir_or_one_that_cannot_be_created_is_one_line(tmp_path):
  line = _one_error_line(_launch(CONFIG, "--workdir="))
  assert line == "error: --workdir: empty; name the run's folder"
  (tmp_path / "a_file").write_text("")
  inside_a_file = tmp_path / "a_file" / "run"
  line = _one_error_line(_launch(CONFIG, f"--workdir={inside_a_file}"))
  assert line == f"error: --workdir {inside_a_file}: cannot create it (Not a directory)"
