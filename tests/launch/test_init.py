"""Tests for launch/__init__.py: every entry point starts quietly (its first screen is its own output,
not JAX's "Unable to initialize backend" INFO line or orbax's set-up chatter)."""

import logging
import os
import pathlib
import subprocess
import sys

import pytest
from absl import logging as absl_logging

import launch

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENTRY_POINTS = ("attend", "bench", "compare", "demo", "sweep", "train")


def test_every_entry_point_calls_start_quietly_first_in_main():
  for name in ENTRY_POINTS:
    source = (ROOT / "launch" / f"{name}.py").read_text(encoding="utf-8")
    main = source[source.index("def main(") :]
    body = [line.strip() for line in main.splitlines()[1:] if line.strip()]
    # Only the arguments check may come before it.
    first = next(
      line for line in body if not line.startswith(("if len(argv)", "raise app.", "sys.exit"))
    )
    assert first == "start_quietly()", (name, first)


def test_start_quietly_drops_library_info_and_keeps_warnings():
  launch.start_quietly()
  launch.start_quietly()  # Idempotent: one filter.
  handler = absl_logging.get_absl_handler()
  assert handler.filters.count(launch._not_library_info) == 1
  assert logging.getLogger("jax._src.xla_bridge").getEffectiveLevel() == logging.WARNING

  def record(level, path):
    return logging.LogRecord("absl", level, path, 1, "message", None, None)

  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not launch._not_library_info(record(logging.INFO, orbax))
  assert launch._not_library_info(record(logging.WARNING, orbax))
  assert launch._not_library_info(record(logging.INFO, "/work/attn/train/loop.py"))


# That the demo's first line is its own, with JAX left to probe for a TPU, is checked where the demo's
# whole output is (tests/launch/test_demo.py), so the demo runs once in the suite.


@pytest.mark.slow  # Starts launch.demo.
def test_a_bad_environment_default_is_one_line_before_anything_runs():
  env = {**os.environ, "ATTN_DEFAULT_IMPLEMENTATION": "fastest"}
  result = subprocess.run(
    [sys.executable, "-m", "launch.demo"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
  )
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.strip() == (
    "error: ATTN_DEFAULT_IMPLEMENTATION: unknown choice 'fastest'; expected one of naive, flash, jax "
    "or unset"
  )
