"""The attention variants against plain flash attention (`python -m launch.bench --suite=variants`):
causal self-attention, forward + backward, each variant's time as a ratio to a reference computed in
the same run and timed in the same interleaved rounds (`benchmarks.timing.interleave_calls`: one call
of each contender per round, the ratio the median over rounds of the two times of one round), so load
that comes and goes on the shared machine moves both alike.

Each variant is computed as the model computes it: RoPE rotates q and k before the flash kernel; QK-norm
RMS-normalises them; ALiBi and the T5 bias reach the kernel as `attn.RelativeBias` and are computed per
tile (the T5 table's gradient too: the gradient is taken of the table as well as of q, k and v); the
soft-cap, the sink and the sigmoid kind run inside the flash tiles. One reference row computes ALiBi
as a dense [H, T, S] bias array given to the same kernel, the way it was done before the per-tile form.

Issue 27's variants, each row printed with the issue's target beside it:

- softpick (`kind="softpick"`, inside the flash tiles; target: reported as measured), against plain
  flash.
- forget (FoX, Lin et al. 2025: `forget_cumsum=(c, c)`, c the cumulative sum over positions of
  log sigmoid of per-token, per-head forget logits [B, T, H], computed per tile; the gradient is taken
  of the logits too; target <= 1.25), against plain flash.
- differential, pure (the Diff Transformer's flashdiff_2 form: attn(q1, k1, v) - lambda
  attn(q2, k2, v), two flash calls sharing v, lambda a scalar whose gradient is taken too, every
  tensor at the same head dim K; target <= 2.2), against one plain flash call at that head dim (the
  Diff Transformer proper halves the heads and doubles v's head dim; this row isolates the cost of
  the second map; the layer row below times the module).
- stick_breaking (`kind="stick_breaking"`, the naive path only; reported as measured): timed in
  rounds with the naive path's plain softmax and plain flash; its ratio column is against plain
  flash, and "time / naive softmax" gives it against naive softmax (the same path without the
  variant). The naive softmax row gives naive's own ratio to flash.
- gated attention (`attention_gate="headwise"` and `"elementwise"`; target <= 1.25) and value residual
  (`value_residual="learned"`, ResFormer's l1 V + l2 V_1; target <= 1.25): module-level, so timed as
  the attention layer (`attn.nn.blocks.attention_layer` of a `ModelConfig` with D = H * K, flash,
  causal), forward + backward (gradients of the parameters and of the input x, and of V_1 for value
  residual), against the same layer without the option: the gates against the plain layer, value
  residual as the learned layer given a first-layer value input V_1 against the same layer called
  without one (a first layer, which computes exactly the plain layer).
- differential attention at the module level (`ModelConfig.differential`, Ye et al. 2024's
  multihead_flashdiff_2: the H query/key heads paired into H / 2 differential heads with values of
  2K, two flash calls sharing V, lambda from its four vectors, the subln RMSNorm; target <= 2.2), as
  the attention layer against the plain layer at the same H, K and D. Another engineer added the
  field while this suite was being written; the pure two-call row is kept beside it.

Memory rows: the peak resident set of a fresh process (`benchmarks.memory`'s child-process
measurement: a process's peak only grows) running one causal forward + backward at
(1, 8, 16384, 64): plain flash, ALiBi and T5 per tile, and softpick, forget and differential (two
calls), each against the issue's 2 GB bound.

A run, 2026-12-05, `python -m launch.bench --suite=variants --no-memory` at commit 56dfa2b (the
working tree also held other engineers' uncommitted edits to attn/nn), on the shared 2-CPU machine
(81.9 GFLOP/s float32 matmul; load average 3.2 at the start and 7 to 9 during the run: other
engineers' tests and installs); one run, 5 rounds at T = 512, 4 at T = 4096 (3 in the naive group);
time / reference, the median over rounds. The differential (layer) row is from a rerun of the layer
group alone (`_timed_rows(..., _layer_calls(...))`, 5 rounds) after the field appeared (HEAD afbdf38
plus this change and others' uncommitted edits; load average 9.2 at its start, 6.7 at its end):

| variant | target | (8, 8, 512, 64) | (1, 8, 4096, 64) |
|---|---|---|---|
| plain flash, ms | | 615 | 2330 |
| softpick | as measured | 1.83 | 1.93 |
| forget (FoX) | <= 1.25 | 1.36 | 1.33 |
| differential, two flash calls sharing v | <= 2.2 | 1.71 | 1.92 |
| stick_breaking (naive) / plain flash | as measured | 5.82 | 17.70 |
| stick_breaking (naive) / naive softmax | as measured | 3.21 | 2.05 |
| naive softmax / plain flash | | 1.63 | 9.14 |
| plain layer (D = 512), ms | | 928 | 2893 |
| gate headwise (layer) | <= 1.25 | 1.03 | 1.07 |
| gate elementwise (layer) | <= 1.25 | 1.13 | 1.11 |
| value residual, given V1 / without (layer) | <= 1.25 | 1.04 | 0.96 |
| differential (layer) | <= 2.2 | 1.34 | 1.14 |
| rope, qk_norm, sink | <= 1.25 | 1.12, 1.01, 1.01 | 1.00, 1.10, 1.18 |
| soft_cap 30, alibi (per tile) | <= 1.25 | 1.67, 0.98 | 1.94, 1.16 |
| t5_bias (per tile) | <= 1.5 | 1.36 | 1.89 |
| sigmoid; alibi as a dense bias | | 0.78; 1.13 | 0.77; 1.48 |

Peak resident memory of a fresh process, one causal forward + backward at (1, 8, 16384, 64), float32
(target < 2 GB): plain flash 677 MiB, ALiBi 684, T5 683, softpick 830, forget 869, differential (two
flash calls, five [1, 16384, 8, 64] inputs) 1061 MiB: all under the bound.

How far to trust it: the value residual layer without V1 computes exactly the plain layer, yet read
0.95 and 1.21 against it, so at this load a ratio moves by some 20 % from noise alone (the rerun of
the layer group read gate elementwise 1.28 at T = 512 against 1.13 here, the other layers 0.84 to
1.06 of the plain layer). Within that, the gates, value residual and the differential (both forms)
are inside their targets; FoX missed 1.25 at both sizes (1.36, 1.33); the soft-cap (1.67, 1.94) and
T5 (1.89 at T = 4096) read well above RESULTS.md's quiet run of 2026-12-02 (1.26 / 1.18 and 1.46),
not investigated here: rerun on a quiet machine before believing either. Stick-breaking runs only on
the naive path: at T = 4096 it costs 2.05x naive softmax, and naive softmax already 9.1x flash.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from attn.core import attention
from attn.core import positions as relative
from attn.nn import blocks
from attn.nn.config import ModelConfig
from benchmarks import memory
from benchmarks.cases import AttentionCase
from benchmarks.tables import suite_result
from benchmarks.timing import interleave_calls, round_ratio

# The targets, printed beside each row (time / reference; memory rows: peak MiB).
TARGETS = {
  "rope": "<= 1.25",
  "qk_norm": "<= 1.25",
  "soft_cap 30": "<= 1.25",
  "alibi": "<= 1.25",
  "t5_bias": "<= 1.5",
  "sink": "<= 1.25",
  "softpick": "as measured",
  "forget (FoX)": "<= 1.25",
  "differential (2 flash maps)": "<= 2.2",
  "differential (layer)": "<= 2.2",
  "stick_breaking (naive)": "as measured",
  "gate headwise (layer)": "<= 1.25",
  "gate elementwise (layer)": "<= 1.25",
  "value_residual learned (layer, given V1)": "<= 1.25",
}
MEMORY_TARGET = "< 2048 MiB"
# The variants whose peak memory at 16k tokens the issue bounds (flash path), with the earlier ones.
NEW_MEMORY_VARIANTS = ("softpick", "forget (FoX)", "differential (2 flash maps)")
FLASH = dict(is_causal=True, implementation="flash")


def _shapes(smoke: bool) -> list[tuple[int, int, int, int]]:
  if smoke:
    return [(1, 2, 64, 16)]
  return [(8, 8, 512, 64), (1, 8, 4096, 64)]


def _rms(x):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def _forget(q, k, v, f):
  """FoX: f [B, T, H] forget logits; c = cumsum(log sigmoid f) over positions, added per tile."""
  c = jnp.cumsum(jax.nn.log_sigmoid(f), axis=-2)
  return attention.dot_product_attention(q, k, v, forget_cumsum=(c, c), **FLASH)


def _differential(q, k, v, q2, k2, lam):
  """flashdiff_2: two flash maps sharing v, the second weighted by lambda."""
  return attention.dot_product_attention(q, k, v, **FLASH) - lam * attention.dot_product_attention(
    q2, k2, v, **FLASH
  )


def _variants(H: int, T: int) -> dict[str, Callable]:
  """name -> fn(q, k, v, x) -> output, each as `attn.nn.MultiHeadAttention` computes that variant,
  `x` a dict of the extra differentiable inputs: T5's [32, H] bucket table "t5", FoX's forget logits
  "f" [B, T, H], the differential's second map's "q2", "k2" and its "lam"; each uses its own."""
  pos = jnp.arange(T)
  slopes = relative.alibi_slopes(H)

  def t5(table):
    return relative.RelativeBias("t5", table, bidirectional=False)

  dpa = attention.dot_product_attention
  return {
    "flash (plain)": lambda q, k, v, x: dpa(q, k, v, **FLASH),
    "rope": lambda q, k, v, x: dpa(relative.rope(q, pos), relative.rope(k, pos), v, **FLASH),
    "qk_norm": lambda q, k, v, x: dpa(_rms(q), _rms(k), v, **FLASH),
    "soft_cap 30": lambda q, k, v, x: dpa(q, k, v, logit_soft_cap=30.0, **FLASH),
    "alibi": lambda q, k, v, x: dpa(
      q, k, v, relative_bias=relative.RelativeBias("alibi", slopes), **FLASH
    ),
    "t5_bias": lambda q, k, v, x: dpa(q, k, v, relative_bias=t5(x["t5"]), **FLASH),
    "sink": lambda q, k, v, x: dpa(q, k, v, sink_logits=jnp.zeros(H), **FLASH),
    "sigmoid": lambda q, k, v, x: dpa(q, k, v, kind="sigmoid", **FLASH),
    "alibi (dense [H, T, S] bias, reference)": lambda q, k, v, x: dpa(
      q, k, v, bias=relative.alibi_bias(pos, pos, slopes), **FLASH
    ),
    "softpick": lambda q, k, v, x: dpa(q, k, v, kind="softpick", **FLASH),
    "forget (FoX)": lambda q, k, v, x: _forget(q, k, v, x["f"]),
    "differential (2 flash maps)": lambda q, k, v, x: _differential(q, k, v, x["q2"], x["k2"], x["lam"]),
  }


def _naive_variants() -> dict[str, Callable]:
  """The stick-breaking group: plain flash, the naive path's softmax and stick-breaking (naive only)."""
  dpa = attention.dot_product_attention
  return {
    "flash (plain)": lambda q, k, v, x: dpa(q, k, v, **FLASH),
    "softmax (naive), reference": lambda q, k, v, x: dpa(
      q, k, v, is_causal=True, implementation="naive"
    ),
    "stick_breaking (naive)": lambda q, k, v, x: dpa(
      q, k, v, is_causal=True, implementation="naive", kind="stick_breaking"
    ),
  }


