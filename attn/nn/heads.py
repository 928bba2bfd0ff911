"""Which heads matter: per-head gates, Michel et al.'s importance scores and greedy pruning.

Every `MultiHeadAttention` multiplies head h's output by `gate[h]` before its out-projection when the
caller passes the "head_gates" collection: `model.apply({"params": p, "head_gates": gates}, ...)`,
with `gates` one pytree keyed like the parameters, `{"encoder": {"layer_0": {"self_attention":
{"gate": [H]}}}, ...}` (`head_gates(params)` builds it, all ones). Without the collection nothing is
computed; a gate of 0 removes the head exactly; no parameter is touched.

Importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): I_h = E_x |dL(x)/dgate_h|
at gates of 1, over the examples of a data split, normalised per layer by its l2 norm as in the
paper; and the ablation score, the loss increase when head h alone is gated off. Pruning removes the
least important heads in steps of 10 % of the heads considered, re-scoring after each step (the
paper's iterative variant), and records a metric after each step.

Kinds of attention: "encoder_self", "decoder_self" and "cross" (a decoder's cross-attention).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attn.nn.attention import HEAD_GATES

KINDS = ("encoder_self", "decoder_self", "cross")
Path = tuple[str, ...]
# loss_fn(gates, batch) -> per-example losses [B]; metric_fn(gates) -> a float (higher is better).
LossFn = Callable[[dict, dict], jax.Array]


def attention_paths(params: dict) -> list[Path]:
  """The module paths of the attention layers in a parameter tree, in the tree's order."""
  paths: list[Path] = []

  def visit(tree, path):
    if isinstance(tree, dict) and "query" in tree and "key" in tree and "out" in tree:
      paths.append(path)
      return
    if isinstance(tree, dict):
      for name in sorted(tree, key=_natural):
        visit(tree[name], (*path, name))

  visit(dict(params), ())
  return paths


def _natural(name: str):
  head, _, tail = name.rpartition("_")
  return (head, int(tail)) if tail.isdigit() else (name, -1)


def kind_of(path: Path) -> str:
  """ "cross" for a cross-attention layer, else "encoder_self" or "decoder_self" by the stack."""
  if path and path[-1] == "cross_attention":
    return "cross"
  return "encoder_self" if path and path[0] == "encoder" else "decoder_self"


def num_heads_at(params: dict, path: Path) -> int:
  node = params
  for name in path:
    node = node[name]
  return int(node["query"]["kernel"].shape[-2])


def head_gates(params: dict, value: float = 1.0) -> dict:
  """The gates pytree for `params` (one model's), every gate `value`."""
  gates: dict = {}
  for path in attention_paths(params):
    node = gates
    for name in path:
      node = node.setdefault(name, {})
    node["gate"] = jnp.full((num_heads_at(params, path),), value, jnp.float32)
  return gates


def gate_at(gates: dict, path: Path) -> jax.Array:
  node = gates
  for name in path:
    node = node[name]
  return node["gate"]


def with_gate(gates: dict, path: Path, head: int, value: float) -> dict:
  """A copy of `gates` with head `head` of layer `path` set to `value`."""
  out = jax.tree.map(lambda x: x, gates)
  node = out
  for name in path:
    node = node[name]
  node["gate"] = node["gate"].at[head].set(value)
  return out


def variables(params: dict, gates: dict | None) -> dict:
  """The variables to `apply` a model with: its parameters, and the gates when given."""
  return {"params": params} if gates is None else {"params": params, HEAD_GATES: gates}


def _per_layer(gates: dict, values) -> dict[str, np.ndarray]:
  """A gates-shaped tree of per-head values as {"encoder/layer_0/self_attention": [H], ...}."""
  return {
    "/".join(path): np.asarray(gate_at(values, path), np.float64)
    for path in attention_paths(_as_params_shape(gates))
  }


def _as_params_shape(gates: dict) -> dict:
  """Gates look like parameters to `attention_paths` (query/key/out markers)."""

  def visit(tree):
    if isinstance(tree, dict) and "gate" in tree:
      H = tree["gate"].shape[0]
      marker = {"kernel": np.zeros((1, H, 1))}
      return {"query": marker, "key": marker, "out": marker}
    return {k: visit(v) for k, v in tree.items()}

  return visit(gates)


@functools.lru_cache(maxsize=16)
def _compiled(loss_fn: LossFn):
  """The jitted per-example gradient and mean loss of `loss_fn`, compiled once per function (pruning
  re-scores many times with the same one)."""
  per_example_grads = jax.jit(
    jax.vmap(lambda g, example: jax.grad(lambda g: loss_fn(g, example).sum())(g), in_axes=(None, 0))
  )
  return per_example_grads, jax.jit(lambda g, batch: loss_fn(g, batch).mean())


