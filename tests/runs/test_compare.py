"""Tests for attn/runs/compare.py: loading sweep and run directories, the table's statistics, CSV,
markdown and the two plots, on fake sweeps written with exactly known values."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import numpy as np
import pytest
import scipy.stats

from attn.runs import compare
from attn.runs import metrics as metric_rule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(
  path: pathlib.Path,
  evals: dict[int, dict[str, list[float]]],
  *,
  summary: dict | None = None,
  failed: str | None = None,
  train_steps_per_sec: tuple[float, ...] = (),
  config: dict | None = None,
  overrides: dict | None = None,
  truncated: bool = False,
) -> None:
  """Writes a run directory: config.json, metrics.jsonl (train, eval, diagnostics and probe lines) and
  summary.json or status.json as asked."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config or {"model": {"num_heads": 1}, "num_seeds": 2}))
  if overrides is not None:
    (path / "overrides.json").write_text(json.dumps(overrides))
  lines = [
    {"step": 10 * (i + 1), "split": "train", "time": 1.0, "loss": [9.0, 9.0], "steps_per_sec": sps}
    for i, sps in enumerate(train_steps_per_sec)
  ]
  for step, metrics in sorted(evals.items()):
    lines.append({"step": step, "split": "eval", "time": 2.0, **metrics})
    lines.append({"step": step, "split": "diagnostics", "time": 2.0, "encoder/layer_0/entropy": [1.0]})
    lines.append({"step": step, "split": "probe", "time": 2.0, "accuracy": [-5.0], "loss": [99.0]})
  text = "".join(json.dumps(line) + "\n" for line in lines)
  if truncated:
    text += '{"step": 999, "split": "eval", "accuracy": [1.0, 1.'
  (path / "metrics.jsonl").write_text(text)
  if summary is not None:
    (path / "summary.json").write_text(json.dumps({"status": "done", **summary}))
  if failed is not None:
    (path / "status.json").write_text(json.dumps({"status": "failed", "error": failed}))


def _write_sweep(
  root: pathlib.Path, points: list[tuple[str, dict]], config: str = "experiments/x.py:smoke"
):
  root.mkdir(parents=True, exist_ok=True)
  sweep = {"config": config, "points": [{"name": name, "overrides": ov} for name, ov in points]}
  (root / "sweep.json").write_text(json.dumps(sweep))


@pytest.fixture
def heads_sweep(tmp_path):
  """num_heads=1: done, 2 seeds. num_heads=2: done, 3 seeds. num_heads=4: failed. num_heads=8:
  incomplete, with a truncated last line. num_heads=16: listed, never started."""
  root = tmp_path / "sweep"
  _write_sweep(root, [(f"num_heads={h}", {"model.num_heads": h}) for h in (1, 2, 4, 8, 16)])
  summary = {"num_seeds": 2, "main_metric": "accuracy", "wall_time_s": 3.0}
  _write_run(
    root / "num_heads=1",
    {
      100: {"loss": [2.0, 1.0], "accuracy": [0.5, 0.7]},
      200: {"loss": [1.5, 1.2], "accuracy": [0.6, 0.65]},
    },
    summary={**summary, "num_params": 1000, "steps_per_sec": 12.5},
    train_steps_per_sec=(1.0, 2.0),  # Ignored: summary.json has steps_per_sec.
  )
  _write_run(
    root / "num_heads=2",
    {
      300: {"loss": [2.0, 1.0, 2.0], "accuracy": [0.3, 0.9, 0.6]},  # Out of order on purpose.
      100: {"loss": [3.0, 3.0, 3.0], "accuracy": [0.1, 0.2, 0.3]},
      200: {"loss": [1.0, 2.0, 3.0], "accuracy": [0.4, 0.5, 0.6]},
    },
    summary={**summary, "num_seeds": 3, "num_params": 2000, "steps_per_sec": 10.0},
  )
  _write_run(
    root / "num_heads=4",
    {
      100: {"loss": [3.0, 5.0], "accuracy": [0.0, 0.1]},
      150: {"loss": ["nan", 4.0]},  # attn.metrics writes NaN as "nan".
    },
    failed="FloatingPointError: NaN loss at step 150 | seed 0",
  )
  _write_run(
    root / "num_heads=8",
    {100: {"loss": [4.0, 2.0], "accuracy": [0.2, 0.4]}},
    train_steps_per_sec=(8.0, 10.0),
    truncated=True,
  )
  return root


