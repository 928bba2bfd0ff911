"""Tests for launch/compare.py: the absl app prints the table and writes the files, and a bad directory
is one line on stderr with exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import compare as compare_app


@pytest.fixture
def sweep(tmp_path):
  """Two points of a heads sweep, 2 seeds each; num_heads=2 failed."""
  points = [{"name": f"num_heads={h}", "overrides": {"model.num_heads": h}} for h in (1, 2)]
  (tmp_path / "sweep.json").write_text(
    json.dumps({"config": "experiments/heads.py:smoke", "points": points})
  )
  for h in (1, 2):
    run = tmp_path / f"num_heads={h}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"num_heads": h}, "num_seeds": 2}))
    lines = [
      {"step": 10, "split": "eval", "time": 1.0, "loss": [2.0, 1.0], "accuracy": [0.2, 0.4]},
      {"step": 20, "split": "eval", "time": 2.0, "loss": [1.0, 0.5], "accuracy": [0.5, 0.7]},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  summary = {
    "status": "done",
    "num_params": 321,
    "num_seeds": 2,
    "main_metric": "accuracy",
    "steps_per_sec": 5.0,
  }
  (tmp_path / "num_heads=1" / "summary.json").write_text(json.dumps(summary))
  (tmp_path / "num_heads=2" / "status.json").write_text(json.dumps({"status": "failed", "error": "OOM"}))
  return tmp_path


def test_main_prints_table_and_writes_files(sweep, capsys):
  flags.FLAGS(["compare"])  # Parse defaults, as app.run would.
  compare_app.main(["compare", str(sweep)])
  out = capsys.readouterr().out
  assert "| num_heads=1 | 1 | done | 2 | 20 | 0.6000 ± 0.1000 | 0.6000 ± 0.1000 |" in out
  assert "| num_heads=2 | 2 | failed: OOM |" in out and "- num_heads=2: failed: OOM" in out
  for name in ("compare.md", "compare.csv", "learning_curves.png", "final_vs_swept.png"):
    assert f"wrote {sweep / name}" in out
    assert (sweep / name).is_file()
  with flagsaver.flagsaver(metric="loss"):
    compare_app.main(["compare", str(sweep)])
  assert "| final loss | best loss |" in capsys.readouterr().out
  assert "final loss" in (sweep / "compare.md").read_text()
  with flagsaver.flagsaver(series=["loss", "accuracy"]):
    compare_app.main(["compare", str(sweep)])
  out = capsys.readouterr().out
  assert "| num_heads=1 | 0.7500 ± 0.2500 | 0.6000 ± 0.1000 |" in out  # Failed points are left out.
  assert f"wrote {sweep / 'series.md'}" in out and (sweep / "series.png").is_file()


@pytest.mark.slow  # Starts launch.compare.
def test_main_bad_directory_exits_with_one_line(tmp_path):
  flags.FLAGS(["compare"])
  with pytest.raises(SystemExit) as error:
    compare_app.main(["compare", str(tmp_path)])  # Exists, but holds no runs.
  assert error.value.code.startswith(f"error: {tmp_path}: no runs (no sweep.json,")
  assert "\n" not in error.value.code
  missing = tmp_path / "missing"
  result = subprocess.run(
    [sys.executable, "-m", "launch.compare", str(missing)], capture_output=True, text=True, check=False
  )
  assert result.returncode == 1
  assert result.stdout == ""
  assert result.stderr == f"error: {missing}: no such directory\n"


@pytest.mark.slow  # Starts launch.compare.
def test_a_metrics_line_that_does_not_parse_is_one_warning_naming_file_and_line(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  good = {"step": 4, "split": "eval", "time": 1.0, "loss": [1.0], "accuracy": [0.5]}
  (run / "metrics.jsonl").write_text(json.dumps(good) + "\n" + '{"step": 5, "spl\n')
  result = subprocess.run(
    [sys.executable, "-m", "launch.compare", str(run)], capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if "skipped a line" in line]
  assert len(warnings) == 1 and warnings[0].endswith(
    f"{run / 'metrics.jsonl'}:2: skipped a line that is not a JSON object (cut short by a kill?)"
  )
  assert "final accuracy" in result.stdout  # The table, from the line that parsed.


def test_phase_change_flag_writes_each_seeds_steepest_interval(sweep, capsys):
  flags.FLAGS(["compare"])
  with flagsaver.flagsaver(phase_change="loss"):
    compare_app.main(["compare", str(sweep)])
  out = capsys.readouterr().out
  assert (
    "| num_heads=1 | 0 | 10 | 20 | 2 | 1 |" in out and "| num_heads=1 | 1 | 10 | 20 | 1 | 0.5 |" in out
  )
  assert f"wrote {sweep / 'phase_change.md'}" in out
  with flagsaver.flagsaver(phase_change="bleu"), pytest.raises(SystemExit) as error:
    compare_app.main(["compare", str(sweep)])
  assert error.value.code == f"error: {sweep}: no eval line has metric 'bleu'"
