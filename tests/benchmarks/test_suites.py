"""Tests for the benchmarks package and launch/bench.py: the smoke suite run as the command it is (one
process: every suite, the JSON and the printed tables), the FLOP conventions, and the child-process
memory measurement on a tiny case."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import resource
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import cases, history, memory, suites, timing, variants

REPO = pathlib.Path(__file__).resolve().parents[2]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _positive(x) -> bool:
  return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _launch(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "launch.bench", *args],
    cwd=REPO,
    # Unoptimised XLA compiles about twice as fast; these tests check the tool, not the speed.
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"},
    capture_output=True,
    text=True,
    check=False,
  )


@pytest.mark.slow  # Starts launch.bench.
def test_smoke_suite_writes_every_suite_and_prints_the_tables(tmp_path):
  out, baseline = tmp_path / "b.json", tmp_path / "baseline.json"
  result = _launch("--suite=smoke", f"--out={out}", f"--record_baseline={baseline}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  results = json.loads(out.read_text())

  machine = results["machine"]
  assert _positive(machine["matmul_gflops"]) and _positive(machine["cpus"])
  assert machine["jax"] and machine["jaxlib"]
  assert "matmul peak" in result.stdout and f"{machine['matmul_gflops']:.1f} GFLOP/s" in result.stdout
  assert results["settings"]["smoke"] and results["settings"]["repeats"] == 1
  assert set(results["suites"]) == set(suites.SUITES)
  recorded = json.loads(baseline.read_text())["ratios"]  # Every ratio of the run, by suite.
  assert recorded and set(recorded) == set(history.ratios(results["suites"]))
  assert f"wrote {len(recorded)} ratios to {baseline}" in result.stdout
  for name, suite in results["suites"].items():
    assert f"== {name}\n" in result.stdout  # Each table, with its header and footer.
    assert suite["rows"] and suite["notes"][0] in result.stdout
    for row in suite["rows"]:
      impl = row.get("impl", "")  # The variants suite's rows name a variant instead.
      peer_absent = impl.startswith("torch") and not HAS_TORCH
      no_checkout = impl.startswith("nanoGPT")  # The test gives no --nanogpt checkout.
      assert not row.get("skipped") or peer_absent or no_checkout, row

  attention = results["suites"]["attention"]["rows"]
  impls = {row["impl"].split(" ")[0] for row in attention}
  assert impls == set(cases.ATTENTION_IMPLS)
  assert {row["mode"] for row in attention} == set(cases.MODES)
  for row in attention:
    if row.get("skipped"):
      continue
    assert all(_positive(row[k]) for k in ("median_ms", "gflops", "pct_peak", "ratio_vs_ours")), row
    assert all(_positive(t) for t in row["times_s"])
    if row["mode"] == "forward":
      assert row["max_err"] < 1e-4, row  # Every implementation computes the same attention.
  assert "FLOPs: forward 4*B*H*T*S*K" in result.stdout
  assert "causal speed-up, ours/flash at B=1 H=2 T=64 S=64 K=16, forward+backward" in result.stdout

  (memory,) = results["suites"]["memory"]["rows"]
  assert memory["peak_mib"] >= memory["baseline_mib"] > 0 and _positive(memory["time_s"])

  ours, torch_row = results["suites"]["train"]["rows"]
  assert _positive(ours["tokens_per_s"]) and _positive(ours["median_ms"])
  assert ours["compile_s"] >= 0
  if HAS_TORCH:
    assert _positive(torch_row["tokens_per_s"]) and _positive(ours["ratio_vs_torch"])
    assert ours["ratio_vs_torch"] == pytest.approx(torch_row["median_ms"] / ours["median_ms"])
    assert all(_positive(row["ratio_vs_ours"]) for row in attention if row["impl"] == "torch/sdpa")

  seeds = results["suites"]["seeds"]
  vmapped, sequential = seeds["rows"]
  for row in (vmapped, sequential):
    assert all(_positive(row[k]) for k in ("with_compile_s", "without_compile_s", "steps_per_s"))
  assert _positive(vmapped["speedup_with_compile"]) and _positive(vmapped["speedup_without_compile"])
  assert seeds["max_final_loss_diff"] < 1e-3  # Vmapped and sequential train the same models.

  cached, recompute = results["suites"]["decode"]["rows"]
  assert _positive(cached["median_ms"]) and _positive(recompute["median_ms"])
  assert _positive(cached["speedup"])
  # The cache changes the cost, not the tokens (a wrong recompute baseline would agree ~1% of the time;
  # a near-tie flipped by rounding may change the tokens after it).
  assert cached["agreement"] >= 0.5

  forward, cache_all, cache_patterns, activation, attribution = results["suites"]["circuits"]["rows"]
  assert forward["impl"] == "forward (jit)" and _positive(forward["median_ms"])
  assert _positive(cache_all["cache_over_forward"]) and _positive(cache_patterns["cache_over_forward"])
  assert activation["slices"] == attribution["slices"] == 2 * 2 * 8 + 2 * 8 * 2  # Smoke: L=2, T=8, H=2.
  assert _positive(activation["first_call_s"]) and _positive(attribution["median_ms"])

  ours, bare, peer = results["suites"]["nanogpt"]["rows"]
  for row in (ours, bare):  # The loop's compiled step and the bare jax.jit step of the same model.
    assert _positive(row["steps_per_s"]) and _positive(row["compile_s"]) and _positive(row["params"])
    assert math.isfinite(row["last_loss"])
  assert ours["params"] == bare["params"] and _positive(ours["loop_over_bare_ms"])
  assert peer["skipped"] == ("torch does not import" if not HAS_TORCH else "no --nanogpt checkout given")

  # Every variant timed against its reference (plain flash, naive softmax or the plain layer), issue
  # 27's with their targets, and the memory rows (measured in child processes).
  rows = results["suites"]["variants"]["rows"]
  assert rows[0]["variant"] == "flash (plain)" and rows[0]["ratio_vs_flash"] == 1.0
  timed = [row for row in rows if not row["variant"].endswith(", memory")]
  memory_rows = [row for row in rows if row["variant"].endswith(", memory")]
  check_variants_rows(timed)
  assert [row["variant"] for row in memory_rows] == [
    "flash (plain), memory",
    "alibi, memory",
    "t5_bias, memory",
    "softpick, memory",
    "forget (FoX), memory",
    "differential (2 flash maps), memory",
  ]
  assert all(_positive(row["peak_mib"]) and row["target"] == "< 2048 MiB" for row in memory_rows)


def check_variants_rows(timed):
  """The variants suite's timed rows at the smoke sizes: each has a positive ratio to its reference,
  and issue 27's variants are there with their targets and references."""
  assert all(_positive(row["ratio_vs_flash"]) for row in timed), timed
  by_name = {row["variant"]: row for row in timed}
  assert {name: by_name[name]["target"] for name in variants.TARGETS} == variants.TARGETS
  for name, target in {
    "softpick": "as measured",
    "forget (FoX)": "<= 1.25",
    "differential (2 flash maps)": "<= 2.2",
    "stick_breaking (naive)": "as measured",
    "gate headwise (layer)": "<= 1.25",
    "gate elementwise (layer)": "<= 1.25",
    "value_residual learned (layer, given V1)": "<= 1.25",
    "differential (layer)": "<= 2.2",
  }.items():
    assert by_name[name]["target"] == target, name
  # Stick-breaking (naive only) against both plain flash and the naive path's softmax.
  sb = by_name["stick_breaking (naive)"]
  assert sb["reference"] == "flash (plain)" and _positive(sb["ratio_vs_naive"])
  assert by_name["softmax (naive), reference"]["ratio_vs_naive"] == 1.0
  # The module-level options against the layer without them; value residual against no V1.
  for name in ("gate headwise (layer)", "gate elementwise (layer)", "differential (layer)"):
    assert by_name[name]["reference"] == "layer (plain, flash)"
  assert by_name["layer (plain, flash)"]["ratio_vs_flash"] == 1.0
  assert by_name["value_residual learned (layer, given V1)"]["reference"] == "the same layer without V1"


