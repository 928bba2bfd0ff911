"""What a finished run's heads do: importance, pruning curves, head roles and rollout, from its
checkpoint (`analyze_run`, behind `python -m launch.analyze`).

The data are the run's eval batches (`split="dev"`) or its first training batches (`split="train"`),
at most `max_examples` examples. The loss is the run's objective's, per example (the plain per-token
cross-entropy averaged per example; a CRF tagger's sentence negative log-likelihood per token); the
pruning metric is the accuracy of the objective's predictions (teacher-forced for seq2seq; Viterbi's
tags for a CRF tagger).
Head roles are scored on self-attention layers; for a tagging task whose tags are IOB2 (`B-X`, `I-X`,
`O`), each head also gets, per entity type X, the attention a token of type X gives to tokens of type
X (`class_attention`), next to the same score of the model at its random initialisation (the baseline
a specialisation claim needs).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attn.core import analysis, detectors
from attn.nn import heads, hooks, lens, patching
from attn.nn.models import Embedder, attention_weights
from attn.train import setup
from attn.train.objectives import LanguageModeling, Objective, Seq2Seq, Tagging

SPLITS = ("dev", "train")
INIT_SEED_OFFSET = 12345  # The random-initialisation baseline's seed: the run's seed plus this.


def _batches(size: int, task, split: str, max_examples: int) -> list[dict]:
  if split == "dev":
    batches = task.eval_batches(size)
  elif split == "train":
    batches = [task.train_batch(i, size) for i in range(max(1, math.ceil(max_examples / size)))]
  else:
    raise setup.ConfigError(f"--split: unknown choice {split!r}; expected one of {', '.join(SPLITS)}")
  out, count = [], 0
  for batch in batches:
    n = next(iter(batch.values())).shape[0]
    take = min(n, max_examples - count)
    if take <= 0:
      break
    out.append({k: np.asarray(v)[:take] for k, v in batch.items()})
    count += take
  return [jax.tree.map(jnp.asarray, b) for b in out]


def loss_and_metric(model, params, objective: Objective) -> tuple[Callable, Callable]:
  """(loss_fn(gates, batch) -> per-example losses [B], accuracy_fn(gates, batches) -> float): the
  objective's own loss (a CRF tagger's sentence NLL per token) and its predictions' accuracy
  (Viterbi's for a CRF), so heads are ranked by what the model was trained and scored with."""

  def outputs(gates, batch):
    inputs, targets = objective.inputs_and_targets(batch)
    out = model.apply(heads.variables(params, gates), *inputs)
    return out, targets, batch["weights"].astype(jnp.float32)

  def loss_fn(gates, batch):
    out, targets, w = outputs(gates, batch)
    return objective.example_losses(out, targets, w)

  @jax.jit
  def correct(gates, batch):
    out, targets, w = outputs(gates, batch)
    return jnp.sum((objective.predictions(out, w) == targets) * w), jnp.sum(w)

  def accuracy_fn(gates, batches):
    sums = [correct(gates, b) for b in batches]
    return float(sum(c for c, _ in sums) / max(float(sum(n for _, n in sums)), 1.0))

  return loss_fn, accuracy_fn


def _self_attention_weights(weights, objective: Objective) -> dict[str, list]:
  """{"encoder": [per layer [B, H, T, T]], "decoder": [...]} from a model's returned weights: a
  Transformer's {"encoder": [...], "decoder": [{"self", "cross"}]}, or the one stack's list of an
  EncoderTagger (the encoder) or a LanguageModel (the decoder)."""
  if isinstance(weights, list | tuple):
    weights = {("encoder" if isinstance(objective, Tagging) else "decoder"): list(weights)}
  out = {}
  for stack in ("encoder", "decoder"):
    layers = (weights or {}).get(stack) if isinstance(weights, dict) else None
    if not layers:
      continue
    out[stack] = [w["self"] if isinstance(w, dict) else w for w in layers]
  return out


def _entity_types(class_names) -> tuple[list[str], np.ndarray] | None:
  """IOB2 tag names -> (entity types, tag id -> type index or -1); None when the tags are not IOB2."""
  names = list(class_names or ())
  if "O" not in names or not all(n == "O" or n[:2] in ("B-", "I-") for n in names):
    return None
  types = sorted({n[2:] for n in names if n != "O"})
  return types, np.array([-1 if n == "O" else types.index(n[2:]) for n in names])


@functools.lru_cache(maxsize=8)
def _weights_fn(model):
  """The model's attention weights, jitted once per model: (params, *inputs) -> weights."""
  return jax.jit(lambda p, *inputs: attention_weights(model, {"params": p}, *inputs)[1])


def _roles_and_classes(model, params, batches, objective: Objective, task) -> dict:
  roles: dict[str, dict[str, list[float]]] = {}
  class_scores: dict[str, list[list[float]]] = {}
  entity = _entity_types(task.class_names) if isinstance(objective, Tagging) else None
  apply = _weights_fn(model)
  sums: dict[str, dict[str, np.ndarray]] = {}
  class_sums: dict[str, np.ndarray] = {}
  count = 0
  for batch in batches:
    inputs, targets = objective.inputs_and_targets(batch)
    stacks = _self_attention_weights(apply(params, *inputs), objective)
    targets_valid = np.asarray(batch["weights"]) > 0  # The target side's real tokens.
    source_valid = np.asarray(inputs[0]) != task.vocab.pad_id
    valid = source_valid if isinstance(objective, Seq2Seq) else targets_valid
    n = next(iter(batch.values())).shape[0]
    count += n
    for stack, layers in stacks.items():
      for i, w in enumerate(layers):
        name = f"{stack}/layer_{i}/self_attention"
        rows = targets_valid if stack == "decoder" else valid
        scores = analysis.head_role_scores(w, rows)
        acc = sums.setdefault(name, {})
        for role, value in scores.items():
          acc[role] = acc.get(role, 0.0) + np.asarray(value) * n
        if entity is not None and stack == "encoder":
          types = np.where(valid, entity[1][np.asarray(targets)], -1)
          scores_HC = np.asarray(analysis.class_attention(w, types, types, len(entity[0])))
          class_sums[name] = class_sums.get(name, 0.0) + scores_HC * n
  for name, acc in sums.items():
    roles[name] = {role: (value / max(count, 1)).tolist() for role, value in acc.items()}
  for name, total in class_sums.items():
    class_scores[name] = (total / max(count, 1)).tolist()
  return {"roles": roles, "entity_types": entity[0] if entity else [], "class_attention": class_scores}


def _rollouts(model, params, batches, objective: Objective, num_examples: int) -> list[dict]:
  """Encoder (or decoder, for a language model) self-attention rollout of the first examples."""
  batch = batches[0]
  inputs, _ = objective.inputs_and_targets(batch)
  weights = _weights_fn(model)(params, *inputs)
  stacks = _self_attention_weights(weights, objective)
  stack = "encoder" if "encoder" in stacks else "decoder"
  rollout = np.asarray(analysis.attention_rollout(stacks[stack]))
  tokens = np.asarray(inputs[0])
  out = []
  pad_id = 0
  for b in range(min(num_examples, tokens.shape[0])):
    whole = isinstance(objective, LanguageModeling)  # A window of text: every token is real.
    length = max(tokens.shape[1] if whole else int(np.sum(tokens[b] != pad_id)), 1)
    out.append(
      {
        "stack": stack,
        "tokens": tokens[b, :length].tolist(),
        "rollout": rollout[b, :length, :length].tolist(),
      }
    )
  return out


def token_importance(model, params, batch: dict, unk_id: int, objective: Objective) -> dict:
  """Which input tokens decide a tagger's prediction at each example's first scored position (the
  key word of the seed tasks), by four measures: attention rollout, the last layer's raw attention
  (heads averaged), the input gradient (the norm of d log p(predicted tag) / d the token's input
  embedding, through `flax.linen.intercept_methods` on the embedder), and ablation (the drop in
  log p(predicted tag) when the token is replaced by <unk>), the reference the paper compares against.

  Returns:
    {"rollout", "raw_attention", "input_gradient": mean over examples of each measure's Spearman
    correlation with ablation over the example's other real tokens, "per_example": {measure: [B]},
    "examples": B}.
  """
  inputs, _ = objective.inputs_and_targets(batch)
  tokens = np.asarray(inputs[0])
  rest = inputs[1:]
  B, T = tokens.shape
  position = np.argmax(np.asarray(batch["weights"]) > 0, axis=1)  # [B]
  rows = jnp.arange(B)

  def log_p(delta, tokens_BT, tags=None):
    def add(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, Embedder) and context.method_name == "__call__":
        return out + delta.astype(out.dtype)
      return out

    with nn.intercept_methods(add):
      logits = objective.logits(model.apply({"params": params}, tokens_BT, *rest))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))[rows, position]  # [B, C]
    tags = logp.argmax(-1) if tags is None else tags
    return logp[rows, tags], tags

  weights = _weights_fn(model)(params, *inputs)
  layers = _self_attention_weights(weights, objective)["encoder"]
  rollout = np.asarray(analysis.attention_rollout(layers))[np.arange(B), position]  # [B, T]
  raw = np.asarray(jnp.asarray(layers[-1], jnp.float32).mean(1))[np.arange(B), position]
  d_model = _embedding_dim(params)
  zero = jnp.zeros((B, T, d_model), jnp.float32)
  base, tags = log_p(zero, jnp.asarray(tokens))
  grad = jax.grad(lambda d: log_p(d, jnp.asarray(tokens), tags)[0].sum())(zero)
  gradient = np.asarray(jnp.linalg.norm(grad, axis=-1))
  drops = np.zeros((B, T))
  for t in range(T):
    ablated = tokens.copy()
    ablated[:, t] = unk_id
    drops[:, t] = np.asarray(base - log_p(zero, jnp.asarray(ablated), tags)[0])
  real = tokens != 0
  per_example = {"rollout": [], "raw_attention": [], "input_gradient": []}
  for b in range(B):
    keep = real[b].copy()
    keep[position[b]] = False
    for name, scores in (("rollout", rollout), ("raw_attention", raw), ("input_gradient", gradient)):
      per_example[name].append(analysis.spearman(scores[b][keep], drops[b][keep]))
  summary = {name: float(np.nanmean(values)) for name, values in per_example.items()}
  return {**summary, "per_example": per_example, "examples": B}


