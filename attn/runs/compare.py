"""Compares the runs of a sweep: a table of final and best metrics (mean ± std over seeds) and two plots.

A sweep directory holds `sweep.json` ({"config": ..., "points": [{"name", "overrides"}, ...]}) and one
subdirectory per point, named by the point. Without `sweep.json`, every subdirectory holding a run file
is a point (overrides from its `overrides.json`, else none). A single run directory (with
`metrics.jsonl` directly inside) is also accepted: it is then the one point.

A run directory holds `config.json` (the resolved config), `metrics.jsonl` (one JSON object per line:
"step", "split", "time" and metrics; per-seed metrics are lists with one float per seed), and, when it
ended, `summary.json` (finished) or `status.json` with {"status": "failed", "error": ...}. A run with
neither is incomplete. Unparseable lines (a writer killed mid-line) and unreadable files are skipped.

Final = the eval value at the last eval step; best = per seed, the max over eval steps for metrics that
are better when higher (`attn.runs.metrics.higher_is_better`: "accuracy", "f1", "bleu", "precision",
"recall" in the name), else the min; both then as mean and population std (ddof=0) over seeds. Plots
are drawn with matplotlib's object-oriented API (no pyplot, so no global backend or figure registry is
touched) and saved as PNG through the Agg renderer.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import pathlib
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.stats
from matplotlib.figure import Figure

from attn.runs import files
from attn.runs.metrics import higher_is_better, score_sign

PathLike = files.PathLike

# Output files of `compare`, in DIR.
MARKDOWN_FILE = "compare.md"
CSV_FILE = "compare.csv"
CURVES_FILE = "learning_curves.png"
SWEPT_FILE = "final_vs_swept.png"


@dataclasses.dataclass
class Run:
  """One sweep point as read from its directory.

  Attributes:
    name: the point's name ("num_heads=4"), or the directory name.
    path: the run directory (it may not exist yet for a point sweep.json lists).
    overrides: the swept config values, dotted key to value ({"model.num_heads": 4}).
    config: the resolved config as nested dicts ({} when config.json is absent or unreadable).
    metrics: the parsed lines of metrics.jsonl, in file order.
    summary: summary.json, or None when the run did not finish.
    status: "done" (summary.json present), "failed" (status.json says so) or "incomplete".
    error: the failure message of a failed run, else None.
  """

  name: str
  path: pathlib.Path
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  config: dict[str, Any] = dataclasses.field(default_factory=dict)
  metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  summary: dict[str, Any] | None = None
  status: str = "incomplete"
  error: str | None = None


@dataclasses.dataclass
class SweptLine:
  """One line of the metric-vs-swept plot: the points sharing the values of the non-x swept keys.

  Attributes:
    label: "key=value, ..." for the non-x keys that vary ("" when x is the only one).
    x: plot positions, increasing (the values themselves, or 0, 1, ... for non-numeric x).
    mean: the final metric's mean over seeds at each x.
    std: its population std over seeds.
    names: the point names, for reference.
  """

  label: str
  x: list[float]
  mean: list[float]
  std: list[float]
  names: list[str]


@dataclasses.dataclass
class SweptPlot:
  """What `plot_metric_vs_swept` draws.

  Attributes:
    x_key: the override key on x, or None when points have no overrides (x is then the point name).
    categorical: whether x values are names placed at 0, 1, ... rather than numbers.
    ticks: for categorical x, the tick labels at 0, 1, ...; for numeric x, the distinct values.
    lines: one line per combination of the other swept keys' values.
  """

  x_key: str | None
  categorical: bool
  ticks: list[Any]
  lines: list[SweptLine]


@dataclasses.dataclass
class Row:
  """One run's line of the comparison table (compare.md, compare.csv). Missing values are None.

  Attributes:
    name: the point's name.
    status: "done", "failed" or "incomplete".
    metric: the eval metric the row reports ("accuracy").
    num_seeds: seeds in the eval lines, else summary.json's or config.json's num_seeds.
    step: the last eval step of the metric, else of the loss.
    final_mean, final_std: the metric at the last eval step, mean and population std over seeds.
    best_mean, best_std: per seed the best value over eval steps (the max when `higher_is_better`, else
      the min; NaNs skipped), then mean and std over seeds.
    final_loss_mean, final_loss_std, best_loss_mean, best_loss_std: the same for the eval loss.
    steps_per_sec: from summary.json, else the mean over the train lines.
    num_params: from summary.json, as written there.
    error: a failed run's message.
    overrides: the swept values, one per swept key of the table's runs ("model.num_heads" -> 4): the
      run's override, else its resolved config's value there.
  """

  name: str
  status: str
  metric: str
  num_seeds: int | None = None
  step: int | None = None
  final_mean: float | None = None
  final_std: float | None = None
  best_mean: float | None = None
  best_std: float | None = None
  final_loss_mean: float | None = None
  final_loss_std: float | None = None
  best_loss_mean: float | None = None
  best_loss_std: float | None = None
  steps_per_sec: float | None = None
  num_params: int | None = None
  error: str | None = None
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    """The row flat, in CSV column order: "name", the swept keys, then the other fields (a swept key
    named like a field, "num_seeds", is left out: the field wins)."""
    overrides = {key: value for key, value in self.overrides.items() if key not in ROW_COLUMNS}
    return {"name": self.name, **overrides, **{key: getattr(self, key) for key in ROW_COLUMNS[1:]}}


# The fields of a row other than its overrides, in table and CSV order.
ROW_COLUMNS = tuple(field.name for field in dataclasses.fields(Row) if field.name != "overrides")


# Loading


def _load_run(path: pathlib.Path, name: str, overrides: dict[str, Any] | None) -> Run:
  """Reads one run directory; `overrides` None means read them from its overrides.json."""
  if overrides is None:
    overrides = files.read_json(path / files.OVERRIDES_FILE)
  config = files.read_json(path / files.CONFIG_FILE)
  summary = files.read_json(path / files.SUMMARY_FILE)
  status_file = files.read_json(path / files.STATUS_FILE)
  run = Run(
    name=name,
    path=path,
    overrides=dict(overrides) if isinstance(overrides, dict) else {},
    config=config if isinstance(config, dict) else {},
    metrics=files.read_lines(path / files.METRICS_FILE),
    summary=summary if isinstance(summary, dict) else None,
  )
  if run.summary is not None and run.summary.get("status", "done") != "failed":
    run.status = "done"
  elif isinstance(status_file, dict) and status_file.get("status") == "failed":
    run.status = "failed"
    run.error = " ".join(str(status_file.get("error", "unknown error")).split())
  elif run.summary is not None:  # A summary that itself says "failed".
    run.status = "failed"
    run.error = " ".join(str(run.summary.get("error", "unknown error")).split())
  return run


def _natural_key(name: str) -> list[Any]:
  """Sorts "num_heads=2" before "num_heads=16"."""
  return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def load_runs(directory: PathLike) -> list[Run]:
  """Loads every point of a sweep directory, or the one run of a run directory.

  Args:
    directory: a sweep directory (with sweep.json, or with one subdirectory per run) or a run directory
      (with metrics.jsonl).

  Returns:
    The runs, in sweep.json's order, else in natural order of the subdirectory names; [] when the
    directory holds none. A point listed in sweep.json whose directory does not exist yet is an
    incomplete run with no metrics.

  Raises:
    FileNotFoundError: when `directory` is not a directory.
  """
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(f"{directory}: no such directory")
  if (root / files.METRICS_FILE).is_file():
    return [_load_run(root, root.resolve().name, None)]
  sweep = files.read_json(root / files.SWEEP_FILE)
  if isinstance(sweep, dict) and isinstance(sweep.get("points"), list):
    runs = []
    for point in sweep["points"]:
      if not isinstance(point, dict) or "name" not in point:
        continue
      name = str(point["name"])
      overrides = point.get("overrides")
      runs.append(_load_run(root / name, name, overrides if isinstance(overrides, dict) else None))
    return runs
  subdirs = [p for p in root.iterdir() if p.is_dir() and any((p / f).is_file() for f in files.RUN_FILES)]
  return [_load_run(p, p.name, None) for p in sorted(subdirs, key=lambda p: _natural_key(p.name))]


def sweep_config(directory: PathLike) -> str | None:
  """The "config" entry of DIR/sweep.json ("experiments/heads.py:smoke"), or None."""
  sweep = files.read_json(pathlib.Path(directory) / files.SWEEP_FILE)
  config = sweep.get("config") if isinstance(sweep, dict) else None
  return str(config) if config is not None else None


# Metrics


def eval_curve(run: Run, metric: str, split: str = "eval") -> tuple[np.ndarray, np.ndarray]:
  """The values of `metric` on the `split` lines of a run, by step.

  A step logged twice (a run resumed from a checkpoint) keeps its last value; lines whose number of
  seeds differs from the last line's are dropped. A plain float counts as one seed.

  Args:
    run: the run.
    metric: the metric name ("accuracy").
    split: the "split" of the lines to read.

  Returns:
    steps [eval steps] (int) and values [eval steps, seeds] (float, NaN for nulls), sorted by step;
    shapes (0,) and (0, 0) when no line has the metric.
  """
  by_step: dict[int, np.ndarray] = {}
  for line in run.metrics:
    if line.get("split") != split or metric not in line or not isinstance(line.get("step"), int | float):
      continue
    value = line[metric]
    values = value if isinstance(value, list) else [value]
    try:
      by_step[int(line["step"])] = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
      continue
  if not by_step:
    return np.zeros((0,), dtype=int), np.zeros((0, 0))
  num_seeds = by_step[max(by_step)].size
  steps = sorted(step for step, values in by_step.items() if values.size == num_seeds)
  return np.asarray(steps, dtype=int), np.stack([by_step[step] for step in steps])


def _mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
  """Mean and population std (ddof=0) of a 1-D array, or (None, None) when empty."""
  if values.size == 0:
    return None, None
  return float(np.mean(values)), float(np.std(values))


class _FinalAndBest(NamedTuple):
  """A metric's last eval step, its number of seeds, and its final and best values over seeds."""

  step: int | None = None
  num_seeds: int | None = None
  final: tuple[float | None, float | None] = (None, None)  # Mean, std.
  best: tuple[float | None, float | None] = (None, None)