def _inputs(B: int, H: int, T: int, K: int) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
  keys = jax.random.split(jax.random.PRNGKey(0), 7)
  q, k, v = (jax.random.normal(key, (B, T, H, K)) for key in keys[:3])
  extra = {
    "t5": jax.random.normal(keys[3], (32, H)) * 0.02,
    "f": jax.random.normal(keys[4], (B, T, H)) + 3.0,  # Forget gates near sigmoid(3) = 0.95.
    "q2": jax.random.normal(keys[5], (B, T, H, K)),
    "k2": jax.random.normal(keys[6], (B, T, H, K)),
    "lam": jnp.float32(0.8),
  }
  return q, k, v, extra


def _kernel_call(fn: Callable, args: tuple) -> Callable[[], Any]:
  loss = lambda q, k, v, x: jnp.sum(fn(q, k, v, x))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  return lambda: grad(*args)


def _timed_rows(
  case: str, calls: dict[str, Callable[[], Any]], reference: str, *, repeats: int, budget_s: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  timings = interleave_calls(calls, repeats=repeats, budget_s=budget_s)
  rows = []
  for name, timing in timings.items():
    rows.append(
      {
        "case": case,
        "variant": name,
        "reference": reference,
        "median_ms": timing.median_s * 1e3,
        "n": len(timing.times_s),
        "ratio_vs_flash": round_ratio(timing, timings[reference]),
        "target": TARGETS.get(name, ""),
      }
    )
  return rows, timings


def _layer_calls(B: int, H: int, T: int, K: int) -> dict[str, Callable[[], Any]]:
  """The attention layer's forward + backward (gradients of the parameters, of x and of V_1), with
  and without each module-level option, all on flash."""
  D = H * K
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  v1 = jax.random.normal(jax.random.PRNGKey(2), (B, T, H, K))
  calls = {}
  for name, gate, residual, given, differential in (
    ("layer (plain, flash)", "none", "none", False, False),
    ("gate headwise (layer)", "headwise", "none", False, False),
    ("gate elementwise (layer)", "elementwise", "none", False, False),
    ("value_residual learned (layer, no V1: a first layer)", "none", "learned", False, False),
    ("value_residual learned (layer, given V1)", "none", "learned", True, False),
    ("differential (layer)", "none", "none", False, True),
  ):
    config = ModelConfig(
      d_model=D,
      num_heads=H,
      positions="none",
      attention_implementation="flash",
      attention_gate=gate,
      value_residual=residual,
      differential=differential,
    )
    layer = blocks.attention_layer(config, "self_attention")
    first = v1 if given else None
    params = layer.init(jax.random.PRNGKey(0), x, is_causal=True, first_values=first)["params"]

    def loss(params, x, first, layer=layer):
      out = layer.apply({"params": params}, x, is_causal=True, first_values=first)
      return jnp.sum(out)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2) if given else (0, 1)))
    calls[name] = lambda grad=grad, params=params, first=first: grad(params, x, first)
  return calls


