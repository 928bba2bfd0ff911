"""Ring attention on forced CPU devices against the single-device flash path
(`python -m benchmarks.ring [--T=65536,16384] [--devices=8] [--repeats=3]`): causal self-attention
at (1, 8, T, 64) float32, forward + backward (the gradients of sum(out) w.r.t. q, k and v).

Each row runs in a fresh process (`memory._child_command`), so that its peak resident set
(`ru_maxrss`) is its own: the ring with XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES and
q, k, v split over the devices along T, flash with the one default device. The forced devices are
threads of one process sharing the machine's cores, so the ring's peak is all devices' memory
together, and its time against flash's is the ring's overhead (the chunk loop, the ppermutes, the
unbalanced causal work), not a speed-up. Times are wall clock after one warm-up call (which compiles),
the median of up to --repeats calls (`timing.time_call`; slow cases get fewer).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attn.core.attention import dot_product_attention
from attn.core.ring import ring_attention
from benchmarks import memory
from benchmarks.cases import AttentionCase, attention_inputs
from benchmarks.tables import format_table, suite_result
from benchmarks.timing import time_call

_MARKER = "BENCH_RING_RESULT "
CHILD_TIMEOUT_S = 3600.0


def _loss_grad(impl: str, devices: int):
  """The jitted gradient of sum(attention(q, k, v)) w.r.t. q, k, v, and the input sharding (or None)."""
  if impl == "flash":
    fn = lambda q, k, v: dot_product_attention(q, k, v, is_causal=True, implementation="flash")
    sharding = None
  else:
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("seq",))
    fn = lambda q, k, v: ring_attention(q, k, v, mesh=mesh, axis_name="seq", is_causal=True)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "seq"))
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
  return grad, sharding


def ring_child(spec_json: str) -> None:
  """The child process: one implementation's forward + backward, timed, with its peak memory; prints
  one JSON line after _MARKER."""
  spec = json.loads(spec_json)
  case = AttentionCase(1, 8, spec["T"], spec["T"], 64, True)
  grad, sharding = _loss_grad(spec["impl"], spec["devices"])
  args = attention_inputs(case)
  if sharding is not None:
    args = tuple(jax.device_put(x, sharding) for x in args)
  args = jax.block_until_ready(args)
  baseline = memory._maxrss_kib()
  start = time.perf_counter()
  compiled = grad.lower(*args).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()  # Of one device's program (the ring's is SPMD).
  timing = time_call(lambda: compiled(*args), repeats=spec["repeats"], budget_s=spec["budget_s"])
  result = {
    "devices": len(jax.devices()) if sharding is not None else 1,
    "baseline_kib": baseline,
    "peak_kib": memory._maxrss_kib(),
    "vmhwm_kib": memory._vmhwm_kib(),
    "compile_s": compile_s,
    "temp_kib": None if analysis is None else analysis.temp_size_in_bytes // 1024,
    **timing.as_dict(),
  }
  print(_MARKER + json.dumps(result), flush=True)


def measure(impl: str, T: int, *, devices: int, repeats: int, budget_s: float) -> dict[str, Any]:
  """Runs `ring_child` for "ring" (on `devices` forced CPU devices) or "flash" (one device) in a
  fresh process; its result with peak_mib added, or {"error": one line}."""
  spec = {"impl": impl, "T": T, "devices": devices, "repeats": repeats, "budget_s": budget_s}
  env = memory.child_env(JAX_PLATFORMS="cpu")
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  if impl == "ring":
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  code = "import sys; from benchmarks import ring; ring.ring_child(sys.argv[1])"
  result = memory.run_child(code, spec, _MARKER, env=env, timeout_s=CHILD_TIMEOUT_S)
  if "error" in result:
    return result
  result["peak_mib"] = result["peak_kib"] / 1024
  result["temp_mib"] = None if result["temp_kib"] is None else result["temp_kib"] / 1024
  return result


def ring_suite(*, lengths: list[int], devices: int, repeats: int, budget_s: float) -> dict[str, Any]:
  rows = []
  for T in lengths:
    flash_s = None
    for impl in ("flash", "ring"):
      result = measure(impl, T, devices=devices, repeats=repeats, budget_s=budget_s)
      row: dict[str, Any] = {"case": f"B=1 H=8 T=S={T} K=64 causal", "impl": impl}
      rows.append(row)
      if "error" in result:
        row["skipped"] = result["error"]
        continue
      row.update(
        devices=result["devices"], n=len(result["times_s"]), median_s=result["median_s"],
        first_s=result["first_s"], compile_s=result["compile_s"], peak_mib=result["peak_mib"],
        temp_mib=result["temp_mib"],
      )  # fmt: skip
      if impl == "flash":
        flash_s = result["median_s"]
      elif flash_s is not None:
        row["ratio"] = result["median_s"] / flash_s
  columns = [
    ("case", "case", ""),
    ("impl", "impl", ""),
    ("devices", "devices", "d"),
    ("n", "n", "d"),
    ("median s / step", "median_s", ".2f"),
    ("first call s", "first_s", ".1f"),
    ("compile s", "compile_s", ".1f"),
    ("peak MiB (process)", "peak_mib", ".0f"),
    ("temp MiB (device)", "temp_mib", ".0f"),
    ("time / flash", "ratio", ".2f"),
  ]
  notes = [
    "causal forward + backward (gradients of q, k, v), float32, each row in a fresh process.",
    f"ring: attn.core.ring.ring_attention over {devices} forced CPU devices (threads of one process "
    "sharing the cores: the ratio is overhead, not speed-up); flash: one device.",
    "peak MiB: the process's ru_maxrss (the ring's holds all its devices); temp MiB: XLA's temporary "
    "buffers of one device's compiled program (memory_analysis).",
  ]
  return suite_result("ring attention", columns, rows, notes)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--T", default="16384", help="comma-separated sequence lengths")
  parser.add_argument("--devices", type=int, default=8, help="forced CPU devices of the ring")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls (fewer when slow)")
  parser.add_argument("--budget_s", type=float, default=60.0, help="timed seconds per row, at most")
  args = parser.parse_args(argv)
  lengths = [int(t) for t in args.T.split(",")]
  result = ring_suite(
    lengths=lengths, devices=args.devices, repeats=args.repeats, budget_s=args.budget_s
  )
  print(format_table(result), flush=True)
  print(json.dumps(result["rows"]))


if __name__ == "__main__":
  main()