def _final_and_best(run: Run, metric: str) -> _FinalAndBest:
  """Final and best (per seed over steps) eval values of a metric, as mean and std over seeds. The
  final values of an early-stopped run are its result: the evaluation of its best parameters (split
  `files.BEST_SPLIT`, where its test metrics are), not its last eval line."""
  steps, values = eval_curve(run, metric)
  result_steps, result_values = eval_curve(run, metric, files.BEST_SPLIT)
  if result_steps.size and (steps.size == 0 or values.shape[1] == result_values.shape[1]):
    steps = np.concatenate([steps, result_steps[-1:]])
    values = np.concatenate([values.reshape(-1, result_values.shape[1]), result_values[-1:]])
  if steps.size == 0:
    return _FinalAndBest()
  with warnings.catch_warnings():  # All-NaN seeds (a diverged run) give NaN, which is what we want.
    warnings.simplefilter("ignore", RuntimeWarning)
    best = np.nanmax(values, axis=0) if higher_is_better(metric) else np.nanmin(values, axis=0)
  return _FinalAndBest(int(steps[-1]), int(values.shape[1]), _mean_std(values[-1]), _mean_std(best))


def _eval_metric_names(runs: Sequence[Run]) -> set[str]:
  """Every key of every eval line, less the bookkeeping ones."""
  names = set()
  for run in runs:
    for line in run.metrics:
      if line.get("split") == "eval":
        names.update(line)
  return names - {"step", "split", "time"}


