"""Benchmarks measured on this machine: attention paths against their peers, memory, training, vmapped
seeds and cached decoding. The library behind `python -m launch.bench`; nothing here is hard-coded.

Times are wall clock after one warm-up call (so compilation is excluded; it is reported separately
where it matters), with `jax.block_until_ready`, the median of up to `repeats` calls (fewer when the
calls are slow: see `time_call`). The machine's float32 matmul rate (`matmul_gflops`) is measured first,
so every rate reads as a fraction of it.

Peak memory is measured honestly, in a child process per case (`measure_memory`): a process's peak
resident set (`ru_maxrss`) only grows, so one process cannot measure several cases. The child reports
its baseline (after importing JAX and creating the inputs), its peak after compiling, and its peak
after running the case once; peak minus baseline is the case's own share.

PyTorch is a peer, never a dependency: it is imported lazily, and its rows are skipped (and say so)
when it does not import. It runs on the CPU, with as many threads as this process may use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attn import attention, decoding, masks, train
from attn.config import ModelConfig
from attn.models import LanguageModel, Transformer

SUITES = ("attention", "memory", "train", "seeds", "decode")
MODES = ("forward", "forward+backward")
# Ours first: ours/naive is the reference output, ours/auto the time the ratios divide by.
ATTENTION_IMPLS = ("ours/naive", "ours/flash", "ours/auto", "jax.nn/xla", "flax.linen", "torch/sdpa")
REFERENCE_IMPL, OURS_IMPL = "ours/naive", "ours/auto"

# forward+backward = 3.5 x forward: backward = 2.5 x forward, the FlashAttention papers' convention.
BACKWARD_FLOP_FACTOR = 3.5
SKIP_BYTES = 6e9  # Attention cases estimated to need more than this are skipped.
FLASH_TARGET_BYTES = 2e9  # Target peak of flash forward+backward at T = S = 16384.
CHILD_TIMEOUT_S = 1800.0
_CHILD_MARKER = "BENCH_MEMORY_RESULT "
_KIB, _MIB = 1024, 1024 * 1024


# ----------------------------------------------------------------------------------------------------
# Counting, timing and the machine.


def attention_flops(B: int, H: int, T: int, S: int, K: int, *, causal: bool, backward: bool) -> float:
  """FLOPs of attention by convention: 4 * B * H * T * S * K forward (q.k and weights @ v, a multiply
  and an add each), halved when causal, and BACKWARD_FLOP_FACTOR times that for forward+backward."""
  flops = 4.0 * B * H * T * S * K
  if causal:
    flops /= 2.0
  return flops * BACKWARD_FLOP_FACTOR if backward else flops


def matmul_flops(n: int) -> float:
  """FLOPs of an n x n @ n x n matrix product: 2 * n^3."""
  return 2.0 * n**3


@dataclasses.dataclass(frozen=True)
class AttentionCase:
  """One attention shape: query [B, T, H, K], key and value [B, S, H, K], float32."""

  B: int
  H: int
  T: int
  S: int
  K: int
  causal: bool

  @property
  def name(self) -> str:
    return f"B={self.B} H={self.H} T={self.T} S={self.S} K={self.K}{' causal' if self.causal else ''}"

  def flops(self, mode: str) -> float:
    return attention_flops(
      self.B, self.H, self.T, self.S, self.K, causal=self.causal, backward=mode != "forward"
    )


def attention_bytes_estimate(impl: str, case: AttentionCase, mode: str) -> float:
  """A rough upper estimate of an attention call's working memory, to skip cases that would not fit.

  Inputs, outputs and gradients: about 8 arrays of B * T * H * K floats. Paths that materialise the
  [B, H, T, S] float32 logits hold several such arrays: up to 3 forward and 8 for forward+backward
  (measured by the memory suite at T = S = 4096: about 2 and 8 for ours/naive, 2 and 5 for jax.nn
  and Flax). Ours/flash holds none; torch's CPU kernel did not either, but it may fall back to the
  materialising one, so it is counted as materialising.
  """
  io = 8.0 * case.B * max(case.T, case.S) * case.H * case.K * 4
  if impl == "ours/flash" or (impl == OURS_IMPL and _auto_choice(case) == "flash"):
    return io
  logits = float(case.B) * case.H * case.T * case.S * 4
  return io + logits * (3 if mode == "forward" else 8)


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


def _no_block(x):
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
      f"load average (1 min) at the start: {_cell(machine['load_average_1min'], '.2f')}",
      f"float32 matmul peak: {machine['matmul_gflops']:.1f} GFLOP/s "
      f"(jitted {n}x{n} @ {n}x{n} jnp.dot, median {machine['matmul_ms']:.1f} ms, 2 n^3 FLOPs)",
    ]
  )


# ----------------------------------------------------------------------------------------------------
# Settings, results and tables.


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the suites run.

  Attributes:
    smoke: tiny shapes, few steps, for the tests.
    repeats: timed calls per measurement (at most; see `time_call`).
    memory: measure the attention suite's peak memory, one child process per case.
    seeds_config: the training config of the seeds suite (ml_collections, as `train_and_evaluate`
      takes); its num_seeds and num_train_steps set the work.
    budget_s: time budget of one measurement's timed calls.
    child_timeout_s: time limit of one memory child process.
  """

  smoke: bool = False
  repeats: int = 5
  memory: bool = True
  seeds_config: ml_collections.ConfigDict | None = None
  budget_s: float = 10.0
  child_timeout_s: float = CHILD_TIMEOUT_S