_CHILD_MARKER = "BENCH_VARIANT_MEMORY "


def _maxrss_kib() -> int:
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def memory_child(spec_json: str) -> None:
  """The child process of `_variant_memory`: one causal forward + backward of a variant of
  `_variants`, as `benchmarks.memory.memory_child` runs a case: inputs -> baseline; compile; one
  call -> peak. Prints its result as JSON."""
  spec = json.loads(spec_json)
  B, H, T, K = spec["B"], spec["H"], spec["T"], spec["K"]
  fn = _variants(H, T)[spec["variant"]]
  args = jax.block_until_ready(_inputs(B, H, T, K))
  baseline = _maxrss_kib()
  loss = lambda q, k, v, x: jnp.sum(fn(q, k, v, x))
  start = time.perf_counter()
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(*args).compile()
  compile_s = time.perf_counter() - start
  after_compile = _maxrss_kib()
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  time_s = time.perf_counter() - start
  result = {
    "baseline_kib": baseline,
    "after_compile_kib": after_compile,
    "peak_kib": _maxrss_kib(),
    "time_s": time_s,
    "compile_s": compile_s,
  }
  print(_CHILD_MARKER + json.dumps(result), flush=True)


def _variant_memory(variant: str, case: AttentionCase) -> dict[str, Any]:
  spec = {"B": case.B, "H": case.H, "T": case.T, "K": case.K, "variant": variant}
  code = "import sys; from benchmarks import variants; variants.memory_child(sys.argv[1])"
  result = memory.run_child(code, spec, _CHILD_MARKER, timeout_s=memory.CHILD_TIMEOUT_S)
  if "error" not in result:
    result["peak_mib"] = result["peak_kib"] * memory.KIB / memory.MIB
  return result