# Loading


def test_load_runs_follows_sweep_json_order_and_reads_status(heads_sweep):
  runs = compare.load_runs(heads_sweep)
  assert [r.name for r in runs] == [f"num_heads={h}" for h in (1, 2, 4, 8, 16)]
  assert [r.status for r in runs] == ["done", "done", "failed", "incomplete", "incomplete"]
  assert [r.overrides for r in runs] == [{"model.num_heads": h} for h in (1, 2, 4, 8, 16)]
  assert runs[2].error == "FloatingPointError: NaN loss at step 150 | seed 0"
  assert runs[0].error is None and runs[0].summary["num_params"] == 1000
  assert runs[0].config == {"model": {"num_heads": 1}, "num_seeds": 2}
  assert len(runs[3].metrics) == 2 + 3  # The truncated last line is skipped.
  assert runs[4].metrics == [] and runs[4].config == {} and runs[4].summary is None


def test_load_runs_missing_directory_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    compare.load_runs(tmp_path / "nope")
  assert compare.load_runs(tmp_path) == []


def test_load_runs_single_run_directory(tmp_path):
  run_dir = tmp_path / "my_run"
  _write_run(run_dir, {50: {"loss": [1.0], "accuracy": [0.25]}}, summary={"num_params": 7})
  (runs,) = compare.load_runs(run_dir)
  assert (runs.name, runs.path, runs.status, runs.overrides) == ("my_run", run_dir, "done", {})
  markdown = compare.compare(run_dir)
  (row,) = compare.compare_table([runs])
  assert (row.final_mean, row.final_std, row.num_seeds, row.num_params) == (0.25, 0.0, 1, 7)
  assert "| my_run | done | 1 | 50 | 0.2500 ± 0.0000 |" in markdown
  assert (run_dir / "compare.csv").is_file()
  assert (run_dir / "final_vs_swept.png").read_bytes().startswith(PNG_MAGIC)


def test_load_runs_without_sweep_json_discovers_subdirectories(tmp_path):
  for n in (10, 2):
    _write_run(tmp_path / f"n={n}", {1: {"loss": [float(n)]}}, overrides={"n": n})
  _write_run(tmp_path / "no_overrides", {1: {"loss": [0.5]}})
  (tmp_path / "logs").mkdir()  # No run file: not a point.
  runs = compare.load_runs(tmp_path)
  assert [(r.name, r.overrides) for r in runs] == [
    ("n=2", {"n": 2}),
    ("n=10", {"n": 10}),
    ("no_overrides", {}),
  ]
  rows = compare.compare_table(runs)
  assert rows[0].metric == "loss"  # No main_metric and no accuracy.
  assert [row.overrides["n"] for row in rows] == [2, 10, None]


# The table


