"""The one home of run-directory names, and of writing and reading their JSON files.

A run directory (`launch.train --workdir=RUN`):
  config.json        the resolved config, plus `resolved_model` (the ModelConfig with the vocabulary)
                     and `data_sha256` (the task's data files): the run's identity
  metrics.jsonl      one JSON object per line: step, split, time and metrics (the source of truth)
  events.out.tfevents.*  the same scalars for TensorBoard
  checkpoints/<step>/    orbax checkpoints of the whole training state
  checkpoints_unreadable/  step folders that did not restore, set aside
  summary.json       written when the run finishes: final eval metrics, parameter count, steps/s
  lock               "PID HOST" of the process training there, while it runs
  samples/<step>.txt  a language model's samples at each evaluation
A sweep directory (`launch.sweep --workdir=SWEEP`) holds sweep.json (its points) and one run
directory per point, each with overrides.json, train.log and, when it failed, status.json.

JSON files are written atomically (a temporary file, then `os.replace`): a kill leaves the old file or
the new one, never half of one. Readers return None (or skip a line) for what is absent or does not
parse, since a writer may have been killed mid-line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pathlib
import socket
from collections.abc import Iterator
from typing import Any

PathLike = str | os.PathLike
_log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_CHECKPOINTS_DIR = "checkpoints_unreadable"  # Step folders that did not restore, set aside.
SWEEP_FILE = "sweep.json"
OVERRIDES_FILE = "overrides.json"
STATUS_FILE = "status.json"
TRAIN_LOG = "train.log"
LOCK_FILE = "lock"  # "PID HOST" of the process training in the folder, while it runs.
# metrics.jsonl's split of an early-stopped run's final evaluation: each seed's best parameters, the
# run's result (test metrics included), which `launch.compare` reports as its final values.
BEST_SPLIT = "best"
SAMPLES_DIR = "samples"  # <step>.txt: a language model's samples at each evaluation.
# config.json's record of the files a run's task read, {absolute path: sha256}: part of its identity.
DATA_HASHES = "data_sha256"
# Config fields a resumed run may change: they do not change what is computed. num_train_steps is one
# only where the schedule does not depend on it (see `resumable_fields`).
RESUMABLE_CHANGES = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "mesh")
# Files whose presence makes a folder a run (for `launch.compare` without a sweep.json).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, STATUS_FILE)


def resumable_fields(schedule: str) -> tuple[str, ...]:
  """The config fields a resumed run may change under the learning-rate `schedule`.
  `num_train_steps` is one under "rsqrt" and "constant", where extending a run trains exactly as the
  longer run would; under "cosine" it moves where the decay ends, so changing it is refused there."""
  return RESUMABLE_CHANGES if schedule == "cosine" else (*RESUMABLE_CHANGES, "num_train_steps")


def config_differences(saved: dict, wanted: dict) -> list[str]:
  """The top-level fields in which a run's saved config.json and the config that would run now differ,
  leaving out what a resume may change, the data hashes (see `changed_data`) and `resolved_model`
  when `wanted` has none (a config not yet resolved against its task)."""
  schedule = (wanted.get("optimizer") or {}).get("schedule", "")
  allowed = {*resumable_fields(schedule), DATA_HASHES}
  if "resolved_model" not in wanted:
    allowed.add("resolved_model")
  fields = set(saved) | set(wanted)
  return sorted(k for k in fields if k not in allowed and saved.get(k) != wanted.get(k))


def changed_data(saved: dict, current: dict[str, str] | None = None) -> list[str]:
  """The names of the data files whose sha256 differs from the one `saved` (a config.json) records,
  or that are gone; `current` ({path: sha256}, when already computed) saves hashing them again."""
  changed = []
  for file, digest in sorted((saved.get(DATA_HASHES) or {}).items()):
    if current is not None:
      same = current.get(file) == digest
    else:
      same = os.path.isfile(file) and sha256(file) == digest
    if not same:
      changed.append(os.path.basename(file))
  return changed


def sha256(file: PathLike) -> str:
  """The hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def path(directory: PathLike, name: str) -> str:
  """`directory/name` as a string (names are the constants above)."""
  return os.path.join(os.fspath(directory), name)


