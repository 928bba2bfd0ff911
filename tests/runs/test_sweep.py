"""Tests for attn/runs/sweep.py: point names, dry runs, config-file errors, and a real two-point sweep
where one point fails: the other finishes, a rerun skips it and retries the failure, and an
interrupted point resumes from its checkpoint.

Points train in child processes (`python -m launch.train`, resolved from the working directory, so the
tests run from the repository root). The children compile at XLA's lowest backend optimisation level,
which halves the CPU time of a smoke point and computes the same thing.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import pytest

from attn.runs import sweep
from tests.runs.common import TINY_CONFIG, write_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_sweep_fast(*args, **kwargs) -> list[sweep.PointResult]:
  """run_sweep with the children's XLA at its lowest backend optimisation level (this process compiles
  nothing meanwhile, so its own JAX is untouched)."""
  with pytest.MonkeyPatch.context() as patch:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    patch.setenv("XLA_FLAGS", flags)
    return sweep.run_sweep(*args, **kwargs)


def read_json(path: pathlib.Path):
  return json.loads(path.read_text(encoding="utf-8"))


def read_lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


# point_name


@pytest.mark.parametrize(
  ("overrides", "name"),
  [
    ({"model.num_heads": 4}, "num_heads=4"),
    (
      {"model.num_heads": 4, "model.head_dim_policy": "fixed_head_dim"},
      "num_heads=4,head_dim_policy=fixed_head_dim",
    ),
    (
      {"optimizer.learning_rate": 0.001, "label_smoothing": 0.0},
      "learning_rate=0.001,label_smoothing=0.0",
    ),
    ({"model.scale": 0.125, "model.use_bias": False}, "scale=0.125,use_bias=False"),
    ({"model.head_dim": None}, "head_dim=None"),
    ({"optimizer.learning_rate": 1e-05}, "learning_rate=1e-05"),
    ({"seed": -1, "x": "a+b"}, "seed=-1,x=a+b"),
    ({}, "default"),
  ],
)
def test_point_name_formats(overrides, name):
  assert sweep.point_name(overrides) == name


@pytest.mark.parametrize(
  ("overrides", "name"),
  [
    ({"task.name": "a b/c"}, "name=a_b_c"),
    ({"data.path": "/data/../x y"}, "path=_data_.._x_y"),
    ({"model.scale": "résumé:*?"}, "scale=r_sum____"),
    ({"model.shape": (1, 2)}, "shape=_1,_2_"),
    ({"model.tags": ["a", "b"]}, "tags=__a_,__b__"),
  ],
)
def test_point_name_sanitises(overrides, name):
  assert sweep.point_name(overrides) == name
  assert "/" not in name and " " not in name and name not in (".", "..")


def test_load_config_module_splits_the_preset(tmp_path):
  path = write_config(tmp_path)
  module, got_path, preset = sweep.load_config_module(f"{path}:smoke")
  assert (got_path, preset) == (path, "smoke")
  assert module.get_sweep() == [{"model.num_heads": 2}, {"model.num_heads": 3}]
  assert sweep.load_config_module(path)[1:] == (path, "")


# Dry runs and config errors: nothing trains.


def test_dry_run_lists_points_with_flags_and_creates_nothing(tmp_path, in_repo):
  from experiments import heads

  points = heads.get_sweep("")
  workdir = tmp_path / "sweep"
  lines = []
  results = sweep.run_sweep("experiments/heads.py", str(workdir), dry_run=True, echo=lines.append)
  assert [(r.name, r.status) for r in results] == [(sweep.point_name(p), "planned") for p in points]
  assert lines == [
    f"[{i + 1}/{len(points)}] {sweep.point_name(p)}: "
    + " ".join(f"--config.{k}={v}" for k, v in p.items())
    for i, p in enumerate(points)
  ]
  assert "[1/10] num_heads=1,head_dim_policy=fixed_model_dim: --config.model.num_heads=1 " in lines[0]
  assert not workdir.exists()


def test_dry_run_flag_values(tmp_path):
  text = TINY_CONFIG.replace(
    '[{"model.num_heads": 2}, {"model.num_heads": 3}]',
    '[{"model.use_bias": False, "optimizer.learning_rate": 0.001, "model.head_dim": None}]',
  )
  lines = []
  workdir = tmp_path / "sweep"
  sweep.run_sweep(write_config(tmp_path, text), str(workdir), dry_run=True, echo=lines.append)
  assert lines == [
    "[1/1] use_bias=False,learning_rate=0.001,head_dim=None: --config.model.use_bias=False "
    "--config.optimizer.learning_rate=0.001 --config.model.head_dim=None"
  ]
  assert not workdir.exists()


def test_missing_config_file(tmp_path):
  missing = str(tmp_path / "nope.py")
  with pytest.raises(FileNotFoundError, match="no such config file") as error:
    sweep.run_sweep(f"{missing}:smoke", str(tmp_path / "sweep"), dry_run=True)
  assert repr(missing) in str(error.value)
  assert not (tmp_path / "sweep").exists()


def test_config_without_get_sweep(tmp_path):
  path = write_config(tmp_path, TINY_CONFIG.split("def get_sweep")[0])
  with pytest.raises(ValueError, match="defines no get_sweep") as error:
    sweep.run_sweep(path, str(tmp_path / "sweep"))
  assert path in str(error.value)
  assert not (tmp_path / "sweep").exists()


def test_empty_sweep(tmp_path):
  points = '[{"model.num_heads": 2}, {"model.num_heads": 3}]'
  path = write_config(tmp_path, TINY_CONFIG.replace(points, "[]"))
  with pytest.raises(ValueError, match=r"get_sweep\('smoke'\) returned no points"):
    sweep.run_sweep(f"{path}:smoke", str(tmp_path / "sweep"))
  assert not (tmp_path / "sweep").exists()


def test_points_need_distinct_names(tmp_path):
  text = TINY_CONFIG.replace('{"model.num_heads": 3}', '{"attention.num_heads": 2}')
  with pytest.raises(ValueError, match="distinct names"):
    sweep.run_sweep(write_config(tmp_path, text), str(tmp_path / "sweep"))
  assert not (tmp_path / "sweep").exists()


# A real sweep.


@pytest.mark.slow  # Trains sweep points in child processes.
def test_failing_point_rerun_and_resume(tmp_path, in_repo):
  config_arg = f"{write_config(tmp_path)}:smoke"
  workdir = tmp_path / "sweep"
  good, bad = workdir / "num_heads=2", workdir / "num_heads=3"

  # 1. The good point finishes; the bad one fails fast and is recorded; the sweep goes on.
  log = []
  results = run_sweep_fast(config_arg, str(workdir), echo=log.append)
  assert [(r.name, r.status) for r in results] == [("num_heads=2", "done"), ("num_heads=3", "failed")], (
    good / "train.log"
  ).read_text()
  assert results[0].seconds > 0 and results[0].error is None
  assert read_json(workdir / "sweep.json") == {
    "config": config_arg,
    "points": [
      {"name": "num_heads=2", "overrides": {"model.num_heads": 2}},
      {"name": "num_heads=3", "overrides": {"model.num_heads": 3}},
    ],
  }
  assert log[0] == "[1/2] num_heads=2: training"
  assert log[1].startswith("[1/2] num_heads=2: done in ")
  assert log[2] == "[2/2] num_heads=3: training"
  assert log[3].startswith("[2/2] num_heads=3: FAILED after ")
  assert log[3].endswith(f"(log: {bad / 'train.log'})")

  summary = read_json(good / "summary.json")
  assert summary["status"] == "done" and summary["num_seeds"] == 2
  assert read_json(good / "overrides.json") == {"model.num_heads": 2}
  assert read_json(good / "config.json")["model"]["num_heads"] == 2
  assert not (good / "status.json").exists()
  assert sorted(p.name for p in (good / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
  original = read_lines(good / "metrics.jsonl")
  assert [(line["step"], line["split"]) for line in original] == [
    (0, "eval"),
    (0, "diagnostics"),
    (0, "probe"),
    (2, "train"),
    (4, "train"),
    (4, "eval"),
    (4, "diagnostics"),
    (4, "probe"),
  ]
  assert all(len(line["loss"]) == 2 for line in original if line["split"] in ("train", "eval"))

  status = read_json(bad / "status.json")
  assert status["status"] == "failed" and status["returncode"] != 0
  assert status["error"].startswith("error: config.model.num_heads: 3 heads do not divide")
  assert status["error"] == results[1].error and status["error"] in log[3]
  assert read_json(bad / "overrides.json") == {"model.num_heads": 3}
  assert not (bad / "summary.json").exists() and not (bad / "checkpoints").exists()

  # 2. A rerun skips the finished point and retries the failed one.
  good_files = {name: (good / name).read_bytes() for name in ("metrics.jsonl", "summary.json")}
  log = []
  results = run_sweep_fast(config_arg, str(workdir), echo=log.append)
  assert [(r.name, r.status) for r in results] == [("num_heads=2", "skipped"), ("num_heads=3", "failed")]
  assert log[0] == "[1/2] num_heads=2: done already, skipped"
  assert log[1] == "[2/2] num_heads=3: training"
  assert {name: (good / name).read_bytes() for name in good_files} == good_files
  assert read_json(bad / "status.json")["error"] == status["error"]
  errors = [line for line in (bad / "train.log").read_text().splitlines() if line.startswith("error:")]
  assert errors == [status["error"]] * 2  # The log is appended to, the status rewritten.

  # 3. Killed after its step-2 checkpoint: the point is rerun and resumes there.
  (good / "summary.json").unlink()
  shutil.rmtree(good / "checkpoints" / "4")
  results = run_sweep_fast(config_arg, str(workdir), echo=[].append)
  assert [(r.name, r.status) for r in results] == [("num_heads=2", "done"), ("num_heads=3", "failed")], (
    good / "train.log"
  ).read_text()
  assert "from the checkpoint of step 2" in (good / "train.log").read_text()
  resumed = read_lines(good / "metrics.jsonl")
  assert [(line["step"], line["split"]) for line in resumed] == [
    (line["step"], line["split"]) for line in original
  ]
  assert resumed[:4] == original[:4]  # Lines through step 2 are kept as written (same times).
  assert resumed[4]["time"] > original[-1]["time"]  # Steps 3 and 4 were trained again...
  for new, old in zip(resumed[4:], original[4:], strict=True):  # ...to the same results.
    for key in ("loss", "accuracy", "sequence_accuracy"):
      if key in old:
        assert new[key] == pytest.approx(old[key], rel=1e-5), (new["split"], key)
  new_summary = read_json(good / "summary.json")
  assert new_summary["status"] == "done"
  for key, values in summary["final"].items():
    assert new_summary["final"][key] == pytest.approx(values, rel=1e-5), key


# A sweep folder is reused only for the sweep that made it (checked before any point runs).


def _finished_point(workdir: pathlib.Path, config_arg: str, overrides: dict, **extra) -> pathlib.Path:
  """A point as a finished run leaves it: its config.json (the config it trained) and summary.json."""
  point = workdir / sweep.point_name(overrides)
  point.mkdir(parents=True)
  (point / "config.json").write_text(json.dumps({**sweep.point_config(config_arg, overrides), **extra}))
  (point / "summary.json").write_text(json.dumps({"status": "done", "final": {}}))
  return point


def test_point_config_is_the_config_file_with_the_overrides(tmp_path):
  config_arg = write_config(tmp_path)
  config = sweep.point_config(config_arg, {"model.num_heads": 2, "seed": 7})
  assert config["model"]["num_heads"] == 2 and config["seed"] == 7 and config["num_train_steps"] == 4


def test_a_finished_point_of_an_edited_config_is_refused(tmp_path):
  config_arg = write_config(tmp_path)
  workdir = tmp_path / "sweep"
  _finished_point(workdir, config_arg, {"model.num_heads": 2})
  names = ["num_heads=2", "num_heads=3"]
  points = [{"model.num_heads": 2}, {"model.num_heads": 3}]
  sweep.check_reuse(config_arg, str(workdir), names, points)  # The same config: reused.
  write_config(
    tmp_path, TINY_CONFIG.replace("num_train_steps = 4", "num_train_steps = 4\n  config.seed = 5")
  )
  with pytest.raises(ValueError, match=r"point num_heads=2 holds a finished run of a different config "
                     r"\(fields seed differ\)"):  # fmt: skip
    sweep.run_sweep(config_arg, str(workdir), echo=[].append)
  assert not (workdir / "sweep.json").exists()  # Refused before anything was written.


def test_a_sweep_json_of_another_config_or_other_points_is_refused(tmp_path):
  config_arg = write_config(tmp_path)
  workdir = tmp_path / "sweep"
  workdir.mkdir()
  manifest = {"config": "experiments/other.py", "points": []}
  (workdir / "sweep.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match=r"holds a sweep of --config=experiments/other.py, not "):
    sweep.run_sweep(config_arg, str(workdir), echo=[].append)
  points = [{"name": "num_heads=2", "overrides": {"model.num_heads": 2}}]
  (workdir / "sweep.json").write_text(json.dumps({"config": config_arg, "points": points}))
  with pytest.raises(ValueError, match=r"holds a sweep of other points \(num_heads=3 differ\)"):
    sweep.run_sweep(config_arg, str(workdir), echo=[].append)
  assert json.loads((workdir / "sweep.json").read_text())["points"] == points  # Not overwritten.


def test_a_finished_point_over_changed_data_is_refused(tmp_path):
  config_arg = write_config(tmp_path)
  data = tmp_path / "train.txt"
  data.write_text("some text\n")
  hashes = {"data_sha256": {str(data): sweep.files.sha256(data)}}
  _finished_point(tmp_path / "sweep", config_arg, {"model.num_heads": 2}, **hashes)
  names, points = ["num_heads=2"], [{"model.num_heads": 2}]
  sweep.check_reuse(config_arg, str(tmp_path / "sweep"), names, points)
  data.write_text("other text\n")
  with pytest.raises(
    ValueError, match=r"point num_heads=2 holds a finished run over other data \(train"
  ):
    sweep.check_reuse(config_arg, str(tmp_path / "sweep"), names, points)


def test_a_multi_process_sweeps_other_processes_pass_the_flags_and_write_nothing(tmp_path, monkeypatch):
  """Process I > 0 of a multi-process sweep: each point's launch.train gets the distributed flags,
  logs to train.pI.log, and the sweep's files (sweep.json, overrides, status) are process 0's."""
  config = write_config(tmp_path)
  commands = []

  def call(command, stdout, stderr):
    commands.append(command)
    stdout.write("error: stopped by the test\n")
    return 1

  monkeypatch.setattr(sweep.subprocess, "call", call)
  flags = ["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=1"]
  workdir = tmp_path / "sweep"
  lines = []
  results = sweep.run_sweep(config, str(workdir), train_args=flags, writer=False, echo=lines.append)
  assert [r.status for r in results] == ["failed", "failed"] and lines == []
  assert all(command[-3:] == flags for command in commands) and len(commands) == 2
  point = workdir / sweep.point_name({"model.num_heads": 2})
  assert sorted(p.name for p in point.iterdir()) == ["train.p1.log"]
  assert not (workdir / "sweep.json").exists()
