"""Tests for launch/attend.py: heatmaps of a smoke run, through the command line.

The launch modules define overlapping absl flags (--workdir), so they run as subprocesses here.
The run they read is written in process, untrained (config.json and a checkpoint, as launch.train
leaves them): what attend does with a run is the test, not how it was trained (launch.train's run
directory is tests/launch/test_train.py's; launch.attend on a trained run, test_sample.py's).
"""

import pytest

from experiments import base
from tests.launch.common import run
from tests.train.common import write_untrained_run

pytestmark = pytest.mark.slow  # Starts launch.attend: child processes.


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = base.get_config("smoke")
  config.num_seeds = 1
  config.num_train_steps = config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 2
  write_untrained_run(config, workdir)
  return workdir


def _attend(*args):
  return run("launch.attend", *args)


def test_attend_writes_heatmaps_and_prints_top_keys(run_dir, tmp_path):
  out = tmp_path / "out"
  result = _attend(f"--workdir={run_dir}", "--text=3 1 4 1", "--query=4", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert "input:  3 1 4 1" in result.stdout and "output:" in result.stdout
  assert "'4' (position 2) looks at" in result.stdout
  for name in ("encoder_self_attention", "decoder_self_attention", "decoder_cross_attention"):
    assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_attend_bad_query_and_missing_run_exit_with_one_line(run_dir, tmp_path):
  result = _attend(f"--workdir={run_dir}", "--text=3 1", "--query=7")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: --query")
  assert "Traceback" not in result.stderr
  result = _attend(f"--workdir={tmp_path}", "--text=3 1")
  assert result.returncode != 0
  assert "error: --workdir" in result.stderr and "holds no run" in result.stderr
  assert "Traceback" not in result.stderr


def test_a_model_without_attention_is_one_line(tmp_path):
  config = base.get_config("smoke")
  config.num_seeds = 1
  config.model.num_encoder_layers = config.model.num_decoder_layers = 0
  workdir = str(tmp_path / "run")
  write_untrained_run(config, workdir)
  result = _attend(f"--workdir={workdir}", "--text=3 1")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: --workdir: the model of")