def parse_suites(text: str) -> tuple[tuple[str, ...], bool]:
  """'all', 'smoke' or a comma-separated list of SUITES -> (suite names, smoke).

  Raises:
    ValueError: on an unknown or empty name, or 'smoke' or 'all' mixed with other names.
  """
  names = [name.strip() for name in text.split(",")]
  if any(not name for name in names):
    raise ValueError(f"empty suite name in {text!r}")
  if len(names) == 1 and names[0] in ("all", "smoke"):
    return SUITES, names[0] == "smoke"
  for name in names:
    if name in ("all", "smoke"):
      raise ValueError(f"{name!r} cannot be combined with other suites")
    if name not in SUITES:
      raise ValueError(f"unknown suite {name!r}; expected all, smoke or some of {', '.join(SUITES)}")
  return tuple(dict.fromkeys(names)), False


def _result(title: str, columns: Sequence[tuple[str, str, str]], rows: list[dict], notes: list[str]):
  """A suite's result: its rows (raw numbers, for the JSON) and how to print them."""
  return {"title": title, "columns": [list(c) for c in columns], "rows": rows, "notes": notes}


def _cell(value, fmt: str) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, str):
    return value
  return format(value, fmt)


def format_table(result: dict[str, Any]) -> str:
  """A suite's result as a text table: title, header, rows, then its notes as a footer."""
  columns = result["columns"]
  header = [c[0] for c in columns]
  body = []
  for row in result["rows"]:
    if row.get("skipped"):
      cells = [_cell(row.get(key), fmt) for _, key, fmt in columns[:2]]
      body.append([*cells, f"skipped: {row['skipped']}"])
    else:
      body.append([_cell(row.get(key), fmt) for _, key, fmt in columns])
  widths = [len(h) for h in header]
  for cells in body:
    sized = cells if len(cells) == len(widths) else cells[:2]  # A skip reason spans the rest.
    for i, cell in enumerate(sized):
      widths[i] = max(widths[i], len(cell))

  def line(cells):
    first = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
    if len(cells) < len(widths):  # A skipped row: its reason spans the other columns.
      return "  ".join([*first, cells[2]]).rstrip()
    rest = [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]
    return "  ".join(first + rest).rstrip()

  rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
  lines = [f"== {result['title']}", line(header), rule, *(line(cells) for cells in body), rule]
  lines += [f"  {note}" for note in result["notes"]]
  return "\n".join(lines)


def run_suite(name: str, settings: Settings, machine: dict[str, Any]) -> dict[str, Any]:
  """Runs one of SUITES and returns its result (see `format_table`), with its wall time."""
  suites = {
    "attention": lambda: attention_suite(settings, machine),
    "memory": lambda: memory_suite(settings),
    "train": lambda: train_suite(settings),
    "seeds": lambda: seeds_suite(settings),
    "decode": lambda: decode_suite(settings),
  }
  if name not in suites:
    raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
  start = time.perf_counter()
  result = suites[name]()
  result["elapsed_s"] = time.perf_counter() - start
  result["notes"].append(f"suite wall time {result['elapsed_s']:.0f} s.")
  return result


# ----------------------------------------------------------------------------------------------------
# Attention: the functions timed, in this process and in memory children.


def _auto_choice(case: AttentionCase) -> str:
  return attention.choose_implementation(None, T=case.T, S=case.S)