def _memory_rows(smoke: bool) -> list[dict[str, Any]]:
  """Peak resident memory of one causal forward + backward at (1, 8, 16384, 64) (smoke: a tiny
  shape), plain flash, ALiBi and T5 per tile, softpick, forget and differential (two calls), each
  measured in a fresh process."""
  case = (
    AttentionCase(1, 2, 256, 256, 16, True) if smoke else AttentionCase(1, 8, 16384, 16384, 64, True)
  )
  jobs = [
    ("flash (plain), memory", lambda: memory.measure_memory("ours/flash", case, "forward+backward")),
    ("alibi, memory", lambda: memory.measure_memory("ours/flash+alibi", case, "forward+backward")),
    ("t5_bias, memory", lambda: memory.measure_memory("ours/flash+t5", case, "forward+backward")),
  ]
  jobs += [
    (f"{name}, memory", lambda name=name: _variant_memory(name, case)) for name in NEW_MEMORY_VARIANTS
  ]
  rows = []
  for name, measure in jobs:
    result = measure()
    row = {"case": case.name, "variant": name, "target": MEMORY_TARGET}
    if "error" in result:
      row["skipped"] = result["error"]
    else:
      row.update(peak_mib=result["peak_mib"], median_ms=result["time_s"] * 1e3, n=1)
    rows.append(row)
  return rows


