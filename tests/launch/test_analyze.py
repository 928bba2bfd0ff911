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
    "report.html",
  ):
    assert f"wrote {out / name}" in result.stdout
  result_json = json.loads((out / "analysis.json").read_text())
  assert result_json["split"] == "dev" and result_json["circuits"] is None  # Not a language model.
  assert "detectors.png" not in result.stdout
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
    ("--prompt=3 1 4", "error: --prompt: "),  # A seq2seq run: prompts are a language model's.
  ):
    result = run("launch.analyze", f"--workdir={workdir}", flag)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_launch_analyze_gives_a_language_model_the_circuits_report(tmp_path):
  """An untrained induction smoke run (2-layer attention-only LM): the circuits' PNGs, report.html
  with them, analysis.json's numbers consistent; a given prompt and pair; bad ones in one line."""
  from experiments import induction

  workdir = tmp_path / "run"
  write_untrained_run(induction.get_config("smoke"), str(workdir))
  out = tmp_path / "out"
  result = run(
    "launch.analyze", f"--workdir={workdir}", f"--out={out}", "--max_examples=16",
    "--prompt=5 6 7 5 6", "--clean=1 2 3 1 2", "--corrupt=1 2 3 4 5",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  for name in ("detectors.png", "logit_lens.png", "dla.png", "patching_heads.png", "report.html"):
    assert f"wrote {out / name}" in result.stdout
  circuits = json.loads((out / "analysis.json").read_text())["circuits"]
  dla = circuits["dla"]
  assert dla["prompt"] == "5 6 7 5 6" and dla["tokens"] == ["5", "6", "7", "5", "6"]
  assert abs(dla["sum"] - dla["logit"]) < 1e-4
  patched = circuits["patching"]
  assert not patched["default_pair"] and patched["corrupt_tokens"] == ["1", "2", "3", "4", "5"]
  assert len(patched["resid_pre"][0]) == 5
  assert circuits["logit_lens"]["loss"][-1] == pytest.approx(
    circuits["logit_lens"]["model_loss"], abs=1e-5
  )
  page = (out / "report.html").read_text()
  assert "id=detectors" in page and page.count("data:image/png;base64,") >= 5

  for flags, message in (
    (["--clean=1 2", "--corrupt=1"], "error: --clean, --corrupt: the pair must have one token length"),
    (["--clean=1 2"], "error: --clean, --corrupt: give both"),
    (["--prompt=" + "1 " * 40], "error: --prompt: 40 tokens, more than the model's max_length 32"),
  ):
    result = run("launch.analyze", f"--workdir={workdir}", f"--out={out}", *flags)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