def resolve_metric(runs: Sequence[Run], metric: str | None = None) -> str:
  """The metric a comparison reports: `metric` if given, else the runs' summary main_metric (the most
  common one), else "accuracy" if an eval line has it, else "loss"."""
  if metric:
    return metric
  main_metrics = [
    str(run.summary["main_metric"]) for run in runs if run.summary and run.summary.get("main_metric")
  ]
  if main_metrics:
    return collections.Counter(main_metrics).most_common(1)[0][0]
  return "accuracy" if "accuracy" in _eval_metric_names(runs) else "loss"


def _steps_per_sec(run: Run) -> float | None:
  """From summary.json, else the mean over train lines of their steps_per_sec."""
  if run.summary and isinstance(run.summary.get("steps_per_sec"), int | float):
    return float(run.summary["steps_per_sec"])
  values = []
  for line in run.metrics:
    value = line.get("steps_per_sec")
    if line.get("split") == "train" and value is not None:
      values.extend(value if isinstance(value, list) else [value])
  try:
    return float(np.mean(np.asarray(values, dtype=float))) if values else None
  except (TypeError, ValueError):
    return None


def _get_dotted(config: dict[str, Any], key: str) -> Any:
  """config["model"]["num_heads"] for "model.num_heads"; None when absent."""
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def swept_keys(runs: Sequence[Run]) -> list[str]:
  """The override keys of all runs, in order of first appearance."""
  return list(dict.fromkeys(key for run in runs for key in run.overrides))


def _swept_value(run: Run, key: str) -> Any:
  """The run's override for `key`, else the resolved config's value there."""
  return run.overrides[key] if key in run.overrides else _get_dotted(run.config, key)


