"""Peak memory, measured honestly in a child process per case (`measure_memory`): a process's peak
resident set (`ru_maxrss`) only grows, so one process cannot measure several cases. The child reports
its baseline (after importing JAX and creating the inputs), its peak after compiling, and its peak
after running the case once; peak minus baseline is the case's own share.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import time
from typing import Any

import jax

from benchmarks.cases import AttentionCase, attention_inputs, jax_attention_fn, torch_attention_call
from benchmarks.timing import import_torch

CHILD_TIMEOUT_S = 1800.0


_CHILD_MARKER = "BENCH_MEMORY_RESULT "


KIB, MIB = 1024, 1024 * 1024


def _maxrss_kib() -> int:
  """This process's peak resident set so far, in KiB (Linux reports ru_maxrss in KiB)."""
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _vmhwm_kib() -> int | None:
  """The peak resident set of this process's memory image (Linux's VmHWM), in KiB, or None."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def memory_child(spec_json: str) -> None:
  """The child process of `measure_memory`: runs one case once and prints its result as JSON.

  Order: import (done), inputs -> baseline; compile -> after_compile; one call -> peak.
  """
  spec = json.loads(spec_json)
  case = AttentionCase(**{f.name: spec[f.name] for f in dataclasses.fields(AttentionCase)})
  impl, mode = spec["impl"], spec["mode"]
  compile_s = None
  if impl.startswith("torch/"):
    if import_torch() is None:
      raise SystemExit("torch does not import")
    run = torch_attention_call(case, mode)
    baseline = after_compile = _maxrss_kib()
    start = time.perf_counter()
    run()
  else:
    args = jax.block_until_ready(attention_inputs(case))
    baseline = _maxrss_kib()
    start = time.perf_counter()
    compiled = jax.jit(jax_attention_fn(impl, case, mode)).lower(*args).compile()
    compile_s = time.perf_counter() - start
    after_compile = _maxrss_kib()
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
  time_s = time.perf_counter() - start
  peak = _maxrss_kib()
  result = {
    "baseline_kib": baseline,
    "after_compile_kib": after_compile,
    "peak_kib": peak,
    "vmhwm_kib": _vmhwm_kib(),  # A cross-check of peak_kib.
    "time_s": time_s,
    "compile_s": compile_s,
  }
  print(_CHILD_MARKER + json.dumps(result), flush=True)


def _child_command(argv: list[str]) -> list[str]:
  """`argv` run by a small shell that forks it, where there is one.

  A process's ru_maxrss starts at its parent's resident set: Linux keeps the peak of the memory image
  that exec replaces, and a process spawned straight from this one (vfork or fork) replaces an image
  the size of this one. A child forked by a shell replaces the shell's few MiB instead. (`; exit` keeps
  the shell from exec'ing the command in its own place.)
  """
  if sys.platform.startswith("linux") and os.path.exists("/bin/sh"):
    return ["/bin/sh", "-c", '"$@"; exit $?', "sh", *argv]
  return argv


def child_env(**changes: str) -> dict[str, str]:
  """This process's environment with the repository on PYTHONPATH (a child runs `-c` code that
  imports `benchmarks`), plus `changes`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
  return {**os.environ, "PYTHONPATH": path, **changes}


def run_child(code: str, spec: dict, marker: str, *, env=None, timeout_s: float) -> dict[str, Any]:
  """Runs `python -c code SPEC_JSON` in a fresh process (its own process group, so the shell and the
  Python it forked end together); returns the JSON of its last stdout line starting with `marker`,
  or {"error": one line} when it failed, was killed or ran past `timeout_s`."""
  argv = _child_command([sys.executable, "-c", code, json.dumps(spec)])
  proc = subprocess.Popen(
    argv,
    env=child_env() if env is None else env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    stdout, stderr = proc.communicate(timeout=timeout_s)
  except BaseException as e:  # A timeout, or Ctrl-C: leave nothing running.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    if isinstance(e, subprocess.TimeoutExpired):
      return {"error": f"timed out after {timeout_s:.0f} s"}
    raise
  lines = [line for line in stdout.splitlines() if line.startswith(marker)]
  if proc.returncode != 0 or not lines:
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    if proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
      return {"error": "killed (out of memory?)"}
    return {"error": f"exit status {proc.returncode}: {last[:200]}"}
  return json.loads(lines[-1].removeprefix(marker))


def measure_memory(
  impl: str, case: AttentionCase, mode: str, *, timeout_s: float = CHILD_TIMEOUT_S
) -> dict[str, Any]:
  """Runs one attention call in a fresh Python process and returns its memory and time.

  Returns:
    The child's {"baseline_kib", "after_compile_kib", "peak_kib", "vmhwm_kib", "time_s",
    "compile_s"} plus "baseline_mib", "peak_mib" and "delta_mib" (peak - baseline); or {"error": one
    line} when the child failed or ran past `timeout_s`.
  """
  spec = {**dataclasses.asdict(case), "impl": impl, "mode": mode}
  code = "import sys; from benchmarks import memory; memory.memory_child(sys.argv[1])"
  result = run_child(code, spec, _CHILD_MARKER, timeout_s=timeout_s)
  if "error" in result:
    return result
  result.update(
    baseline_mib=result["baseline_kib"] * KIB / MIB,
    peak_mib=result["peak_kib"] * KIB / MIB,
    delta_mib=(result["peak_kib"] - result["baseline_kib"]) * KIB / MIB,
  )
  return result
