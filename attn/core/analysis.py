"""Looking inside the heads: attention rollout and flow (Abnar & Zuidema 2020) and head-role scores
(previous token, first token, self, local, a token class; as TransformerLens' detectors score heads).

Pure functions of attention weights [..., H, T, S] (rows are queries; each row sums to 1, or is all
zeros when its query had no key). No Flax, no parameters: `attn.nn.heads` and `launch.analyze` feed
them the weights a model returns with `return_weights=True`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The residual connection's share in rollout: each layer's mixing is 0.5 A + 0.5 I (the paper's).
RESIDUAL = 0.5


def _renormalized(a_TS: jax.Array) -> jax.Array:
  """Rows divided by their sums (a row of zeros stays zeros)."""
  sums = a_TS.sum(-1, keepdims=True)
  return a_TS / jnp.where(sums == 0.0, 1.0, sums)


def residual_mixing(weights_HTT: jax.Array, residual: float = RESIDUAL) -> jax.Array:
  """One self-attention layer's token mixing with its residual path: the weights averaged over heads,
  mixed with the identity (1 - residual) A + residual I, rows renormalised: [..., T, T]."""
  a_TT = jnp.asarray(weights_HTT, jnp.float32).mean(-3)
  T = a_TT.shape[-1]
  if a_TT.shape[-2] != T:
    raise ValueError(f"residual_mixing: self-attention weights must be [..., H, T, T], got {a_TT.shape}")
  return _renormalized((1.0 - residual) * a_TT + residual * jnp.eye(T, dtype=a_TT.dtype))


def attention_rollout(weights: Sequence[jax.Array], residual: float = RESIDUAL) -> jax.Array:
  """Attention rollout: how much each input token feeds each position after all the layers.

  Args:
    weights: per self-attention layer, first to last, weights [..., H, T, T].
    residual: the identity's share in each layer's mixing (0.5 in the paper).

  Returns:
    [..., T, T]: row t gives the share of each input token in position t's output (rows sum to 1);
    the product of each layer's `residual_mixing`, last layer leftmost.
  """
  if not weights:
    raise ValueError("attention_rollout: needs the weights of at least one layer")
  rollout = residual_mixing(weights[0], residual)
  for w in weights[1:]:
    rollout = residual_mixing(w, residual) @ rollout
  return rollout


def cross_rollout(
  decoder_self: Sequence[jax.Array],
  cross: Sequence[jax.Array],
  encoder_rollout_SS: jax.Array | None = None,
  residual: float = RESIDUAL,
) -> jax.Array:
  """Rollout from target positions to the source tokens of an encoder-decoder.

  Decoder layer l mixes the target positions (self-attention, `residual_mixing`) and then reads the
  encoder's output through its cross-attention (weights averaged over heads). The source share of
  target position t is the average over decoder layers of (the decoder rollout up to layer l) @
  (layer l's cross-attention), composed with the encoder's own rollout, rows renormalised.

  Args:
    decoder_self: per decoder layer, self-attention weights [..., H, T, T].
    cross: per decoder layer, cross-attention weights [..., H, T, S].
    encoder_rollout_SS: the encoder's `attention_rollout` [..., S, S], or None (identity).

  Returns:
    [..., T, S], rows summing to 1 (0 for a target row that saw no source token).
  """
  if len(decoder_self) != len(cross) or not cross:
    raise ValueError(
      f"cross_rollout: needs one cross-attention per decoder layer, got {len(decoder_self)} "
      f"self-attention and {len(cross)} cross-attention layers"
    )
  rollout_TT = None
  total = 0.0
  for self_w, cross_w in zip(decoder_self, cross, strict=True):
    mixing = residual_mixing(self_w, residual)
    rollout_TT = mixing if rollout_TT is None else mixing @ rollout_TT
    to_source = rollout_TT @ _renormalized(jnp.asarray(cross_w, jnp.float32).mean(-3))
    total = total + to_source
  if encoder_rollout_SS is not None:
    total = total @ encoder_rollout_SS
  return _renormalized(total)


def attention_flow(weights: Sequence[np.ndarray], residual: float = RESIDUAL) -> np.ndarray:
  """Attention flow (Abnar & Zuidema 2020): the maximum flow from each input token to each output
  position through the layered graph whose edge capacities are each layer's `residual_mixing`.

  Slow (one max-flow per (output, input) pair, by augmenting paths): for small inputs only, one
  example at a time.

  Args:
    weights: per layer, weights [H, T, T] of one example.

  Returns:
    [T, T] float64: entry (t, s) the max flow from input token s to position t of the last layer.
  """
  mixings = [np.asarray(residual_mixing(jnp.asarray(w), residual), np.float64) for w in weights]
  if any(m.ndim != 2 for m in mixings):
    raise ValueError("attention_flow: one example at a time: weights [H, T, T] per layer")
  L, T = len(mixings), mixings[0].shape[0]
  # Nodes: (layer l, token i) -> l * T + i, l = 0 the inputs; an edge (l - 1, j) -> (l, i) of
  # capacity mixing_l[i, j].
  n = (L + 1) * T
  capacity = np.zeros((n, n))
  for layer, m in enumerate(mixings, start=1):
    capacity[(layer - 1) * T : layer * T, layer * T : (layer + 1) * T] = m.T
  out = np.zeros((T, T))
  for t in range(T):
    for s in range(T):
      out[t, s] = _max_flow(capacity, s, L * T + t)
  return out


def _max_flow(capacity: np.ndarray, source: int, sink: int) -> float:
  """Edmonds-Karp on a dense capacity matrix (small graphs)."""
  residual = capacity.copy()
  total = 0.0
  n = len(residual)
  while True:
    parent = np.full(n, -1)
    parent[source] = source
    queue = [source]
    while queue and parent[sink] < 0:
      u = queue.pop(0)
      for v in np.nonzero((residual[u] > 1e-12) & (parent < 0))[0]:
        parent[v] = u
        queue.append(int(v))
    if parent[sink] < 0:
      return total
    bottleneck, v = np.inf, sink
    while v != source:
      bottleneck = min(bottleneck, residual[parent[v], v])
      v = parent[v]
    v = sink
    while v != source:
      residual[parent[v], v] -= bottleneck
      residual[v, parent[v]] += bottleneck
      v = parent[v]
    total += bottleneck


# Head roles. Each score is a mean over the query rows that count (`valid_BT` True, and for the
# previous-token score rows t >= 1), in [0, 1]: 1 for a head that does exactly that.
ROLES = ("previous_token", "first_token", "self", "local")
LOCAL_WINDOW = 2  # "local": the weight within |t - s| <= 2.


def _row_mean(score_BHT: jax.Array, rows_BT: jax.Array) -> jax.Array:
  """[B, H, T] -> [H]: the mean over the rows that count."""
  rows = jnp.broadcast_to(rows_BT[:, None, :], score_BHT.shape).astype(jnp.float32)
  return jnp.sum(score_BHT * rows, axis=(0, 2)) / jnp.maximum(jnp.sum(rows, axis=(0, 2)), 1.0)


def head_role_scores(weights_BHTS: jax.Array, valid_BT: jax.Array | None = None) -> dict[str, jax.Array]:
  """Each head's score for the positional roles of `ROLES`, [H] each.

  previous_token: weight on key t - 1 (rows t >= 1); first_token: weight on key 0 (the sink);
  self: weight on key t (the diagonal); local: weight within |t - s| <= LOCAL_WINDOW. Keys and queries
  share positions (self-attention, T == S).

  Args:
    weights_BHTS: self-attention weights [B, H, T, T].
    valid_BT: bool [B, T], False for padding rows (not scored); None: every row.
  """
  w = jnp.asarray(weights_BHTS, jnp.float32)
  B, _, T, S = w.shape
  if T != S:
    raise ValueError(f"head_role_scores: self-attention weights must be [B, H, T, T], got {w.shape}")
  valid = jnp.ones((B, T), bool) if valid_BT is None else jnp.asarray(valid_BT, bool)
  t = jnp.arange(T)
  distance = jnp.abs(t[:, None] - t[None, :])
  previous = jnp.concatenate([jnp.zeros_like(w[..., :1, 0]), jnp.diagonal(w, -1, -2, -1)], -1)
  return {
    "previous_token": _row_mean(previous, valid & (t >= 1)[None, :]),
    "first_token": _row_mean(w[..., 0], valid),
    "self": _row_mean(jnp.diagonal(w, 0, -2, -1), valid),
    "local": _row_mean(jnp.sum(jnp.where(distance <= LOCAL_WINDOW, w, 0.0), -1), valid),
  }


def class_attention(
  weights_BHTS: jax.Array, query_class_BT: jax.Array, key_class_BS: jax.Array, num_classes: int
) -> jax.Array:
  """For each head and class c: the mean attention a query of class c gives to keys of class c
  (e.g. from a token of entity type E to tokens of type E; or to the cue word): [H, num_classes].

  Args:
    weights_BHTS: [B, H, T, S].
    query_class_BT, key_class_BS: int classes in [0, num_classes); any other value (e.g. -1 for
      padding or "no entity") is never counted, as a query or as a key.
  """
  w = jnp.asarray(weights_BHTS, jnp.float32)
  q_onehot = jax.nn.one_hot(query_class_BT, num_classes, dtype=jnp.float32)  # [B, T, C]
  k_onehot = jax.nn.one_hot(key_class_BS, num_classes, dtype=jnp.float32)  # [B, S, C]
  to_class_BHTC = jnp.einsum("bhts,bsc->bhtc", w, k_onehot)
  total_HC = jnp.einsum("bhtc,btc->hc", to_class_BHTC, q_onehot)
  rows_C = q_onehot.sum((0, 1))
  return total_HC / jnp.maximum(rows_C, 1.0)


def spearman(a, b) -> float:
  """Spearman's rank correlation of two 1-D arrays (ties get their average rank); nan when either
  is constant or shorter than 2."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"spearman: needs two 1-D arrays of one length, got {a.shape} and {b.shape}")
  if a.size < 2:
    return float("nan")
  ra, rb = _average_ranks(a), _average_ranks(b)
  if np.std(ra) == 0.0 or np.std(rb) == 0.0:
    return float("nan")
  return float(np.corrcoef(ra, rb)[0, 1])


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x), dtype=np.float64)
  _, inverse = np.unique(x, return_inverse=True)
  return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]
