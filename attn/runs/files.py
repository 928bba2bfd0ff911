"""The one home of run-directory names, and of writing and reading their JSON files.

A run directory (`launch.train --workdir=RUN`):
  config.json        the resolved config, plus `resolved_model` (the ModelConfig with the vocabulary)
  metrics.jsonl      one JSON object per line: step, split, time and metrics (the source of truth)
  events.out.tfevents.*  the same scalars for TensorBoard
  checkpoints/<step>/    orbax checkpoints of the whole training state
  summary.json       written when the run finishes: final eval metrics, parameter count, steps/s
A sweep directory (`launch.sweep --workdir=SWEEP`) holds sweep.json (its points) and one run
directory per point, each with overrides.json, train.log and, when it failed, status.json.

JSON files are written atomically (a temporary file, then `os.replace`): a kill leaves the old file or
the new one, never half of one. Readers return None (or skip a line) for what is absent or does not
parse, since a writer may have been killed mid-line.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
SWEEP_FILE = "sweep.json"
OVERRIDES_FILE = "overrides.json"
STATUS_FILE = "status.json"
TRAIN_LOG = "train.log"
# Files whose presence makes a folder a run (for `launch.compare` without a sweep.json).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, STATUS_FILE)


def path(directory: PathLike, name: str) -> str:
  """`directory/name` as a string (names are the constants above)."""
  return os.path.join(os.fspath(directory), name)


def checkpoints_dir(workdir: PathLike) -> str:
  """The absolute path of a run's checkpoints folder (orbax asks for an absolute one)."""
  return os.path.abspath(path(workdir, CHECKPOINTS_DIR))


def finite_or_str(x: float) -> float | str:
  """JSON has no NaN or inf: they are written as the strings "nan", "inf", "-inf"."""
  return x if math.isfinite(x) else str(x)


def write_json(file: PathLike, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
  """Writes `value` as JSON to `file` atomically."""
  file = os.fspath(file)
  tmp = file + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=indent, sort_keys=sort_keys)
  os.replace(tmp, file)


def json_line(record: dict) -> str:
  """One line of a JSON-lines file."""
  return json.dumps(record) + "\n"


def write_lines(file: PathLike, records: list[dict]) -> None:
  """Writes one JSON object per line to `file` atomically."""
  file = os.fspath(file)
  tmp = file + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json_line(r) for r in records)
  os.replace(tmp, file)


def read_json(file: PathLike) -> Any:
  """The parsed file, or None when it is absent or does not parse."""
  try:
    return json.loads(pathlib.Path(file).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def read_lines(file: PathLike) -> list[dict]:
  """The JSON objects of a JSON-lines file, skipping lines that do not parse (a line cut short by a
  kill) and lines that are not objects; [] when the file is absent."""
  records = []
  try:
    with open(file, encoding="utf-8", errors="replace") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict):
          records.append(record)
  except OSError:
    return []
  return records


def read_metrics(workdir: PathLike) -> list[dict]:
  """Every parseable record of `workdir/metrics.jsonl`, in file order."""
  return read_lines(path(workdir, METRICS_FILE))


def is_done(workdir: PathLike) -> bool:
  """Whether the run finished: its summary.json says status "done"."""
  summary = read_json(path(workdir, SUMMARY_FILE))
  return isinstance(summary, dict) and summary.get("status") == "done"
