"""Tests for launch/local_cluster.py: two processes of one device each (jax.distributed over gloo on
127.0.0.1) train a run, are stopped, and resume it to the metrics of one process with two devices;
bad flags and a refused config are one line and a non-zero exit within seconds, no process left."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import numpy as np
import pytest

from tests.launch.common import ENV, ROOT, run

FLAGS = (
  "--config=experiments/base.py:smoke",
  "--config.num_seeds=1",
  "--config.model.num_decoder_layers=0",
  "--config.log_every_steps=2",
  "--config.checkpoint_every_steps=2",
  "--config.eval_every_steps=4",
)


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines if '"split": "train"' in line or '"split": "eval"' in line]


@pytest.mark.slow  # Trains in child processes (one, then a cluster of two).
def test_two_processes_resume_to_the_metrics_of_one_process_with_two_devices(tmp_path):
  import subprocess
  import sys

  one = tmp_path / "one"
  env = {**ENV, "XLA_FLAGS": ENV["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2"}
  single = subprocess.run(
    [sys.executable, "-m", "launch.train", *FLAGS, f"--workdir={one}", "--config.num_train_steps=8"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  two = tmp_path / "two"
  cluster = ("launch.local_cluster", "--num_processes=2", "--", *FLAGS, f"--workdir={two}")
  first = run(*cluster, "--config.num_train_steps=4")  # Stopped after step 4 on both processes...
  assert first.returncode == 0, first.stderr[-3000:]
  assert "2 device(s)" in first.stderr and (two / "checkpoints" / "4").is_dir()
  second = run(*cluster, "--config.num_train_steps=8")  # ... and restarted on both.
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resuming" in second.stderr
  # One TensorBoard file per launch, both process 0's (process 1 writes none).
  assert (two / "process_1.log").exists() and len(list(two.glob("events.out.tfevents.*"))) == 2
  ours, theirs = _records(two), _records(one)
  assert [(r["step"], r["split"]) for r in ours] == [(r["step"], r["split"]) for r in theirs]
  for mine, reference in zip(ours, theirs, strict=True):
    np.testing.assert_allclose(mine["loss"], reference["loss"], rtol=1e-5, err_msg=str(mine["step"]))
  summary = json.loads((two / "summary.json").read_text())
  assert summary["status"] == "done" and summary["num_train_steps"] == 8


def _error_line(result: subprocess.CompletedProcess) -> str:
  """The one line a refusal ends with; the absl INFO lines of the processes' start may precede it."""
  lines = [line for line in result.stderr.splitlines() if not line.startswith(("I", "W"))]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def _no_process_left(workdir) -> None:
  found = subprocess.run(["pgrep", "-f", f"--workdir={workdir}"], capture_output=True, text=True)
  assert found.stdout == "", found.stdout


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("")
  result = run("launch.local_cluster", "--", "--config=experiments/base.py:smoke", f"--workdir={afile}")
  assert result.returncode != 0
  assert _error_line(result) == f"error: --workdir: {afile} is a file, not a folder"


def test_a_port_in_use_is_one_line(tmp_path):
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    workdir = tmp_path / "run"
    result = run(
      "launch.local_cluster", f"--port={port}", "--", "--config=experiments/base.py:smoke",
      f"--workdir={workdir}",
    )  # fmt: skip
  assert result.returncode != 0
  assert _error_line(result).startswith(f"error: --port: cannot listen on 127.0.0.1:{port}")
  _no_process_left(workdir)


@pytest.mark.slow  # Two processes import jax and start the coordination service (~10 s).
def test_a_config_both_processes_refuse_is_one_line_and_no_process_is_left(tmp_path):
  workdir = tmp_path / "run"
  start = time.time()
  result = run(
    "launch.local_cluster", "--", "--config=experiments/base.py:smoke", f"--workdir={workdir}",
    "--config.model.num_heads=0",
  )  # fmt: skip
  assert result.returncode != 0 and time.time() - start < 120
  assert _error_line(result) == "error: config.model.num_heads: must be positive, got 0"
  _no_process_left(workdir)


@pytest.mark.slow  # Two processes import jax and start the coordination service (~10 s).
def test_a_failure_on_one_process_stops_the_run_in_seconds(tmp_path):
  # Only process 0 takes the run's lock: it fails while process 1 goes on and waits in the run's
  # first barrier for it. Process 0 used to exit through jax's shutdown barrier, waiting for process
  # 1, which waited for it: both hung until the coordination service's timeouts (minutes).
  from attn.runs import files

  workdir = tmp_path / "run"
  workdir.mkdir()
  with files.run_lock(workdir):  # This test's process holds it: the run is in use.
    start = time.time()
    result = run("launch.local_cluster", "--", *FLAGS, f"--workdir={workdir}")
  assert result.returncode == 1 and time.time() - start < 100, result.stderr[-3000:]
  assert _error_line(result).startswith(f"error: --workdir {workdir} is in use by process")
  _no_process_left(workdir)