def test_compare_table_exact_final_and_best(heads_sweep):
  rows = compare.compare_table(compare.load_runs(heads_sweep))
  one, two, four, eight, sixteen = rows
  assert one.metric == "accuracy" and one.overrides["model.num_heads"] == 1
  # num_heads=1, accuracy per seed over steps: [0.5, 0.6] and [0.7, 0.65].
  assert one.final_mean == pytest.approx(0.625) and one.final_std == pytest.approx(0.025)
  assert one.best_mean == pytest.approx(0.65) and one.best_std == pytest.approx(0.05)  # Max.
  # Loss per seed: [2.0, 1.5] and [1.0, 1.2]; best is the min per seed.
  assert one.final_loss_mean == pytest.approx(1.35) and one.final_loss_std == pytest.approx(0.15)
  assert one.best_loss_mean == pytest.approx(1.25) and one.best_loss_std == pytest.approx(0.25)
  assert (one.num_seeds, one.step, one.steps_per_sec, one.num_params) == (2, 200, 12.5, 1000)
  # num_heads=2, three seeds; the final step is the largest one, not the last line written.
  assert two.step == 300 and two.num_seeds == 3
  assert two.final_mean == pytest.approx(0.6) and two.final_std == pytest.approx(math.sqrt(0.06))
  assert two.best_mean == pytest.approx(1.9 / 3)
  assert two.final_loss_mean == pytest.approx(5 / 3)
  assert two.final_loss_std == pytest.approx(math.sqrt(2 / 9))  # Population std (ddof=0).
  assert two.best_loss_mean == pytest.approx(4 / 3) and two.best_loss_std == pytest.approx(
    math.sqrt(2 / 9)
  )
  assert four.status == "failed" and four.error.startswith("FloatingPointError")
  # A NaN seed makes the final mean NaN; the best per seed skips it: min([3, nan]), min([5, 4]).
  assert math.isnan(four.final_loss_mean) and four.best_loss_mean == pytest.approx(3.5)
  assert four.num_params is None and four.steps_per_sec is None
  # Incomplete: the latest eval so far, and steps/s from the train lines.
  assert eight.status == "incomplete" and eight.error is None
  assert (eight.final_mean, eight.final_std, eight.step) == (
    pytest.approx(0.3),
    pytest.approx(0.1),
    100,
  )
  assert eight.steps_per_sec == pytest.approx(9.0)
  assert sixteen.final_mean is None and sixteen.num_seeds is None and sixteen.step is None


def test_an_early_stopped_runs_final_values_are_its_best_parameters_evaluation(tmp_path):
  """An early-stopped run's result is the evaluation of its best parameters (split "best", written
  at the end with the test metrics): the table's final values come from it, test F1 included, not
  from the last eval line (which scores the last parameters, after the run stopped improving)."""
  evals = {100: {"f1": [40.0, 50.0]}, 200: {"f1": [60.0, 55.0]}, 300: {"f1": [50.0, 45.0]}}
  _write_run(tmp_path / "r", evals, summary={"main_metric": "f1"})
  best = {"step": 300, "split": "best", "f1": [60.0, 55.0], "test_f1": [30.0, 20.0]}
  with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
    f.write(json.dumps(best) + "\n")
  (run,) = compare.load_runs(tmp_path / "r")
  (row,) = compare.compare_table([run])
  assert row.final_mean == pytest.approx(57.5) and row.best_mean == pytest.approx(57.5)
  (test_row,) = compare.compare_table([run], "test_f1")
  assert test_row.final_mean == pytest.approx(25.0) and test_row.step == 300


def test_compare_table_metric_override_uses_min_for_loss(heads_sweep):
  rows = compare.compare_table(compare.load_runs(heads_sweep), metric="loss")
  assert rows[0].metric == "loss"
  assert rows[0].final_mean == pytest.approx(1.35) and rows[0].best_mean == pytest.approx(1.25)


def test_higher_is_better_is_the_one_rule_of_attn_runs_metrics():
  assert compare.higher_is_better is metric_rule.higher_is_better


def test_resolve_metric_prefers_summary_main_metric(tmp_path):
  _write_run(
    tmp_path / "a",
    {1: {"loss": [1.0], "accuracy": [0.1], "sequence_accuracy": [0.0]}, 2: {"sequence_accuracy": [0.4]}},
    summary={"main_metric": "sequence_accuracy"},
  )
  _write_run(tmp_path / "b", {1: {"loss": [1.0], "accuracy": [0.3]}})
  runs = compare.load_runs(tmp_path)
  assert compare.resolve_metric(runs) == "sequence_accuracy"
  assert compare.resolve_metric(runs[1:]) == "accuracy"
  assert compare.resolve_metric(runs, "loss") == "loss"
  row = compare.compare_table(runs)[0]
  assert (row.final_mean, row.step) == (pytest.approx(0.4), 2)
  assert (row.final_loss_mean, row.step) == (pytest.approx(1.0), 2)  # Loss only logged at step 1.


