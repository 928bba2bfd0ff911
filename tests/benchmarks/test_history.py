"""Tests for benchmarks/history.py: which ratios a run records, how a baseline file is merged, and
which rows a comparison reports (on made-up suite results: no timing here)."""

from __future__ import annotations

import json

import pytest

from benchmarks import history


def _suites(nanogpt=0.8, loop=1.05, torch_ratio=0.9):
  return {
    "nanogpt": {
      "rows": [
        {"config": "CPU example", "impl": "ours: the loop's compiled step", "step_ms": 60.0,
         "loop_over_bare_ms": loop, "ratio_vs_nanogpt": nanogpt},
        {"config": "CPU example", "impl": "nanoGPT model.py + train.py loop", "step_ms": 48.0},
      ]
    },
    "train": {
      "rows": [
        {"impl": "ours: train.train_step (jit)", "ratio_vs_torch": torch_ratio},
        {"impl": "torch nn.Transformer", "skipped": "torch does not import"},
      ]
    },
  }  # fmt: skip


def test_ratios_are_keyed_by_suite_labels_and_field_with_their_direction():
  assert history.ratios(_suites()) == {
    "nanogpt | CPU example | ours: the loop's compiled step | loop_over_bare_ms": (1.05, "lower"),
    "nanogpt | CPU example | ours: the loop's compiled step | ratio_vs_nanogpt": (0.8, "higher"),
    "train | ours: train.train_step (jit) | ratio_vs_torch": (0.9, "higher"),
  }


def test_record_replaces_the_suites_that_ran_and_keeps_the_others(tmp_path):
  path = str(tmp_path / "baseline.json")
  machine = {"cpus": 2, "matmul_gflops": 50.0, "jax": "0.10.2", "jaxlib": "0.10.2", "python": "x"}
  assert history.record(path, _suites(), machine) == 3
  suites = _suites(nanogpt=1.3)
  del suites["train"]
  assert history.record(path, suites, machine) == 2
  baseline = history.load(path)
  ratios = baseline["ratios"]
  assert (
    ratios["nanogpt | CPU example | ours: the loop's compiled step | ratio_vs_nanogpt"]["value"] == 1.3
  )
  assert ratios["train | ours: train.train_step (jit) | ratio_vs_torch"]["value"] == 0.9  # Kept.
  entry = ratios["train | ours: train.train_step (jit) | ratio_vs_torch"]
  assert entry["better"] == "higher" and entry["commit"] and entry["date"]
  assert baseline["machines"]["nanogpt"] == {"cpus": 2, "matmul_gflops": 50.0, "jax": "0.10.2",
                                             "jaxlib": "0.10.2"}  # fmt: skip


def test_compare_reports_what_moved_past_the_tolerance_in_its_better_direction(tmp_path):
  path = str(tmp_path / "baseline.json")
  history.record(path, _suites(), {})
  baseline = history.load(path)
  assert history.compare(baseline, _suites(nanogpt=0.85, loop=1.0)) == []  # Within 10 %.
  moved = history.compare(baseline, _suites(nanogpt=0.6, loop=1.3, torch_ratio=1.2))
  verdicts = {m["key"].split(" | ")[-1]: m["verdict"] for m in moved}
  # Lower nanoGPT ratio and higher loop/bare: slower; a higher torch ratio: faster.
  assert verdicts == {
    "loop_over_bare_ms": "slower",
    "ratio_vs_nanogpt": "slower",
    "ratio_vs_torch": "faster",
  }
  slower = next(m for m in moved if m["key"].endswith("ratio_vs_nanogpt"))
  assert slower["change"] == pytest.approx(0.75) and slower["baseline"] == 0.8 and slower["now"] == 0.6
  text = history.format_comparison(moved, path, 0.1)
  assert (
    "slower  nanogpt | CPU example | ours: the loop's compiled step | ratio_vs_nanogpt: 0.800 at" in text
  )
  assert "-> 0.600 (-25%)" in text
  # Only the suites that ran are compared; a row on one side only is new or gone.
  only_train = {"train": _suites()["train"]}
  assert history.compare(baseline, only_train) == []
  renamed = {"train": {"rows": [{"impl": "ours: renamed", "ratio_vs_torch": 0.9}]}}
  assert sorted(m["verdict"] for m in history.compare(baseline, renamed)) == ["gone", "new"]
  assert "no ratio moved by more than 10%" in history.format_comparison([], path, 0.1)


def test_a_missing_or_malformed_baseline_is_one_error_naming_the_file(tmp_path):
  with pytest.raises(ValueError, match=r"nope.json: no such baseline file"):
    history.load(str(tmp_path / "nope.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{")
  with pytest.raises(ValueError, match=r"bad.json: not a baseline file"):
    history.load(str(bad))
  bad.write_text(json.dumps({"rows": []}))
  with pytest.raises(ValueError, match=r"bad.json: not a baseline file: it has no 'ratios' object"):
    history.load(str(bad))
