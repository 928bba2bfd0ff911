"""A memory for the benchmarks: each suite row's ratios against its peer, kept in a baseline file with
the commit they were measured at, and a comparison that names the rows that moved since.

Ratios, not times: a step's milliseconds differ from machine to machine (and from hour to hour on a
shared one), but ours over torch's, measured in one run on one machine, is what a change to the code
moves. `python -m launch.bench --suite=nanogpt,train --nanogpt=DIR --baseline=benchmarks/baseline.json`
reruns the suites and prints every row whose ratio moved by more than the tolerance (default 10 %),
slower or faster, with the baseline's commit and this one's; it exits 1 when a row got slower.
`--record_baseline=FILE` writes the run's ratios there (the suites run replace their own entries; the
others are kept). Run it before closing any change to `attn/core`, `attn/nn` or `attn/train`
(WORKSPACE.md, "Performance"). It is a tool, not a test: CI runs no timing.

A baseline file is JSON: {"ratios": {KEY: {"value", "better", "commit", "date"}}, ...}, where KEY is
"suite | the row's labels | field" and "better" is "higher" or "lower".
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
from collections.abc import Mapping
from typing import Any

# The ratio fields suite rows carry, and which way is better for ours.
RATIOS = {
  "ratio_vs_ours": "higher",  # attention: a peer's time over ours.
  "ratio_vs_torch": "higher",  # train: our tokens/s over torch's.
  "ratio_vs_nanogpt": "higher",  # nanogpt: our steps/s over nanoGPT's.
  "loop_over_bare_ms": "lower",  # nanogpt: the loop's step time over the bare jitted step's.
  "speedup_with_compile": "higher",  # seeds: sequential time over vmapped.
  "speedup_without_compile": "higher",
  "speedup": "higher",  # decode: recomputation's time over the cache's.
  "ratio_vs_flash": "lower",  # variants: a variant's time over plain flash.
  "cache_over_forward": "lower",  # circuits: run_with_cache's time over the plain forward's.
}
# The fields that name a row within its suite, in the order they are written into its key.
LABELS = ("config", "case", "variant", "impl", "mode")
DEFAULT_TOLERANCE = 0.10


def commit(repo: str | None = None) -> str:
  """The checkout's commit (short), "+dirty" when it has uncommitted changes; "unknown" outside git."""
  repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def git(*args: str) -> str:
    return subprocess.run(
      ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()

  try:
    head = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return head + ("+dirty" if dirty else "")


def ratios(suites: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, str]]:
  """{key: (value, better)} for every ratio of every row of a run's suites (skipped rows have none)."""
  out = {}
  for suite_name, suite in suites.items():
    for row in suite["rows"]:
      labels = " | ".join(str(row[k]) for k in LABELS if k in row)
      for field, better in RATIOS.items():
        value = row.get(field)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
          out[f"{suite_name} | {labels} | {field}"] = (float(value), better)
  return out


def load(path: str) -> dict[str, Any]:
  """A baseline file's contents, or raises ValueError naming the file."""
  try:
    with open(path, encoding="utf-8") as f:
      baseline = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path}: no such baseline file (write one with --record_baseline)") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not a baseline file: {e}") from None
  if not isinstance(baseline, dict) or not isinstance(baseline.get("ratios"), dict):
    raise ValueError(f"{path}: not a baseline file: it has no 'ratios' object")
  return baseline


def record(path: str, suites: Mapping[str, Mapping[str, Any]], machine: Mapping[str, Any]) -> int:
  """Writes the run's ratios into the baseline at `path` (created if absent): the suites that ran
  replace all of their own entries, the others are kept. Returns how many entries were written."""
  baseline = load(path) if os.path.exists(path) else {"ratios": {}}
  stamp = {"commit": commit(), "date": datetime.date.today().isoformat()}
  kept = {k: v for k, v in baseline["ratios"].items() if k.split(" | ")[0] not in suites}
  new = {k: {"value": v, "better": b, **stamp} for k, (v, b) in ratios(suites).items()}
  baseline["ratios"] = dict(sorted({**kept, **new}.items()))
  baseline["machines"] = {
    **baseline.get("machines", {}),
    **{name: {k: machine.get(k) for k in ("cpus", "matmul_gflops", "jax", "jaxlib")} for name in suites},
  }
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(baseline, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)
  return len(new)


def compare(
  baseline: Mapping[str, Any],
  suites: Mapping[str, Mapping[str, Any]],
  tolerance: float = DEFAULT_TOLERANCE,
) -> list[dict[str, Any]]:
  """The rows of the suites that ran whose ratio moved by more than `tolerance` (relative) since the
  baseline, and those on one side only: dicts of key, baseline, now, change (now / baseline),
  verdict ("slower", "faster", "new" or "gone") and the baseline's commit."""
  now = ratios(suites)
  then = {k: v for k, v in baseline["ratios"].items() if k.split(" | ")[0] in suites}
  moved = []
  for key in sorted(set(now) | set(then)):
    old = then.get(key)
    if old is None:
      moved.append({"key": key, "baseline": None, "now": now[key][0], "verdict": "new"})
      continue
    entry = {"key": key, "baseline": old["value"], "commit": old.get("commit", "?")}
    if key not in now:
      moved.append({**entry, "now": None, "verdict": "gone"})
      continue
    change = now[key][0] / old["value"]
    if abs(math.log(change)) <= math.log1p(tolerance):
      continue
    verdict = "faster" if (change > 1) == (old["better"] == "higher") else "slower"
    moved.append({**entry, "now": now[key][0], "change": change, "verdict": verdict})
  return moved


def format_comparison(moved: list[dict[str, Any]], path: str, tolerance: float) -> str:
  """The comparison as text: a line per moved row, or one line saying nothing moved."""
  head = f"== against {path} (tolerance {tolerance:.0%}; this checkout: {commit()})"
  if not moved:
    return f"{head}\nno ratio moved by more than {tolerance:.0%}"
  lines = [head]
  for m in moved:
    if m["verdict"] in ("new", "gone"):
      value = m["now"] if m["verdict"] == "new" else m["baseline"]
      lines.append(f"{m['verdict']:>6}  {m['key']}: {value:.3f}")
    else:
      lines.append(
        f"{m['verdict']:>6}  {m['key']}: {m['baseline']:.3f} at {m['commit']} -> {m['now']:.3f} "
        f"({m['change'] - 1:+.0%})"
      )
  return "\n".join(lines)