def test_resumed_run_keeps_the_last_value_of_a_repeated_step(tmp_path):
  _write_run(tmp_path / "r", {})
  lines = [
    {"step": s, "split": "eval", "accuracy": [a]} for s, a in ((1, 0.1), (2, 0.9), (2, 0.2), (3, 0.3))
  ]
  (tmp_path / "r" / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
  steps, values = compare.eval_curve(compare.load_runs(tmp_path / "r")[0], "accuracy")
  assert steps.tolist() == [1, 2, 3] and values[:, 0].tolist() == [0.1, 0.2, 0.3]


# Markdown and CSV


def test_format_markdown_cells_and_failed_points(heads_sweep):
  markdown = compare.format_markdown(compare.compare_table(compare.load_runs(heads_sweep)))
  lines = markdown.splitlines()
  assert lines[0] == (
    "| point | model.num_heads | status | seeds | step | final accuracy | best accuracy | final loss "
    "| best loss | steps/s | params |"
  )
  assert len(lines) == 2 + 5
  assert lines[2] == (
    "| num_heads=1 | 1 | done | 2 | 200 | 0.6250 ± 0.0250 | 0.6500 ± 0.0500 | 1.3500 ± 0.1500 "
    "| 1.2500 ± 0.2500 | 12.50 | 1,000 |"
  )
  assert "| failed: FloatingPointError: NaN loss at step 150 \\| seed 0 |" in lines[4]
  assert lines[5].startswith("| num_heads=8 | 8 | incomplete | 2 | 100 | 0.3000 ± 0.1000 |")


def test_write_csv_columns_and_values(heads_sweep, tmp_path):
  rows = compare.compare_table(compare.load_runs(heads_sweep))
  compare.write_csv(rows, tmp_path / "out.csv")
  with open(tmp_path / "out.csv", newline="") as f:
    reader = csv.DictReader(f)
    table = list(reader)
  assert reader.fieldnames == [
    "name",
    "model.num_heads",
    "status",
    "metric",
    "num_seeds",
    "step",
    "final_mean",
    "final_std",
    "best_mean",
    "best_std",
    "final_loss_mean",
    "final_loss_std",
    "best_loss_mean",
    "best_loss_std",
    "steps_per_sec",
    "num_params",
    "error",
  ]
  assert [r["model.num_heads"] for r in table] == ["1", "2", "4", "8", "16"]
  one = table[0]
  assert (one["name"], one["status"], one["metric"], one["num_seeds"]) == (
    "num_heads=1",
    "done",
    "accuracy",
    "2",
  )
  assert float(one["final_mean"]) == pytest.approx(0.625) and float(one["final_std"]) == pytest.approx(
    0.025
  )
  assert float(one["best_loss_mean"]) == pytest.approx(1.25) and float(one["steps_per_sec"]) == 12.5
  assert one["error"] == "" and table[4]["final_mean"] == ""
  assert table[2]["error"] == "FloatingPointError: NaN loss at step 150 | seed 0"


def test_row_to_dict_is_the_csv_row_and_fields_win_over_swept_keys(tmp_path):
  _write_sweep(tmp_path, [("a", {"num_seeds": 1, "lr": 0.1}), ("b", {"lr": [1, 2]})])
  _write_run(tmp_path / "a", {3: {"loss": [1.0, 2.0]}}, summary={"num_params": 10.0})
  rows = compare.compare_table(compare.load_runs(tmp_path))
  assert rows[0].overrides == {"num_seeds": 1, "lr": 0.1}
  assert rows[1].overrides == {"num_seeds": None, "lr": [1, 2]}  # b never started: no config.
  first = rows[0].to_dict()
  assert list(first) == ["name", "lr", *compare.ROW_COLUMNS[1:]]
  assert first["num_seeds"] == 2  # The eval lines' two seeds, not the swept value.
  assert (first["name"], first["final_mean"], first["num_params"]) == ("a", 1.5, 10.0)
  compare.write_csv(rows, tmp_path / "out.csv")
  header, first_line, second_line = (tmp_path / "out.csv").read_text().splitlines()
  assert header == "name,lr," + ",".join(compare.ROW_COLUMNS[1:])  # num_seeds is a field, once.
  assert first_line == "a,0.1,done,loss,2,3,1.5,0.5,1.5,0.5,1.5,0.5,1.5,0.5,,10.0,"
  assert second_line == 'b,"[1, 2]",incomplete,loss' + "," * 13  # 13 empty fields.
  assert compare.format_markdown(rows).splitlines()[0].startswith("| point | lr | status | seeds |")


def test_best_follows_the_rule_not_a_summary_direction(tmp_path):
  """A summary.json's "higher_is_better" is a record; `metrics.higher_is_better` decides."""
  evals = {1: {"loss": [3.0], "accuracy": [0.9]}, 2: {"loss": [1.0], "accuracy": [0.1]}}
  _write_run(tmp_path / "r", evals, summary={"main_metric": "loss", "higher_is_better": True})
  (row,) = compare.compare_table(compare.load_runs(tmp_path))
  assert (row.metric, row.final_mean, row.best_mean) == ("loss", 1.0, 1.0)  # The min.
  assert "best = min over eval steps" in compare.compare(tmp_path)
  (row,) = compare.compare_table(compare.load_runs(tmp_path), "accuracy")
  assert (row.final_mean, row.best_mean) == (0.1, 0.9)  # The max.


def test_compare_writes_every_file(heads_sweep):
  markdown = compare.compare(heads_sweep)
  assert (heads_sweep / "compare.md").read_text() == markdown
  assert "Sweep config: `experiments/x.py:smoke`" in markdown
  assert "Points: 5 (2 done, 1 failed, 2 incomplete)" in markdown
  assert (
    "- num_heads=4: failed: FloatingPointError: NaN loss at step 150 | seed 0" in markdown.splitlines()
  )
  assert "| num_heads=1 | 1 | done | 2 | 200 | 0.6250 ± 0.0250 |" in markdown
  for name in ("learning_curves.png", "final_vs_swept.png"):
    assert (heads_sweep / name).read_bytes().startswith(PNG_MAGIC)
  with open(heads_sweep / "compare.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == 5


def test_compare_errors(tmp_path, heads_sweep):
  with pytest.raises(FileNotFoundError):
    compare.compare(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no runs"):
    compare.compare(tmp_path / "empty")
  with pytest.raises(
    ValueError, match="no eval line has metric 'acuracy'; eval metrics: accuracy, loss"
  ):
    compare.compare(heads_sweep, metric="acuracy")


# Plots


def test_plots_skip_failed_points_and_lay_out_numeric_x(heads_sweep, tmp_path):
  runs = compare.load_runs(heads_sweep)
  layout = compare.swept_plot(runs, "accuracy")
  assert (layout.x_key, layout.categorical, layout.ticks) == ("model.num_heads", False, [1, 2, 8])
  (line,) = layout.lines
  assert (line.label, line.x, line.names) == (
    "",
    [1.0, 2.0, 8.0],
    ["num_heads=1", "num_heads=2", "num_heads=8"],
  )
  assert line.mean == pytest.approx([0.625, 0.6, 0.3]) and line.std[0] == pytest.approx(0.025)
  assert compare.plot_learning_curves(runs, tmp_path / "c.png", "loss") == tmp_path / "c.png"
  assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)


def test_plots_without_data_write_nothing(tmp_path):
  _write_run(tmp_path / "a", {}, failed="boom")
  _write_run(tmp_path / "b", {1: {"loss": [1.0]}}, failed="boom")  # Failed: skipped by the swept plot.
  runs = compare.load_runs(tmp_path)
  assert compare.plot_metric_vs_swept(runs, tmp_path / "s.png", "loss") is None
  assert compare.plot_learning_curves(runs[:1], tmp_path / "c.png", "loss") is None
  assert not (tmp_path / "s.png").exists() and not (tmp_path / "c.png").exists()
  markdown = compare.compare(tmp_path)  # Still writes the table.
  assert "- a: failed: boom" in markdown and not (tmp_path / "final_vs_swept.png").exists()
  assert (tmp_path / "learning_curves.png").is_file()  # b's partial curve.


def test_string_valued_sweep_key_is_categorical(tmp_path):
  scales = ["sqrt_d", "none", "d"]
  _write_sweep(tmp_path, [(f"scale={s}", {"model.attention_scale": s}) for s in scales])
  for i, s in enumerate(scales):
    _write_run(
      tmp_path / f"scale={s}", {10: {"loss": [1.0], "accuracy": [0.1 * (i + 1), 0.1 * (i + 1)]}}
    )
  runs = compare.load_runs(tmp_path)
  layout = compare.swept_plot(runs, "accuracy")
  assert (layout.x_key, layout.categorical, layout.ticks) == ("model.attention_scale", True, scales)
  assert layout.lines[0].x == [0.0, 1.0, 2.0] and layout.lines[0].mean == pytest.approx([0.1, 0.2, 0.3])
  markdown = compare.compare(tmp_path)
  assert "| scale=none | none | incomplete | 2 | 10 | 0.2000 ± 0.0000 |" in markdown
  assert (tmp_path / "final_vs_swept.png").read_bytes().startswith(PNG_MAGIC)


def test_two_key_sweep_draws_one_line_per_other_value(tmp_path):
  policies = ["fixed_model_dim", "fixed_head_dim"]
  points = []
  for policy in policies:
    for h in (1, 2, 4):
      points.append((f"h={h},p={policy}", {"model.num_heads": h, "model.head_dim_policy": policy}))
  _write_sweep(tmp_path, points)
  for name, overrides in points:
    acc = overrides["model.num_heads"] / 10 + (
      0.5 if overrides["model.head_dim_policy"] == "fixed_head_dim" else 0
    )
    _write_run(tmp_path / name, {5: {"loss": [1.0], "accuracy": [acc]}}, summary={})
  runs = compare.load_runs(tmp_path)
  layout = compare.swept_plot(runs, "accuracy")
  assert (layout.x_key, layout.categorical, layout.ticks) == ("model.num_heads", False, [1, 2, 4])
  assert [line.label for line in layout.lines] == [f"model.head_dim_policy={p}" for p in policies]
  assert layout.lines[1].x == [1.0, 2.0, 4.0] and layout.lines[1].mean == pytest.approx([0.6, 0.7, 0.9])
  rows = compare.compare_table(runs)
  assert [(r.overrides["model.num_heads"], r.overrides["model.head_dim_policy"]) for r in rows[:2]] == [
    (1, policies[0]),
    (2, policies[0]),
  ]
  compare.compare(tmp_path)
  assert (tmp_path / "final_vs_swept.png").read_bytes().startswith(PNG_MAGIC)
  assert (tmp_path / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_series_tabulates_metrics_side_by_side_and_plots_them(tmp_path):
  root = tmp_path / "positions"
  _write_sweep(root, [("positions=rope", {"model.positions": "rope"}), ("positions=alibi", {})])
  evals = {10: {"loss_at_8": [1.0, 3.0], "loss_at_16": [2.0, 2.0]}, 5: {"loss_at_8": [9.0, 9.0]}}
  _write_run(root / "positions=rope", evals, summary={})
  _write_run(root / "positions=alibi", {10: {"loss_at_8": [1.0, 1.0]}}, summary={})
  markdown, written = compare.write_series(root, ["loss_at_8", "loss_at_16"])
  assert "| point | loss_at_8 | loss_at_16 |" in markdown
  assert "| positions=rope | 2.0000 ± 1.0000 | 2.0000 ± 0.0000 |" in markdown  # The last step.
  assert "| positions=alibi | 1.0000 ± 0.0000 |  |" in markdown  # No value: an empty cell.
  assert written == [root / compare.SERIES_MARKDOWN_FILE, root / compare.SERIES_PLOT_FILE]
  assert (root / compare.SERIES_PLOT_FILE).read_bytes().startswith(PNG_MAGIC)
  at_5, _ = compare.write_series(root, ["loss_at_8"], step=5)
  assert "| positions=rope | 9.0000 ± 0.0000 |" in at_5 and "| positions=alibi |  |" in at_5
  diagnostics, _ = compare.write_series(root, ["encoder/layer_0/entropy"], split="diagnostics")
  assert "| positions=rope | 1.0000 ± 0.0000 |" in diagnostics
  with pytest.raises(ValueError, match=r"no eval line has metric 'loss_at_99'"):
    compare.write_series(root, ["loss_at_8", "loss_at_99"])


def test_welch_p_is_scipys_unequal_variance_t_test_and_series_cells_give_it(tmp_path):
  a, b = np.array([1.0, 1.2, 0.9]), np.array([2.0, 2.5, 1.8])
  # Welch's t and Welch-Satterthwaite degrees of freedom, by hand.
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  t = (a.mean() - b.mean()) / np.sqrt(va + vb)
  dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))

  assert compare.welch_p(a, b) == pytest.approx(2 * scipy.stats.t.sf(abs(t), dof))
  assert compare.welch_p(a[:1], b) is None and compare.welch_p(np.ones(3), np.ones(3)) is None
  root = tmp_path / "variants"
  _write_sweep(root, [("base", {}), ("gated", {"model.attention_gate": "headwise"})])
  _write_run(root / "base", {10: {"loss": list(b)}}, summary={})
  _write_run(root / "gated", {10: {"loss": list(a)}}, summary={})
  markdown, _ = compare.write_series(root, ["loss"], baseline="base")
  p = compare.welch_p(a, b)
  assert f"| gated | 1.0333 ± 0.1247 (p={p:.2g}) |" in markdown
  assert "| base | 2.1000 ± 0.2944 |" in markdown  # No p against itself.
  with pytest.raises(ValueError, match=r"^--baseline: no point named 'nope'; the points are "):
    compare.write_series(root, ["loss"], baseline="nope")


@pytest.mark.parametrize(
  ("name", "number"),
  [("loss_at_128", 128.0), ("encoder/layer_3/grad_norm", 3.0), ("loss", None), ("x1.5", 1.5)],
)
def test_series_x_is_the_number_a_metric_name_ends_with(name, number):
  assert compare._trailing_number(name) == number


def test_phase_changes_find_the_fastest_improvement_per_step_in_either_direction():
  import numpy as np

  steps = np.array([0, 100, 200, 400, 500])
  # Seed 0 falls most between 100 and 200; seed 1 falls most in all (2.0) between 200 and 400, but
  # fastest per step between 400 and 500 (1.5 / 100 > 2.0 / 200).
  loss = np.array([[4.0, 4.0], [3.9, 3.5], [1.0, 3.0], [0.9, 1.0], [0.8, -0.5]])
  changes = compare.phase_changes(steps, loss, "loss")
  assert [(c.seed, c.start, c.end) for c in changes] == [(0, 100, 200), (1, 400, 500)]
  assert changes[0].before == 3.9 and changes[0].after == 1.0
  accuracy = np.array([[0.1], [0.2], [np.nan], [0.9], [0.95]])  # A rise; the NaN is skipped.
  assert [(c.start, c.end) for c in compare.phase_changes(steps, accuracy, "accuracy")] == [(100, 400)]
  assert compare.phase_changes(steps[:1], loss[:1], "loss") == []