REPEAT_EXAMPLES = 8  # Sequences in the detectors' batch of repeated random tokens.
MAX_SEGMENT = 20  # The longest repeated segment (tokens): the circuits report stays quick.
VIEW_TOKENS = 64  # The most tokens of an example the HTML report's pattern view shows.
# The circuits' programs run once each: compiling them dominates (a patching grid's vmapped forward
# and backward passes: 12 s at XLA's default optimisation on the smoke model here, 4 s at level 0).
_ONCE = {"xla_backend_optimization_level": 0}


def token_strings(task, ids) -> list[str]:
  """The vocabulary's string of each id (a character, a subword, a symbol, "<bos>")."""
  tokens = task.vocab.tokens
  return [tokens[i] if 0 <= i < len(tokens) else "<unk>" for i in np.asarray(ids).tolist()]


def _stacks(weights, objective: Objective) -> dict[str, list]:
  """{"encoder self-attention": [per layer [B, H, T, T]], "decoder self-attention": [...],
  "cross-attention": [per layer [B, H, T, S]]} from a model's returned weights."""
  if isinstance(weights, list | tuple):
    weights = {("encoder" if isinstance(objective, Tagging) else "decoder"): list(weights)}
  out = {}
  for stack in ("encoder", "decoder"):
    for layer in weights.get(stack) or ():
      if isinstance(layer, dict):
        out.setdefault(f"{stack} self-attention", []).append(layer["self"])
        if "cross" in layer:
          out.setdefault("cross-attention", []).append(layer["cross"])
      else:
        out.setdefault(f"{stack} self-attention", []).append(layer)
  return out