def _row(run: Run, metric: str, keys: Sequence[str]) -> Row:
  """The table row of one run (see `Row`), with its values of the swept `keys`."""
  main, loss = _final_and_best(run, metric), _final_and_best(run, "loss")
  num_seeds = main.num_seeds or loss.num_seeds
  if num_seeds is None:
    num_seeds = (run.summary or {}).get("num_seeds") or run.config.get("num_seeds")
  return Row(
    name=run.name,
    status=run.status,
    metric=metric,
    num_seeds=int(num_seeds) if isinstance(num_seeds, int | float) else None,
    step=main.step if main.step is not None else loss.step,
    final_mean=main.final[0],
    final_std=main.final[1],
    best_mean=main.best[0],
    best_std=main.best[1],
    final_loss_mean=loss.final[0],
    final_loss_std=loss.final[1],
    best_loss_mean=loss.best[0],
    best_loss_std=loss.best[1],
    steps_per_sec=_steps_per_sec(run),
    num_params=(run.summary or {}).get("num_params"),
    error=run.error,
    overrides={key: _swept_value(run, key) for key in keys},
  )


def compare_table(runs: Sequence[Run], metric: str | None = None) -> list[Row]:
  """One row per run: swept values, status, final and best eval metric and loss, speed, size.

  Args:
    runs: the runs, from `load_runs`.
    metric: the eval metric to report; None resolves it with `resolve_metric`.

  Returns:
    The rows, in the runs' order; every row has a value (maybe None) for every swept key of `runs`.
  """
  metric = resolve_metric(runs, metric)
  keys = swept_keys(runs)
  return [_row(run, metric, keys) for run in runs]


# Table output


def _override_columns(rows: Sequence[Row]) -> list[str]:
  """The swept keys of the rows, in order of first appearance, less any named like a field."""
  return list(dict.fromkeys(key for row in rows for key in row.overrides if key not in ROW_COLUMNS))


def _cell(value: Any) -> str:
  """A markdown cell: None is empty, pipes are escaped, everything fits on one line."""
  if value is None:
    return ""
  text = json.dumps(value) if isinstance(value, list | dict) else str(value)
  return " ".join(text.split()).replace("|", "\\|")


def _mean_std_cell(mean: float | None, std: float | None) -> str:
  """ "0.8123 ± 0.0121", or "" when there is no value."""
  if mean is None:
    return ""
  return f"{mean:.4f} ± {std:.4f}"


def _status_cell(row: Row) -> str:
  """ "done", "incomplete", or "failed: <error>"."""
  if row.status == "failed":
    return _cell(f"failed: {row.error or 'unknown error'}")
  return _cell(row.status)


def format_markdown(rows: Sequence[Row]) -> str:
  """A markdown table of `compare_table` rows; a failed run's status cell reads "failed: <error>".

  Cells are "mean ± std" over seeds with 4 decimals; the loss columns are left out when the metric is
  the loss itself.
  """
  metric = next((row.metric for row in rows if row.metric), "metric")
  columns: list[tuple[str, Callable[[Row], str]]] = [("point", lambda r: _cell(r.name))]
  columns += [(key, lambda r, key=key: _cell(r.overrides.get(key))) for key in _override_columns(rows)]
  columns += [
    ("status", _status_cell),
    ("seeds", lambda r: _cell(r.num_seeds)),
    ("step", lambda r: _cell(r.step)),
    (f"final {metric}", lambda r: _mean_std_cell(r.final_mean, r.final_std)),
    (f"best {metric}", lambda r: _mean_std_cell(r.best_mean, r.best_std)),
  ]
  if metric != "loss":
    columns += [
      ("final loss", lambda r: _mean_std_cell(r.final_loss_mean, r.final_loss_std)),
      ("best loss", lambda r: _mean_std_cell(r.best_loss_mean, r.best_loss_std)),
    ]
  columns += [
    ("steps/s", lambda r: "" if r.steps_per_sec is None else f"{r.steps_per_sec:.2f}"),
    ("params", lambda r: "" if r.num_params is None else f"{int(r.num_params):,}"),
  ]
  lines = [
    "| " + " | ".join(_cell(title) for title, _ in columns) + " |",
    "|" + "|".join("---" for _ in columns) + "|",
  ]
  lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
  """None as an empty field, lists and dicts as JSON, the rest as is (floats in full precision)."""
  if value is None:
    return ""
  if isinstance(value, list | dict):
    return json.dumps(value)
  return value


def write_csv(rows: Sequence[Row], path: PathLike) -> None:
  """Writes `compare_table` rows as CSV: name, the swept keys, then the other fields of `Row` (separate
  mean and std columns; empty fields for missing values)."""
  fieldnames = ["name", *_override_columns(rows), *ROW_COLUMNS[1:]]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    for row in rows:
      values = row.to_dict()
      writer.writerow({key: _csv_value(values.get(key)) for key in fieldnames})


