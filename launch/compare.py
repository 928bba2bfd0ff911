"""Compares the runs of a sweep: `python -m launch.compare DIR [--metric=NAME] [--series=A,B,...]`.

DIR is a sweep directory (sweep.json and one subdirectory per point) or a single run directory. Prints
a markdown table of final and best eval metrics (mean ± std over seeds) per point, and writes
DIR/compare.md, DIR/compare.csv, DIR/learning_curves.png and DIR/final_vs_swept.png. See
attn/runs/compare.py for the formats it reads.

`--series=loss_at_64,loss_at_128,...` also tabulates several metrics side by side (a column each, a
row per point) into DIR/series.md and plots them into DIR/series.png, one line per point, against the
number each name ends with; `--split` and `--step` choose which lines (e.g. `--split=diagnostics
--step=0` for the gradient norms at initialisation); `--baseline=POINT` adds to each cell Welch's
t-test p against that point's seeds.

`--phase_change=loss` also finds, per point and seed, the interval between evaluations where the
metric improved fastest (an induction-head run's phase change) and writes it to DIR/phase_change.md.
"""

from __future__ import annotations

import sys

from absl import flags

from attn.runs import compare
from launch import run, start_quietly

_METRIC = flags.DEFINE_string(
  "metric",
  None,
  "Eval metric to compare (e.g. accuracy, sequence_accuracy, loss). Default: the runs' main_metric "
  "from summary.json, else accuracy if logged, else loss.",
)

_SERIES = flags.DEFINE_list("series", [], "Metrics to tabulate side by side and plot (series.md/png).")
_SPLIT = flags.DEFINE_string(
  "split", "eval", "The split whose lines --series reads (eval, diagnostics)."
)
_STEP = flags.DEFINE_integer("step", None, "The step --series reads; default each metric's last.")
_BASELINE = flags.DEFINE_string(
  "baseline", None, "A point's name: --series cells also give Welch's p against its seeds."
)
_PHASE = flags.DEFINE_string(
  "phase_change", None, "A metric whose fastest improvement between evaluations to find per seed."
)


def main(argv: list[str]) -> None:
  start_quietly()
  if len(argv) != 2:
    sys.exit(f"error: expected one directory, got {len(argv) - 1}; usage: python -m launch.compare DIR")
  directory = argv[1]
  try:
    markdown, written = compare.write_report(directory, metric=_METRIC.value)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {' '.join(str(e).split())}")
  if _SERIES.value:
    try:
      series, more = compare.write_series(
        directory, _SERIES.value, split=_SPLIT.value, step=_STEP.value, baseline=_BASELINE.value
      )
    except (OSError, ValueError) as e:
      sys.exit(f"error: {' '.join(str(e).split())}")
    markdown, written = f"{markdown}\n{series}", [*written, *more]
  if _PHASE.value:
    try:
      phase, more = compare.write_phase_changes(directory, _PHASE.value, split=_SPLIT.value)
    except (OSError, ValueError) as e:
      sys.exit(f"error: {' '.join(str(e).split())}")
    markdown, written = f"{markdown}\n{phase}", [*written, *more]
  print(markdown)
  for path in written:
    print(f"wrote {path}")


if __name__ == "__main__":
  run(main)
