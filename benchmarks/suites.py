"""The benchmark suites behind `python -m launch.bench`: attention paths against their peers, peak
memory, one training step, vmapped seeds, cached decoding, the language model against nanoGPT
(`benchmarks/nanogpt.py`), the attention variants against plain flash (`benchmarks/variants.py`) and
a Hugging Face checkpoint's conversion and forward against transformers' (`benchmarks/pretrained.py`);
every figure measured in the run that prints it, nothing hard-coded. `cases`, `timing`, `memory`
and `tables` hold what they share.

The machine's float32 matmul rate (`timing.matmul_gflops`) is measured first, so every rate reads as a
fraction of it. PyTorch is a peer, never a dependency: it is imported lazily, and its rows are
skipped (and say so) when it does not import. It runs on the CPU, with as many threads as this
process may use.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attn import train
from attn.nn import decoding
from attn.nn.config import ModelConfig
from attn.nn.models import LanguageModel, Transformer
from attn.train import objectives
from benchmarks import circuits, nanogpt, pretrained, variants
from benchmarks.cases import (
  ATTENTION_IMPLS,
  BACKWARD_FLOP_FACTOR,
  MODES,
  OURS_IMPL,
  REFERENCE_IMPL,
  SKIP_BYTES,
  attention_bytes_estimate,
  attention_cases,
  attention_inputs,
  auto_choice,
  jax_attention_fn,
  memory_cases,
  torch_attention_call,
)
from benchmarks.memory import CHILD_TIMEOUT_S, KIB, MIB, measure_memory
from benchmarks.tables import suite_result
from benchmarks.timing import (
  import_torch,
  interleave_calls,
  no_block,
  round_ratio,
  time_call,
  usable_cpus,
)

SUITES = (
  "attention", "memory", "train", "seeds", "decode", "nanogpt", "variants", "circuits", "pretrained",
)  # fmt: skip


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
    lm_config: the language model's training config of the nanogpt suite.
    nanogpt_dir: a nanoGPT checkout (its model.py is the nanogpt suite's peer), or None.
    nanogpt_train_seeds: full nanoGPT runs whose validation loss the nanogpt suite reports.
  """

  smoke: bool = False
  repeats: int = 5
  memory: bool = True
  seeds_config: ml_collections.ConfigDict | None = None
  budget_s: float = 10.0
  child_timeout_s: float = CHILD_TIMEOUT_S
  lm_config: ml_collections.ConfigDict | None = None
  nanogpt_dir: str | None = None
  nanogpt_train_seeds: int = 0


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


def run_suite(name: str, settings: Settings, machine: dict[str, Any]) -> dict[str, Any]:
  """Runs one of SUITES and returns its result (see `format_table`), with its wall time."""
  suites = {
    "attention": lambda: attention_suite(settings, machine),
    "memory": lambda: memory_suite(settings),
    "train": lambda: train_suite(settings),
    "seeds": lambda: seeds_suite(settings),
    "decode": lambda: decode_suite(settings),
    "nanogpt": lambda: nanogpt.nanogpt_suite(
      settings.lm_config,
      settings.nanogpt_dir,
      smoke=settings.smoke,
      train_seeds=settings.nanogpt_train_seeds,
    ),
    "variants": lambda: variants.variants_suite(
      smoke=settings.smoke, repeats=settings.repeats, budget_s=settings.budget_s
    ),
    "circuits": lambda: circuits.circuits_suite(
      smoke=settings.smoke, repeats=settings.repeats, budget_s=settings.budget_s
    ),
    "pretrained": lambda: pretrained.pretrained_suite(
      smoke=settings.smoke, repeats=settings.repeats, budget_s=settings.budget_s
    ),
  }
  if name not in suites:
    raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
  start = time.perf_counter()
  result = suites[name]()
  result["elapsed_s"] = time.perf_counter() - start
  result["notes"].append(f"suite wall time {result['elapsed_s']:.0f} s.")
  return result


