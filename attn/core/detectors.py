"""Head detectors with TransformerLens' semantics (`transformer_lens/head_detector.py`), and the
induction score of Olsson et al. (2022).

A detector is a [T, T] pattern of where a kind of head attends, made from the tokens:
- previous-token: query i on key i - 1;
- duplicate-token: query i on every earlier key j < i holding the same token;
- induction: query i on every key j + 1 after an earlier occurrence j < i of its token (the token
  that came next last time), the duplicate pattern shifted one key to the right.
A head's attention pattern [..., T, T] scores against it by one of two error measures:
- "mul": the share of the head's attention that falls on the detection pattern,
  sum(pattern * detection) / sum(pattern);
- "abs": 1 - sum|pattern - detection| / T (1 a perfect match, -1 a perfect mismatch).
`exclude_bos` leaves key 0 out, `exclude_current_token` the diagonal (zeroed in the pattern before
"mul" scores it, in the difference before "abs" sums it), as TransformerLens does.

Two deliberate differences from TransformerLens: "abs" is not rounded to 3 decimals, and a pattern
with no attention left to score ("mul" after the exclusions) scores 0 where TransformerLens divides
0 by 0 (NaN). TransformerLens also zeroes the excluded entries in its cached pattern in place; these
are pure functions.

Pure functions of arrays, vectorised over leading axes (batch, layer, head): no Flax, no model.
`induction_score` is the one-number summary the induction experiment logs: on a sequence that
repeats a segment of L tokens, the mean attention from each token of the second copy to the token
after its earlier occurrence (the stripe at offset 1 - L).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HEAD_KINDS = ("previous_token_head", "duplicate_token_head", "induction_head")
ERROR_MEASURES = ("mul", "abs")


def _tokens(fn: str, tokens) -> jax.Array:
  tokens = jnp.asarray(tokens)
  if tokens.ndim < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{fn}: tokens must be integers [..., T], got {tokens.dtype} {tokens.shape}")
  return tokens


def previous_token_pattern(T: int) -> jax.Array:
  """[T, T] float32: 1 where key = query - 1."""
  return jnp.eye(T, k=-1, dtype=jnp.float32)


def duplicate_token_pattern(tokens) -> jax.Array:
  """[..., T, T] float32: 1 where an earlier key (j < i) holds the query's token."""
  tokens = _tokens("duplicate_token_pattern", tokens)
  T = tokens.shape[-1]
  same = tokens[..., :, None] == tokens[..., None, :]
  return (same & jnp.tri(T, k=-1, dtype=bool)).astype(jnp.float32)


def induction_pattern(tokens) -> jax.Array:
  """[..., T, T] float32: 1 on key j + 1 for each earlier occurrence j < i of the query's token
  (the duplicate pattern shifted one key right, key 0 empty, kept causal: j + 1 <= i)."""
  duplicate = duplicate_token_pattern(tokens)
  T = duplicate.shape[-1]
  shifted = jnp.pad(duplicate[..., :, :-1], [(0, 0)] * (duplicate.ndim - 1) + [(1, 0)])
  return shifted * jnp.tri(T, dtype=jnp.float32)


def detection_pattern(kind: str, tokens) -> jax.Array:
  """The [..., T, T] pattern of `kind` (one of HEAD_KINDS) for `tokens` [..., T]."""
  if kind == "previous_token_head":
    tokens = _tokens("detection_pattern", tokens)
    return jnp.broadcast_to(previous_token_pattern(tokens.shape[-1]), (*tokens.shape, tokens.shape[-1]))
  if kind == "duplicate_token_head":
    return duplicate_token_pattern(tokens)
  if kind == "induction_head":
    return induction_pattern(tokens)
  raise ValueError(f"detection_pattern: unknown kind {kind!r}; expected one of {HEAD_KINDS}")


def pattern_score(
  pattern,
  detection,
  *,
  exclude_bos: bool = False,
  exclude_current_token: bool = False,
  error_measure: str = "mul",
) -> jax.Array:
  """How well attention `pattern` [..., T, T] (rows are queries) matches `detection` (broadcastable
  to it): [...] float32, by `error_measure` (see the module docstring).

  Raises:
    ValueError: for an unknown error measure or a pattern that is not square.
  """
  if error_measure not in ERROR_MEASURES:
    raise ValueError(
      f"pattern_score: error_measure must be one of {ERROR_MEASURES}, got {error_measure!r}"
    )
  pattern = jnp.asarray(pattern, jnp.float32)
  T = pattern.shape[-1]
  if pattern.ndim < 2 or pattern.shape[-2] != T:
    raise ValueError(f"pattern_score: the pattern must be [..., T, T], got {pattern.shape}")
  keep = jnp.ones((T, T), bool)
  if exclude_bos:
    keep = keep.at[:, 0].set(False)
  if exclude_current_token:
    keep = keep & ~jnp.eye(T, dtype=bool)
  detection = jnp.asarray(detection, jnp.float32)
  if error_measure == "mul":
    kept = jnp.where(keep, pattern, 0.0)
    total = kept.sum((-2, -1))
    hit = (kept * detection).sum((-2, -1))
    return jnp.where(total > 0, hit / jnp.where(total > 0, total, 1.0), 0.0)
  difference = jnp.where(keep, jnp.abs(pattern - detection), 0.0)
  return 1.0 - difference.sum((-2, -1)) / T


def detect_heads(
  patterns,
  tokens,
  kind: str,
  *,
  exclude_bos: bool = False,
  exclude_current_token: bool = False,
  error_measure: str = "mul",
) -> jax.Array:
  """Each head's score as a head of `kind`: `patterns` [B, ..., H, T, T] (e.g. [B, L, H, T, T]) of
  the batch of `tokens` [B, T] -> [..., H], the mean over the batch of each sequence's score (as
  TransformerLens' `detect_head` averages over a list of sequences)."""
  patterns = jnp.asarray(patterns, jnp.float32)
  tokens = _tokens("detect_heads", tokens)
  if tokens.ndim != 2 or patterns.shape[0] != tokens.shape[0] or patterns.shape[-1] != tokens.shape[1]:
    raise ValueError(
      f"detect_heads: patterns {patterns.shape} and tokens {tokens.shape} must be [B, ..., T, T] "
      "and [B, T]"
    )
  detection = detection_pattern(kind, tokens)  # [B, T, T]
  detection = detection.reshape(detection.shape[:1] + (1,) * (patterns.ndim - 3) + detection.shape[1:])
  scores = pattern_score(
    patterns, detection, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
    error_measure=error_measure,
  )  # fmt: skip
  return scores.mean(0)


def induction_score(pattern, segment_length: int, *, start: int = 0) -> jax.Array:
  """Mean attention on the induction stripe: `pattern` [..., T, T] of a sequence whose tokens
  start..start+L-1 repeat at start+L..start+2L-1 (L = `segment_length`); each query i of the second
  copy should attend key i - L + 1, the token after its earlier occurrence. [...] float32."""
  pattern = jnp.asarray(pattern, jnp.float32)
  L, T = segment_length, pattern.shape[-1]
  if L < 1 or start < 0 or start + 2 * L > T:
    raise ValueError(
      f"induction_score: a segment of {L} tokens from {start}, repeated once, does not fit T = {T}"
    )
  queries = jnp.arange(start + L, start + 2 * L)
  return pattern[..., queries, queries - L + 1].mean(-1)