def attention_inputs(case: AttentionCase, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Unit-normal float32 query [B, T, H, K], key and value [B, S, H, K]."""
  q_rng, k_rng, v_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(q_rng, (case.B, case.T, case.H, case.K), jnp.float32)
  k = jax.random.normal(k_rng, (case.B, case.S, case.H, case.K), jnp.float32)
  v = jax.random.normal(v_rng, (case.B, case.S, case.H, case.K), jnp.float32)
  return q, k, v


def jax_attention_fn(impl: str, case: AttentionCase, mode: str) -> Callable:
  """The (unjitted) function of (q, k, v) that `impl` runs: the output, or the gradients of sum(out)
  with respect to q, k and v."""
  causal = case.causal

  def forward(q, k, v):
    if impl.startswith("ours/"):
      choice = {"ours/naive": "naive", "ours/flash": "flash", "ours/auto": None}[impl]
      return attention.dot_product_attention(q, k, v, is_causal=causal, implementation=choice)
    if impl == "jax.nn/xla":
      return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
    if impl == "flax.linen":
      mask = None
      if causal and case.T == case.S:
        mask = nn.make_causal_mask(jnp.ones((1, case.T), jnp.int32), dtype=jnp.bool_)  # [1, 1, T, T]
      elif causal:
        mask = masks.causal_mask(case.T, case.S)[None, None]
      return nn.dot_product_attention(q, k, v, mask=mask)
    raise ValueError(f"unknown JAX attention implementation {impl!r}")

  if mode == "forward":
    return forward
  return jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v)), argnums=(0, 1, 2))


def torch_attention_call(case: AttentionCase, mode: str, inputs=None) -> Callable[[], Any]:
  """A zero-argument call of torch's scaled_dot_product_attention on [B, H, T, K] tensors (made from
  `inputs`, numpy [B, T, H, K] arrays, when given). Forward runs under no_grad and returns the output
  as numpy [B, T, H, K]; forward+backward runs out.sum().backward() and returns q's gradient."""
  torch = import_torch()
  if inputs is None:
    generator = torch.Generator().manual_seed(0)
    shapes = ((case.B, case.H, case.T, case.K), (case.B, case.H, case.S, case.K))
    q, k, v = (torch.randn(shapes[i > 0], generator=generator) for i in range(3))
  else:
    q, k, v = (torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2))) for x in inputs)
  sdpa = torch.nn.functional.scaled_dot_product_attention
  if mode == "forward":

    def run():
      with torch.no_grad():
        return sdpa(q, k, v, is_causal=case.causal).transpose(1, 2).numpy()

    return run
  for x in (q, k, v):
    x.requires_grad_(True)

  def run_backward():
    for x in (q, k, v):
      x.grad = None
    sdpa(q, k, v, is_causal=case.causal).sum().backward()
    return q.grad

  return run_backward


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
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  code = "import sys; from attn import benchmark; benchmark.memory_child(sys.argv[1])"
  argv = _child_command([sys.executable, "-c", code, json.dumps(spec)])
  # Its own process group, so that the shell and the Python it forked end together.
  proc = subprocess.Popen(
    argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
  )
  try:
    stdout, stderr = proc.communicate(timeout=timeout_s)
  except BaseException as e:  # A timeout, or Ctrl-C: leave nothing running.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    if isinstance(e, subprocess.TimeoutExpired):
      return {"error": f"timed out after {timeout_s:.0f} s"}
    raise
  lines = [line for line in stdout.splitlines() if line.startswith(_CHILD_MARKER)]
  if proc.returncode != 0 or not lines:
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    if proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
      why = "killed (out of memory?)"
    else:
      why = f"exit status {proc.returncode}: {last[:200]}"
    return {"error": why}
  result = json.loads(lines[-1].removeprefix(_CHILD_MARKER))
  result.update(
    baseline_mib=result["baseline_kib"] * _KIB / _MIB,
    peak_mib=result["peak_kib"] * _KIB / _MIB,
    delta_mib=(result["peak_kib"] - result["baseline_kib"]) * _KIB / _MIB,
  )
  return result


# ----------------------------------------------------------------------------------------------------
# Suite 1: attention.


def attention_cases(smoke: bool) -> list[AttentionCase]:
  if smoke:
    return [AttentionCase(1, 2, 64, 64, 16, False), AttentionCase(1, 2, 64, 64, 16, True)]
  return [
    AttentionCase(8, 8, 512, 512, 64, False),
    AttentionCase(8, 8, 512, 512, 64, True),
    AttentionCase(1, 8, 4096, 4096, 64, False),  # The non-causal twin, for the causal speed-up.
    AttentionCase(1, 8, 4096, 4096, 64, True),
  ]