# Plots


def _label(run: Run) -> str:
  """The legend label of a run: its name, with its status when it did not finish."""
  return run.name if run.status == "done" else f"{run.name} ({run.status})"


def plot_learning_curves(runs: Sequence[Run], path: PathLike, metric: str) -> pathlib.Path | None:
  """Plots the eval `metric` against step, one line per run (mean over seeds, ±std band).

  Failed and incomplete runs are drawn dashed, with their status in the legend.

  Returns:
    The PNG's path, or None (nothing written) when no run has the metric.
  """
  curves = [(run, *eval_curve(run, metric)) for run in runs]
  curves = [(run, steps, values) for run, steps, values in curves if steps.size]
  if not curves:
    return None
  fig = Figure(figsize=(8 if len(curves) <= 6 else 11, 5), layout="constrained")
  ax = fig.add_subplot()
  for run, steps, values in curves:
    mean, std = values.mean(axis=1), values.std(axis=1)
    (line,) = ax.plot(
      steps,
      mean,
      label=_label(run),
      linestyle="-" if run.status == "done" else "--",
      marker="o" if steps.size <= 3 else None,
    )
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
  ax.set_xlabel("step")
  ax.set_ylabel(f"eval {metric}")
  ax.set_title(f"eval {metric} (mean ± std over seeds)")
  ax.grid(True, alpha=0.3)
  if len(curves) > 6:  # Many curves: keep the legend off them.
    ax.legend(
      fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 + len(curves) // 25
    )
  else:
    ax.legend(fontsize="small")
  fig.savefig(path, format="png", dpi=100)
  return pathlib.Path(path)


def _is_number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def swept_plot(runs: Sequence[Run], metric: str) -> SweptPlot | None:
  """Lays out the final `metric` against the swept values, for `plot_metric_vs_swept`.

  x is the override key with the most distinct values among runs with data (the first such key on a
  tie); there is one line per combination of the other keys' values. Non-numeric x values are placed at
  0, 1, ... in order of first appearance. Failed runs are skipped.

  Returns:
    The layout, or None when no run that did not fail has the metric.
  """
  points = []
  for run in runs:
    if run.status == "failed":
      continue
    final = _final_and_best(run, metric).final
    if final[0] is not None:
      points.append((run, *final))
  if not points:
    return None
  keys = swept_keys([run for run, _, _ in points])
  values = {key: [_swept_value(run, key) for run, _, _ in points] for key in keys}
  distinct = {
    key: list(dict.fromkeys(json.dumps(v, sort_keys=True) for v in values[key])) for key in keys
  }
  if keys:
    x_key: str | None = max(keys, key=lambda key: len(distinct[key]))  # max keeps the first on ties.
    xs = values[x_key]
  else:
    x_key, xs = None, [run.name for run, _, _ in points]
  categorical = not all(_is_number(x) for x in xs)
  if categorical:
    names = list(dict.fromkeys(_cell(x) for x in xs))
    positions = [float(names.index(_cell(x))) for x in xs]
    ticks: list[Any] = names
  else:
    positions = [float(x) for x in xs]
    ticks = sorted(set(xs))
  other_keys = [key for key in keys if key != x_key and len(distinct[key]) > 1]
  groups: dict[str, list[int]] = {}
  for i in range(len(points)):
    label = ", ".join(f"{key}={_cell(values[key][i])}" for key in other_keys)
    groups.setdefault(label, []).append(i)
  lines = []
  for label, indices in groups.items():
    indices = sorted(indices, key=lambda i: positions[i])
    lines.append(
      SweptLine(
        label=label,
        x=[positions[i] for i in indices],
        mean=[points[i][1] for i in indices],
        std=[points[i][2] for i in indices],
        names=[points[i][0].name for i in indices],
      )
    )
  return SweptPlot(x_key=x_key, categorical=categorical, ticks=ticks, lines=lines)