@pytest.mark.slow  # Compiles every variant's forward + backward at the smoke sizes (~30 s on 2 cores).
def test_variants_suite_rows_include_issue_27s_variants_with_their_targets(monkeypatch):
  # The memory rows (child processes) are checked by the smoke-suite test above.
  monkeypatch.setattr(variants, "_memory_rows", lambda smoke: [])
  rows = variants.variants_suite(smoke=True, repeats=1, budget_s=0.0)["rows"]
  assert rows[0]["variant"] == "flash (plain)" and rows[0]["ratio_vs_flash"] == 1.0
  check_variants_rows(rows)
  assert {row["case"] for row in rows} == {
    "B=1 H=2 T=S=64 K=16 causal",
    "B=1 H=2 T=S=64 K=16 causal layer D=32",
  }


@pytest.mark.slow  # Starts launch.bench.
def test_a_missing_baseline_is_one_line_before_any_suite_runs(tmp_path):
  missing = tmp_path / "none.json"
  result = _launch("--suite=train", f"--baseline={missing}")
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.strip().splitlines()[-1] == (
    f"error: --baseline: {missing}: no such baseline file (write one with --record_baseline)"
  )


@pytest.mark.slow  # Starts launch.bench.
def test_nanogpt_flag_must_name_a_checkout(tmp_path):
  result = _launch("--suite=nanogpt", f"--nanogpt={tmp_path}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
    f"error: --nanogpt: {str(tmp_path)!r} holds no model.py; give a nanoGPT checkout"
  )


