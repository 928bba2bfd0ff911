"""A Hugging Face checkpoint into attn (`attn.nn.pretrained`): what the conversion costs, and how our
forward pass of the converted model runs against transformers' own.

A GPT-2-small-shaped model (124M parameters: 12 layers, D=768, 12 heads, vocabulary 50257, 1024
positions; tiny under smoke), random, made by transformers and written by `save_pretrained` to a
temporary folder (without torch or transformers: an attn model of that shape written by
`attn.nn.export`, and the torch row skipped). Then:

- conversion, in a fresh child process (a process's peak resident set only grows, so the parent,
  which holds torch and the model, cannot measure it): `read_folder` + `convert` (safetensors' numpy
  API into the parameter tree; the file was just written, so it reads from the page cache), then the
  tree onto the default device (`jax.device_put`, blocked on). Time, and the peak resident set's growth
  over the child's baseline after imports (ru_maxrss), cumulative: the second row's peak includes the
  first's arrays, still alive.
- forward, in this process: our `LanguageModel` (jitted, float32) and transformers' torch model (eval,
  no_grad, its default attention) on the same weights and the same (1, 1024) tokens, timed in
  interleaved rounds (the order rotated), so load on a shared machine moves both alike; the ratio
  is ours speed over torch's (the median over rounds of torch's time over ours), and the largest
  logit difference checks that both computed the same function.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attn.nn import export, pretrained
from attn.nn.models import LanguageModel
from benchmarks.memory import KIB, MIB, run_child
from benchmarks.tables import suite_result
from benchmarks.timing import import_torch, interleave_calls, round_ratio

_CHILD_MARKER = "BENCH_PRETRAINED_RESULT "
CHILD_TIMEOUT_S = 900.0


def _shape(smoke: bool) -> dict[str, int]:
  if smoke:
    return dict(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64, length=64)
  return dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024, length=1024)


def _maxrss_kib() -> int:
  import resource

  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def conversion_child(spec_json: str) -> None:
  """The child process: read_folder + convert, then the tree onto the device; prints its JSON."""
  folder = json.loads(spec_json)["folder"]
  jax.block_until_ready(jax.device_put(np.zeros(4, np.float32)))  # The backend, initialised.
  baseline = _maxrss_kib()
  start = time.perf_counter()
  hf_config, tensors = pretrained.read_folder(folder)
  read_s = time.perf_counter() - start
  after_read = _maxrss_kib()
  _, params = pretrained.convert(hf_config, tensors)
  convert_s = time.perf_counter() - start
  after_convert = _maxrss_kib()
  start = time.perf_counter()
  on_device = jax.block_until_ready(jax.device_put(params))
  device_s = time.perf_counter() - start
  result = {
    "baseline_kib": baseline,
    "after_read_kib": after_read,
    "after_convert_kib": after_convert,
    "read_s": read_s,
    "peak_kib": _maxrss_kib(),
    "convert_s": convert_s,
    "device_s": device_s,
    "params": sum(int(x.size) for x in jax.tree.leaves(on_device)),
    "device": str(jax.devices()[0]),
  }
  print(_CHILD_MARKER + json.dumps(result), flush=True)


def _checkpoint(folder: str, s: dict[str, int], torch) -> Any:
  """Writes the random model into `folder`; returns transformers' model, or None without torch."""
  if torch is not None:
    try:
      import transformers
    except Exception:  # A broken install counts as absent, as torch's does.
      transformers = None
    if transformers is not None:
      torch.manual_seed(0)
      shape = {k: v for k, v in s.items() if k != "length"}
      last = s["vocab_size"] - 1  # GPT-2's bos and eos, 50256, at full size.
      hf_config = transformers.GPT2Config(**shape, bos_token_id=last, eos_token_id=last)
      model = transformers.GPT2LMHeadModel(hf_config).eval()
      model.save_pretrained(folder)
      return model
  # No transformers: the same shape, written by attn.nn.export from an attn model's init.
  config = pretrained.gpt2_config({k: v for k, v in s.items() if k != "length"})
  args = (jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  params = LanguageModel(config).init(*args)["params"]
  export.write_folder(folder, *export.to_hf(config, params))
  return None


def pretrained_suite(*, smoke: bool, repeats: int, budget_s: float) -> dict[str, Any]:
  s = _shape(smoke)
  torch = import_torch()
  rows: list[dict[str, Any]] = []
  with tempfile.TemporaryDirectory(prefix="bench_pretrained_") as folder:
    hf = _checkpoint(folder, s, torch)
    size_mib = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)) / MIB
    code = "import sys; from benchmarks import pretrained; pretrained.conversion_child(sys.argv[1])"
    child = run_child(code, {"folder": folder}, _CHILD_MARKER, timeout_s=CHILD_TIMEOUT_S)
    if "error" in child:
      for impl in ("read_folder + convert", "  of which read_folder", "params onto the device"):
        rows.append({"impl": impl, "skipped": child["error"]})
    else:
      base = child["baseline_kib"]
      rows.append({
        "impl": "read_folder + convert",
        "time_s": child["convert_s"],
        "peak_growth_mib": (child["after_convert_kib"] - base) * KIB / MIB,
        "checkpoint_mib": size_mib,
        "params": child["params"],
      })  # fmt: skip
      rows.append({
        "impl": "  of which read_folder",
        "time_s": child["read_s"],
        "peak_growth_mib": (child["after_read_kib"] - base) * KIB / MIB,
        "checkpoint_mib": size_mib,
      })  # fmt: skip
      rows.append({
        "impl": f"params onto the device ({child['device']})",
        "time_s": child["device_s"],
        "peak_growth_mib": (child["peak_kib"] - base) * KIB / MIB,
        "checkpoint_mib": size_mib,
        "params": child["params"],
      })  # fmt: skip

    config, params = pretrained.convert(*pretrained.read_folder(folder))
  model = LanguageModel(config)
  params = jax.block_until_ready(jax.device_put(params))
  T = s["length"]
  tokens = np.random.default_rng(0).integers(0, s["vocab_size"], (1, T))
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  calls = {"ours": lambda: forward(params, tokens)}
  if hf is not None:
    torch_tokens = torch.as_tensor(tokens)

    def torch_forward():
      with torch.no_grad():
        return hf(torch_tokens).logits

    calls["torch"] = torch_forward
  timings = interleave_calls(calls, repeats=repeats, budget_s=budget_s)
  ours = timings["ours"]
  ours_logits = np.asarray(forward(params, tokens))
  ours_row = {
    "impl": "ours: LanguageModel forward (jit, float32)",
    "length": T,
    "n": len(ours.times_s),
    "median_ms": ours.median_s * 1e3,
    "first_call_s": ours.first_s,
  }
  if hf is None:
    torch_row = {"impl": "torch: transformers GPT2LMHeadModel forward", "skipped": "torch or "
                 "transformers does not import"}  # fmt: skip
  else:
    theirs = torch_forward().numpy()
    torch_row = {
      "impl": "torch: transformers GPT2LMHeadModel forward (eval, no_grad)",
      "length": T,
      "n": len(timings["torch"].times_s),
      "median_ms": timings["torch"].median_s * 1e3,
    }
    ours_row["ratio_vs_torch"] = round_ratio(timings["torch"], ours)
    ours_row["max_err"] = float(np.max(np.abs(ours_logits - theirs)))
  rows += [ours_row, torch_row]
  columns = [
    ("impl", "impl", ""),
    ("time s", "time_s", ".3f"),
    ("peak growth MiB", "peak_growth_mib", ".0f"),
    ("checkpoint MiB", "checkpoint_mib", ".1f"),
    ("length", "length", "d"),
    ("n", "n", "d"),
    ("median ms", "median_ms", ".1f"),
    ("first call s", "first_call_s", ".2f"),
    ("ours / torch speed", "ratio_vs_torch", ".2f"),
    ("max |logit diff|", "max_err", ".1e"),
  ]
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  notes = [
    f"GPT-2-shaped random model: {s['n_layer']} layers, D={s['n_embd']}, {s['n_head']} heads, "
    f"vocabulary {s['vocab_size']}, {s['n_positions']} positions, {n_params / 1e6:.1f}M parameters; "
    + ("made by transformers, save_pretrained." if hf is not None else "written by attn.nn.export."),
    "conversion rows: a fresh child process; peak growth = ru_maxrss over its baseline after "
    "imports, cumulative (the device row's includes the converted tree, still alive); the folder "
    "was just written (page cache); the converted tree holds views of read_folder's arrays.",
    f"forward rows: batch 1 x {T} tokens, float32, interleaved rounds after a warm-up each "
    "(timing.interleave_calls); ours / torch speed = the median over rounds of torch's time over "
    "ours in the same round; first call = tracing, compiling and one call; max |logit diff| "
    "between the two.",
    f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} at the end.",
  ]
  return suite_result("pretrained", columns, rows, notes)
