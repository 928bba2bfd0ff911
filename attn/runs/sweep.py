"""Sweeps: one training run per point of a config's grid, each in its own subdirectory and process.

A config file defines `get_sweep(preset) -> list of {"dotted.field": value}` overrides (seeds are not
points: each point trains `config.num_seeds` seeds in one vmapped program). Running a sweep again skips
finished points and resumes interrupted ones from their checkpoints; a point that fails is recorded in
its `status.json` with its error, and the others go on. Each point runs in a child process, so even a
crash of one cannot take the others down.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence

from attn.runs import files


def load_config_module(config_arg: str):
  """Imports the config file of `path[:preset]`; returns (module, path, preset)."""
  path, _, preset = config_arg.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config: no such config file {path!r}")
  spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A user's file: any error in it is theirs to fix, said in one line.
    raise ValueError(f"--config: {path} does not load: {_one_line(e)}") from None
  return module, path, preset


def check_config(config_arg: str) -> None:
  """Loads `path[:preset]` as `--config` will: the file, its `get_config(preset)`.

  Raises:
    FileNotFoundError, ValueError: one line naming the file, the preset and what went wrong.
  """
  module, path, preset = load_config_module(config_arg)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config: {path} defines no get_config(preset)")
  try:
    _get_config(module, preset)
  except Exception as e:  # E.g. an unknown preset: the config file's own message.
    raise ValueError(f"--config: {config_arg}: {_one_line(e)}") from None


def _get_config(module, preset: str):
  """`get_config` called as ml_collections' `--config=FILE[:preset]` calls it."""
  return module.get_config(preset) if preset else module.get_config()


def _one_line(e: BaseException) -> str:
  message = " ".join(str(e).split())
  return f"{type(e).__name__}: {message}" if message else type(e).__name__


def sweep_points(config_arg: str) -> list[dict]:
  """The override dicts of the config file's `get_sweep(preset)`."""
  module, path, preset = load_config_module(config_arg)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--config: {path} defines no get_sweep(preset)")
  points = list(module.get_sweep(preset))
  if not points:
    raise ValueError(f"--config: {path} get_sweep({preset!r}) returned no points")
  return points


def point_config(config_arg: str, overrides: dict, *, module=None) -> dict:
  """The config a point trains, as plain JSON values (what its config.json holds, before the task
  resolves the model): the config file's `get_config(preset)` with the overrides applied. `module`:
  the config file already loaded (`load_config_module`), so a sweep executes it once."""
  if module is None:
    module, _, _ = load_config_module(config_arg)
  config = _get_config(module, config_arg.partition(":")[2])
  for key, value in overrides.items():
    *parents, field = key.split(".")
    holder = config
    for parent in parents:
      holder = holder[parent]
    holder[field] = value
  return json.loads(config.to_json_best_effort())


def check_reuse(config_arg: str, workdir: str, names: list[str], points: list[dict]) -> None:
  """Refuses a sweep folder that holds another sweep: a sweep.json of another config or other
  points, or a finished point whose saved config (or data) is not what the point would run now.

  Raises:
    ValueError: one line naming the folder or the point and what differs.
  """
  manifest = files.read_json(files.path(workdir, files.SWEEP_FILE))
  if isinstance(manifest, dict):
    if manifest.get("config") != config_arg:
      raise ValueError(
        f"--workdir {workdir} holds a sweep of --config={manifest.get('config')}, not {config_arg}; "
        "use a new --workdir"
      )
    old = {p.get("name"): p.get("overrides") for p in manifest.get("points", []) if isinstance(p, dict)}
    new = dict(zip(names, points, strict=True))
    if old != new:
      differ = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
      raise ValueError(
        f"--workdir {workdir} holds a sweep of other points ({', '.join(differ)} differ); use a new "
        "--workdir"
      )
  module = None
  for name, overrides in zip(names, points, strict=True):
    point_dir = os.path.join(workdir, name)
    if not files.is_done(point_dir):
      continue  # launch.train checks an unfinished point's config itself when it resumes it.
    module = module or load_config_module(config_arg)[0]
    saved = files.read_json(files.path(point_dir, files.CONFIG_FILE))
    if not isinstance(saved, dict):
      raise ValueError(
        f"--workdir {workdir}: point {name} is finished but has no readable {files.CONFIG_FILE}; "
        "use a new --workdir"
      )
    differ = files.config_differences(saved, point_config(config_arg, overrides, module=module))
    if differ:
      raise ValueError(
        f"--workdir {workdir}: point {name} holds a finished run of a different config (fields "
        f"{', '.join(differ)} differ); use a new --workdir"
      )
    changed = files.changed_data(saved)
    if changed:
      raise ValueError(
        f"--workdir {workdir}: point {name} holds a finished run over other data ({', '.join(changed)} "
        "changed); use a new --workdir"
      )