# Above this many [H, T, S] float32 bytes (times 3: the bias, its gradient, a temporary) the dense
# reference row is skipped.
_DENSE_MAX_BYTES = 2 * 2**30


def variants_suite(*, smoke: bool, repeats: int, budget_s: float) -> dict[str, Any]:
  rows = []
  for B, H, T, K in _shapes(smoke):
    case = f"B={B} H={H} T=S={T} K={K} causal"
    args = _inputs(B, H, T, K)
    skipped = []
    calls = {}
    for name, fn in _variants(H, T).items():
      if "dense" in name and 4 * H * T * T * 3 > _DENSE_MAX_BYTES:
        skipped.append(
          {"case": case, "variant": name, "skipped": "the dense bias and its gradient would exceed 2 GB"}
        )
        continue
      calls[name] = _kernel_call(fn, args)
    kernel_rows, _ = _timed_rows(case, calls, "flash (plain)", repeats=repeats, budget_s=budget_s)
    rows += kernel_rows + skipped

    naive_calls = {name: _kernel_call(fn, args) for name, fn in _naive_variants().items()}
    naive_rows, timings = _timed_rows(
      case, naive_calls, "flash (plain)", repeats=repeats, budget_s=budget_s
    )
    for row in naive_rows[1:]:  # The group's own plain flash row is only its denominator.
      row["ratio_vs_naive"] = round_ratio(timings[row["variant"]], timings["softmax (naive), reference"])
      rows.append(row)

    layer_rows, timings = _timed_rows(
      case, _layer_calls(B, H, T, K), "layer (plain, flash)", repeats=repeats, budget_s=budget_s
    )
    given, alone = "value_residual learned (layer, given V1)", layer_rows[3]["variant"]
    for row in layer_rows:
      if row["variant"] == given:  # Against the same layer without V_1.
        row["reference"] = "the same layer without V1"
        row["ratio_vs_flash"] = round_ratio(timings[given], timings[alone])
      row["case"] = f"{case} layer D={H * K}"
    rows += layer_rows
  rows += _memory_rows(smoke)
  columns = [
    ("case", "case", ""),
    ("variant", "variant", ""),
    ("n", "n", "d"),
    ("median ms fwd+bwd", "median_ms", ".1f"),
    ("time / reference", "ratio_vs_flash", ".2f"),
    ("target", "target", ""),
    ("time / naive softmax", "ratio_vs_naive", ".2f"),
    ("peak MiB (own process)", "peak_mib", ".0f"),
    ("reference", "reference", ""),
  ]
  notes = [
    "forward + backward (gradients of q, k, v and each variant's own inputs: T5's table, FoX's forget "
    "logits, the differential's second q, k and lambda) of causal self-attention, float32; every "
    "ratio is the median over interleaved rounds of a variant's time over its reference's in the "
    "same round; targets are issue 27's (and the earlier issue's for rope ... sink).",
    "flash rows run the flash kernel; alibi and t5_bias are computed per tile (no [T, S] array); the "
    "dense-alibi row gives the same kernel ALiBi as a [H, T, S] bias for comparison; differential is "
    "two flash calls sharing v against one plain flash call at the same head dim.",
    "stick_breaking runs on the naive path only: its 'time / reference' is against plain flash, "
    "'time / naive softmax' against the naive path's softmax (same rounds).",
    "layer rows: attn.nn.blocks.attention_layer (D = H * K, flash, causal), gradients of the "
    "parameters and x (and V1); the gates against the plain layer, value residual given V1 against "
    "the same layer without V1.",
    "memory rows: peak resident set of a fresh process running one forward + backward (inputs, "
    "JAX and XLA included; the issue's bound at (1, 8, 16384, 64) is 2 GB); their time is that "
    "single call's.",
  ]
  return suite_result("variants", columns, rows, notes)