def plot_metric_vs_swept(runs: Sequence[Run], path: PathLike, metric: str) -> pathlib.Path | None:
  """Plots the final eval `metric` (mean, std error bars) against the swept value (see `swept_plot`).

  A numeric x spanning a factor of 10 or more, all positive, is drawn on a log axis (base 2 for
  integers, as head counts are).

  Returns:
    The PNG's path, or None (nothing written) when no run that did not fail has the metric.
  """
  layout = swept_plot(runs, metric)
  if layout is None:
    return None
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.add_subplot()
  for line in layout.lines:
    ax.errorbar(line.x, line.mean, yerr=line.std, marker="o", capsize=4, label=line.label or None)
  if layout.categorical:
    ax.set_xticks(range(len(layout.ticks)), [str(t) for t in layout.ticks])
    ax.set_xlim(-0.5, len(layout.ticks) - 0.5)
  else:
    low, high = min(layout.ticks), max(layout.ticks)
    if low > 0 and high / low >= 10:
      ax.set_xscale("log", base=2 if all(float(t).is_integer() for t in layout.ticks) else 10)
    if len(layout.ticks) <= 12:
      ax.set_xticks([float(t) for t in layout.ticks], [_cell(t) for t in layout.ticks])
      ax.minorticks_off()
  ax.set_xlabel(layout.x_key or "point")
  ax.set_ylabel(f"final eval {metric}")
  ax.set_title(f"final eval {metric} (mean ± std over seeds)")
  ax.grid(True, alpha=0.3)
  if any(line.label for line in layout.lines):
    ax.legend(fontsize="small")
  fig.savefig(path, format="png", dpi=100)
  return pathlib.Path(path)


# Several metrics side by side ("series"): e.g. the loss at each evaluation length, or each layer's
# gradient norm at initialisation.
SERIES_MARKDOWN_FILE = "series.md"
SERIES_PLOT_FILE = "series.png"


def _trailing_number(name: str) -> float | None:
  match = re.search(r"(\d+(?:\.\d+)?)$", name) or re.search(r"_(\d+)(?:/[^/\d]*)?$", name)
  return float(match.group(1)) if match else None


def _series_seeds(run: Run, metric: str, split: str, step: int | None) -> np.ndarray | None:
  """The per-seed values of `metric` at `step` (None: its last logged step), or None."""
  steps, values = eval_curve(run, metric, split)
  if steps.size == 0 or (step is not None and step not in steps):
    return None
  return values[-1] if step is None else values[list(steps).index(step)]


def series_values(
  run: Run, metrics: Sequence[str], *, split: str = "eval", step: int | None = None
) -> list[tuple[float | None, float | None]]:
  """(mean, std) over seeds of each metric at `step` (None: each metric's last logged step) of the
  `split` lines; (None, None) where the run has no value."""
  out = []
  for metric in metrics:
    row = _series_seeds(run, metric, split, step)
    out.append((None, None) if row is None else _mean_std(row))
  return out


def welch_p(values: np.ndarray, baseline: np.ndarray) -> float | None:
  """The two-sided p-value of Welch's t-test (unequal variances) that `values` and `baseline` (one
  number per seed each) have the same mean; None with fewer than two finite seeds on either side or
  when both have zero variance (the test is undefined)."""
  a = np.asarray(values, float)[np.isfinite(values)]
  b = np.asarray(baseline, float)[np.isfinite(baseline)]
  if a.size < 2 or b.size < 2 or (np.var(a) == 0 and np.var(b) == 0):
    return None
  return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def series_markdown(
  runs: Sequence[Run],
  metrics: Sequence[str],
  *,
  split: str = "eval",
  step: int | None = None,
  baseline: str | None = None,
) -> str:
  """A markdown table: a row per run that did not fail, a column per metric (mean ± std over
  seeds at `step`, or at each metric's last step). With `baseline` (a point's name), each other
  point's cell also gives Welch's p against that point's seeds (`welch_p`).

  Raises:
    ValueError: when no run is named `baseline`.
  """
  reference = None
  if baseline is not None:
    reference = next((run for run in runs if run.name == baseline), None)
    if reference is None:
      names = ", ".join(run.name for run in runs)
      raise ValueError(f"--baseline: no point named {baseline!r}; the points are {names}")
  where = f"step {step}" if step is not None else "the last step"
  against = f"; p: Welch's t-test against {baseline}" if baseline is not None else ""
  lines = [
    f"Series: {split} metrics at {where}, mean ± std over seeds{against}", "",
    "| point | " + " | ".join(_cell(m) for m in metrics) + " |",
    "|" + "---|" * (len(metrics) + 1),
  ]  # fmt: skip
  for run in runs:
    if run.status == "failed":
      continue
    cells = []
    for metric in metrics:
      row = _series_seeds(run, metric, split, step)
      cell = _mean_std_cell(*((None, None) if row is None else _mean_std(row)))
      if reference is not None and run is not reference and row is not None:
        base = _series_seeds(reference, metric, split, step)
        p = None if base is None else welch_p(row, base)
        if p is not None:
          cell += f" (p={p:.2g})"
      cells.append(cell)
    lines.append(f"| {_cell(run.name)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_series(
  runs: Sequence[Run], metrics: Sequence[str], path: PathLike, *, split: str = "eval",
  step: int | None = None,
) -> pathlib.Path | None:  # fmt: skip
  """One line per run: each metric's value (mean, std error bars) against the number its name ends
  with (loss_at_128 -> 128, on a log axis when they span 10x or more; layer_3/grad_norm -> 3), or
  against the metrics' order when not all names carry one. None (nothing written) without data."""
  numbers = [_trailing_number(m) for m in metrics]
  numeric = all(n is not None for n in numbers) and len(set(numbers)) == len(numbers)
  xs = numbers if numeric else list(range(len(metrics)))
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.add_subplot()
  drawn = False
  for run in runs:
    if run.status == "failed":
      continue
    values = series_values(run, metrics, split=split, step=step)
    points = [(x, m, s) for x, (m, s) in zip(xs, values, strict=True) if m is not None]
    if not points:
      continue
    x, mean, std = zip(*points, strict=True)
    ax.errorbar(x, mean, yerr=std, marker="o", capsize=4, label=_label(run))
    drawn = True
  if not drawn:
    return None
  if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
    ax.set_xscale("log", base=2)
  ax.set_xticks(
    xs,
    [str(int(x)) if numeric and float(x).is_integer() else m for x, m in zip(xs, metrics, strict=True)],
  )
  ax.minorticks_off()
  ax.set_xlabel(_common_affix(metrics) if numeric else "metric")
  ax.set_ylabel(f"{split} value at {'step ' + str(step) if step is not None else 'the last step'}")
  ax.set_title(f"{split}: {', '.join(metrics[:3])}{', ...' if len(metrics) > 3 else ''}")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize="small")
  fig.savefig(path, format="png", dpi=100)
  return pathlib.Path(path)