def head_importance(
  loss_fn: LossFn, gates: dict, batches: Iterable[dict], *, ablation: bool = True
) -> dict:
  """Michel et al.'s importance and the ablation score of every head.

  Args:
    loss_fn: (gates, batch) -> per-example losses [B] (a model applied with `variables`).
    gates: the gates to score at (usually `head_gates(params)`, all ones; pruned heads at 0).
    batches: the data split, as batches `loss_fn` takes.
    ablation: also the ablation scores (one pass over the split per head); False: {} for them.

  Returns:
    {"importance": {layer: [H]} E_x |dL(x)/dgate_h| over the examples, "normalized": the same divided
    by each layer's l2 norm, "ablation": {layer: [H]} loss(head gated off) - loss(gates),
    "loss": the mean loss at `gates`}; layers keyed "encoder/layer_0/self_attention".
  """
  batches = list(batches)
  per_example_grads, mean_loss = _compiled(loss_fn)
  total_abs = jax.tree.map(jnp.zeros_like, gates)
  count = 0
  losses = []
  for batch in batches:
    examples = jax.tree.map(lambda x: x[:, None], batch)  # Each example a batch of one.
    grads = per_example_grads(gates, examples)
    total_abs = jax.tree.map(lambda t, g: t + jnp.abs(g).sum(0), total_abs, grads)
    count += jax.tree.leaves(batch)[0].shape[0]
    losses.append((float(mean_loss(gates, batch)), jax.tree.leaves(batch)[0].shape[0]))
  base = sum(loss * n for loss, n in losses) / max(count, 1)
  importance = _per_layer(gates, jax.tree.map(lambda t: t / max(count, 1), total_abs))
  normalized = {
    layer: v / (np.linalg.norm(v) if np.linalg.norm(v) > 0 else 1.0) for layer, v in importance.items()
  }
  ablation_scores = {}
  for path in attention_paths(_as_params_shape(gates)) if ablation else ():
    scores = []
    for h in range(gate_at(gates, path).shape[0]):
      off = with_gate(gates, path, h, 0.0)
      loss = sum(float(mean_loss(off, batch)) * n for batch, (_, n) in zip(batches, losses, strict=True))
      scores.append(loss / max(count, 1) - base)
    ablation_scores["/".join(path)] = np.asarray(scores)
  return {
    "importance": importance, "normalized": normalized, "ablation": ablation_scores, "loss": base
  }  # fmt: skip


def prune_heads(
  loss_fn: LossFn,
  metric_fn: Callable[[dict], float],
  gates: dict,
  batches: Sequence[dict],
  *,
  kinds: Sequence[str] = KINDS,
  step_fraction: float = 0.1,
) -> list[dict]:
  """Greedy iterative pruning: removes the least important remaining heads of `kinds`, about
  `step_fraction` of them at a time (at least one), re-scoring after each step.

  Returns:
    [{"fraction": heads pruned / heads of `kinds`, "pruned": count, "metric": metric_fn(gates),
    "removed": ["layer:head", ...] this step}], starting from nothing pruned; [] when the model has
    no layer of `kinds`.
  """
  unknown = [k for k in kinds if k not in KINDS]
  if unknown:
    raise ValueError(f"kinds: unknown {unknown[0]!r}; expected some of {', '.join(KINDS)}")
  paths = [p for p in attention_paths(_as_params_shape(gates)) if kind_of(p) in kinds]
  active = [
    (p, h) for p in paths for h in range(gate_at(gates, p).shape[0]) if gate_at(gates, p)[h] != 0
  ]
  if not active:
    return []
  total = len(active)
  per_step = max(1, math.ceil(step_fraction * total - 1e-9))
  curve = [{"fraction": 0.0, "pruned": 0, "metric": float(metric_fn(gates)), "removed": []}]
  pruned = 0
  while active:
    scores = head_importance(loss_fn, gates, batches, ablation=False)["normalized"]
    ranked = sorted(active, key=lambda ph: scores["/".join(ph[0])][ph[1]])
    removed = ranked[:per_step]
    for path, h in removed:
      gates = with_gate(gates, path, h, 0.0)
    active = [ph for ph in active if ph not in removed]
    pruned += len(removed)
    curve.append(
      {
        "fraction": pruned / total,
        "pruned": pruned,
        "metric": float(metric_fn(gates)),
        "removed": [f"{'/'.join(p)}:{h}" for p, h in removed],
      }
    )
  return curve
