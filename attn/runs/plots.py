"""Plots of attention: weight heatmaps (one panel per (layer, head), queries down, keys across),
value heatmaps with a panel per attention kind (head importance, role scores, detector scores,
patching grids), line plots (pruning curves, the logit lens) and bar charts (direct logit
attribution)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def attention_heatmaps(
  weights_LHTS: Sequence[np.ndarray],
  query_tokens: Sequence[str],
  key_tokens: Sequence[str],
  path: str,
  title: str,
) -> None:
  """Writes a PNG grid of attention weights: a row per layer, a column per head.

  Args:
    weights_LHTS: per layer, weights [H, T, S] (rows are queries).
    query_tokens: T labels; key_tokens: S labels.
    path: the PNG to write.
    title: the figure title.
  """
  L, H = len(weights_LHTS), weights_LHTS[0].shape[0]
  T, S = len(query_tokens), len(key_tokens)
  cell = 0.28
  fig = Figure(figsize=(max(3.0, H * (S * cell + 1.2)), max(2.5, L * (T * cell + 1.0)) + 0.6))
  axes = fig.subplots(L, H, squeeze=False)
  for layer, weights_HTS in enumerate(weights_LHTS):
    for head in range(H):
      ax = axes[layer][head]
      ax.imshow(np.asarray(weights_HTS[head]), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
      ax.set_title(f"layer {layer} head {head}", fontsize=8)
      ax.set_xticks(range(S), key_tokens, rotation=90, fontsize=7)
      ax.set_yticks(range(T), query_tokens, fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def heatmap_panels(
  panels: dict[str, np.ndarray],
  path: str,
  title: str,
  *,
  row_labels: dict[str, Sequence[str]] | None = None,
  col_labels: Sequence[str] | None = None,
  cmap: str = "magma",
  annotate: bool = True,
) -> None:
  """Writes a PNG of one heatmap per panel (e.g. layer x head, one panel per attention kind), each
  cell annotated with its value.

  Args:
    panels: name -> [rows, cols] values.
    path: the PNG to write.
    title: the figure title.
    row_labels: per panel, its row labels (default 0, 1, ...); col_labels: shared (default heads).
    cmap: matplotlib's colour map; annotate: write each cell's value (off for wide grids).
  """
  n = len(panels)
  per_col = 0.6 if annotate else 0.3
  widths = [max(3.0, per_col * np.asarray(v).shape[1] + 2.0) for v in panels.values()]
  height = max(2.5, 0.5 * max(np.asarray(v).shape[0] for v in panels.values()) + 1.8)
  fig = Figure(figsize=(sum(widths), height), layout="constrained")
  axes = fig.subplots(1, n, squeeze=False, width_ratios=widths)[0]
  for ax, (name, values) in zip(axes, panels.items(), strict=True):
    values = np.asarray(values, np.float64)
    image = ax.imshow(values, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8)
    rows = (row_labels or {}).get(name) or [str(i) for i in range(values.shape[0])]
    cols = col_labels or [f"head {j}" for j in range(values.shape[1])]
    ax.set_yticks(range(values.shape[0]), rows, fontsize=8)
    ax.set_xticks(range(values.shape[1]), cols, fontsize=8, rotation=45 if col_labels else 0)
    for (i, j), v in np.ndenumerate(values if annotate else np.zeros((0, 0))):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="gray")
    ax.set_title(name, fontsize=9)
  fig.suptitle(title)
  fig.savefig(path, dpi=100)


def line_plot(
  lines: dict[str, tuple[Sequence[float], Sequence[float]]],
  path: str,
  *,
  xlabel: str,
  ylabel: str,
  title: str,
) -> None:
  """Writes a PNG with one line per name: (x, y)."""
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.add_subplot()
  for name, (x, y) in lines.items():
    ax.plot(x, y, marker="o", label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)


def bar_chart(values: dict[str, float], path: str, *, xlabel: str, title: str) -> None:
  """Writes a PNG of one horizontal bar per name (top to bottom in the dict's order)."""
  names = list(values)
  fig = Figure(figsize=(7, max(2.5, 0.28 * len(names) + 1.5)), layout="constrained")
  ax = fig.add_subplot()
  y = np.arange(len(names))
  v = np.asarray([values[n] for n in names], np.float64)
  ax.barh(y, v, color=np.where(v >= 0, "tab:blue", "tab:red"))
  ax.set_yticks(y, names, fontsize=7)
  ax.invert_yaxis()
  ax.axvline(0.0, color="black", linewidth=0.8)
  ax.set_xlabel(xlabel)
  ax.set_title(title, fontsize=10)
  ax.grid(True, axis="x", alpha=0.3)
  fig.savefig(path, dpi=100)
