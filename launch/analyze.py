"""What a run's heads do: `python -m launch.analyze --workdir=RUN [--split=dev] [--out=DIR]`.

Reads a finished (or checkpointed) run of any task and writes into DIR (default RUN/analysis):
importance.png (Michel et al.'s normalised head importance, layer x head, a panel per attention
kind), ablation.png (the loss increase when each head alone is gated off), pruning.png (token
accuracy against the fraction of heads pruned: self- and cross-attention separately, and all),
roles.png and roles.md (previous-token, first-token, self and local scores per head), for an IOB2
tagging task class_attention.png (heads x entity types: the attention a token of type E gives to
tokens of type E, trained and at random initialisation), rollout_<i>.png (attention rollout of the
first examples), and analysis.json with every number; `--seed_index=i` analyses seed i of the run
(default DIR: RUN/analysis_seed<i>). See attn/train/analysis.py.

For a language model it adds the circuits report: detectors.png (each head's previous-token,
duplicate-token and induction detector scores and induction score on repeated random tokens),
logit_lens.png (each residual's lens loss and top-1 agreement with the logits), dla.png (direct
logit attribution of the top next token of `--prompt`, default the data's first example),
patching_heads.png and patching_resid.png (a `--clean` prompt patched into a `--corrupt` one of the
same token length, default a repeated segment and it with its second copy resampled: resid_pre by
layer and position, each head by activation and attribution patching). Every run kind also gets
report.html, one self-contained page (no network) with every head's attention on an example, the
tables and the plots.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from attn import train
from attn.runs import plots, report
from attn.train import analysis
from launch import run, start_quietly

_WORKDIR = flags.DEFINE_string("workdir", None, "A run directory (of launch.train).")
_SPLIT = flags.DEFINE_enum("split", "dev", analysis.SPLITS, "The data the heads are scored on.")
_OUT = flags.DEFINE_string("out", None, "Output folder; default RUN/analysis.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 256, "At most this many examples of the split.")
_SEED_INDEX = flags.DEFINE_integer("seed_index", 0, "Which of the run's seeds to analyse.")
_PROMPT = flags.DEFINE_string(
  "prompt", None, "A language model only: text (encoded as launch.sample encodes a prompt) whose "
  "last position's top next token direct logit attribution explains; default the data's first example.",
)  # fmt: skip
_CLEAN = flags.DEFINE_string(
  "clean", None, "A language model only: the clean prompt of activation patching (with --corrupt, "
  "of the same token length); default a random segment repeated.",
)  # fmt: skip
_CORRUPT = flags.DEFINE_string(
  "corrupt", None, "A language model only: the corrupted prompt patched into (with --clean); "
  "default the repeated segment with its second copy resampled.",
)  # fmt: skip
flags.mark_flags_as_required(["workdir"])


def _layer_panels(per_layer: dict[str, list[float]]) -> tuple[dict, dict]:
  """{layer name: [H]} -> ({kind: [layers, H]}, {kind: layer labels})."""
  panels, labels = {}, {}
  for name, values in per_layer.items():
    stack, layer, which = name.split("/")[-3:]
    kind = "cross" if which == "cross_attention" else f"{stack} self"
    panels.setdefault(kind, []).append(values)
    labels.setdefault(kind, []).append(layer)
  return {k: np.asarray(v) for k, v in panels.items()}, labels


def write_outputs(result: dict, out_dir: str) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  written = []

  def target(name):
    path = os.path.join(out_dir, name)
    written.append(path)
    return path

  for key, name, title in (
    ("normalized", "importance.png", "head importance (Michel et al.), normalised per layer"),
    ("ablation", "ablation.png", "loss increase with the head gated off"),
  ):
    panels, labels = _layer_panels({n: v[key] for n, v in result["importance"].items()})
    plots.heatmap_panels(panels, target(name), title, row_labels=labels)
  if result["pruning"]:
    lines = {
      label: ([p["fraction"] for p in curve], [p["metric"] for p in curve])
      for label, curve in result["pruning"].items()
    }
    plots.line_plot(
      lines, target("pruning.png"), xlabel="fraction of heads pruned",
      ylabel="token accuracy", title="greedy pruning by importance (re-scored each step)",
    )  # fmt: skip
  table = ["| layer | head | " + " | ".join(analysis.analysis.ROLES) + " |"]
  table.append("|---|---|" + "---|" * len(analysis.analysis.ROLES))
  for name, scores in result["roles"].items():
    for h in range(len(scores["self"])):
      cells = " | ".join(f"{scores[role][h]:.3f}" for role in analysis.analysis.ROLES)
      table.append(f"| {name} | {h} | {cells} |")
  with open(target("roles.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(table) + "\n")
  role_panels = {
    name: np.asarray([scores[role] for role in analysis.analysis.ROLES])
    for name, scores in result["roles"].items()
  }
  plots.heatmap_panels(
    role_panels, target("roles.png"), "head-role scores",
    row_labels={name: list(analysis.analysis.ROLES) for name in role_panels},
  )  # fmt: skip
  if result["class_attention"]:
    panels = {}
    for name, scores in result["class_attention"].items():
      panels[f"{name} (trained)"] = np.asarray(scores)
      panels[f"{name} (random init)"] = np.asarray(result["class_attention_at_init"][name])
    plots.heatmap_panels(
      panels, target("class_attention.png"),
      "attention from tokens of entity type E to tokens of type E (rows: heads)",
      col_labels=result["entity_types"],
    )  # fmt: skip
  for i, example in enumerate(result["rollouts"]):
    labels = [str(t) for t in example["tokens"]]
    plots.attention_heatmaps(
      [np.asarray(example["rollout"])[None]], labels, labels, target(f"rollout_{i}.png"),
      f"attention rollout ({example['stack']}), example {i}",
    )  # fmt: skip
  if result.get("circuits"):
    _write_circuits(result["circuits"], target)
  with open(target("analysis.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  report.write_report(result, target("report.html"), images=[p for p in written if p.endswith(".png")])
  return written


def _write_circuits(circuits: dict, target) -> None:
  """The circuits report's PNGs (see the module docstring)."""
  found = circuits["detectors"]
  layers = [f"layer {i}" for i in range(len(found["induction_score"]))]
  kinds = ("previous_token_head", "duplicate_token_head", "induction_head", "induction_score")
  segment = circuits["repeated"]["segment_length"]
  plots.heatmap_panels(
    {kind: np.asarray(found[kind]) for kind in kinds},
    target("detectors.png"),
    f"head detectors on random tokens, a segment of {segment} repeated",
    row_labels={kind: layers for kind in kinds},
    cmap="viridis",
  )
  lensed = circuits["logit_lens"]
  x = list(range(len(lensed["names"])))
  plots.line_plot(
    {
      "lens loss (nats)": (x, lensed["loss"]),
      "top-1 agreement with the logits": (x, lensed["top1_agreement"]),
    },
    target("logit_lens.png"),
    xlabel="residual: " + ", ".join(f"{i} = {n}" for i, n in enumerate(lensed["names"])),
    ylabel="",
    title=f"logit lens (the model's own loss: {lensed['model_loss']:.3f})",
  )
  dla = circuits["dla"]
  if "components" in dla:
    plots.bar_chart(
      dla["components"],
      target("dla.png"),
      xlabel=f"contribution to the logit of {dla['token']!r}",
      title=f"direct logit attribution, last position: logit {dla['logit']:.3f} = sum {dla['sum']:.3f}",
    )
  patched = circuits["patching"]
  heads = {"activation": patched["heads"], "attribution": patched["heads_attribution"]}
  plots.heatmap_panels(
    {k: np.asarray(v) for k, v in heads.items()},
    target("patching_heads.png"),
    f"{patched['metric']} ({patched['answer']!r}), a head's result patched in: clean "
    f"{patched['clean_metric']:.2f}, corrupted {patched['corrupt_metric']:.2f}",
    row_labels={k: layers for k in heads},
    cmap="RdBu",
  )
  pairs = zip(patched["clean_tokens"], patched["corrupt_tokens"], strict=True)
  positions = [t if t == c else f"{t}/{c}" for t, c in pairs]
  plots.heatmap_panels(
    {"resid_pre": np.asarray(patched["resid_pre"])},
    target("patching_resid.png"),
    f"{patched['metric']}, resid_pre at (layer, position) patched in (clean/corrupted tokens)",
    row_labels={"resid_pre": layers},
    col_labels=positions if len(positions) <= 64 else [str(t) for t in range(len(positions))],
    cmap="RdBu",
    annotate=False,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  start_quietly()
  if not os.path.isdir(_WORKDIR.value):
    sys.exit(f"error: --workdir: {_WORKDIR.value!r} is not a directory")
  if _MAX_EXAMPLES.value < 1:
    sys.exit(f"error: --max_examples: must be at least 1, got {_MAX_EXAMPLES.value}")
  if _OUT.value and os.path.exists(_OUT.value) and not os.path.isdir(_OUT.value):
    sys.exit(f"error: --out: {_OUT.value!r} is a file; give a folder for the outputs")
  try:
    result = analysis.analyze_run(
      _WORKDIR.value, split=_SPLIT.value, max_examples=_MAX_EXAMPLES.value,
      seed_index=_SEED_INDEX.value, prompt=_PROMPT.value, clean=_CLEAN.value,
      corrupt=_CORRUPT.value,
    )  # fmt: skip
  except train.ConfigError as e:
    sys.exit(f"error: {e}")
  default = "analysis" if _SEED_INDEX.value == 0 else f"analysis_seed{_SEED_INDEX.value}"
  out_dir = _OUT.value or os.path.join(_WORKDIR.value, default)
  for path in write_outputs(result, out_dir):
    print(f"wrote {path}")
  print(f"analyze: done in {result['seconds']:.1f} s")


if __name__ == "__main__":
  run(main)
