"""Tests for attn/runs/report.py: the page is one self-contained file with the analysis's data, and
(slow tier) it loads in real headless Chromium without script errors and draws the pattern view.

Chromium is Debian's package (/usr/bin/chromium); where it is absent the browser tests skip, saying
so. CI installs it (README.md's test command)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess

import numpy as np
import pytest

from attn.runs import plots, report

CHROMIUM = "/usr/bin/chromium"
L, H = 2, 2


def _view(title, tokens, seed=0):
  rng = np.random.default_rng(seed)
  T = len(tokens)
  logits = rng.normal(size=(L, H, T, T)) * 3
  logits = np.where(np.tri(T, dtype=bool), logits, -np.inf)
  patterns = np.exp(logits - logits.max(-1, keepdims=True))
  patterns /= patterns.sum(-1, keepdims=True)
  return {
    "title": title,
    "query_tokens": tokens,
    "key_tokens": tokens,
    "layers": [f"layer {i}" for i in range(L)],
    "patterns": np.round(patterns, 4).tolist(),
  }


def _result(circuits: bool = True) -> dict:
  """analysis.json's dict, as analyze_run makes it for a small language model (or without the
  circuits, as for any other run); tokens that would break a naive page among them."""
  tokens = ["<bos>", "a", "</script>", "%DATA%", "b", "a", "</script>", "%DATA%"]
  grid = [[0.1, 0.2], [0.3, 0.9]]
  result = {
    "workdir": "/tmp/run",
    "kind": "lm" if circuits else "seq2seq",
    "split": "dev",
    "num_examples": 8,
    "loss": 4.1,
    "accuracy": float("nan"),
    "roles": {"decoder/layer_0/self_attention": {"previous": [0.5, 0.1], "first": [0.2, 0.3]}},
    "attention_views": [_view("first example: decoder self-attention", tokens)],
    "circuits": None,
  }
  if circuits:
    result["circuits"] = {
      "repeated": {"tokens": tokens, "segment_length": 3, "start": 1, "examples": 8},
      "detectors": {
        "previous_token_head": grid,
        "duplicate_token_head": grid,
        "induction_head": grid,
        "induction_score": [[0.05, 0.06], [0.07, 0.87]],
      },
      "logit_lens": {
        "names": ["blocks.0.resid_pre", "blocks.1.resid_pre", "blocks.1.resid_post"],
        "loss": [4.0, 3.0, 1.0],
        "top1_agreement": [0.1, 0.5, 1.0],
        "model_loss": 1.0,
      },
      "dla": {
        "prompt": None,
        "tokens": tokens,
        "position": 7,
        "token": "b",
        "token_id": 5,
        "logit": 1.5,
        "components": {"embed": 1.0, "blocks.1.attn.head_1": 0.5, "constant": 0.0},
        "sum": 1.5,
      },
      "patching": {
        "clean_tokens": tokens,
        "corrupt_tokens": tokens,
        "metric": "log p(answer) at the last position",
        "answer": "b",
        "answer_id": 5,
        "clean_metric": -0.1,
        "corrupt_metric": -4.0,
        "resid_pre": [[-4.0] * 8, [-4.0] * 7 + [-0.1]],
        "heads": grid,
        "heads_attribution": grid,
        "spearman": None,
        "default_pair": True,
      },
    }
  return result


def _png(tmp_path, name="logit_lens.png") -> str:
  path = str(tmp_path / name)
  plots.line_plot({"loss": ([0, 1, 2], [4.0, 3.0, 1.0])}, path, xlabel="x", ylabel="y", title="t")
  return path


def _data(page: str) -> dict:
  (text,) = re.findall(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
  return json.loads(text)  # Strict JSON: a NaN here would break the page's JSON.parse.


def test_the_page_is_one_file_with_the_data_and_no_network(tmp_path):
  page = report.render(_result(), [_png(tmp_path)])
  assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # Nothing fetched.
  assert "<link" not in page and "@import" not in page
  assert page.count("data:image/png;base64,") == 1
  views = _data(page)["views"]
  assert len(views) == 1 and np.asarray(views[0]["patterns"]).shape == (L, H, 8, 8)
  assert views[0]["query_tokens"][2] == "</script>"  # Escaped in the page, intact in its data.
  for section in ("detectors", "logit-lens", "dla", "patching", "roles", "patterns"):
    assert f"id={section}" in page or f'id="{section}"' in page, section
  assert page.count("<tr>") >= 1 + L * H  # The detector table: a row per head.
  assert "0.870" in page and "n/a" in page  # A detector score; Spearman's nan shown as such.


def test_a_run_without_circuits_gets_the_patterns_and_its_figures(tmp_path):
  page = report.render(_result(circuits=False), [_png(tmp_path, "importance.png")])
  assert "id=detectors" not in page and "id=figures" in page and 'id="patterns"' in page
  assert len(_data(page)["views"]) == 1
  path = report.write_report(_result(circuits=False), str(tmp_path / "report.html"))
  assert os.path.getsize(path) > 1000


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
  """Headless Chromium with nothing of its own on the network (no updates, no sync, no QUIC)."""
  if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium); the page is not loaded")
  profile = tmp_path / "profile"
  return subprocess.run(
    [
      CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-extensions", f"--user-data-dir={profile}", *args,
    ],
    capture_output=True, text=True, timeout=120,
  )  # fmt: skip


def _status(dom: str) -> str:
  match = re.search(r'<html[^>]*data-status="(\w+)"', dom)
  return match.group(1) if match else "missing"


@pytest.mark.slow  # Starts Chromium.
def test_chromium_loads_the_page_without_script_errors_and_draws_the_patterns(tmp_path):
  path = report.write_report(_result(), str(tmp_path / "report.html"), [_png(tmp_path)])
  url = f"file://{path}#view=0&layer=1&head=1&query=5"
  dom = _chromium(tmp_path, "--dump-dom", url)
  assert dom.returncode == 0, dom.stderr[-2000:]
  errors = re.search(r'<pre id="errors">(.*?)</pre>', dom.stdout, re.S).group(1)
  assert _status(dom.stdout) == "ok" and errors == "", errors
  assert "[ready]</title>" in dom.stdout
  # The script drew the tokens and shaded the keys of the locked query (5: "a").
  assert len(re.findall(r'<span class="tok[ "]', dom.stdout)) == 8
  assert 'class="tok query"' in dom.stdout and "background: rgba(214, 39, 40" in dom.stdout
  assert "query 5" in dom.stdout

  shot = tmp_path / "shot.png"
  result = _chromium(
    tmp_path, "--window-size=1000,700", "--hide-scrollbars", f"--screenshot={shot}", url
  )
  assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
  from matplotlib import image

  pixels = image.imread(str(shot))[..., :3]  # [rows, cols, RGB] in [0, 1]
  assert pixels.shape[:2] == (700, 1000)
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # Not blank: text, tables, shading.
  red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
  shaded = (red > 0.6) & (red - green > 0.2) & (red - blue > 0.2)  # The pattern view's red.
  assert shaded.sum() > 200, "no attention shading in the screenshot"


@pytest.mark.slow  # Starts Chromium.
def test_chromium_reports_a_script_error_in_the_page(tmp_path):
  """The check above can fail: a view whose patterns are empty throws, and the page says so."""
  broken = _result(circuits=False)
  broken["attention_views"][0]["patterns"] = []
  path = report.write_report(broken, str(tmp_path / "report.html"))
  dom = _chromium(tmp_path, "--dump-dom", f"file://{path}")
  assert _status(dom.stdout) == "error"
  assert re.search(r'<pre id="errors">.+</pre>', dom.stdout, re.S)


def test_nan_becomes_null_and_script_closers_are_escaped():
  text = report._json_for_script({"x": [float("nan"), 1.0, math.inf], "s": "</script>"})
  assert "</" not in text and json.loads(text) == {"x": [None, 1.0, None], "s": "</script>"}
