"""Tests for launch/sweep.py, run as `python -m launch.sweep` from the repository root: a dry run, config
errors as one line on stderr, and a sweep with a failing point that ends by printing the comparison and
exits non-zero. Few processes: each costs a JAX import."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from attn.runs import sweep
from tests.runs.common import TINY_CONFIG, write_config

pytestmark = pytest.mark.slow  # Every test starts `python -m launch.sweep`: a child process.

REPO = pathlib.Path(__file__).resolve().parents[2]


def launch_sweep(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "launch.sweep", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
    timeout=300,
  )


def assert_one_error_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ")
  return lines[0]


def test_dry_run_prints_points(tmp_path):
  workdir = tmp_path / "sweep"
  result = launch_sweep(f"--config={write_config(tmp_path)}:smoke", f"--workdir={workdir}", "--dry_run")
  assert result.returncode == 0, result.stderr
  assert result.stdout == (
    "[1/2] num_heads=2: --config.model.num_heads=2\n[2/2] num_heads=3: --config.model.num_heads=3\n"
  )
  assert "error" not in result.stderr
  assert not workdir.exists()


def test_missing_config_file_is_one_error_line(tmp_path):
  missing = tmp_path / "experiments" / "nope.py"
  result = launch_sweep(f"--config={missing}:smoke", f"--workdir={tmp_path / 'sweep'}")
  line = assert_one_error_line(result)
  assert line == f"error: --config: no such config file {str(missing)!r}"
  assert result.stdout == ""
  assert not (tmp_path / "sweep").exists()


def test_config_without_get_sweep_is_one_error_line(tmp_path):
  path = write_config(tmp_path, TINY_CONFIG.split("def get_sweep")[0])
  result = launch_sweep(f"--config={path}", f"--workdir={tmp_path / 'sweep'}")
  line = assert_one_error_line(result)
  assert line == f"error: --config: {path} defines no get_sweep(preset)"
  assert result.stdout == ""
  assert not (tmp_path / "sweep").exists()


def test_failed_point_prints_comparison_and_exits_non_zero(tmp_path):
  """The good point is already done (as a rerun finds it: tests/runs/test_sweep.py trains it for
  real), so this run only launches the failing one."""
  config_arg = f"{write_config(tmp_path)}:smoke"
  workdir = tmp_path / "sweep"
  done = workdir / "num_heads=2"
  done.mkdir(parents=True)
  (done / "summary.json").write_text(
    json.dumps(
      {"status": "done", "num_seeds": 2, "main_metric": "sequence_accuracy", "num_params": 1234}
    )
  )
  # The config it finished with: the one the point would run now, so the sweep may reuse it.
  config = sweep.point_config(config_arg, {"model.num_heads": 2})
  (done / "config.json").write_text(json.dumps(config))
  lines = [
    {"step": 0, "split": "eval", "time": 1.0, "loss": [3.0, 3.0], "sequence_accuracy": [0.0, 0.0]},
    {"step": 4, "split": "eval", "time": 2.0, "loss": [2.0, 1.0], "sequence_accuracy": [0.25, 0.75]},
  ]
  (done / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

  result = launch_sweep(f"--config={config_arg}", f"--workdir={workdir}")
  line = assert_one_error_line(result)
  assert line == "error: 1 of 2 points failed: num_heads=3"
  out = result.stdout
  assert "[1/2] num_heads=2: done already, skipped\n[2/2] num_heads=3: training\n" in out
  error = "error: config.model.num_heads: 3 heads do not divide the model dim 32"
  assert re.search(r"\[2/2\] num_heads=3: FAILED after \d+s: " + re.escape(error), out)
  # The comparison, after the points: the table and the failed point's line.
  table = out[out.index("# Run comparison: ") :]
  assert f"Sweep config: `{config_arg}`" in table
  assert "Points: 2 (1 done, 1 failed, 0 incomplete)" in table
  assert "| point | model.num_heads | status | seeds | step | final sequence_accuracy |" in table
  assert "| num_heads=2 | 2 | done | 2 | 4 | 0.5000 ± 0.2500 | 0.5000 ± 0.2500 |" in table
  assert f"| num_heads=3 | 3 | failed: {error}" in table
  assert f"- num_heads=3: failed: {error}" in table
  assert (workdir / "compare.md").read_text(encoding="utf-8") in out
  status = json.loads((workdir / "num_heads=3" / "status.json").read_text())
  assert status["status"] == "failed" and status["error"].startswith(error)