def test_causal_speedups_pair_each_causal_case_with_its_twin():
  rows = [
    {"case": "B=1 T=8", "mode": "forward", "impl": "ours/flash", "median_ms": 6.0},
    {"case": "B=1 T=8 causal", "mode": "forward", "impl": "ours/flash", "median_ms": 2.0},
    {"case": "B=1 T=8 causal", "mode": "forward", "impl": "ours/naive", "median_ms": 1.0},
    {"case": "B=2 T=8 causal", "mode": "forward", "impl": "ours/flash", "median_ms": 1.0},  # No twin.
  ]
  assert suites.causal_speedups(rows) == [
    "causal speed-up, ours/flash at B=1 T=8, forward: non-causal / causal time = 3.00"
  ]


def test_interleave_calls_rotates_the_order_and_times_every_contender_once_per_round():
  log = []
  calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
  timings = timing.interleave_calls(calls, repeats=4, budget_s=1e9, block=timing.no_block)
  assert log[:3] == ["a", "b", "c"]  # The warm-up calls, then the rounds, each rotated by one.
  assert log[3:] == [*"abc", *"bca", *"cab", *"abc"]
  assert all(len(t.times_s) == 4 and t.first_s >= 0 for t in timings.values())
  # budget_s per contender: once spent, stops after min(repeats, 3) rounds.
  short = timing.interleave_calls(calls, repeats=10, budget_s=0.0, block=timing.no_block)
  assert all(len(t.times_s) == 3 for t in short.values())


def test_round_ratio_divides_times_of_the_same_round():
  slow, fast = timing.Timing(0.0, [2.0, 8.0, 3.0]), timing.Timing(0.0, [1.0, 4.0, 1.0])
  assert timing.round_ratio(slow, fast) == 2.0  # Medians alone would give 3 / 1.
  with pytest.raises(ValueError, match="same interleaved rounds"):
    timing.round_ratio(slow, timing.Timing(0.0, [1.0]))


def test_flop_conventions():
  # 4 * B * H * T * S * K forward, half of it causal, 3.5x forward for forward+backward.
  assert cases.attention_flops(2, 3, 5, 7, 11, causal=False, backward=False) == 4 * 2 * 3 * 5 * 7 * 11
  assert cases.attention_flops(2, 3, 5, 7, 11, causal=True, backward=False) == 2 * 2 * 3 * 5 * 7 * 11
  assert cases.attention_flops(1, 1, 4, 4, 2, causal=True, backward=True) == 3.5 * 64
  case = cases.AttentionCase(8, 8, 512, 512, 64, causal=True)
  assert case.flops("forward+backward") == pytest.approx(3.5 * 4 * 8 * 8 * 512 * 512 * 64 / 2)
  assert timing.matmul_flops(2048) == 2 * 2048**3


def test_bytes_estimate_skips_only_materialising_paths_at_long_lengths():
  long = cases.AttentionCase(1, 8, 32768, 32768, 64, causal=True)
  assert cases.attention_bytes_estimate("ours/naive", long, "forward") > cases.SKIP_BYTES
  assert cases.attention_bytes_estimate("ours/flash", long, "forward+backward") < 1e9
  short = cases.AttentionCase(1, 8, 4096, 4096, 64, causal=True)
  for impl in cases.ATTENTION_IMPLS:
    assert cases.attention_bytes_estimate(impl, short, "forward+backward") < cases.SKIP_BYTES


def test_parse_suites():
  assert suites.parse_suites("all") == (suites.SUITES, False)
  assert suites.parse_suites("smoke") == (suites.SUITES, True)
  assert suites.parse_suites("train,attention,train") == (("train", "attention"), False)
  for bad in ("atention", "smoke,train", "train,", ""):
    with pytest.raises(ValueError):
      suites.parse_suites(bad)


@pytest.mark.slow  # Starts a child process.
def test_memory_is_measured_in_a_child_process():
  # This process holds ~500 MB more than the child will: a child spawned straight from it would
  # report at least that much as its ru_maxrss (Linux keeps the peak of the image exec replaces).
  ballast = np.ones(64_000_000)
  parent_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  case = cases.AttentionCase(1, 1, 16, 16, 8, causal=True)
  result = memory.measure_memory("ours/naive", case, "forward", timeout_s=120)
  del ballast
  assert "error" not in result, result
  assert result["peak_kib"] >= result["after_compile_kib"] >= result["baseline_kib"] > 0
  assert result["peak_mib"] >= result["baseline_mib"] > 0 and result["delta_mib"] >= 0
  assert _positive(result["time_s"]) and _positive(result["compile_s"])
  # The child's own peak, not inherited from this (larger) process: Linux's VmHWM agrees.
  assert result["peak_kib"] < parent_kib - 256 * 1024
  if result["vmhwm_kib"] is not None:
    assert result["peak_kib"] == pytest.approx(result["vmhwm_kib"], rel=0.05)


@pytest.mark.slow  # Starts launch.bench.
def test_a_bad_suite_ends_in_one_line():
  result = _launch("--suite=atention")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
    "error: --suite: unknown suite 'atention'; expected all, smoke or some of "
    f"{', '.join(suites.SUITES)}"
  ]
