"""Tests for attn.runs.writer: metrics.jsonl lines (per-seed lists, NaN/inf as strings), resuming with
keep_through_step, skipping a cut-off last line, and the TensorBoard events written alongside (read
back with tensorboard's own event-file reader)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from attn.runs import files
from attn.runs.writer import MetricsWriter

event_file_loader = pytest.importorskip(
  "tensorboard.backend.event_processing.event_file_loader", reason="tensorboard reads the events"
)


def strict_lines(workdir) -> list[dict]:
  """metrics.jsonl parsed as standard JSON: NaN, Infinity and -Infinity tokens are refused."""

  def refuse(constant):
    raise ValueError(f"non-standard JSON constant {constant}")

  text = (workdir / files.METRICS_FILE).read_text(encoding="utf-8")
  assert text.endswith("\n")
  return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def event_values(workdir) -> list[tuple[int, dict]]:
  """(step, {tag: value}) of every scalar event of every event file in workdir, files in name order."""
  out = []
  for path in sorted(workdir.glob("events.out.tfevents.*")):
    events = list(event_file_loader.LegacyEventFileLoader(str(path)).Load())
    assert events[0].file_version == "brain.Event:2"
    out += [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[1:]]
  return out


def write_steps(workdir, steps, keep_through_step=-1):
  writer = MetricsWriter(str(workdir), keep_through_step=keep_through_step)
  for step in steps:
    writer.write(step, "train", {"loss": [float(step), step + 0.5]})
  writer.close()


def test_one_json_line_per_write(tmp_path):
  before = time.time()
  writer = MetricsWriter(str(tmp_path))
  writer.write(10, "train", {"loss": [1.5, 2.5], "learning_rate": 0.001, "steps_per_sec": 4})
  writer.write(20, "eval", {"accuracy": (0.25, 0.75)})
  writer.flush()
  lines = strict_lines(tmp_path)  # Readable before close: each write is flushed.
  writer.close()
  assert len(lines) == 2
  train, evaluation = lines
  assert set(train) == {"step", "split", "time", "loss", "learning_rate", "steps_per_sec"}
  assert (train["step"], train["split"]) == (10, "train")
  assert before <= train["time"] <= evaluation["time"] <= time.time()
  assert train["loss"] == [1.5, 2.5]
  assert train["learning_rate"] == 0.001 and train["steps_per_sec"] == 4.0
  assert isinstance(train["steps_per_sec"], float)
  assert evaluation == {
    "step": 20,
    "split": "eval",
    "time": evaluation["time"],
    "accuracy": [0.25, 0.75],
  }
  assert files.read_metrics(str(tmp_path)) == lines


def test_numpy_values_are_written_as_plain_numbers(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  loss = [np.float32(0.5), np.float64(1.0)]
  writer.write(np.int64(3), "eval", {"loss": loss, "lr": np.float32(0.25)})
  writer.close()
  (line,) = strict_lines(tmp_path)
  assert line["step"] == 3 and line["loss"] == [0.5, 1.0] and line["lr"] == 0.25


def test_nan_and_inf_are_written_as_strings(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(1, "train", {"loss": [math.nan, 1.0, math.inf], "grad_norm": -math.inf})
  writer.write(2, "train", {"loss": [0.5, 0.25, 0.125], "grad_norm": 1.0})
  writer.close()
  first, second = strict_lines(tmp_path)  # Every line stays standard JSON.
  assert first["loss"] == ["nan", 1.0, "inf"]
  assert first["grad_norm"] == "-inf"
  assert second["loss"] == [0.5, 0.25, 0.125]
  assert float(first["loss"][0]) != float(first["loss"][0])  # float("nan") reads the string back.
  assert float(first["loss"][2]) == math.inf


def test_keep_through_step_drops_later_lines_on_resume(tmp_path):
  write_steps(tmp_path, [0, 5, 10, 15])
  original = strict_lines(tmp_path)
  write_steps(tmp_path, [15, 20], keep_through_step=10)  # Resumed from the checkpoint of step 10.
  lines = strict_lines(tmp_path)
  assert [line["step"] for line in lines] == [0, 5, 10, 15, 20]
  assert lines[:3] == original[:3]  # Kept lines are kept as they were (same times).
  assert lines[3]["time"] >= original[3]["time"]
  assert not (tmp_path / (files.METRICS_FILE + ".tmp")).exists()


def test_keep_through_step_minus_one_drops_everything(tmp_path):
  write_steps(tmp_path, [0, 5])
  write_steps(tmp_path, [], keep_through_step=-1)
  assert (tmp_path / files.METRICS_FILE).read_text() == ""
  assert files.read_metrics(str(tmp_path)) == []
  write_steps(tmp_path, [0, 5])
  write_steps(tmp_path, [7])  # The default is -1: a fresh run.
  assert [line["step"] for line in strict_lines(tmp_path)] == [7]


def test_keep_through_step_keeps_lines_without_a_step_only_when_told_everything(tmp_path):
  (tmp_path / files.METRICS_FILE).write_text('{"split": "note"}\n{"step": 1, "split": "train"}\n')
  write_steps(tmp_path, [], keep_through_step=5)
  assert files.read_metrics(str(tmp_path)) == [{"step": 1, "split": "train"}]


def test_truncated_last_line_is_skipped(tmp_path):
  write_steps(tmp_path, [0, 5])
  with open(tmp_path / files.METRICS_FILE, "a", encoding="utf-8") as f:
    f.write('{"step": 10, "split": "train", "lo')  # A writer killed mid-line.
  records = files.read_metrics(str(tmp_path))
  assert [record["step"] for record in records] == [0, 5]
  write_steps(tmp_path, [10], keep_through_step=5)  # Resuming drops the cut line.
  assert [line["step"] for line in strict_lines(tmp_path)] == [0, 5, 10]


def test_read_metrics_without_a_file(tmp_path):
  assert files.read_metrics(str(tmp_path)) == []
  assert files.read_metrics(str(tmp_path / "missing")) == []


def test_tensorboard_events_written_alongside(tmp_path):
  writer = MetricsWriter(str(tmp_path / "run"))  # Creates the directory.
  writer.write(10, "train", {"loss": [1.5, 2.5], "learning_rate": 0.125})
  writer.write(20, "eval", {"accuracy": [0.75]})
  writer.write(30, "eval", {"loss": [math.nan, 0.5]})
  writer.close()
  run = tmp_path / "run"
  assert len(list(run.glob("events.out.tfevents.*"))) == 1
  values = event_values(run)
  assert values[:4] == [
    (10, {"train/loss/seed_0": 1.5}),
    (10, {"train/loss/seed_1": 2.5}),
    (10, {"train/learning_rate": 0.125}),
    (20, {"eval/accuracy": 0.75}),  # One seed: no seed suffix.
  ]
  (step, nan), last = values[4], values[5]
  assert step == 30 and math.isnan(nan["eval/loss/seed_0"])
  assert last == (30, {"eval/loss/seed_1": 0.5})


def test_resumed_writer_adds_a_new_event_file(tmp_path):
  write_steps(tmp_path, [0, 5])
  write_steps(tmp_path, [10], keep_through_step=5)
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  tags_by_step = {}
  for step, values in event_values(tmp_path):
    tags_by_step.setdefault(step, set()).update(values)
  assert tags_by_step == {s: {"train/loss/seed_0", "train/loss/seed_1"} for s in (0, 5, 10)}
