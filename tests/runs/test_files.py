"""Tests for attn/runs/files.py: atomic JSON, readers that skip what does not parse, the run identity
(which fields a resume may change, data hashes) and the one-writer lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from attn.runs import files


def test_write_json_is_atomic_and_read_json_tolerates_garbage(tmp_path):
  target = tmp_path / "x.json"
  files.write_json(target, {"a": [1, 2]})
  assert files.read_json(target) == {"a": [1, 2]}
  assert not (tmp_path / "x.json.tmp").exists()
  target.write_text('{"a": ')  # A writer killed mid-write.
  assert files.read_json(target) is None
  assert files.read_json(tmp_path / "missing.json") is None


def test_read_lines_skips_bad_lines_and_non_objects(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_bytes(b'{"step": 1}\n[1, 2]\n\xff\xfe not json\n{"step": 2}\n{"step": 3, "cut')
  assert files.read_lines(path) == [{"step": 1}, {"step": 2}]
  assert files.read_lines(tmp_path / "missing.jsonl") == []


def test_resumable_fields_depend_on_the_schedule():
  assert "num_train_steps" in files.resumable_fields("rsqrt")
  assert "num_train_steps" in files.resumable_fields("constant")
  assert "num_train_steps" not in files.resumable_fields("cosine")  # It moves where the decay ends.
  saved = {"num_train_steps": 10, "eval_every_steps": 5, "optimizer": {"schedule": "cosine"}}
  wanted = {**saved, "num_train_steps": 20, "eval_every_steps": 10}
  assert files.config_differences(saved, wanted) == ["num_train_steps"]
  rsqrt = {"optimizer": {"schedule": "rsqrt"}}
  assert files.config_differences({**saved, **rsqrt}, {**wanted, **rsqrt}) == []


def test_config_differences_leave_out_derived_fields_only_when_not_wanted():
  saved = {"seed": 0, "resolved_model": {"vocab_size": 14}, files.DATA_HASHES: {}}
  assert files.config_differences(saved, {"seed": 0}) == []  # An unresolved config: no model yet.
  assert files.config_differences(saved, {"seed": 1}) == ["seed"]
  other_vocab = {"seed": 0, "resolved_model": {"vocab_size": 15}, files.DATA_HASHES: {}}
  assert files.config_differences(saved, other_vocab) == ["resolved_model"]


def test_changed_data_names_files_whose_bytes_changed_or_are_gone(tmp_path):
  train, dev = tmp_path / "train.txt", tmp_path / "dev.txt"
  train.write_text("a b\n")
  dev.write_text("c d\n")
  saved = {files.DATA_HASHES: {str(train): files.sha256(train), str(dev): files.sha256(dev)}}
  assert files.changed_data(saved) == []
  train.write_text("a b c\n")
  dev.unlink()
  assert files.changed_data(saved) == ["dev.txt", "train.txt"]
  assert files.changed_data({}) == []


def test_run_lock_is_held_released_and_refused_to_a_second_writer(tmp_path):
  lock = tmp_path / files.LOCK_FILE
  with files.run_lock(tmp_path):
    assert lock.read_text().split() == [str(os.getpid()), socket.gethostname()]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
      lock.write_text(f"{other.pid} {socket.gethostname()}\n")  # Another live process holds it.
      in_use = pytest.raises(files.RunInUseError, match=rf"in use by process {other.pid} .* lock file")
      with in_use, files.run_lock(tmp_path):
        pass
    finally:
      other.kill()
      other.wait()
  assert lock.exists()  # Not ours any more (the other process's line), so not removed.
  with files.run_lock(tmp_path):  # That process is gone: a stale lock is taken over.
    assert lock.read_text().split()[0] == str(os.getpid())
  assert not lock.exists()


def test_run_lock_of_another_host_is_refused(tmp_path):
  (tmp_path / files.LOCK_FILE).write_text("123 some-other-host\n")
  in_use = pytest.raises(files.RunInUseError, match="process 123 on some-other-host")
  with in_use, files.run_lock(tmp_path):
    pass


def test_run_lock_takes_over_an_unreadable_lock(tmp_path):
  (tmp_path / files.LOCK_FILE).write_text("")  # A crash between creating and writing it.
  with files.run_lock(tmp_path):
    pass
  assert not (tmp_path / files.LOCK_FILE).exists()


def test_is_done_reads_the_summary(tmp_path):
  assert not files.is_done(tmp_path)
  (tmp_path / files.SUMMARY_FILE).write_text(json.dumps({"status": "done"}))
  assert files.is_done(tmp_path)


def test_a_bad_metrics_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with caplog.at_level("WARNING", logger="attn.runs.files"):
    assert files.read_lines(path) == [{"step": 1}, {"step": 2}]
  assert [r.getMessage() for r in caplog.records] == [
    f"{path}:2: skipped a line that is not a JSON object (cut short by a kill?)"
  ]
