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
import os
import re
import subprocess
import sys
import time

from attn.runs import files


def load_config_module(config_arg: str):
  """Imports the config file of `path[:preset]`; returns (module, path, preset)."""
  path, _, preset = config_arg.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config: no such config file {path!r}")
  spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, path, preset


def sweep_points(config_arg: str) -> list[dict]:
  """The override dicts of the config file's `get_sweep(preset)`."""
  module, path, preset = load_config_module(config_arg)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--config: {path} defines no get_sweep(preset)")
  points = list(module.get_sweep(preset))
  if not points:
    raise ValueError(f"--config: {path} get_sweep({preset!r}) returned no points")
  return points


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


def run_sweep(config_arg: str, workdir: str, *, dry_run: bool = False, echo=print) -> list[PointResult]:
  """Runs (or, with dry_run, lists) every point of the config's sweep under `workdir`."""
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
  os.makedirs(workdir, exist_ok=True)
  manifest = {
    "config": config_arg,
    "points": [{"name": n, "overrides": p} for n, p in zip(names, points, strict=True)],
  }
  files.write_json(files.path(workdir, files.SWEEP_FILE), manifest)
  for i, (name, overrides) in enumerate(zip(names, points, strict=True)):
    point_dir = os.path.join(workdir, name)
    tag = f"[{i + 1}/{len(points)}] {name}"
    if files.is_done(point_dir):
      echo(f"{tag}: done already, skipped")
      results.append(PointResult(name, "skipped"))
      continue
    os.makedirs(point_dir, exist_ok=True)
    files.write_json(files.path(point_dir, files.OVERRIDES_FILE), overrides)
    status_path = files.path(point_dir, files.STATUS_FILE)
    if os.path.exists(status_path):
      os.remove(status_path)  # A failed point is retried.
    command = [
      sys.executable,
      "-m",
      "launch.train",
      f"--config={config_arg}",
      f"--workdir={point_dir}",
      *(f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()),
    ]
    echo(f"{tag}: training")
    start = time.time()
    log_path = files.path(point_dir, files.TRAIN_LOG)
    with open(log_path, "a", encoding="utf-8") as log:
      returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    if returncode == 0 and files.is_done(point_dir):
      echo(f"{tag}: done in {seconds:.0f}s")
      results.append(PointResult(name, "done", seconds))
      continue
    error = _last_line(log_path)
    files.write_json(status_path, {"status": "failed", "error": error, "returncode": returncode})
    echo(f"{tag}: FAILED after {seconds:.0f}s: {error} (log: {log_path})")
    results.append(PointResult(name, "failed", seconds, error))
  return results
