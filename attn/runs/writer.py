"""The metrics writer: appends to a run's `metrics.jsonl` (the source of truth, read by
`attn.runs.compare`) and writes the same scalars as TensorBoard events beside it (tensorboardX).

Each line of metrics.jsonl is {"step": int, "split": str, "time": float, name: value, ...}, where a
per-seed metric is a list with one float per seed and a run-level value (learning rate, steps/s) a
float. In TensorBoard a per-seed metric is `split/name/seed_i` (`split/name` when there is one seed).
"""

from __future__ import annotations

import itertools
import math
import os
import time

from attn.runs import files

# tensorboardX names event files by the second and the host; the process id and a counter keep two
# writers opened within one second (a run resumed at once) from truncating each other's file.
_WRITER_IDS = itertools.count()


class MetricsWriter:
  """Appends records to metrics.jsonl and TensorBoard scalars to event files in `workdir`.

  Args:
    workdir: the run directory.
    keep_through_step: records with a larger step are dropped from an existing metrics.jsonl first:
      a resumed run rewrites what it recomputes after its checkpoint (-1 drops everything).
  """

  def __init__(self, workdir: str, keep_through_step: int = -1):
    os.makedirs(workdir, exist_ok=True)
    self._path = files.path(workdir, files.METRICS_FILE)
    kept = [r for r in files.read_metrics(workdir) if r.get("step", math.inf) <= keep_through_step]
    files.write_lines(self._path, kept)  # Atomic: a kill here leaves the old or the new file.
    self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close()).
    # TensorBoard reads every event file of the folder; a resumed run adds one, and the steps it
    # recomputes after its checkpoint are written again (TensorBoard shows the latest).
    suffix = f".{os.getpid()}.{next(_WRITER_IDS)}"
    # Imported here: tensorboardX imports torch when it is installed (seconds), which processes that
    # only read runs (attend, analyze, sample, compare) need not pay.
    from tensorboardX import SummaryWriter

    self._events = SummaryWriter(logdir=workdir, flush_secs=30, filename_suffix=suffix)

  def write(self, step: int, split: str, metrics: dict) -> None:
    record = {"step": int(step), "split": split, "time": time.time()}
    for name, value in metrics.items():
      if isinstance(value, list | tuple):
        record[name] = [files.finite_or_str(float(v)) for v in value]
        for i, v in enumerate(value):
          tag = f"{split}/{name}/seed_{i}" if len(value) > 1 else f"{split}/{name}"
          self._events.add_scalar(tag, float(v), int(step), walltime=record["time"])
      else:
        record[name] = files.finite_or_str(float(value))
        self._events.add_scalar(f"{split}/{name}", float(value), int(step), walltime=record["time"])
    self._file.write(files.json_line(record))
    self._file.flush()

  def flush(self) -> None:
    self._file.flush()
    self._events.flush()

  def close(self) -> None:
    self._file.close()
    self._events.close()