def _common_affix(metrics: Sequence[str]) -> str:
  """What the metric names share around their numbers ("loss_at_*"), for an axis label."""
  return re.sub(r"\d+", "*", metrics[0])


def write_series(
  directory: PathLike,
  metrics: Sequence[str],
  *,
  split: str = "eval",
  step: int | None = None,
  baseline: str | None = None,
) -> tuple[str, list[pathlib.Path]]:
  """Writes series.md and series.png (see `series_markdown`, `plot_series`) into `directory`;
  `baseline` adds Welch's p against that point.

  Raises:
    FileNotFoundError, ValueError: as `write_report`; also when no `split` line of any run has one
      of the metrics (naming it).
  """
  root = pathlib.Path(directory)
  runs = load_runs(root)
  if not runs:
    raise ValueError(f"{directory}: no runs")
  available = set()
  for run in runs:
    for line in run.metrics:
      if line.get("split") == split:
        available.update(line)
  missing = [m for m in metrics if m not in available]
  if missing:
    raise ValueError(f"{directory}: no {split} line has metric {missing[0]!r}")
  markdown = series_markdown(runs, metrics, split=split, step=step, baseline=baseline)
  (root / SERIES_MARKDOWN_FILE).write_text(markdown, encoding="utf-8")
  written = [root / SERIES_MARKDOWN_FILE]
  plot = plot_series(runs, metrics, root / SERIES_PLOT_FILE, split=split, step=step)
  if plot is not None:
    written.append(plot)
  return markdown, written


# Phase changes

PHASE_MARKDOWN_FILE = "phase_change.md"


class PhaseChange(NamedTuple):
  """The interval between two consecutive evaluations over which a seed's metric improved fastest."""

  seed: int
  start: int  # The step before the interval.
  end: int  # The step after it.
  before: float  # The metric at `start`.
  after: float  # The metric at `end`.


def phase_changes(steps: np.ndarray, values: np.ndarray, metric: str) -> list[PhaseChange]:
  """Per seed, where `metric` improved fastest per step between consecutive evaluations (a fall for
  a metric better when lower, a rise for one better when higher): the step of an abrupt transition
  such as the induction-head phase change (Olsson et al. 2022: the steepest fall of the loss), found
  without reading the curve by eye. The answer is only as fine as the evaluation interval.

  Args:
    steps: [E] eval steps, increasing (`eval_curve`'s).
    values: [E, seeds] the metric at them; NaNs (a missing value) are skipped.
    metric: its name, for the direction (`attn.runs.metrics.score_sign`).

  Returns:
    One PhaseChange per seed with at least two finite values.
  """
  sign = score_sign(metric)
  out = []
  for seed in range(values.shape[1] if values.ndim == 2 else 0):
    finite = np.isfinite(values[:, seed])
    s, v = steps[finite], values[finite, seed]
    if s.size < 2:
      continue
    rates = sign * np.diff(v) / np.diff(s)
    i = int(np.argmax(rates))
    out.append(PhaseChange(seed, int(s[i]), int(s[i + 1]), float(v[i]), float(v[i + 1])))
  return out


