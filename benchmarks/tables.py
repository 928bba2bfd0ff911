"""Benchmark results and how they print: a suite's rows (raw numbers, for the JSON) and text tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def suite_result(
  title: str, columns: Sequence[tuple[str, str, str]], rows: list[dict], notes: list[str]
) -> dict:
  """A suite's result: its rows (raw numbers, for the JSON) and how to print them."""
  return {"title": title, "columns": [list(c) for c in columns], "rows": rows, "notes": notes}


def format_cell(value, fmt: str) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, str):
    return value
  return format(value, fmt)


def format_table(result: dict[str, Any]) -> str:
  """A suite's result as a text table: title, header, rows, then its notes as a footer."""
  columns = result["columns"]
  header = [c[0] for c in columns]
  body = []
  for row in result["rows"]:
    if row.get("skipped"):
      cells = [format_cell(row.get(key), fmt) for _, key, fmt in columns[:2]]
      body.append([*cells, f"skipped: {row['skipped']}"])
    else:
      body.append([format_cell(row.get(key), fmt) for _, key, fmt in columns])
  widths = [len(h) for h in header]
  for cells in body:
    sized = cells if len(cells) == len(widths) else cells[:2]  # A skip reason spans the rest.
    for i, cell in enumerate(sized):
      widths[i] = max(widths[i], len(cell))

  def line(cells):
    first = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
    if len(cells) < len(widths):  # A skipped row: its reason spans the other columns.
      return "  ".join([*first, cells[2]]).rstrip()
    rest = [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]
    return "  ".join(first + rest).rstrip()

  rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
  lines = [f"== {result['title']}", line(header), rule, *(line(cells) for cells in body), rule]
  lines += [f"  {note}" for note in result["notes"]]
  return "\n".join(lines)
