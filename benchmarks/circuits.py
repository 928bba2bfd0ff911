"""The circuits tools' costs: the activation cache over a plain forward pass, and a full patching
grid (every layer x head x position, plus the residual and attention output by position) of the
induction experiment's 2-layer attention-only model, by activation and by attribution patching.

A patching grid's time is its first call (tracing, compiling and running: what a researcher waits
for once) and a repeated call's median.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from attn.nn import hooks, patching
from attn.nn.config import ModelConfig
from attn.nn.models import LanguageModel
from benchmarks.tables import suite_result
from benchmarks.timing import time_call


def _sizes(smoke: bool) -> dict[str, int]:
  if smoke:
    return dict(
      vocab=20, d_model=16, heads=2, layers=2, cache_batch=2, cache_length=16, batch=4, length=8
    )
  # The induction experiment's model (experiments/induction.py) and, for the cache, (8, 256).
  return dict(
    vocab=68, d_model=128, heads=4, layers=2, cache_batch=8, cache_length=256, batch=64, length=32
  )


def _model(s: dict[str, int], max_length: int) -> tuple[LanguageModel, Any]:
  config = ModelConfig(
    vocab_size=s["vocab"], d_model=s["d_model"], num_heads=s["heads"], d_ff=0, num_encoder_layers=0,
    num_decoder_layers=s["layers"], dropout_rate=0.0, norm="pre", positions="learned",
    max_length=max_length, tie_output=False,
  )  # fmt: skip
  model = LanguageModel(config)
  return model, model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]


def _timing_row(impl: str, timing, **fields) -> dict[str, Any]:
  return {
    "impl": impl,
    **fields,
    "n": len(timing.times_s),
    "median_ms": timing.median_s * 1e3,
    "first_call_s": timing.compile_s,
  }


def circuits_suite(*, smoke: bool, repeats: int, budget_s: float) -> dict[str, Any]:
  s = _sizes(smoke)
  rows = []
  model, params = _model(s, s["cache_length"])
  B, T = s["cache_batch"], s["cache_length"]
  tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 3, s["vocab"])
  pattern_names = [f"blocks.{i}.attn.pattern" for i in range(s["layers"])]
  calls = (
    ("forward (jit)", jax.jit(lambda p, t: model.apply({"params": p}, t))),
    ("run_with_cache, every name", jax.jit(lambda p, t: hooks.run_with_cache(model, p, t))),
    (
      "run_with_cache, patterns only",
      jax.jit(lambda p, t: hooks.run_with_cache(model, p, t, names=pattern_names)),
    ),
  )
  for impl, fn in calls:
    timing = time_call(lambda fn=fn: fn(params, tokens), repeats=repeats, budget_s=budget_s)
    rows.append(_timing_row(impl, timing, batch=B, length=T))
  for row in rows[1:]:
    row["cache_over_forward"] = row["median_ms"] / rows[0]["median_ms"]

  model, params = _model(s, s["length"])
  B, T, L, H = s["batch"], s["length"], s["layers"], s["heads"]
  key_clean, key_corrupt = jax.random.split(jax.random.PRNGKey(2))
  clean = jax.random.randint(key_clean, (B, T), 3, s["vocab"])
  corrupt = clean.at[:, T // 2 :].set(jax.random.randint(key_corrupt, (B, T - T // 2), 3, s["vocab"]))

  def metric(logits_BTV):  # Mean log-probability of the clean next tokens of the second half.
    logp = jax.nn.log_softmax(logits_BTV[:, T // 2 : -1].astype(jnp.float32))
    return jnp.take_along_axis(logp, clean[:, T // 2 + 1 :, None], -1).mean()

  grid = {
    "position": [f"blocks.{i}.{n}" for i in range(L) for n in ("resid_pre", "attn_out")],
    "position_head": [f"blocks.{i}.attn.z" for i in range(L)],
  }
  slices = 2 * L * T + L * T * H
  for impl, patch in (
    ("activation patching, full grid", patching.activation_patching),
    ("attribution patching, full grid", patching.attribution_patching),
  ):

    def sweep(patch=patch):
      return [
        patch(model, params, (clean,), (corrupt,), metric, names, over) for over, names in grid.items()
      ]

    start = time.perf_counter()
    jax.block_until_ready(sweep())
    first = time.perf_counter() - start
    timing = time_call(sweep, repeats=repeats, budget_s=budget_s)
    row = _timing_row(impl, timing, batch=B, length=T, slices=slices)
    row["first_call_s"] = first  # The first sweep: tracing and compiling its programs, and running.
    rows.append(row)
  columns = [
    ("impl", "impl", ""),
    ("batch", "batch", "d"),
    ("length", "length", "d"),
    ("slices", "slices", "d"),
    ("n", "n", "d"),
    ("median ms", "median_ms", ".1f"),
    ("first call s", "first_call_s", ".2f"),
    ("cache / forward", "cache_over_forward", ".2f"),
  ]
  notes = [
    f"LanguageModel: attention-only, vocabulary {s['vocab']}, D={s['d_model']}, {H} heads, {L} "
    f"layers (the induction experiment's); untrained.",
    f"cache rows: batch {s['cache_batch']} x {s['cache_length']} tokens, jitted; cache / forward = "
    "their median time over the plain forward's.",
    f"patching rows: batch {B} x {T}, clean against its second half resampled; every layer's "
    "resid_pre and attn_out by position and every (position, head) of attn.z: "
    f"{slices} patched runs (activation: vmapped per activation) or one backward pass (attribution); "
    "first call = tracing, compiling and one sweep; the patching functions build their jitted "
    "programs per call, so the median includes tracing and compiling again.",
  ]
  return suite_result("circuits", columns, rows, notes)
