"""Benchmarks, every figure measured in this run:
`python -m launch.bench [--suite=NAMES] [--out=FILE.json] [--repeats=N] [--no-memory] [--nanogpt=DIR]
[--nanogpt_train_seeds=N] [--baseline=FILE] [--record_baseline=FILE] [--tolerance=0.1]`.

--suite: a comma-separated list of attention, memory, train, seeds, decode, nanogpt, variants,
circuits, pretrained; or all (the default); or smoke (every suite at tiny shapes, in well under a
minute: the tests run it).
Prints the machine's matmul rate and versions, then one table per suite; --out also writes everything
as JSON (rewritten after each suite). What each suite measures: the docstrings of
benchmarks/suites.py (and of benchmarks/nanogpt.py and benchmarks/variants.py for those two suites).
--baseline compares each row's ratio against its peer with a baseline file and prints the rows that
moved by more than --tolerance (exit 1 when one got slower); --record_baseline writes this run's
ratios into one (benchmarks/history.py; the committed one is benchmarks/baseline.json).
Measured runs are recorded in RESULTS.md ("Benchmarks with no experiment file") and in the docstring
of experiments/shakespeare_char.py (the nanogpt suite).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from benchmarks import history, suites, tables, timing
from experiments import base, shakespeare_char
from launch import run, start_quietly

_SUITE = flags.DEFINE_string(
  "suite",
  "all",
  "Comma-separated suites (attention, memory, train, seeds, decode, nanogpt, variants, circuits, "
  "pretrained), all, "
  "or smoke.",
)
_NANOGPT = flags.DEFINE_string(
  "nanogpt", None, "A nanoGPT checkout: its model.py is the nanogpt suite's peer (torch needed)."
)
_NANOGPT_TRAIN_SEEDS = flags.DEFINE_integer(
  "nanogpt_train_seeds",
  0,
  "Also train nanoGPT this many full runs of experiments/shakespeare_char.py (minutes each) and "
  "report its validation loss on the same windows as ours.",
)
_OUT = flags.DEFINE_string("out", None, "Also write the results to this JSON file.")
_BASELINE = flags.DEFINE_string(
  "baseline",
  None,
  "Compare the rows' ratios with this baseline file (benchmarks/baseline.json) and print those that "
  "moved by more than --tolerance; exit 1 when one got slower.",
)
_RECORD_BASELINE = flags.DEFINE_string(
  "record_baseline", None, "Write this run's ratios into this baseline file (its other suites kept)."
)
_TOLERANCE = flags.DEFINE_float(
  "tolerance", history.DEFAULT_TOLERANCE, "Relative change of a ratio that --baseline reports."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (fewer for slow cases).")
_MEMORY = flags.DEFINE_boolean(
  "memory",
  True,
  "Measure the attention suite's peak memory, one child process per case (slow); --no-memory skips it. "
  "The memory suite runs whenever it is named.",
)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags (--no-memory spelling absl's --nomemory); a bad flag or value ends in one line."""
  argv = [{"--no-memory": "--nomemory", "--no_memory": "--nomemory"}.get(arg, arg) for arg in argv]
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: bad flag: {' '.join(str(e).split())}")


def seeds_config(smoke: bool):
  """The seeds suite's config: experiments/base.py's smoke model, 8 seeds, batch 16, 50 steps; for the
  smoke suite, 2 seeds, 3 steps and no decoder layers (a decoder layer triples the compile time)."""
  config = base.get_config("smoke")
  if smoke:
    config.num_seeds, config.batch_size, config.num_train_steps = 2, 8, 3
    config.model.num_decoder_layers = 0
  else:
    config.num_seeds, config.batch_size, config.num_train_steps = 8, 16, 50
  return config


def check_output_file(flag: str, path: str | None) -> None:
  """Exits with one line when --flag names a folder or a file in a folder that does not exist."""
  if path is None:
    return
  if os.path.isdir(path):
    sys.exit(f"error: --{flag}: {path!r} is a folder; give a file name")
  if not os.path.isdir(os.path.dirname(path) or "."):
    sys.exit(f"error: --{flag}: no such folder {os.path.dirname(path)!r}")


def write_json(path: str, results: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, path)


def main(argv):
  start_quietly()
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  try:
    names, smoke = suites.parse_suites(_SUITE.value)
  except ValueError as e:
    sys.exit(f"error: --suite: {e}")
  if _REPEATS.value < 1:
    sys.exit(f"error: --repeats: must be at least 1, got {_REPEATS.value}")
  out = _OUT.value
  if _NANOGPT.value is not None and not os.path.isfile(os.path.join(_NANOGPT.value, "model.py")):
    sys.exit(f"error: --nanogpt: {_NANOGPT.value!r} holds no model.py; give a nanoGPT checkout")
  if _TOLERANCE.value <= 0:
    sys.exit(f"error: --tolerance: must be positive, got {_TOLERANCE.value}")
  baseline = None
  if _BASELINE.value is not None:
    try:
      baseline = history.load(_BASELINE.value)
    except ValueError as e:
      sys.exit(f"error: --baseline: {e}")
  check_output_file("out", out)
  check_output_file("record_baseline", _RECORD_BASELINE.value)

  settings = suites.Settings(
    smoke=smoke,
    repeats=1 if smoke else _REPEATS.value,
    memory=_MEMORY.value and not smoke,
    seeds_config=seeds_config(smoke),
    lm_config=shakespeare_char.get_config("smoke" if smoke else ""),
    nanogpt_dir=_NANOGPT.value,
    nanogpt_train_seeds=0 if smoke else _NANOGPT_TRAIN_SEEDS.value,
  )
  machine = timing.machine_info(repeats=settings.repeats)
  print(timing.format_machine(machine), flush=True)
  results = {
    "machine": machine,
    "settings": {
      "suites": list(names),
      "smoke": smoke,
      "repeats": settings.repeats,
      "memory": settings.memory,
    },
    "suites": {},
  }
  for name in names:
    results["suites"][name] = suites.run_suite(name, settings, machine)
    print("\n" + tables.format_table(results["suites"][name]), flush=True)
    if out is not None:
      write_json(out, results)
  if out is not None:
    print(f"\nwrote {out}")
  if _RECORD_BASELINE.value is not None:
    n = history.record(_RECORD_BASELINE.value, results["suites"], machine)
    print(f"\nwrote {n} ratios to {_RECORD_BASELINE.value}")
  if baseline is not None:
    moved = history.compare(baseline, results["suites"], _TOLERANCE.value)
    print("\n" + history.format_comparison(moved, _BASELINE.value, _TOLERANCE.value))
    if any(m["verdict"] == "slower" for m in moved):
      sys.exit(1)


if __name__ == "__main__":
  run(main, flags_parser=parse_flags)
