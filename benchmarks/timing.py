"""Timing and the machine: wall-clock timing after a warm-up call, the float32 matmul rate every
figure reads against, versions, and PyTorch (a peer, never a dependency) imported lazily.

Times are wall clock after one warm-up call (so compilation is excluded; it is reported separately
where it matters), with `jax.block_until_ready`, the median of up to `repeats` calls (fewer when the
calls are slow: see `time_call`). Contenders compared by a ratio are timed in interleaved rounds
(`interleave_calls`, `round_ratio`), so load that comes and goes moves them alike.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.tables import format_cell


def matmul_flops(n: int) -> float:
  """FLOPs of an n x n @ n x n matrix product: 2 * n^3."""
  return 2.0 * n**3


@dataclasses.dataclass
class Timing:
  """Wall-clock seconds of a first (warm-up, compiling) call and of the timed calls after it."""

  first_s: float
  times_s: list[float]

  @property
  def median_s(self) -> float:
    return statistics.median(self.times_s)

  @property
  def compile_s(self) -> float:
    """The first call's excess over the steady state: compilation and first-call set-up."""
    return max(self.first_s - self.median_s, 0.0)

  def as_dict(self) -> dict[str, Any]:
    return {"first_s": self.first_s, "median_s": self.median_s, "times_s": self.times_s}


def time_call(
  fn: Callable[[], Any],
  *,
  repeats: int,
  budget_s: float = 10.0,
  block: Callable[[Any], Any] = jax.block_until_ready,
) -> Timing:
  """Times `fn()` once as a warm-up, then up to `repeats` times, blocking on each result.

  Stops early once the timed calls have taken `budget_s` in all and at least min(repeats, 3) were
  made, so slow cases get fewer repeats.
  """
  start = time.perf_counter()
  block(fn())
  first = time.perf_counter() - start
  times: list[float] = []
  while len(times) < repeats:
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
    if sum(times) >= budget_s and len(times) >= min(repeats, 3):
      break
  return Timing(first, times)


def interleave_calls(
  calls: dict[str, Callable[[], Any]],
  *,
  repeats: int,
  budget_s: float = 10.0,
  block: Callable[[Any], Any] = jax.block_until_ready,
) -> dict[str, Timing]:
  """Times several contenders in interleaved rounds: each warmed up once, then one call of each per
  round (the order rotated every round), up to `repeats` rounds, blocking on each result with `block`
  (a contender that returns host data, like eager torch, is already done: `block` does nothing to it).

  Stops early once the rounds have taken `budget_s` per contender and at least min(repeats, 3) rounds
  were made, as `time_call` does. Every Timing's times_s holds one entry per round, in round order,
  so `round_ratio` can divide two contenders' times measured at the same moments: on a loaded machine
  a burst of load then slows both alike, where timing one contender after the other would not.
  """
  names = list(calls)
  first = {}
  for name in names:
    start = time.perf_counter()
    block(calls[name]())
    first[name] = time.perf_counter() - start
  times: dict[str, list[float]] = {name: [] for name in names}
  total, rounds = 0.0, 0
  while rounds < repeats:
    shift = rounds % len(names)
    for name in names[shift:] + names[:shift]:
      start = time.perf_counter()
      block(calls[name]())
      elapsed = time.perf_counter() - start
      times[name].append(elapsed)
      total += elapsed
    rounds += 1
    if total >= budget_s * len(names) and rounds >= min(repeats, 3):
      break
  return {name: Timing(first[name], times[name]) for name in names}


def round_ratio(numerator: Timing, denominator: Timing) -> float:
  """The median over rounds of numerator's time / denominator's time in the same round (Timings from
  one `interleave_calls`)."""
  if len(numerator.times_s) != len(denominator.times_s):
    raise ValueError("round_ratio needs Timings from the same interleaved rounds")
  return statistics.median(a / b for a, b in zip(numerator.times_s, denominator.times_s, strict=True))


def no_block(x):
  return x


def usable_cpus() -> int:
  """CPUs this process may run on (its affinity), or os.cpu_count() where affinity is unknown."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


# GNU OpenMP threads spin at each barrier by default; on a shared machine a descheduled thread then
# stalls every parallel region for a time slice (a 256 x 256 matmul took 16 ms instead of 0.4). Torch's
# OpenMP reads this when it loads; set it yourself to override.
TORCH_OMP_WAIT_POLICY = "PASSIVE"


@functools.cache
def import_torch():
  """PyTorch, set to use every usable CPU, or None when it does not import.

  Sets OMP_WAIT_POLICY to TORCH_OMP_WAIT_POLICY first, unless it is set already.
  """
  os.environ.setdefault("OMP_WAIT_POLICY", TORCH_OMP_WAIT_POLICY)
  try:
    import torch  # A benchmark peer only: never a dependency of the library.
  except Exception:  # A broken install (missing shared library, ...) counts as absent too.
    return None
  torch.set_num_threads(usable_cpus())
  return torch


def matmul_gflops(n: int = 2048, *, repeats: int = 5) -> dict[str, float]:
  """The float32 rate of a jitted n x n @ n x n `jnp.dot`: 2 n^3 / median time, in GFLOP/s."""
  a_rng, b_rng = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(a_rng, (n, n), jnp.float32)
  b = jax.random.normal(b_rng, (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  timing = time_call(lambda: dot(a, b), repeats=max(repeats, 3))
  return {"n": n, "median_ms": timing.median_s * 1e3, "gflops": matmul_flops(n) / timing.median_s / 1e9}


def _load_average() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def machine_info(*, repeats: int = 5) -> dict[str, Any]:
  """Versions, CPUs, the JAX backend and the measured matmul rate."""
  import jaxlib  # Only for its version.

  torch = import_torch()
  matmul = matmul_gflops(repeats=repeats)
  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
    "torch": torch.__version__ if torch is not None else None,
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    "cpus": usable_cpus(),
    "cpu_count": os.cpu_count(),
    "processor": platform.processor() or platform.machine(),
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "load_average_1min": _load_average(),
    "matmul_n": matmul["n"],
    "matmul_ms": matmul["median_ms"],
    "matmul_gflops": matmul["gflops"],
  }


def format_machine(machine: dict[str, Any]) -> str:
  """The header printed above the tables."""
  torch = machine["torch"] or "not importable (torch peers skipped)"
  n = machine["matmul_n"]
  return "\n".join(
    [
      f"machine: {machine['cpus']} usable CPUs ({machine['cpu_count']} in all), "
      f"JAX backend {machine['backend']} ({machine['device']}), Python {machine['python']}",
      f"versions: jax {machine['jax']}, jaxlib {machine['jaxlib']}, flax {machine['flax']}, "
      f"optax {machine['optax']}, torch {torch}"
      + (f" (OMP_WAIT_POLICY={machine['omp_wait_policy']})" if machine["torch"] else ""),
      f"load average (1 min) at the start: {format_cell(machine['load_average_1min'], '.2f')}",
      f"float32 matmul peak: {machine['matmul_gflops']:.1f} GFLOP/s "
      f"(jitted {n}x{n} @ {n}x{n} jnp.dot, median {machine['matmul_ms']:.1f} ms, 2 n^3 FLOPs)",
    ]
  )
