"""Where does each token look? `python -m launch.attend --workdir=RUN --text="..." [--query=WORD]`

Runs a trained run's model on the text and writes PNG heatmaps of its attention weights, per layer
and head, into RUN/attend/ (or --out). For an encoder-decoder it first decodes the output greedily,
then shows encoder self-attention, decoder self-attention and cross-attention; for a language model,
its (causal) self-attention over the text's tokens. With --query, it also
prints the keys that token attends to most in every layer and head.
"""

import os
import sys

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from attn import train
from attn.nn import decoding
from attn.nn.models import attention_weights
from attn.runs import plots
from attn.train import analysis, objectives
from launch import run, start_quietly

_WORKDIR = flags.DEFINE_string("workdir", None, "A run directory (of launch.train).")
_TEXT = flags.DEFINE_string("text", None, "Input text, tokenised as the run's task does.")
_QUERY = flags.DEFINE_string("query", None, "A token of --text whose strongest keys are printed.")
_OUT = flags.DEFINE_string("out", None, "Output folder; default RUN/attend.")
_SEED_INDEX = flags.DEFINE_integer("seed_index", 0, "Which of the run's seeds to show.")
flags.mark_flags_as_required(["workdir", "text"])


def _top_keys(name, weights_LHTS, query_tokens, key_tokens, query, k=3):
  rows = [t for t, tok in enumerate(query_tokens) if tok == query]
  for t in rows:
    for layer, weights_HTS in enumerate(weights_LHTS):
      for head, weights_TS in enumerate(np.asarray(weights_HTS)):
        order = np.argsort(-weights_TS[t])[:k]
        keys = ", ".join(f"{key_tokens[s]} {weights_TS[t, s]:.2f}" for s in order)
        print(f"  {name} layer {layer} head {head}: {query!r} (position {t}) looks at {keys}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  start_quietly()
  try:
    restored, params = train.restore_run(_WORKDIR.value, _SEED_INDEX.value)
    analysis.check_has_attention(_WORKDIR.value, params)
  except train.ConfigError as e:
    sys.exit(f"error: {e}")
  task, model = restored.task, restored.model
  try:
    ids = task.encode_text(_TEXT.value)
  except ValueError as e:  # A character a character-level model never saw.
    sys.exit(f"error: --text: {e}")
  if len(ids) == 0:
    sys.exit("error: --text: no tokens")
  vocab = task.vocab
  words = vocab.decode(ids, strip=False)
  is_lm = isinstance(restored.objective, objectives.LanguageModeling)
  tokens = words if is_lm else _TEXT.value.split()
  if _QUERY.value is not None and _QUERY.value not in tokens:
    sys.exit(f"error: --query: {_QUERY.value!r} is not a token of --text")
  out_dir = _OUT.value or os.path.join(_WORKDIR.value, "attend")
  os.makedirs(out_dir, exist_ok=True)
  src = jnp.asarray(ids)[None]
  written = []
  if isinstance(restored.objective, objectives.Seq2Seq):
    generated = decoding.greedy_decode(
      model, {"params": params}["params"], src, max_new_tokens=len(ids) + 2
    )
    out_ids = [int(i) for i in np.asarray(generated[0])]
    out_ids = out_ids[: out_ids.index(vocab.eos_id) + 1] if vocab.eos_id in out_ids else out_ids
    tgt_in = jnp.asarray([vocab.bos_id, *out_ids[:-1]])[None]
    _, weights = attention_weights(model, {"params": params}, src, tgt_in)
    targets = vocab.decode(tgt_in[0], strip=False)
    print(f"input:  {' '.join(words)}\noutput: {task.decode_ids(out_ids)}")
    panels = [
      ("encoder_self_attention", [w[0] for w in weights["encoder"]], words, words),
      ("decoder_self_attention", [w["self"][0] for w in weights["decoder"]], targets, targets),
      ("decoder_cross_attention", [w["cross"][0] for w in weights["decoder"]], targets, words),
    ]
  elif is_lm:
    logits, weights = attention_weights(model, {"params": params}, src)
    predicted = task.decode_ids(np.asarray(jnp.argmax(logits[0], -1)))
    print(f"input: {_TEXT.value!r}\nnext:  {predicted!r} (the most likely token after each)")
    panels = [("decoder_self_attention", [w["self"][0] for w in weights], words, words)]
  else:
    outputs, weights = attention_weights(model, {"params": params}, src)
    predicted = restored.objective.predictions(outputs, jnp.ones(src.shape))  # Viterbi for a CRF.
    tags = [task.class_names[i] for i in np.asarray(predicted[0])]
    print(f"input: {' '.join(words)}\ntags:  {' '.join(tags)}")
    panels = [("encoder_self_attention", [w[0] for w in weights], words, words)]
  for name, weights_LHTS, queries, keys in panels:
    path = os.path.join(out_dir, f"{name}.png")
    plots.attention_heatmaps(
      weights_LHTS, queries, keys, path, f"{name.replace('_', ' ')}: {_TEXT.value}"
    )
    written.append(path)
    if _QUERY.value is not None and _QUERY.value in queries:
      _top_keys(name, weights_LHTS, queries, keys, _QUERY.value)
  for path in written:
    print(f"wrote {path}")


if __name__ == "__main__":
  run(main)