def attention_suite(settings: Settings, machine: dict[str, Any]) -> dict[str, Any]:
  """Ours (naive, flash, auto) against jax.nn, Flax and torch, forward and forward+backward."""
  torch = import_torch()
  peak = machine["matmul_gflops"]
  rows = []
  for case in attention_cases(settings.smoke):
    inputs = jax.block_until_ready(attention_inputs(case))
    for mode in MODES:
      case_rows, calls, fns = [], {}, {}
      for impl in ATTENTION_IMPLS:
        label = f"{impl} ({auto_choice(case)})" if impl == OURS_IMPL else impl
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
          fns[impl] = torch_attention_call(case, mode, [np.asarray(x) for x in inputs])
          calls[impl] = fns[impl]  # Eager: done (host data) when it returns.
        else:
          fn = jax.jit(jax_attention_fn(impl, case, mode))
          fns[impl] = lambda fn=fn, inputs=inputs: fn(*inputs)
          calls[impl] = lambda fn=fns[impl]: jax.block_until_ready(fn())
      # Every contender of this case and mode in the same interleaved rounds: the ratios compare
      # times taken at the same moments, so load that comes and goes moves both sides alike.
      timings = interleave_calls(
        calls, repeats=settings.repeats, budget_s=settings.budget_s, block=no_block
      )
      outs = {impl: np.asarray(fn()) for impl, fn in fns.items()} if mode == "forward" else {}
      reference = outs.get(REFERENCE_IMPL)
      for impl, row in zip(ATTENTION_IMPLS, case_rows, strict=True):
        if impl not in timings:
          continue
        timing, out = timings[impl], outs.get(impl)
        gflops = row["flops"] / timing.median_s / 1e9
        row.update(
          timing.as_dict(),
          median_ms=timing.median_s * 1e3,
          n=len(timing.times_s),
          gflops=gflops,
          pct_peak=100.0 * gflops / peak,
          max_err=None if out is None or reference is None else float(np.max(np.abs(out - reference))),
        )
        if OURS_IMPL in timings:
          row["ratio_vs_ours"] = round_ratio(timing, timings[OURS_IMPL])
        if settings.memory:
          row["memory"] = measure_memory(impl, case, mode, timeout_s=settings.child_timeout_s)
          row["peak_mib"] = row["memory"].get("peak_mib")
          row["delta_mib"] = row["memory"].get("delta_mib")
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
    "warm-up call (compile excluded); a case's implementations run in n interleaved rounds, one call "
    "of each per round, the order rotated.",
    f"ratio vs ours = median over the rounds of impl time / {OURS_IMPL} time in the same round (> 1: "
    f"ours is faster), so load moves both alike; {OURS_IMPL} shows the path it picked.",
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
  return suite_result("attention", columns, rows, notes)


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
      row["after_compile_mib"] = memory["after_compile_kib"] * KIB / MIB
      row["gflops"] = case.flops(mode) / memory["time_s"] / 1e9
      if target is not None:
        row["meets_target"] = memory["peak_kib"] * KIB < target
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
  return suite_result("memory", columns, rows, notes)


def _train_sizes(smoke: bool) -> dict[str, int]:
  if smoke:
    return dict(vocab=100, d_model=32, heads=2, enc=1, dec=1, d_ff=64, T=16, batch=4)
  return dict(vocab=1000, d_model=256, heads=4, enc=2, dec=2, d_ff=1024, T=64, batch=32)


def _optimizer(learning_rate: float = 1e-3):
  """Adam (0.9, 0.98, 1e-9) at a constant rate, through `train.make_optimizer`."""
  config = train.OptimizerConfig(learning_rate=learning_rate, schedule="constant", warmup_steps=1)
  return train.make_optimizer(config, num_train_steps=1)[0]


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
  optimizer = _optimizer()
  objective = objectives.Seq2Seq(main_metric="sequence_accuracy")
  batch_np = _random_seq2seq_batch(sizes)
  batch = jax.tree.map(jnp.asarray, batch_np)
  inputs, _ = objective.inputs_and_targets(batch)
  state = train.state_initializer(model, optimizer, inputs)(jax.random.PRNGKey(0))
  params = state.params
  step = jax.jit(
    functools.partial(
      train.train_step, model=model, optimizer=optimizer, objective=objective, label_smoothing=0.0
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
    t = time_call(torch_step, repeats=settings.repeats, budget_s=settings.budget_s, block=no_block)
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
  return suite_result("train", columns, rows, notes)


def _seeds_config(settings: Settings) -> ml_collections.ConfigDict:
  if settings.seeds_config is None:
    raise ValueError("the seeds suite needs Settings.seeds_config (a training config)")
  return settings.seeds_config


def seeds_suite(settings: Settings) -> dict[str, Any]:
  """num_seeds seeds trained as one vmapped program (as `train_and_evaluate` does) against the same
  seeds trained one after the other with one jitted (compiled once) unvmapped step."""
  config = _seeds_config(settings)
  run = train.build_run(config)
  task = run.task
  steps, num_seeds = run.num_train_steps, run.train.num_seeds
  batches = [jax.tree.map(jnp.asarray, task.train_batch(s, run.train.batch_size)) for s in range(steps)]
  init_state = run.state_initializer()  # As train_and_evaluate does.
  seed_rngs = run.seed_rngs()
  one_step = functools.partial(
    train.train_step,
    model=run.model,
    optimizer=run.optimizer,
    objective=run.objective,
    label_smoothing=run.train.label_smoothing,
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
  result = suite_result("seeds", columns, rows, notes)
  result["max_final_loss_diff"] = max_diff
  return result


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
  return suite_result("decode", columns, rows, notes)
