"""The run directory's metric records: `metrics.jsonl` (the source of truth, read by `attn.compare`)
and TensorBoard event files beside it.

Each line of metrics.jsonl is {"step": int, "split": str, "time": float, name: value, ...}, where a
per-seed metric is a list with one float per seed and a run-level value (learning rate, steps/s) a float.
"""

from __future__ import annotations

import json
import math
import os
import time

from attn.summary import EventWriter

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  """Every parseable line of `workdir/metrics.jsonl` (a line cut short by a kill is skipped)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def _finite_or_str(x: float):
  # JSON has no NaN or inf; write them as strings so the file stays standard JSON.
  return x if math.isfinite(x) else str(x)


class MetricsWriter:
  """Appends records to metrics.jsonl and TensorBoard scalars to event files in `workdir`.

  Args:
    workdir: the run directory.
    keep_through_step: records with a larger step are dropped from an existing metrics.jsonl first:
      a resumed run rewrites what it recomputes after its checkpoint (-1 drops everything).
  """

  def __init__(self, workdir: str, keep_through_step: int = -1):
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, METRICS_FILE)
    kept = [r for r in read_metrics(workdir) if r.get("step", math.inf) <= keep_through_step]
    tmp = self._path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self._path)  # Atomic: a kill here leaves the old or the new file, never half.
    self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close()).
    self._events = EventWriter(workdir)

  def write(self, step: int, split: str, metrics: dict) -> None:
    record = {"step": int(step), "split": split, "time": time.time()}
    for name, value in metrics.items():
      if isinstance(value, list | tuple):
        record[name] = [_finite_or_str(float(v)) for v in value]
        for i, v in enumerate(value):
          self._events.scalar(
            f"{split}/{name}/seed_{i}" if len(value) > 1 else f"{split}/{name}", v, step
          )
      else:
        record[name] = _finite_or_str(float(value))
        self._events.scalar(f"{split}/{name}", value, step)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def flush(self) -> None:
    self._file.flush()
    self._events.flush()

  def close(self) -> None:
    self._file.close()
    self._events.close()
