"""Tests for launch/sample.py: text from a smoke character model trained on a fixture file, through the
command line (launch.attend on the same run too: a language model's attention)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nAy me.\n" * 20


def _run(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV
  )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  data = tmp_path_factory.mktemp("data") / "input.txt"
  data.write_text(TEXT, encoding="utf-8")
  workdir = str(tmp_path_factory.mktemp("run"))
  result = _run(
    "launch.train", "--config=experiments/shakespeare_char.py:smoke", f"--workdir={workdir}",
    f"--config.data.path={data}", "--config.num_train_steps=4", "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=4", "--config.eval_every_steps=4",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def test_training_wrote_samples_and_lm_metrics(run_dir):
  samples = (pathlib.Path(run_dir) / "samples" / "4.txt").read_text(encoding="utf-8")
  assert samples.startswith("=== seed 0, sample 0 ===\n\n")  # The prompt is a line break.
  assert (pathlib.Path(run_dir) / "vocab.json").exists()
  metrics = (pathlib.Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8")
  assert '"bits_per_char"' in metrics and '"perplexity"' in metrics


def test_sample_continues_the_prompt(run_dir):
  result = _run(
    "launch.sample", f"--workdir={run_dir}", "--prompt=ROMEO:", "--num_tokens=40", "--temperature=0.8",
    "--top_k=5", "--num_samples=2",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout.split("=== sample 1 ===\n")
  assert len(out) == 2 and out[0].startswith("=== sample 0 ===\nROMEO:") and out[1].startswith("ROMEO:")
  # 40 characters after the prompt (a sampled special token would print nothing; none is in the
  # training text, and after 4 steps the model may still emit one, so at most 40).
  assert len(out[1].rstrip("\n")) <= len("ROMEO:") + 40  # 40 tokens: past the 16-token context.


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (("--prompt=ROMEO§:",), "error: --prompt: characters not in the run's vocabulary"),
    (("--temperature=-1",), "error: --temperature: must be finite and >= 0"),
  ],
)  # --top_k and --num_tokens are checked by the same lines (tests/nn/test_decoding.py).
def test_bad_arguments_are_one_line(run_dir, args, message):
  result = _run("launch.sample", f"--workdir={run_dir}", *args)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert "Traceback" not in result.stderr


def test_attend_shows_a_language_models_self_attention(run_dir, tmp_path):
  result = _run(
    "launch.attend", f"--workdir={run_dir}", "--text=ROMEO:", "--query=M", f"--out={tmp_path}"
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "next:" in result.stdout and "'M' (position 2) looks at" in result.stdout
  assert (tmp_path / "decoder_self_attention.png").read_bytes().startswith(b"\x89PNG")