def attention_suite(settings: Settings, machine: dict[str, Any]) -> dict[str, Any]:
  """Ours (naive, flash, auto) against jax.nn, Flax and torch, forward and forward+backward."""
  torch = import_torch()
  peak = machine["matmul_gflops"]
  rows = []
  for case in attention_cases(settings.smoke):
    inputs = jax.block_until_ready(attention_inputs(case))
    for mode in MODES:
      reference = None
      case_rows = []
      for impl in ATTENTION_IMPLS:
        label = f"{impl} ({_auto_choice(case)})" if impl == OURS_IMPL else impl
        row: dict[str, Any] = {"case": case.name, "mode": mode, "impl": label, "flops": case.flops(mode)}
        case_rows.append(row)
        estimate = attention_bytes_estimate(impl, case, mode)
        if estimate > SKIP_BYTES:
          row["skipped"] = f"needs ~{estimate / 1e9:.1f} GB > {SKIP_BYTES / 1e9:.0f} GB"
          continue
        if impl.startswith("torch/"):
          if torch is None:
            row["skipped"] = "torch does not import"
            continue
          call = torch_attention_call(case, mode, [np.asarray(x) for x in inputs])
          timing = time_call(call, repeats=settings.repeats, budget_s=settings.budget_s, block=_no_block)
          out = call() if mode == "forward" else None
        else:
          fn = jax.jit(jax_attention_fn(impl, case, mode))
          timing = time_call(
            lambda fn=fn, inputs=inputs: fn(*inputs),
            repeats=settings.repeats,
            budget_s=settings.budget_s,
          )
          out = np.asarray(fn(*inputs)) if mode == "forward" else None
        if impl == REFERENCE_IMPL and out is not None:
          reference = out
        gflops = row["flops"] / timing.median_s / 1e9
        row.update(
          timing.as_dict(),
          median_ms=timing.median_s * 1e3,
          n=len(timing.times_s),
          gflops=gflops,
          pct_peak=100.0 * gflops / peak,
          max_err=None if out is None or reference is None else float(np.max(np.abs(out - reference))),
        )
        if settings.memory:
          row["memory"] = measure_memory(impl, case, mode, timeout_s=settings.child_timeout_s)
          row["peak_mib"] = row["memory"].get("peak_mib")
          row["delta_mib"] = row["memory"].get("delta_mib")
      ours = next(r for r in case_rows if r["impl"].startswith(OURS_IMPL))
      for row in case_rows:
        if "median_ms" in row and "median_ms" in ours:
          row["ratio_vs_ours"] = row["median_ms"] / ours["median_ms"]
      rows += case_rows
  columns = [
    ("case", "case", ""),
    ("impl", "impl", ""),
    ("mode", "mode", ""),
    ("n", "n", "d"),
    ("median ms", "median_ms", ".2f"),
    ("GFLOP/s", "gflops", ".1f"),
    ("% peak", "pct_peak", ".1f"),
    ("peak MiB", "peak_mib", ".0f"),
    ("+MiB", "delta_mib", ".0f"),
    ("ratio vs ours", "ratio_vs_ours", ".2f"),
    ("max err", "max_err", ".1e"),
  ]
  notes = [
    "FLOPs: forward 4*B*H*T*S*K (halved when causal); forward+backward (grad of sum(out) w.r.t. q, k, v)"
    f" = {BACKWARD_FLOP_FACTOR} x forward, whatever work an implementation actually does.",
    f"% peak: GFLOP/s / the float32 matmul rate above ({peak:.1f} GFLOP/s). median of n calls after a "
    "warm-up call (compile excluded).",
    f"ratio vs ours = impl time / {OURS_IMPL} time (> 1: ours is faster); {OURS_IMPL} shows the path "
    "it picked.",
    "max err: max |out - ours/naive out| (forward). float32 throughout; torch on the CPU with "
    f"{usable_cpus()} threads, tensors [B, H, T, K].",
  ]
  if settings.memory:
    notes.append(
      "peak MiB: peak RSS (ru_maxrss) of a child process running the case once, compile included; "
      "+MiB: peak minus the child's RSS after importing and creating the inputs."
    )
  else:
    notes.append("peak memory not measured (--no-memory, or the smoke suite).")
  notes.append(f"cases estimated to need more than {SKIP_BYTES / 1e9:.0f} GB are skipped.")
  notes += causal_speedups(rows)
  return _result("attention", columns, rows, notes)


def causal_speedups(rows: list[dict], impl: str = "ours/flash") -> list[str]:
  """For each case timed both with and without the causal mask: `impl`'s non-causal time / its causal
  time (the skipped tiles' gain; 2 would be all of the halved work)."""
  times = {
    (r["case"], r["mode"]): r["median_ms"] for r in rows if r["impl"] == impl and "median_ms" in r
  }
  notes = []
  for (case, mode), causal_ms in times.items():
    if not case.endswith(" causal"):
      continue
    plain_ms = times.get((case.removesuffix(" causal"), mode))
    if plain_ms is not None:
      notes.append(
        f"causal speed-up, {impl} at {case.removesuffix(' causal')}, {mode}: non-causal / causal time "
        f"= {plain_ms / causal_ms:.2f}"
      )
  return notes


# ----------------------------------------------------------------------------------------------------
# Suite 2: memory.


def memory_cases(smoke: bool) -> list[tuple[str, AttentionCase, str, float | None]]:
  """(impl, case, mode, target peak bytes or None)."""
  if smoke:
    return [("ours/flash", AttentionCase(1, 2, 128, 128, 16, True), "forward+backward", None)]
  return [
    ("ours/flash", AttentionCase(1, 8, 16384, 16384, 64, True), "forward+backward", FLASH_TARGET_BYTES),
    ("ours/flash", AttentionCase(1, 8, 65536, 65536, 64, True), "forward", None),
    ("ours/naive", AttentionCase(1, 8, 4096, 4096, 64, True), "forward+backward", None),
  ]