def attention_views(model, params, objective: Objective, batch: dict, task, title: str) -> list[dict]:
  """Every head's attention of the first example of `batch`, one view per attention kind, for the
  HTML report: [{"title", "query_tokens", "key_tokens", "layers", "patterns": [L][H][T][S]}], at
  most VIEW_TOKENS tokens a side (the first), padding left out, rounded to 4 decimals."""
  inputs, _ = objective.inputs_and_targets(batch)
  # The whole batch, not its first row: the rollout's compiled program (same shapes) is reused.
  stacks = _stacks(_weights_fn(model)(params, *inputs), objective)
  ids = [np.asarray(x[0]) for x in inputs if x is not None and np.ndim(x) == 2]
  pad = task.vocab.pad_id
  whole = isinstance(objective, LanguageModeling)

  def real(row):
    return len(row) if whole else max(int(np.sum(row != pad)), 1)

  source, target = ids[0], ids[-1]  # A seq2seq model's (src, tgt_in); one row otherwise.
  views = []
  for kind, layers in stacks.items():
    queries = source if kind.startswith("encoder") else target
    keys = target if kind == "decoder self-attention" else source
    T, S = real(queries), real(keys)
    patterns = np.stack([np.asarray(w, np.float32)[0, :, :T, :S] for w in layers])  # [L, H, T, S]
    views.append(
      _view(
        f"{title}: {kind}", token_strings(task, queries[:T]), token_strings(task, keys[:S]), patterns
      )
    )
  return views


