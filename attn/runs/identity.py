"""What makes a run directory this run: config.json (the config, the resolved model, the hashes of
its data files), checked before a run starts or resumes, and summary.json, which says it is done.

Plain dicts only (attn.runs imports nothing else of attn): the trainer passes the config as JSON
values and its training defaults, so a config.json written before a field existed reads as if it
had the field's default.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from attn.runs import files


class RunMismatchError(ValueError):
  """`workdir` holds another run (another config or other data), or checkpoints of no known config."""


def data_hashes(paths: list[str]) -> dict[str, str]:
  """sha256 of each data file, by absolute path."""
  return {os.path.abspath(path): files.sha256(path) for path in paths}


def with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved` (a config.json) with the fields it lacks taken from `defaults` (one level into
  dict-valued fields, such as the optimizer's)."""
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = {**value, **out[key]}
  return out


def check_config(
  workdir: str,
  resolved: dict,
  *,
  defaults: dict | None = None,
  write: bool = True,
  has_checkpoints: bool,
) -> None:
  """Writes `resolved` as config.json unless the same is there (with `write=False`, only checks).

  Raises:
    RunMismatchError: when `workdir` holds a run of a different config or over different data (only
      the fields of `files.resumable_fields` may differ), or holds checkpoints but no readable
      config.json.
  """
  path = files.path(workdir, files.CONFIG_FILE)
  old = files.read_json(path)
  if old is None and has_checkpoints:
    state = "an unreadable" if os.path.exists(path) else "no"
    raise RunMismatchError(
      f"--workdir {workdir} holds checkpoints but {state} {files.CONFIG_FILE}, so nothing says which "
      "config they belong to; use a new --workdir"
    )
  if isinstance(old, dict):
    changed_data = files.changed_data(old, resolved[files.DATA_HASHES])
    if changed_data:
      raise RunMismatchError(
        f"--workdir {workdir} holds a run over other data ({', '.join(changed_data)} changed since "
        "it started); use a new --workdir"
      )
    changed = files.config_differences(with_defaults(old, defaults or {}), resolved)
    if changed:
      raise RunMismatchError(
        f"--workdir {workdir} holds a run of a different config (fields {', '.join(changed)} differ); "
        "use a new --workdir"
      )
    if old == resolved:
      return  # Nothing to record: the file stays as it is.
  if write:
    files.write_json(path, resolved, sort_keys=True)


def finished(workdir: str, num_train_steps: int) -> dict | None:
  """summary.json's final metrics when it records a run of `num_train_steps` steps as done."""
  summary = files.read_json(files.path(workdir, files.SUMMARY_FILE))
  if (
    isinstance(summary, dict)
    and summary.get("status") == "done"
    and summary.get("num_train_steps") == int(num_train_steps)
    and isinstance(summary.get("final"), dict)
  ):
    return summary["final"]
  return None


def clear_summary(workdir: str) -> None:
  """Removes a shorter run's summary.json: this one is not done until it ends."""
  with contextlib.suppress(FileNotFoundError):  # Gone already, or never written: the same.
    os.remove(files.path(workdir, files.SUMMARY_FILE))


def write_summary(workdir: str, **fields: Any) -> None:
  """summary.json: the run is done; its final metrics, size and speed."""
  files.write_json(files.path(workdir, files.SUMMARY_FILE), {"status": "done", **fields})


def logged(workdir: str, step: int, split: str) -> dict | None:
  """The `split` metrics already on record for `step` (a run resumed at its very end), or None."""
  records = [r for r in files.read_metrics(workdir) if r["split"] == split and r["step"] == step]
  if not records:
    return None
  return {k: v for k, v in records[-1].items() if k not in ("step", "split", "time")} or None