def memory_suite(settings: Settings) -> dict[str, Any]:
  """Peak resident memory of long-sequence cases, each in its own child process."""
  rows = []
  for impl, case, mode, target in memory_cases(settings.smoke):
    row: dict[str, Any] = {"case": case.name, "impl": impl, "mode": mode, "target_bytes": target}
    memory = measure_memory(impl, case, mode, timeout_s=settings.child_timeout_s)
    row["memory"] = memory
    if "error" in memory:
      row["skipped"] = f"failed: {memory['error']}"
    else:
      row.update(
        {k: memory[k] for k in ("time_s", "compile_s", "baseline_mib", "peak_mib", "delta_mib")}
      )
      row["after_compile_mib"] = memory["after_compile_kib"] * _KIB / _MIB
      row["gflops"] = case.flops(mode) / memory["time_s"] / 1e9
      if target is not None:
        row["meets_target"] = memory["peak_kib"] * _KIB < target
        row["target"] = f"< {target / 1e9:.0f} GB: {'yes' if row['meets_target'] else 'NO'}"
    rows.append(row)
  columns = [
    ("case", "case", ""),
    ("impl", "impl", ""),
    ("mode", "mode", ""),
    ("time s", "time_s", ".2f"),
    ("GFLOP/s", "gflops", ".1f"),
    ("compile s", "compile_s", ".1f"),
    ("baseline MiB", "baseline_mib", ".0f"),
    ("compiled MiB", "after_compile_mib", ".0f"),
    ("peak MiB", "peak_mib", ".0f"),
    ("+MiB", "delta_mib", ".0f"),
    ("target", "target", ""),
  ]
  notes = [
    "one child process per case: absolute peak RSS (ru_maxrss, host memory) after compiling and "
    "running the case once;",
    "baseline: the child's peak after importing JAX and creating the inputs; compiled: after compiling; "
    "+MiB = peak - baseline.",
    "time: that one call (compile excluded). GB = 1e9 bytes, MiB = 2^20 bytes.",
    "the child is forked by a small shell: spawned straight from this process, its ru_maxrss would "
    "start at this process's resident set.",
  ]
  gaps = [
    abs(r["memory"]["vmhwm_kib"] - r["memory"]["peak_kib"]) / r["memory"]["peak_kib"]
    for r in rows
    if not r.get("skipped") and r["memory"].get("vmhwm_kib")
  ]
  if gaps:
    notes.append(f"cross-check: the child's VmHWM is within {100 * max(gaps):.1f}% of its ru_maxrss.")
  return _result("memory", columns, rows, notes)


# ----------------------------------------------------------------------------------------------------
# Suite 3: one training step of the Transformer.


def _train_sizes(smoke: bool) -> dict[str, int]:
  if smoke:
    return dict(vocab=100, d_model=32, heads=2, enc=1, dec=1, d_ff=64, T=16, batch=4)
  return dict(vocab=1000, d_model=256, heads=4, enc=2, dec=2, d_ff=1024, T=64, batch=32)