def point_name(overrides: dict) -> str:
  """A directory name from the overrides: "num_heads=4,head_dim_policy=fixed_head_dim"."""
  parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items()]
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts)) or "default"


def _flag_value(value) -> str:
  return str(value)  # ml_collections parses by the field's type; bools as True/False.


@dataclasses.dataclass
class PointResult:
  name: str
  status: str  # "done" | "skipped" (already done) | "failed" | "planned" (dry run)
  seconds: float = 0.0
  error: str | None = None


def _last_line(log_path: str) -> str:
  with open(log_path, encoding="utf-8", errors="replace") as f:
    lines = [line.strip() for line in f if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or ["no output"])[-1]


def _silent(*args, **kwargs):
  del args, kwargs


def _process_log(train_args: Sequence[str]) -> str:
  """train.pI.log: the log of process I of a multi-process point."""
  ids = [a.removeprefix("--process_id=") for a in train_args if a.startswith("--process_id=")]
  return f"train.p{ids[-1] if ids else 'x'}.log"


def run_sweep(
  config_arg: str,
  workdir: str,
  *,
  dry_run: bool = False,
  echo=print,
  train_args: Sequence[str] = (),
  writer: bool = True,
) -> list[PointResult]:
  """Runs (or, with dry_run, lists) every point of the config's sweep under `workdir`.

  `train_args`: more flags for each point's launch.train (a multi-process run's). `writer`: this
  process writes the sweep's files (process 0 of a multi-process sweep; the others only train, each
  logging to train.pI.log)."""
  points = sweep_points(config_arg)
  names = [point_name(p) for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f"--config: sweep points must have distinct names, got {names}")
  results = []
  if dry_run:
    for i, (name, overrides) in enumerate(zip(names, points, strict=True)):
      flags = " ".join(f"--config.{k}={_flag_value(v)}" for k, v in overrides.items())
      echo(f"[{i + 1}/{len(points)}] {name}: {flags}")
      results.append(PointResult(name, "planned"))
    return results
  check_reuse(config_arg, workdir, names, points)
  os.makedirs(workdir, exist_ok=True)
  manifest = {
    "config": config_arg,
    "points": [{"name": n, "overrides": p} for n, p in zip(names, points, strict=True)],
  }
  if writer:
    files.write_json(files.path(workdir, files.SWEEP_FILE), manifest)
  else:
    echo = _silent
  for i, (name, overrides) in enumerate(zip(names, points, strict=True)):
    point_dir = os.path.join(workdir, name)
    tag = f"[{i + 1}/{len(points)}] {name}"
    if files.is_done(point_dir):
      echo(f"{tag}: done already, skipped")
      results.append(PointResult(name, "skipped"))
      continue
    os.makedirs(point_dir, exist_ok=True)
    status_path = files.path(point_dir, files.STATUS_FILE)
    if writer:
      files.write_json(files.path(point_dir, files.OVERRIDES_FILE), overrides)
      if os.path.exists(status_path):
        os.remove(status_path)  # A failed point is retried.
    command = [
      sys.executable,
      "-m",
      "launch.train",
      f"--config={config_arg}",
      f"--workdir={point_dir}",
      *(f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()),
      *train_args,
    ]
    echo(f"{tag}: training")
    start = time.time()
    log_path = files.path(point_dir, files.TRAIN_LOG if writer else _process_log(train_args))
    with open(log_path, "a", encoding="utf-8") as log:
      returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    if returncode == 0 and files.is_done(point_dir):
      echo(f"{tag}: done in {seconds:.0f}s")
      results.append(PointResult(name, "done", seconds))
      continue
    error = _last_line(log_path)
    if writer:
      files.write_json(status_path, {"status": "failed", "error": error, "returncode": returncode})
    echo(f"{tag}: FAILED after {seconds:.0f}s: {error} (log: {log_path})")
    results.append(PointResult(name, "failed", seconds, error))
  return results
