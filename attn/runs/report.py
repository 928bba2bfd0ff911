"""report.html: one self-contained page of a run's analysis (launch.analyze writes it beside the
PNGs), to look at rather than read. No network: the CSS and the script are inline, the PNGs embedded
as data: URIs, the numbers drawn from inline JSON.

It shows, for any run: the tokens of an example with every head's attention (a view per attention
kind; a layer and head selector; hovering or clicking a query token shades the keys it attends to,
and a heatmap draws the whole pattern; a link's `#view=V&layer=L&head=H&query=Q` opens there), the
head-role table and the figures; for a language model the circuits report too (the detector table,
the logit lens, direct logit attribution, the patching heatmaps). The page marks itself done
(`<html data-status="ok">`) once its script has run, and records any script error in `#errors`
(`data-status="error"`): what tests/runs/test_report.py reads in headless Chromium.

Plain dicts and lists in (analysis.json's), a file out: this module imports nothing of attn.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Sequence


def _finite(value):
  """`value` with every non-finite float as None: JSON (and JavaScript's JSON.parse) has no NaN."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_finite(v) for v in value]
  return value


def _json_for_script(value) -> str:
  """JSON safe inside a <script> element: no "</" can close it."""
  return json.dumps(_finite(value), separators=(",", ":")).replace("</", "<\\/")


def _image(path: str) -> str:
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode("ascii")
  name = html.escape(os.path.basename(path))
  return (
    f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
    f"<figcaption>{name}</figcaption></figure>"
  )


def _number(x) -> str:
  return "" if x is None else f"{x:.3f}"


def _shade(x, low: float = 0.0, high: float = 1.0) -> str:
  """A cell's background: the share of [low, high] it reaches, as the alpha of one colour."""
  if x is None or not math.isfinite(x) or high <= low:
    return ""
  alpha = min(max((x - low) / (high - low), 0.0), 1.0)
  return f' style="background: rgba(68, 119, 170, {alpha:.2f})"'


def _table(
  header: Sequence[str], rows: Sequence[Sequence], shade: bool = True, table_id: str = ""
) -> str:
  """An HTML table; numeric cells printed to 3 decimals and shaded by their column's range."""
  columns = list(zip(*rows, strict=True)) if rows else []
  ranges = []
  for column in columns:
    numbers = [v for v in column if isinstance(v, float | int) and not isinstance(v, bool)]
    numbers = [v for v in numbers if math.isfinite(v)]
    ranges.append((min(numbers), max(numbers)) if numbers else None)
  out = [f'<table id="{table_id}"><thead><tr>' if table_id else "<table><thead><tr>"]
  out += [f"<th>{html.escape(str(h))}</th>" for h in header]
  out.append("</tr></thead><tbody>")
  for row in rows:
    out.append("<tr>")
    for value, span in zip(row, ranges, strict=True):
      if isinstance(value, float) or value is None:
        style = _shade(value, *span) if shade and span and span[1] > span[0] else ""
        out.append(f"<td class=num{style}>{_number(value)}</td>")
      else:
        out.append(f"<td>{html.escape(str(value))}</td>")
    out.append("</tr>")
  out.append("</tbody></table>")
  return "".join(out)


def _circuits_sections(circuits: dict, images: dict[str, str]) -> list[str]:
  sections = []
  found = circuits["detectors"]
  kinds = ("previous_token_head", "duplicate_token_head", "induction_head", "induction_score")
  rows = [
    [layer, head, *(float(found[k][layer][head]) for k in kinds)]
    for layer in range(len(found["induction_score"]))
    for head in range(len(found["induction_score"][layer]))
  ]
  repeated = circuits["repeated"]
  sections.append(
    "<section id=detectors><h2>Head detectors</h2>"
    f"<p>TransformerLens' detector scores (&quot;mul&quot;) and the induction score on "
    f"{repeated['examples']} sequences of random tokens, a segment of {repeated['segment_length']} "
    "repeated once.</p>"
    + _table(["layer", "head", *kinds], rows, table_id="detector-table")
    + images.get("detectors.png", "")
    + "</section>"
  )
  lensed = circuits["logit_lens"]
  rows = [
    [name, float(loss), float(agree)]
    for name, loss, agree in zip(lensed["names"], lensed["loss"], lensed["top1_agreement"], strict=True)
  ]
  sections.append(
    "<section id=logit-lens><h2>Logit lens</h2>"
    f"<p>Each residual through the final norm and the unembedding; the model's own loss "
    f"{_number(lensed['model_loss'])}.</p>"
    + _table(["residual", "loss (nats)", "top-1 agreement with the logits"], rows)
    + images.get("logit_lens.png", "")
    + "</section>"
  )
  dla = circuits["dla"]
  tokens = html.escape(" ".join(dla["tokens"]))
  if "components" in dla:
    rows = [[name, float(v)] for name, v in dla["components"].items()]
    body = (
      f"<p>At the last position of <code>{tokens}</code>: the logit of the top next token "
      f"<code>{html.escape(dla['token'])}</code> is {_number(dla['logit'])}; its components sum to "
      f"{_number(dla['sum'])}.</p>" + _table(["component", "logit"], rows) + images.get("dla.png", "")
    )
  else:
    body = f"<p>{html.escape(dla['skipped'])}</p>"
  sections.append(f"<section id=dla><h2>Direct logit attribution</h2>{body}</section>")
  patched = circuits["patching"]
  pair = "the repeated-tokens pair" if patched.get("default_pair") else "the given pair"
  spearman = patched.get("spearman")
  sections.append(
    "<section id=patching><h2>Activation patching</h2>"
    f"<p>{pair}: clean <code>{html.escape(' '.join(patched['clean_tokens']))}</code>, corrupted "
    f"<code>{html.escape(' '.join(patched['corrupt_tokens']))}</code>. Metric: "
    f"{html.escape(patched['metric'])}, answer <code>{html.escape(patched['answer'])}</code>: clean "
    f"{_number(patched['clean_metric'])}, corrupted {_number(patched['corrupt_metric'])}. "
    f"Spearman correlation of attribution with activation patching over heads: "
    f"{'n/a' if spearman is None else _number(spearman)}.</p>"
    + images.get("patching_heads.png", "")
    + images.get("patching_resid.png", "")
    + "</section>"
  )
  return sections


def _roles_section(roles: dict) -> str:
  if not roles:
    return ""
  kinds = sorted({role for scores in roles.values() for role in scores})
  rows = []
  for name, scores in roles.items():
    for h in range(len(next(iter(scores.values())))):
      rows.append([name, h, *(float(scores[r][h]) for r in kinds)])
  return "<section id=roles><h2>Head roles</h2>" + _table(["layer", "head", *kinds], rows) + "</section>"


def render(result: dict, images: Sequence[str] = ()) -> str:
  """The page (a string) of `result` (analysis.json's dict) with the PNGs at `images` embedded."""
  embedded = {os.path.basename(p): _image(p) for p in images}
  shown = {"detectors.png", "logit_lens.png", "dla.png", "patching_heads.png", "patching_resid.png"}
  circuits = result.get("circuits")
  sections = _circuits_sections(circuits, embedded) if circuits else []
  sections.append(_roles_section(result.get("roles") or {}))
  rest = [tag for name, tag in embedded.items() if not (circuits and name in shown)]
  if rest:
    sections.append("<section id=figures><h2>Figures</h2>" + "".join(rest) + "</section>")
  summary = ", ".join(
    f"{key} {_number(value) if isinstance(value, float) else html.escape(str(value))}"
    for key in ("kind", "split", "num_examples", "loss", "accuracy")
    if (value := result.get(key)) is not None
  )
  data = {"views": result.get("attention_views") or []}
  title = html.escape(f"analysis of {result.get('workdir', 'a run')}")
  fields = {
    "TITLE": title,
    "SUMMARY": summary,
    "SECTIONS": "\n".join(s for s in sections if s),
    "DATA": _json_for_script(data),
  }
  # One pass: a token's text that spells a marker is not replaced.
  return re.sub(r"%(TITLE|SUMMARY|SECTIONS|DATA)%", lambda m: fields[m.group(1)], _PAGE)


def write_report(result: dict, path: str, images: Sequence[str] = ()) -> str:
  """Writes report.html (see the module docstring) at `path`; returns `path`."""
  text = render(result, images)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


_PAGE = """<!DOCTYPE html>
<html lang="en" data-status="loading">
<head>
<meta charset="utf-8">
<title>%TITLE%</title>
<script>
window.reportErrors = [];
window.onerror = function (message, source, line) {
  window.reportErrors.push(message + " (line " + line + ")");
  document.documentElement.dataset.status = "error";
  var box = document.getElementById("errors");
  if (box) { box.textContent = window.reportErrors.join("\\n"); }
};
</script>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; } td.num { text-align: right; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 100%; }
#errors { color: #b00; white-space: pre-wrap; }
.controls label { margin-right: 1em; }
.tokens { display: flex; flex-wrap: wrap; gap: 3px; margin: 0.6em 0; font-family: monospace; }
.tok { padding: 3px 5px; border: 1px solid #bbb; border-radius: 3px; cursor: pointer; }
.tok.query { outline: 2px solid #d62728; }
.row-label { font-size: 0.85em; color: #666; }
#pattern-canvas { border: 1px solid #ccc; image-rendering: pixelated; }
</style>
</head>
<body>
<h1>%TITLE%</h1>
<p>%SUMMARY%</p>
<pre id="errors"></pre>
<section id="patterns"><h2>Attention patterns</h2>
<div class="controls">
<label>example <select id="view-select"></select></label>
<label>layer <select id="layer-select"></select></label>
<label>head <select id="head-select"></select></label>
<span id="hover-info"></span>
</div>
<div class="row-label" id="query-label">queries (hover or click one)</div>
<div class="tokens" id="query-tokens"></div>
<div class="row-label" id="key-label">keys, shaded by the attention the query gives them</div>
<div class="tokens" id="key-tokens"></div>
<canvas id="pattern-canvas" width="320" height="320"></canvas>
</section>
%SECTIONS%
<script type="application/json" id="report-data">%DATA%</script>
<script>
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var views = data.views;
  var state = { view: 0, layer: 0, head: 0, query: null, locked: false };
  var viewSelect = document.getElementById("view-select");
  var layerSelect = document.getElementById("layer-select");
  var headSelect = document.getElementById("head-select");
  var queryRow = document.getElementById("query-tokens");
  var keyRow = document.getElementById("key-tokens");
  var canvas = document.getElementById("pattern-canvas");
  var info = document.getElementById("hover-info");

  function options(select, labels) {
    select.innerHTML = "";
    labels.forEach(function (label, i) {
      var option = document.createElement("option");
      option.value = i; option.textContent = label; select.appendChild(option);
    });
  }
  function view() { return views[state.view]; }
  function pattern() { return view().patterns[state.layer][state.head]; }
  function isSelf(v) { return v.query_tokens.join("\\u0000") === v.key_tokens.join("\\u0000"); }
  function shade(weight) {
    return "rgba(214, 39, 40, " + Math.min(1, Math.max(0, weight)).toFixed(3) + ")";
  }
  function tokenSpans(row, tokens, hover) {
    row.innerHTML = "";
    tokens.forEach(function (token, i) {
      var span = document.createElement("span");
      span.className = "tok"; span.textContent = token; span.dataset.index = i;
      if (hover) {
        span.addEventListener("mouseenter", function () { if (!state.locked) { select(i); } });
        span.addEventListener("click", function () {
          state.locked = !(state.locked && state.query === i); select(i);
        });
      }
      row.appendChild(span);
    });
  }
  function select(query) {
    state.query = query;
    var weights = pattern()[query];
    var self = isSelf(view());
    var keys = self ? queryRow : keyRow;
    Array.prototype.forEach.call(queryRow.children, function (span, i) {
      span.classList.toggle("query", i === query);
      if (!self) { span.style.background = ""; }
    });
    Array.prototype.forEach.call(keys.children, function (span, j) {
      span.style.background = shade(weights[j]);
      span.title = "attention " + weights[j].toFixed(3);
    });
    var best = weights.indexOf(Math.max.apply(null, weights));
    info.textContent = "query " + query + " " + JSON.stringify(view().query_tokens[query]) +
      ": most attention on key " + best + " " + JSON.stringify(view().key_tokens[best]) +
      " (" + weights[best].toFixed(3) + ")" + (state.locked ? ", locked (click to free)" : "");
    draw();
  }
  function draw() {
    var p = pattern(), T = p.length, S = p[0].length;
    var cell = Math.max(2, Math.floor(320 / Math.max(T, S)));
    canvas.width = S * cell; canvas.height = T * cell;
    var context = canvas.getContext("2d");
    context.fillStyle = "#fff"; context.fillRect(0, 0, canvas.width, canvas.height);
    for (var i = 0; i < T; i++) {
      for (var j = 0; j < S; j++) {
        context.fillStyle = shade(p[i][j]); context.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    if (state.query !== null) {
      context.strokeStyle = "#000"; context.lineWidth = 1;
      context.strokeRect(0.5, state.query * cell + 0.5, S * cell - 1, cell - 1);
    }
  }
  function showView() {
    var v = view();
    options(layerSelect, v.layers);
    options(headSelect, v.patterns[0].map(function (_, h) { return "head " + h; }));
    state.layer = 0; state.head = 0; state.locked = false;
    var self = isSelf(v);
    tokenSpans(queryRow, v.query_tokens, true);
    tokenSpans(keyRow, self ? [] : v.key_tokens, false);
    document.getElementById("key-label").style.display = self ? "none" : "";
    document.getElementById("query-label").textContent = self
      ? "tokens: hover or click one to shade the tokens it attends to"
      : "queries (hover or click one)";
    select(v.query_tokens.length - 1);
  }
  canvas.addEventListener("mousemove", function (event) {
    var p = pattern(), cell = canvas.width / p[0].length;
    var i = Math.floor(event.offsetY / cell), j = Math.floor(event.offsetX / cell);
    if (p[i] !== undefined && p[i][j] !== undefined) {
      canvas.title = "query " + i + ", key " + j + ": " + p[i][j].toFixed(3);
    }
  });
  if (views.length === 0) {
    document.getElementById("patterns").style.display = "none";
  } else {
    options(viewSelect, views.map(function (v) { return v.title; }));
    viewSelect.addEventListener("change", function () { state.view = +viewSelect.value; showView(); });
    layerSelect.addEventListener("change", function () {
      state.layer = +layerSelect.value; select(state.query);
    });
    headSelect.addEventListener("change", function () {
      state.head = +headSelect.value; select(state.query);
    });
    showView();
    // A link may pick what opens: #view=1&layer=0&head=1&query=5 (and lock that query).
    var wanted = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var kv = pair.split("="); if (kv.length === 2) { wanted[kv[0]] = parseInt(kv[1], 10); }
    });
    if (wanted.view >= 0 && wanted.view < views.length) {
      viewSelect.value = state.view = wanted.view; showView();
    }
    if (wanted.layer >= 0 && wanted.layer < view().patterns.length) {
      layerSelect.value = state.layer = wanted.layer;
    }
    if (wanted.head >= 0 && wanted.head < view().patterns[state.layer].length) {
      headSelect.value = state.head = wanted.head;
    }
    if (wanted.query >= 0 && wanted.query < view().query_tokens.length) {
      state.locked = true; select(wanted.query);
    } else {
      select(state.query);
    }
  }
  if (window.reportErrors.length === 0) {
    document.documentElement.dataset.status = "ok";
    document.title = document.title + " [ready]";
  }
})();
</script>
</body>
</html>
"""