def _view(title: str, query_tokens, key_tokens, patterns_LHTS) -> dict:
  """One attention view of the HTML report, at most VIEW_TOKENS tokens a side."""
  T, S = min(len(query_tokens), VIEW_TOKENS), min(len(key_tokens), VIEW_TOKENS)
  patterns = np.asarray(patterns_LHTS, np.float32)[:, :, :T, :S]
  return {
    "title": title,
    "query_tokens": list(query_tokens[:T]),
    "key_tokens": list(key_tokens[:S]),
    "layers": [f"layer {i}" for i in range(patterns.shape[0])],
    "patterns": np.round(patterns, 4).tolist(),
  }


@functools.lru_cache(maxsize=8)
def _detectors_fn(model, segment: int, start: int):
  """(params, tokens [B, T]) -> ({kind: [L, H]}, the first sequence's patterns [L, H, T, T])."""
  num_layers = model.config.num_decoder_layers

  def fn(p, tokens_BT):
    _, cache = hooks.run_with_cache(model, p, tokens_BT, names=_pattern_names(num_layers))
    patterns = jnp.stack([cache[n] for n in _pattern_names(num_layers)], 1)  # [B, L, H, T, S]
    out = {kind: detectors.detect_heads(patterns, tokens_BT, kind) for kind in detectors.HEAD_KINDS}
    out["induction_score"] = detectors.induction_score(patterns, segment, start=start).mean(0)
    return out, patterns[0]

  return jax.jit(fn, compiler_options=_ONCE)


def _pattern_names(num_layers: int) -> list[str]:
  return [f"blocks.{i}.attn.pattern" for i in range(num_layers)]


@functools.lru_cache(maxsize=8)
def _lens_fn(model, num_layers: int):
  """(params, tokens, targets, weights) -> (per residual: the lens's weighted loss sum and its
  top-1 agreement with the model's logits; the model's own loss sum; the weight sum), jitted."""
  names = lens_names(num_layers)

  def sums(p, tokens_BT, targets_BT, weights_BT):
    logits_BTV, cache = hooks.run_with_cache(model, p, tokens_BT, names=names)
    top_BT = jnp.argmax(logits_BTV, -1)
    w = weights_BT.astype(jnp.float32)

    def nll(logits):
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      return -jnp.take_along_axis(logp, targets_BT[..., None], -1)[..., 0]

    losses, agree = [], []
    for name in names:
      read = lens.logit_lens(model, p, cache[name])
      losses.append(jnp.sum(nll(read) * w))
      agree.append(jnp.sum((jnp.argmax(read, -1) == top_BT) * w))
    return jnp.stack(losses), jnp.stack(agree), jnp.sum(nll(logits_BTV) * w), jnp.sum(w)

  return jax.jit(sums, compiler_options=_ONCE)


def lens_names(num_layers: int) -> list[str]:
  """The residuals the logit lens reads: into each block, and out of the last."""
  return [f"blocks.{i}.resid_pre" for i in range(num_layers)] + [f"blocks.{num_layers - 1}.resid_post"]


