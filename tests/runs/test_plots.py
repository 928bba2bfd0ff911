"""Tests for attn/runs/plots.py."""

import numpy as np

from attn.runs import plots


def test_attention_heatmaps_writes_a_png_grid(tmp_path):
  rng = np.random.default_rng(0)
  weights = [rng.dirichlet(np.ones(4), size=(2, 3)) for _ in range(2)]  # 2 layers of [H=2, T=3, S=4]
  path = tmp_path / "heat.png"
  plots.attention_heatmaps(weights, ["a", "b", "c"], ["w", "x", "y", "z"], str(path), "title")
  data = path.read_bytes()
  assert data.startswith(b"\x89PNG")
  # Width and height from the IHDR chunk: a 2 x 2 grid is wider and taller than a 1 x 1 one.
  width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
  small = tmp_path / "small.png"
  plots.attention_heatmaps([weights[0][:1]], ["a", "b", "c"], ["w", "x", "y", "z"], str(small), "t")
  small_data = small.read_bytes()
  assert width > int.from_bytes(small_data[16:20], "big")
  assert height > int.from_bytes(small_data[20:24], "big")
