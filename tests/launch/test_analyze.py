"""Tests for launch/analyze.py: a smoke run's heads, through the command line.

The launch modules define overlapping absl flags (--workdir, --split), so they run as subprocesses.
The run they read is written in process, untrained (config.json and a checkpoint, as launch.train
leaves them): what analyze does with a run is the test, not how it was trained.
"""

import json

import pytest

from experiments import base
from tests.launch.common import run
from tests.train.common import write_untrained_run

pytestmark = pytest.mark.slow  # Starts launch.analyze: a child process.


def test_launch_analyze_writes_the_files_and_refuses_a_missingrun(tmp_path):
  workdir = tmp_path / "run"
  config = base.get_config("smoke")
  config.num_seeds = 1
  config.num_train_steps = config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 2
  write_untrained_run(config, str(workdir))
  out = tmp_path / "out"
  result = run("launch.analyze", f"--workdir={workdir}", f"--out={out}", "--max_examples=8")
  assert result.returncode == 0, result.stderr[-2000:]
  for name in (
    "importance.png",
    "ablation.png",
    "pruning.png",
    "roles.png",
    "roles.md",
    "analysis.json",
  ):
    assert f"wrote {out / name}" in result.stdout
  assert json.loads((out / "analysis.json").read_text())["split"] == "dev"
  assert "| encoder/layer_0/self_attention | 1 |" in (out / "roles.md").read_text()
  for bad, message in ((tmp_path / "nothing", "is not a directory"), (tmp_path / "out", "holds no run")):
    result = run("launch.analyze", f"--workdir={bad}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --workdir: ") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr

  # Its own flags, refused in one line before any work (they used to fail at the end, with a trace).
  (tmp_path / "a_file").write_text("")
  for flag, message in (
    ("--max_examples=0", "error: --max_examples: must be at least 1, got 0"),
    (f"--out={tmp_path / 'a_file'}", "error: --out: "),
  ):
    result = run("launch.analyze", f"--workdir={workdir}", flag)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
