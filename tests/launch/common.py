"""What the launch tests share: an entry point run as a child process from the repository root.

The launch modules define overlapping absl flags (--workdir, --split), so each runs in its own
process. Unoptimised XLA compiles about twice as fast; these tests check what is written, not speed.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m module args...` from the repository root; stdout and stderr captured."""
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV
  )