def phase_markdown(runs: Sequence[Run], metric: str, split: str = "eval") -> str:
  """A markdown table: per run and seed, the interval of the fastest improvement of `metric`."""
  lines = [
    f"Phase change: where {split} {metric} improved fastest per step between evaluations", "",
    f"| point | seed | from step | to step | {metric} before | {metric} after |",
    "|---|---|---|---|---|---|",
  ]  # fmt: skip
  for run in runs:
    steps, values = eval_curve(run, metric, split)
    for change in phase_changes(steps, values, metric):
      lines.append(
        f"| {_cell(run.name)} | {change.seed} | {change.start} | {change.end} | "
        f"{change.before:.4g} | {change.after:.4g} |"
      )
  return "\n".join(lines) + "\n"


def write_phase_changes(
  directory: PathLike, metric: str, split: str = "eval"
) -> tuple[str, list[pathlib.Path]]:
  """Writes phase_change.md (see `phase_markdown`) into `directory`.

  Raises:
    FileNotFoundError, ValueError: as `write_report`; also when no `split` line has `metric`.
  """
  root = pathlib.Path(directory)
  runs = load_runs(root)
  if not runs:
    raise ValueError(f"{directory}: no runs")
  if not any(eval_curve(run, metric, split)[0].size for run in runs):
    raise ValueError(f"{directory}: no {split} line has metric {metric!r}")
  markdown = phase_markdown(runs, metric, split)
  (root / PHASE_MARKDOWN_FILE).write_text(markdown, encoding="utf-8")
  return markdown, [root / PHASE_MARKDOWN_FILE]


# The whole comparison


def write_report(directory: PathLike, metric: str | None = None) -> tuple[str, list[pathlib.Path]]:
  """Like `compare`, and also returns the paths it wrote (a plot without data is not written).

  Raises:
    FileNotFoundError: when `directory` is not a directory.
    ValueError: when it holds no runs, or when `metric` was given but no eval line of any run has it
      while some eval lines exist (a misspelt name).
  """
  root = pathlib.Path(directory)
  runs = load_runs(root)
  if not runs:
    raise ValueError(
      f"{directory}: no runs (no sweep.json, no metrics.jsonl, no subdirectory with config.json or "
      "metrics.jsonl)"
    )
  available = _eval_metric_names(runs)
  if metric and available and metric not in available:
    raise ValueError(
      f"{directory}: no eval line has metric {metric!r}; eval metrics: {', '.join(sorted(available))}"
    )
  metric = resolve_metric(runs, metric)
  rows = compare_table(runs, metric)
  counts = collections.Counter(run.status for run in runs)
  parts = [f"# Run comparison: {root}", ""]
  config = sweep_config(root)
  if config:
    parts.append(f"Sweep config: `{config}`  ")
  parts += [
    f"Points: {len(runs)} ({counts['done']} done, {counts['failed']} failed, "
    f"{counts['incomplete']} incomplete)  ",
    f"Metric: eval {metric}; final = last eval step, best = "
    f"{'max' if higher_is_better(metric) else 'min'} over eval steps per seed; mean ± std over seeds",
    "",
    format_markdown(rows),
  ]
  failed = [run for run in runs if run.status == "failed"]
  if failed:
    parts.append("Failed points:\n")
    parts += [f"- {run.name}: failed: {run.error or 'unknown error'}" for run in failed]
    parts.append("")
  markdown = "\n".join(parts)
  written = []
  (root / MARKDOWN_FILE).write_text(markdown, encoding="utf-8")
  written.append(root / MARKDOWN_FILE)
  write_csv(rows, root / CSV_FILE)
  written.append(root / CSV_FILE)
  for plot, name in ((plot_learning_curves, CURVES_FILE), (plot_metric_vs_swept, SWEPT_FILE)):
    out = plot(runs, root / name, metric)
    if out is not None:
      written.append(out)
  return markdown, written


def compare(directory: PathLike, metric: str | None = None) -> str:
  """Compares the runs of `directory` and writes compare.md, compare.csv, learning_curves.png and
  final_vs_swept.png there (a plot only when some run has data for it).

  Args:
    directory: a sweep or run directory (see `load_runs`).
    metric: the eval metric; None for the runs' main_metric, else "accuracy", else "loss".

  Returns:
    The markdown: a header, the table, and a line per failed point.

  Raises:
    FileNotFoundError: when `directory` is not a directory.
    ValueError: when it holds no runs, or `metric` is in no eval line.
  """
  return write_report(directory, metric)[0]