def checkpoints_dir(workdir: PathLike) -> str:
  """The absolute path of a run's checkpoints folder (orbax asks for an absolute one)."""
  return os.path.abspath(path(workdir, CHECKPOINTS_DIR))


def samples_file(workdir: PathLike, step: int) -> str:
  """samples/<step>.txt of a run (the folder is created)."""
  folder = path(workdir, SAMPLES_DIR)
  os.makedirs(folder, exist_ok=True)
  return path(folder, f"{step}.txt")


def finite_or_str(x: float) -> float | str:
  """JSON has no NaN or inf: they are written as the strings "nan", "inf", "-inf"."""
  return x if math.isfinite(x) else str(x)


def _write_atomically(file: PathLike, text: str) -> None:
  file = os.fspath(file)
  with open(file + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(file + ".tmp", file)


def write_text(file: PathLike, text: str) -> None:
  """Writes `text` to `file` atomically."""
  _write_atomically(file, text)


def write_json(file: PathLike, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
  """Writes `value` as JSON to `file` atomically."""
  _write_atomically(file, json.dumps(value, indent=indent, sort_keys=sort_keys))


def json_line(record: dict) -> str:
  """One line of a JSON-lines file."""
  return json.dumps(record) + "\n"


def write_lines(file: PathLike, records: list[dict]) -> None:
  """Writes one JSON object per line to `file` atomically."""
  _write_atomically(file, "".join(json_line(r) for r in records))


def read_json(file: PathLike) -> Any:
  """The parsed file, or None when it is absent or does not parse."""
  try:
    return json.loads(pathlib.Path(file).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def read_lines(file: PathLike) -> list[dict]:
  """The JSON objects of a JSON-lines file; a line that does not parse (cut short by a kill) or is not
  an object is skipped with a warning naming FILE:LINE. [] when the file is absent."""
  records = []
  try:
    with open(file, encoding="utf-8", errors="replace") as f:
      for number, line in enumerate(f, 1):
        try:
          record = json.loads(line)
        except ValueError:
          record = None
        if isinstance(record, dict):
          records.append(record)
        elif line.strip():
          _log.warning(
            "%s:%d: skipped a line that is not a JSON object (cut short by a kill?)", file, number
          )
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


class RunInUseError(RuntimeError):
  """Another live process holds the run directory's lock."""


def _lock_owner(lock: str) -> tuple[int, str] | None:
  try:
    pid, host = pathlib.Path(lock).read_text(encoding="utf-8").split()[:2]
    return int(pid), host
  except (OSError, ValueError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, someone else's.
    return True
  return True


@contextlib.contextmanager
def run_lock(workdir: PathLike) -> Iterator[None]:
  """Holds `workdir/lock` while the block runs: one writer per run directory.

  A lock left by a process that no longer runs on this host (a crash, a kill) is stale and taken over;
  one whose process is alive, or that names another host (which cannot be checked from here), is
  refused.

  Raises:
    RunInUseError: naming the folder, the process and the lock file.
  """
  lock = path(workdir, LOCK_FILE)
  me = f"{os.getpid()} {socket.gethostname()}\n"
  for _ in range(3):
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      owner = _lock_owner(lock)
      if owner is not None:
        pid, host = owner
        if host != socket.gethostname() or (pid != os.getpid() and _alive(pid)):
          raise RunInUseError(
            f"--workdir {os.fspath(workdir)} is in use by process {pid} on {host} (its {LOCK_FILE} "
            "file); wait for it to finish, or delete the file if no run uses the folder"
          ) from None
      with contextlib.suppress(FileNotFoundError):
        os.remove(lock)  # Stale (or unreadable): take it over.
      continue
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(me)
    break
  else:
    raise RunInUseError(f"--workdir {os.fspath(workdir)}: could not take its {LOCK_FILE} file")
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      if pathlib.Path(lock).read_text(encoding="utf-8") == me:
        os.remove(lock)