@functools.lru_cache(maxsize=8)
def _dla_fn(model):
  """(params, tokens [1, T]) -> (the top next token at the last position, its logit, {component:
  its direct contribution to that logit}, the attention patterns [L, H, T, T]), jitted."""
  num_layers = model.config.num_decoder_layers

  def fn(p, tokens_BT):
    logits_BTV, cache = hooks.run_with_cache(model, p, tokens_BT)
    top = jnp.argmax(logits_BTV[0, -1])
    patterns = jnp.stack([cache[f"blocks.{i}.attn.pattern"][0] for i in range(num_layers)])
    if model.config.norm != "pre":  # No final norm to freeze: no attribution (see attn.nn.lens).
      return top, logits_BTV[0, -1, top], {}, patterns
    parts = lens.direct_logit_attribution(model, p, cache)
    return top, logits_BTV[0, -1, top], {n: v[0, -1, top] for n, v in parts.items()}, patterns

  return jax.jit(fn, compiler_options=_ONCE)


def repeated_tokens(task, length: int, examples: int, *, bos: bool, seed: int = 0):
  """Random ordinary tokens of the task's vocabulary, a segment repeated once (BOS first when `bos`):
  ([examples, bos + 2 n] tokens, n, the segment's start), n = min(MAX_SEGMENT, (length - bos) // 2);
  and the second copies resampled [examples, bos + 2 n] (the corrupted runs of patching)."""
  n = min(MAX_SEGMENT, (length - int(bos)) // 2)
  if n < 2:
    raise setup.ConfigError(f"--workdir: sequences of {length} tokens are too short to repeat a segment")
  rng = np.random.default_rng(seed)
  low, high = task.vocab.unk_id + 1, len(task.vocab)  # Past the special tokens.
  segment = rng.integers(low, high, (examples, n))
  other = rng.integers(low, high, (examples, n))
  other = np.where(other == segment, low + (other - low + 1) % (high - low), other)  # Each differs.
  head = np.full((examples, int(bos)), task.vocab.bos_id)
  clean = np.concatenate([head, segment, segment], 1).astype(np.int32)
  corrupt = np.concatenate([head, segment, other], 1).astype(np.int32)
  return clean, corrupt, n, int(bos)


def _encode(task, flag: str, text: str, max_length: int) -> np.ndarray:
  """`text` as launch.sample encodes a prompt (empty: BOS alone); ConfigError naming `flag`."""
  try:
    ids = np.asarray(task.encode_text(text), np.int32)
  except ValueError as e:
    raise setup.ConfigError(f"{flag}: {e}") from None
  if len(ids) == 0:
    ids = np.array([task.vocab.bos_id], np.int32)
  if len(ids) > max_length:
    raise setup.ConfigError(f"{flag}: {len(ids)} tokens, more than the model's max_length {max_length}")
  return ids


def _detectors(model, params, tokens_BT, segment: int, start: int):
  """({kind: [L][H] scores, "induction_score": [L][H]}, the first sequence's patterns [L, H, T, T])."""
  scores, patterns = _detectors_fn(model, segment, start)(params, jnp.asarray(tokens_BT))
  return {kind: np.asarray(v, np.float64).tolist() for kind, v in scores.items()}, patterns


def _logit_lens(model, params, batches, objective: Objective) -> dict:
  num_layers = model.config.num_decoder_layers
  fn = _lens_fn(model, num_layers)
  total = None
  for batch in batches:
    inputs, targets = objective.inputs_and_targets(batch)
    sums = fn(params, inputs[0], targets, batch["weights"])
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  losses, agree, model_loss, weight = (np.asarray(x, np.float64) for x in total)
  weight = max(float(weight), 1e-9)
  return {
    "names": lens_names(num_layers),
    "loss": (losses / weight).tolist(),
    "top1_agreement": (agree / weight).tolist(),
    "model_loss": float(model_loss / weight),
  }


def _direct_logit_attribution(model, params, task, tokens, prompt: str | None):
  """(the DLA report of `tokens`, their attention patterns [L, H, T, T])."""
  out = {"prompt": prompt, "tokens": token_strings(task, tokens), "position": len(tokens) - 1}
  top, logit, parts, patterns = _dla_fn(model)(params, jnp.asarray(tokens)[None])
  if model.config.norm != "pre":
    skipped = "direct logit attribution needs a final norm (config.model.norm='pre')"
    return {**out, "skipped": skipped}, patterns

  def order(name):  # The residual's order: embeddings, the blocks, the constant terms.
    head = name.split(".")
    block = int(head[1]) if head[0] == "blocks" else (-1 if "embed" in name else 1 << 30)
    return block, name

  components = {name: float(parts[name]) for name in sorted(parts, key=order)}
  return {
    **out,
    "token": token_strings(task, [int(top)])[0],
    "token_id": int(top),
    "logit": float(logit),
    "components": components,
    "sum": float(sum(components.values())),
  }, patterns


@functools.lru_cache(maxsize=8)
def _patching_fn(model, num_layers: int):
  """(params, clean [1, T], corrupt [1, T]) -> the patching grids (see `_patching`), one jitted
  program: the patching functions' own jits inline into it."""
  resid = [f"blocks.{i}.resid_pre" for i in range(num_layers)]
  z = [f"blocks.{i}.attn.z" for i in range(num_layers)]

  def fn(p, clean_BT, corrupt_BT):
    clean_BTV = model.apply({"params": p}, clean_BT)
    corrupt_BTV = model.apply({"params": p}, corrupt_BT)
    answer = jnp.argmax(clean_BTV[0, -1])

    def metric(logits_BTV):
      return jax.nn.log_softmax(logits_BTV[0, -1].astype(jnp.float32))[answer]

    args = (model, p, (clean_BT,), (corrupt_BT,), metric)
    by_position = patching.activation_patching(*args, resid, "position")
    by_head = patching.activation_patching(*args, z, "head")
    estimate = patching.attribution_patching(*args, z, "head")
    return {
      "answer": answer,
      "clean_metric": metric(clean_BTV),
      "corrupt_metric": metric(corrupt_BTV),
      "resid_pre": jnp.stack([by_position[n] for n in resid]),
      "heads": jnp.stack([by_head[n] for n in z]),
      "heads_attribution": jnp.stack([estimate[n] for n in z]),
    }

  return jax.jit(fn, compiler_options=_ONCE)


def _patching(model, params, task, clean, corrupt) -> dict:
  """Activation patching of resid_pre by (layer, position) and each head's result by (layer, head)
  from `clean` into `corrupt` (one sequence each), and attribution patching by head; the metric is
  the log-probability, at the last position, of the clean run's top next token."""
  fn = _patching_fn(model, model.config.num_decoder_layers)
  grids = jax.tree.map(np.asarray, fn(params, jnp.asarray(clean)[None], jnp.asarray(corrupt)[None]))
  heads_LH = grids["heads"].astype(np.float64)
  attribution_LH = grids["heads_attribution"].astype(np.float64)
  return {
    "clean_tokens": token_strings(task, clean),
    "corrupt_tokens": token_strings(task, corrupt),
    "metric": "log p(answer) at the last position",
    "answer": token_strings(task, [int(grids["answer"])])[0],
    "answer_id": int(grids["answer"]),
    "clean_metric": float(grids["clean_metric"]),
    "corrupt_metric": float(grids["corrupt_metric"]),
    "resid_pre": grids["resid_pre"].astype(np.float64).tolist(),
    "heads": heads_LH.tolist(),
    "heads_attribution": attribution_LH.tolist(),
    "spearman": _finite(analysis.spearman(heads_LH.ravel(), attribution_LH.ravel())),
  }


def _finite(x: float) -> float | None:
  """None for nan (constant scores): JSON has no NaN."""
  return x if np.isfinite(x) else None


def encode_prompts(task, model, prompt, clean, corrupt):
  """(the --prompt's ids or None, (the --clean's, the --corrupt's) or None), as launch.sample
  encodes a prompt.

  Raises:
    ConfigError: naming --prompt, --clean or --corrupt for a prompt the vocabulary cannot spell or
      longer than the model's max_length, a pair of two token lengths, or one half of a pair.
  """
  max_length = model.config.max_length
  prompt_ids = None if prompt is None else _encode(task, "--prompt", prompt, max_length)
  if (clean is None) != (corrupt is None):
    raise setup.ConfigError("--clean, --corrupt: give both prompts of the pair, or neither")
  pair = None
  if clean is not None:
    pair = (_encode(task, "--clean", clean, max_length), _encode(task, "--corrupt", corrupt, max_length))
    if len(pair[0]) != len(pair[1]):
      raise setup.ConfigError(
        f"--clean, --corrupt: the pair must have one token length, got {len(pair[0])} and "
        f"{len(pair[1])} tokens"
      )
  return prompt_ids, pair


def circuits(
  model,
  params,
  task,
  batches: list[dict],
  objective: Objective,
  *,
  prompt: str | None = None,
  prompt_ids: np.ndarray | None = None,
  pair: tuple[np.ndarray, np.ndarray] | None = None,
  echo: Callable[[str], None] = print,
) -> tuple[dict, list[dict]]:
  """A language model's circuits report and the attention views of its examples: ({"repeated",
  "detectors", "logit_lens", "dla", "patching"}, views). See `analyze_run`; `prompt_ids` and `pair`
  as `encode_prompts` gives them (`prompt` its text)."""
  max_length = model.config.max_length
  first = np.asarray(batches[0]["tokens"])
  bos = bool(np.all(first[:, 0] == task.vocab.bos_id))
  repeated, resampled, segment, start = repeated_tokens(
    task, min(first.shape[1], max_length), REPEAT_EXAMPLES, bos=bos
  )
  echo("analyze: circuits (detectors, logit lens, direct logit attribution, patching)")
  detected, repeated_LHTS = _detectors(model, params, repeated, segment, start)
  lensed = _logit_lens(model, params, batches, objective)
  if prompt_ids is None:
    prompt_ids = first[0]
  dla, prompt_LHTS = _direct_logit_attribution(model, params, task, prompt_ids, prompt)
  default_pair = pair is None
  if default_pair:  # The repeat's last token left out: the next token is the segment's last.
    pair = (repeated[0, :-1], resampled[0, :-1])
  patched = _patching(model, params, task, *pair)
  result = {
    "repeated": {
      "tokens": token_strings(task, repeated[0]),
      "segment_length": segment,
      "start": start,
      "examples": REPEAT_EXAMPLES,
    },
    "detectors": detected,
    "logit_lens": lensed,
    "dla": dla,
    "patching": {**patched, "default_pair": default_pair},
  }
  views = []
  for title, ids, patterns in (
    ("prompt" if prompt is not None else "first example", prompt_ids, prompt_LHTS),
    ("repeated random tokens", repeated[0], repeated_LHTS),
  ):
    tokens = token_strings(task, ids)
    views.append(_view(f"{title}: decoder self-attention", tokens, tokens, patterns))
  return result, views


def _embedding_dim(params) -> int:
  """D, from the token embedding table."""
  return int(params["embedder"]["tokens"]["embedding"].shape[-1])


def check_has_attention(workdir: str, params) -> None:
  """ConfigError when a run's model (`params`, one seed's) has no attention layer to look at."""
  if not heads.attention_paths(params):
    raise setup.ConfigError(
      f"--workdir: the model of {workdir!r} has no attention layer (its config.model's layer counts "
      "are 0): it has no heads to analyse or show"
    )


def analyze_run(
  workdir: str,
  *,
  split: str = "dev",
  max_examples: int = 256,
  num_rollouts: int = 3,
  seed_index: int = 0,
  prompt: str | None = None,
  clean: str | None = None,
  corrupt: str | None = None,
  echo: Callable[[str], None] = print,
) -> dict:
  """Every number `launch.analyze` writes: {"importance", "pruning", "roles", "class_attention",
  "class_attention_at_init", "rollouts", "token_importance", "attention_views", "circuits", ...}
  for seed `seed_index` of the run in `workdir`.

  "attention_views" holds every head's attention on one example (`attention_views`); "circuits",
  for a language model only (None otherwise), holds
  - "detectors": each head's TransformerLens detector scores (previous_token_head,
    duplicate_token_head, induction_head; "mul", nothing excluded) and induction score, [layer][head],
    on REPEAT_EXAMPLES sequences of random tokens with a segment repeated once ("repeated");
  - "logit_lens": per residual ("names"), the lens's loss on the analysed data and its top-1
    agreement with the model's logits (weighted as the run's loss is), and the model's loss;
  - "dla": the direct logit attribution, at the last position of `prompt` (default: the first
    example of the data), of the logit of the model's top next token: {component: logit}, their sum;
  - "patching": `clean` patched into `corrupt` (default: a repeated segment, and it with its second
    copy resampled, both without their last token), the metric the log-probability of the clean
    run's top next token at the last position: resid_pre [layer][position] and each head's result
    [layer][head] by activation patching, the heads by attribution patching, and the Spearman
    correlation of the two.

  Raises:
    ConfigError: when `workdir` holds no run or no checkpoint, its model no attention layer, or
      `split` is unknown; naming --prompt, --clean or --corrupt for a prompt given to a run that is
      not a language model, one the vocabulary cannot spell or longer than the model's max_length,
      or a clean/corrupted pair of two token lengths.
  """
  start = time.time()
  run, params = setup.restore_run(workdir, seed_index)
  check_has_attention(workdir, params)
  task, model, objective = run.task, run.model, run.objective
  is_lm = type(objective) is LanguageModeling
  given = [
    flag
    for flag, v in (("--prompt", prompt), ("--clean", clean), ("--corrupt", corrupt))
    if v is not None
  ]
  if given and not is_lm:
    raise setup.ConfigError(
      f"{given[0]}: {workdir!r} holds a {task.kind} run; prompts are for a language model's circuits"
    )
  if is_lm:  # Before the work: a bad prompt is refused at once.
    prompt_ids, pair = encode_prompts(task, model, prompt, clean, corrupt)
  batches = _batches(run.train.eval_batch_size, task, split, max_examples)
  echo(f"analyze: {workdir}, split {split}, {sum(b['weights'].shape[0] for b in batches)} examples")
  loss_fn, accuracy_fn = loss_and_metric(model, params, objective)
  gates = heads.head_gates(params)
  echo("analyze: importance (gradients and ablations)")
  scores = heads.head_importance(loss_fn, gates, batches)
  importance = {
    name: {key: scores[key][name].tolist() for key in ("importance", "normalized", "ablation")}
    for name in scores["importance"]
  }
  pruning = {}
  for kinds, label in (
    (("encoder_self", "decoder_self"), "self"),
    (("cross",), "cross"),
    (heads.KINDS, "all"),
  ):
    echo(f"analyze: pruning ({label} attention)")
    curve = heads.prune_heads(loss_fn, lambda g: accuracy_fn(g, batches), gates, batches, kinds=kinds)
    if curve:
      pruning[label] = curve
  echo("analyze: head roles and rollout")
  roles = _roles_and_classes(model, params, batches, objective, task)
  example_inputs = objective.inputs_and_targets(batches[0])[0]
  init_params = model.init(jax.random.PRNGKey(run.train.seed + INIT_SEED_OFFSET), *example_inputs)
  at_init = _roles_and_classes(model, init_params["params"], batches, objective, task)
  importance_of_tokens = None
  if isinstance(objective, Tagging):
    echo("analyze: token importance (rollout, raw attention, input gradient against ablation)")
    importance_of_tokens = token_importance(model, params, batches[0], task.vocab.unk_id, objective)
  circuits_report = None
  if is_lm:
    circuits_report, views = circuits(
      model, params, task, batches, objective, prompt=prompt, prompt_ids=prompt_ids, pair=pair,
      echo=echo,
    )  # fmt: skip
  else:
    views = attention_views(model, params, objective, batches[0], task, "first example")
  result = {
    "workdir": workdir,
    "seed_index": seed_index,
    "token_importance": importance_of_tokens,
    "split": split,
    "kind": task.kind,
    "num_examples": int(sum(b["weights"].shape[0] for b in batches)),
    "loss": scores["loss"],
    "accuracy": accuracy_fn(gates, batches),
    "importance": importance,
    "pruning": pruning,
    "roles": roles["roles"],
    "roles_at_init": at_init["roles"],
    "entity_types": roles["entity_types"],
    "class_attention": roles["class_attention"],
    "class_attention_at_init": at_init["class_attention"],
    "rollouts": _rollouts(model, params, batches, objective, num_rollouts),
    "attention_views": views,
    "circuits": circuits_report,
    "seconds": time.time() - start,
  }
  return result
