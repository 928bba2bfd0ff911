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

from attn.core import analysis
from attn.nn import heads
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
  echo: Callable[[str], None] = print,
) -> dict:
  """Every number `launch.analyze` writes: {"importance", "pruning", "roles", "class_attention",
  "class_attention_at_init", "rollouts", "token_importance", ...} for seed `seed_index` of the run
  in `workdir`.

  Raises:
    ConfigError: when `workdir` holds no run or no checkpoint, its model no attention layer, or
      `split` is unknown.
  """
  start = time.time()
  run, params = setup.restore_run(workdir, seed_index)
  check_has_attention(workdir, params)
  task, model, objective = run.task, run.model, run.objective
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
    "seconds": time.time() - start,
  }
  return result
