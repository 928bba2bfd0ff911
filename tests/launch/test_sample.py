"""Tests for launch/sample.py: text from a smoke character model trained on a fixture file, through the
command line (and launch.attend on the same run: a language model's attention).

One test function: its steps share one trained run, and a module fixture would be trained again by
each pytest-xdist worker that gets one of several tests.
"""

import pytest

from tests.launch.common import run

pytestmark = pytest.mark.slow  # Trains, samples and attends in child processes.

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nAy me.\n" * 20


def test_train_sample_and_attend_a_character_model(tmp_path):
  data = tmp_path / "input.txt"
  data.write_text(TEXT, encoding="utf-8")
  run_dir = tmp_path / "run"
  result = run(
    "launch.train", "--config=experiments/shakespeare_char.py:smoke", f"--workdir={run_dir}",
    f"--config.data.path={data}", "--config.num_train_steps=4", "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=4", "--config.eval_every_steps=4",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  samples = (run_dir / "samples" / "4.txt").read_text(encoding="utf-8")
  assert samples.startswith("=== seed 0, sample 0 ===\n\n")  # The prompt is a line break.
  assert (run_dir / "vocab.json").exists()
  metrics = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
  assert '"bits_per_char"' in metrics and '"perplexity"' in metrics

  result = run(
    "launch.sample", f"--workdir={run_dir}", "--prompt=ROMEO:", "--num_tokens=40", "--temperature=0.8",
    "--top_k=5", "--num_samples=2",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout.split("=== sample 1 ===\n")
  assert len(out) == 2 and out[0].startswith("=== sample 0 ===\nROMEO:") and out[1].startswith("ROMEO:")
  # At most 40 characters after the prompt (40 tokens, past the smoke model's 16-token context; a
  # special token the 4-step model may still emit prints nothing).
  assert len(out[1].rstrip("\n")) <= len("ROMEO:") + 40

  # A prompt character the vocabulary lacks is one line (--temperature and --top_k go through
  # decoding.check_sampling: tests/nn/test_decoding.py).
  result = run("launch.sample", f"--workdir={run_dir}", "--prompt=ROMEO§:")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith("error: --prompt: characters not in the run's vocabulary")
  )

  out_dir = tmp_path / "attend"
  result = run("launch.attend", f"--workdir={run_dir}", "--text=ROMEO:", "--query=M", f"--out={out_dir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "next:" in result.stdout and "'M' (position 2) looks at" in result.stdout
  assert (out_dir / "decoder_self_attention.png").read_bytes().startswith(b"\x89PNG")
