"""Attention heatmaps: one panel per (layer, head), queries down, keys across."""

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