def _optimizer_config(learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
  """The optimizer fields `train.make_optimizer` reads: Adam (0.9, 0.98, 1e-9), constant rate."""
  return ml_collections.ConfigDict(
    {
      "num_train_steps": 1,
      "optimizer": {
        "learning_rate": learning_rate,
        "schedule": "constant",
        "warmup_steps": 1,
        "b1": 0.9,
        "b2": 0.98,
        "eps": 1e-9,
        "grad_clip_norm": 0.0,
      },
    }
  )


def _random_seq2seq_batch(sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
  """src, tgt_in, tgt_out [batch, T] of random non-special tokens, weights all 1."""
  rng = np.random.default_rng(seed)
  shape = (sizes["batch"], sizes["T"])
  tokens = lambda: rng.integers(3, sizes["vocab"], shape, dtype=np.int32)
  return {
    "src": tokens(),
    "tgt_in": tokens(),
    "tgt_out": tokens(),
    "weights": np.ones(shape, np.float32),
  }


def _torch_train_step(sizes: dict[str, int], batch: dict[str, np.ndarray]) -> tuple[Callable, int]:
  """torch's nn.Transformer with an embedding and an output layer; returns (one Adam step, params)."""
  torch = import_torch()
  V, D = sizes["vocab"], sizes["d_model"]
  torch.manual_seed(0)
  with warnings.catch_warnings():  # nn.Transformer warns about its nested-tensor fast path.
    warnings.simplefilter("ignore")
    embed = torch.nn.Embedding(V, D)
    transformer = torch.nn.Transformer(
      d_model=D,
      nhead=sizes["heads"],
      num_encoder_layers=sizes["enc"],
      num_decoder_layers=sizes["dec"],
      dim_feedforward=sizes["d_ff"],
      dropout=0.0,
      batch_first=True,
    )
    head = torch.nn.Linear(D, V)
  modules = torch.nn.ModuleList([embed, transformer, head])
  optimizer = torch.optim.Adam(modules.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
  src, tgt_in, tgt_out = (torch.from_numpy(batch[k]).long() for k in ("src", "tgt_in", "tgt_out"))
  tgt_mask = torch.nn.Transformer.generate_square_subsequent_mask(sizes["T"])

  def step():
    optimizer.zero_grad(set_to_none=True)
    y = transformer(embed(src), embed(tgt_in), tgt_mask=tgt_mask, tgt_is_causal=True)
    loss = torch.nn.functional.cross_entropy(head(y).reshape(-1, V), tgt_out.reshape(-1))
    loss.backward()
    optimizer.step()
    return loss

  return step, sum(p.numel() for p in modules.parameters())


def train_suite(settings: Settings) -> dict[str, Any]:
  """One jitted `train.train_step` (forward, backward, Adam) against torch's nn.Transformer."""
  sizes = _train_sizes(settings.smoke)
  config = ModelConfig(
    vocab_size=sizes["vocab"],
    d_model=sizes["d_model"],
    num_heads=sizes["heads"],
    num_encoder_layers=sizes["enc"],
    num_decoder_layers=sizes["dec"],
    d_ff=sizes["d_ff"],
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  model = Transformer(config)
  optimizer = train.make_optimizer(_optimizer_config())
  batch_np = _random_seq2seq_batch(sizes)
  batch = jax.tree.map(jnp.asarray, batch_np)
  params = model.init(jax.random.PRNGKey(0), batch["src"], batch["tgt_in"])["params"]
  state = train.TrainState(
    jnp.asarray(0, jnp.int32), params, optimizer.init(params), jax.random.PRNGKey(1)
  )
  step = jax.jit(
    functools.partial(
      train.train_step, model=model, optimizer=optimizer, kind="seq2seq", label_smoothing=0.0
    ),
    donate_argnums=(0,),
  )
  holder = {"state": state}

  def ours_step():
    holder["state"], holder["metrics"] = step(holder["state"], batch)
    return holder["state"], holder["metrics"]

  tokens = sizes["batch"] * sizes["T"]
  timing = time_call(ours_step, repeats=settings.repeats, budget_s=settings.budget_s)
  n_params = sum(int(p.size) for p in jax.tree.leaves(params))
  rows = [
    {
      "impl": "ours: train.train_step (jit)",
      "params": n_params,
      **timing.as_dict(),
      "n": len(timing.times_s),
      "median_ms": timing.median_s * 1e3,
      "tokens_per_s": tokens / timing.median_s,
      "compile_s": timing.compile_s,
      "last_loss": float(holder["metrics"]["loss"]),
    }
  ]
  torch = import_torch()
  if torch is None:
    rows.append({"impl": "torch nn.Transformer", "skipped": "torch does not import"})
  else:
    torch_step, torch_params = _torch_train_step(sizes, batch_np)
    t = time_call(torch_step, repeats=settings.repeats, budget_s=settings.budget_s, block=_no_block)
    rows.append(
      {
        "impl": "torch nn.Transformer + Adam",
        "params": torch_params,
        **t.as_dict(),
        "n": len(t.times_s),
        "median_ms": t.median_s * 1e3,
        "tokens_per_s": tokens / t.median_s,
        "first_call_extra_s": t.compile_s,
      }
    )
    rows[0]["ratio_vs_torch"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
  columns = [
    ("impl", "impl", ""),
    ("params", "params", ",d"),
    ("n", "n", "d"),
    ("median ms/step", "median_ms", ".1f"),
    ("target tokens/s", "tokens_per_s", ",.0f"),
    ("compile s", "compile_s", ".2f"),
    ("ours/torch tokens/s", "ratio_vs_torch", ".2f"),
  ]
  s = sizes
  notes = [
    f"encoder-decoder: vocabulary {s['vocab']}, D={s['d_model']}, {s['heads']} heads, "
    f"{s['enc']}+{s['dec']} layers, d_ff {s['d_ff']}, T=S={s['T']}, batch {s['batch']}, dropout 0, "
    "label smoothing 0, float32.",
    f"one step = forward, backward and an Adam update; tokens/s = batch*T / median step time "
    f"({tokens} target tokens a step); ratio > 1: ours is faster.",
    "compile s: first call minus the steady-state step. torch: nn.Embedding (shared), nn.Transformer "
    "(causal tgt_mask), nn.Linear to the vocabulary, cross-entropy, torch.optim.Adam.",
  ]
  return _result("train", columns, rows, notes)


# ----------------------------------------------------------------------------------------------------
# Suite 4: seeds, vmapped against sequential.


def _seeds_config(settings: Settings) -> ml_collections.ConfigDict:
  if settings.seeds_config is None:
    raise ValueError("the seeds suite needs Settings.seeds_config (a training config)")
  return settings.seeds_config


def seeds_suite(settings: Settings) -> dict[str, Any]:
  """num_seeds seeds trained as one vmapped program (as `train_and_evaluate` does) against the same
  seeds trained one after the other with one jitted (compiled once) unvmapped step."""
  config = _seeds_config(settings)
  task, model_config = train.validate(config)
  model = train.build_model(model_config, task.kind)
  optimizer = train.make_optimizer(config)
  steps, num_seeds = int(config.num_train_steps), int(config.num_seeds)
  batches = [
    jax.tree.map(jnp.asarray, task.train_batch(s, int(config.batch_size))) for s in range(steps)
  ]
  example = batches[0]
  inputs = (example["src"], example["tgt_in"]) if task.kind == "seq2seq" else (example["tokens"],)

  def init_state(rng):
    init_rng, dropout_rng = jax.random.split(rng)
    params = model.init(init_rng, *inputs)["params"]
    return train.TrainState(jnp.asarray(0, jnp.int32), params, optimizer.init(params), dropout_rng)

  seed_rngs = jnp.stack([jax.random.PRNGKey(int(config.seed) + i) for i in range(num_seeds)])
  one_step = functools.partial(
    train.train_step,
    model=model,
    optimizer=optimizer,
    kind=task.kind,
    label_smoothing=float(config.label_smoothing),
  )
  vmapped_step = jax.jit(jax.vmap(one_step, in_axes=(0, None)), donate_argnums=(0,))
  single_step = jax.jit(one_step, donate_argnums=(0,))
  v_init, s_init = jax.jit(jax.vmap(init_state)), jax.jit(init_state)
  jax.block_until_ready((v_init(seed_rngs), s_init(seed_rngs[0])))  # Init compiles untimed.

  def run_vmapped():
    state = jax.block_until_ready(v_init(seed_rngs))
    start = time.perf_counter()
    for batch in batches:
      state, metrics = vmapped_step(state, batch)
    jax.block_until_ready(state)
    return time.perf_counter() - start, np.asarray(metrics["loss"])

  def run_sequential(separate_programs=False):
    states = jax.block_until_ready([s_init(rng) for rng in seed_rngs])
    start = time.perf_counter()
    losses = []
    for state in states:
      step = single_step
      if separate_programs:  # As separate runs would: each compiles its own step.
        jax.clear_caches()
        step = jax.jit(one_step, donate_argnums=(0,))
      for batch in batches:
        state, metrics = step(state, batch)
      jax.block_until_ready(state)
      losses.append(metrics["loss"])
    return time.perf_counter() - start, np.asarray(losses)

  rows = []
  final_losses = {}
  for name, run in (("vmapped", run_vmapped), ("sequential", run_sequential)):
    # The first run compiles: once for the vmapped program, once per seed for separate runs.
    with_compile, _ = run(separate_programs=True) if name == "sequential" else run()
    times = []
    while len(times) < settings.repeats:
      elapsed, final_losses[name] = run()
      times.append(elapsed)
      if sum(times) >= settings.budget_s and len(times) >= min(settings.repeats, 3):
        break
    median = statistics.median(times)
    rows.append(
      {
        "impl": f"{name}: {num_seeds} seeds"
        + (" in one program" if name == "vmapped" else " one by one"),
        "with_compile_s": with_compile,
        "times_s": times,
        "n": len(times),
        "without_compile_s": median,
        "compile_s": max(with_compile - median, 0.0),
        "steps_per_s": steps * num_seeds / median,
      }
    )
  vmapped, sequential = rows
  vmapped["speedup_with_compile"] = sequential["with_compile_s"] / vmapped["with_compile_s"]
  vmapped["speedup_without_compile"] = sequential["without_compile_s"] / vmapped["without_compile_s"]
  max_diff = float(np.max(np.abs(final_losses["vmapped"] - final_losses["sequential"])))
  columns = [
    ("impl", "impl", ""),
    ("n", "n", "d"),
    ("with compile s", "with_compile_s", ".2f"),
    ("without compile s", "without_compile_s", ".3f"),
    ("compile s", "compile_s", ".2f"),
    ("seed-steps/s", "steps_per_s", ",.0f"),
    ("speedup w/ compile", "speedup_with_compile", ".2f"),
    ("speedup w/o compile", "speedup_without_compile", ".2f"),
  ]
  m = config.model
  notes = [
    f"{num_seeds} seeds x {steps} steps of train.train_step: task {config.task.name}, D={m.d_model}, "
    f"{m.num_encoder_layers}+{m.num_decoder_layers} layers, d_ff {m.d_ff}, batch {config.batch_size}.",
    "vmapped: one jitted vmapped step over a stacked state (as train_and_evaluate); sequential: the "
    "seeds one after the other with an unvmapped jitted step.",
    "with compile: the first run, compiling once (vmapped) or once per seed (sequential, as "
    f"{num_seeds} separate runs would); without: median of n later runs, the sequential step compiled "
    "once and reused; speedup = sequential time / vmapped time.",
    f"check: max |final loss vmapped - sequential| over seeds = {max_diff:.1e}.",
  ]
  result = _result("seeds", columns, rows, notes)
  result["max_final_loss_diff"] = max_diff
  return result


# ----------------------------------------------------------------------------------------------------
# Suite 5: decoding with and without the key/value cache.


def _decode_sizes(smoke: bool) -> dict[str, Any]:
  if smoke:
    return dict(vocab=100, d_model=32, heads=2, layers=1, d_ff=64, prompt=4, new=8, batches=(2,))
  return dict(vocab=1000, d_model=128, heads=4, layers=2, d_ff=512, prompt=16, new=128, batches=(1, 4))


def recompute_decode(model: LanguageModel, params, prompt_BP: jax.Array, *, max_new_tokens: int):
  """Greedy decoding without a cache: each step runs the whole model on a fixed [B, P + N] buffer,
  right-padded, and takes the argmax at the current position. int [B, max_new_tokens]."""
  B, P = prompt_BP.shape
  buffer = jnp.full((B, P + max_new_tokens), model.config.pad_id, prompt_BP.dtype)
  buffer = buffer.at[:, :P].set(prompt_BP)

  def body(i, buffer):
    logits_BLV = model.apply({"params": params}, buffer)
    logits_BV = jax.lax.dynamic_index_in_dim(logits_BLV, P + i - 1, axis=1, keepdims=False)
    token_B = jnp.argmax(logits_BV, axis=-1).astype(buffer.dtype)
    return jax.lax.dynamic_update_slice_in_dim(buffer, token_B[:, None], P + i, axis=1)

  return jax.lax.fori_loop(0, max_new_tokens, body, buffer)[:, P:]


def decode_suite(settings: Settings) -> dict[str, Any]:
  """Cached greedy decoding (`decoding.greedy_decode`) against recomputing the prefix every step."""
  s = _decode_sizes(settings.smoke)
  config = ModelConfig(
    vocab_size=s["vocab"],
    d_model=s["d_model"],
    num_heads=s["heads"],
    d_ff=s["d_ff"],
    num_encoder_layers=0,
    num_decoder_layers=s["layers"],
    dropout_rate=0.0,
  )
  model = LanguageModel(config)
  N = s["new"]
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, s["prompt"] + N), jnp.int32))["params"]
  # eos_id=-1: no token ends a sequence, so both decoders produce all N tokens.
  cached = jax.jit(lambda p, x: decoding.greedy_decode(model, p, x, max_new_tokens=N, eos_id=-1))
  recompute = jax.jit(lambda p, x: recompute_decode(model, p, x, max_new_tokens=N))
  rows = []
  for B in s["batches"]:
    prompt = jax.random.randint(jax.random.PRNGKey(B), (B, s["prompt"]), 3, s["vocab"])
    pair = []
    for name, fn in (
      ("cached: greedy_decode", cached),
      ("recompute prefix (jit, fori_loop)", recompute),
    ):
      timing = time_call(
        lambda fn=fn, prompt=prompt: fn(params, prompt),
        repeats=settings.repeats,
        budget_s=settings.budget_s,
      )
      row = {
        "impl": name,
        "batch": B,
        **timing.as_dict(),
        "n": len(timing.times_s),
        "median_ms": timing.median_s * 1e3,
        "tokens_per_s": B * N / timing.median_s,
        "compile_s": timing.compile_s,
      }
      pair.append((row, np.asarray(fn(params, prompt))))
    (cached_row, cached_tokens), (recompute_row, recompute_tokens) = pair
    cached_row["speedup"] = recompute_row["median_ms"] / cached_row["median_ms"]
    cached_row["agreement"] = recompute_row["agreement"] = float(
      np.mean(cached_tokens == recompute_tokens)
    )
    rows += [cached_row, recompute_row]
  columns = [
    ("impl", "impl", ""),
    ("batch", "batch", "d"),
    ("n", "n", "d"),
    ("median ms", "median_ms", ".1f"),
    ("new tokens/s", "tokens_per_s", ",.0f"),
    ("compile s", "compile_s", ".2f"),
    ("speedup", "speedup", ".2f"),
    ("same tokens", "agreement", ".0%"),
  ]
  notes = [
    f"LanguageModel: vocabulary {s['vocab']}, D={s['d_model']}, {s['heads']} heads, {s['layers']} "
    f"layers, d_ff {s['d_ff']}; prompt {s['prompt']} tokens, {N} new tokens, greedy, untrained.",
    "cached: one prompt pass, then one token a step with the key/value cache; recompute: a full "
    f"causal forward over a right-padded [B, {s['prompt'] + N}] buffer each step.",
    "both jitted once (compile excluded from the median); speedup = recompute time / cached time; "
    "same tokens: fraction of tokens the two agree on.",
  ]
  return _result("decode", columns, rows, notes)
