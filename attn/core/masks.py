"""Attention masks: boolean arrays, True = may attend, broadcastable to [batch..., H, T, S].

These decide which keys a query may look at: `causal_mask` (no key after the query), `local_window_mask`
(a band around the query, symmetric or flash-attention's (left, right) window, e.g. Mistral's causal
sliding window), `padding_mask` (real keys only), `combine_masks` (their AND) and `attendable_keys`
(how many keys each query may attend). They have nothing to do with corrupting input tokens for
denoising training, which lives in `attn.core.corruption` under the name `corrupt_tokens`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _length(fn: str, name: str, value) -> int:
  """A static length: a non-negative Python or numpy int (not a bool, a float or an array)."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
    raise ValueError(f"{fn}: {name} must be a non-negative int, got {value!r}")
  return int(value)


def causal_mask(T: int, S: int | None = None, *, offset: jax.typing.ArrayLike = 0) -> jax.Array:
  """Mask in which query i may attend key j iff j <= i + offset.

  Args:
    T: number of queries.
    S: number of keys; defaults to T.
    offset: position of query 0 among the keys. 0 aligns the top-left corners, as
      `jax.nn.dot_product_attention(is_causal=True)` does; during cached decoding it is the number of
      tokens already in the cache. May be a traced integer.

  Returns:
    bool [T, S].
  """
  T = _length("causal_mask", "T", T)
  S = T if S is None else _length("causal_mask", "S", S)
  q_pos_T1 = jnp.arange(T)[:, None] + offset
  k_pos_1S = jnp.arange(S)[None, :]
  return k_pos_1S <= q_pos_T1


def _window(value) -> tuple[int | None, int | None]:
  """`local_window_mask`'s window as (left, right), each a non-negative int or None (unbounded)."""
  side = lambda v: v is None or (not isinstance(v, bool) and isinstance(v, int | np.integer) and v >= 0)
  if not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= 0:
    return int(value), int(value)
  if isinstance(value, tuple | list) and len(value) == 2 and all(side(v) for v in value):
    return tuple(None if v is None else int(v) for v in value)
  raise ValueError(
    "local_window_mask: window must be a non-negative int or a pair (left, right) of non-negative "
    f"ints or None (unbounded), got {value!r}"
  )


def local_window_mask(
  T: int,
  S: int | None = None,
  *,
  window: int | tuple[int | None, int | None],
  offset: jax.typing.ArrayLike = 0,
) -> jax.Array:
  """Band mask in which query i may attend key j iff i + offset - left <= j <= i + offset + right.

  `window=w` is the symmetric band |i + offset - j| <= w (a local-window baseline); a pair
  `(left, right)` is flash-attention's `window_size=(left, right)`: up to `left` keys before the
  query's position and `right` after, None for no limit on that side (flash-attention's -1). So
  `(w, 0)` is a causal sliding window (Mistral's) and `(None, 0)` the causal mask itself.

  Query 0 sits at key position `offset`, as in `causal_mask`: 0 (the default) aligns the top-left
  corners; `offset = S - T` aligns the last query with the last key, the bottom-right alignment
  flash-attention uses when S != T (its rule: query i attends keys in
  [i + S - T - left, i + S - T + right]); during cached decoding it is the cache index. Stacked over
  L layers with window w, position i can see no further than L * w tokens away, so a word decided by a
  cue farther off than that cannot be tagged.

  Args:
    T: number of queries.
    S: number of keys; defaults to T.
    window: the half-width w >= 0 (0 lets each query see only its own position), or (left, right),
      each a non-negative int or None.
    offset: position of query 0 among the keys; may be a traced integer.

  Returns:
    bool [T, S].

  Raises:
    ValueError: a length that is not a non-negative int, or a window that is not one of the above.
  """
  T = _length("local_window_mask", "T", T)
  S = T if S is None else _length("local_window_mask", "S", S)
  left, right = _window(window)
  q_pos_T1 = jnp.arange(T)[:, None] + offset
  k_pos_1S = jnp.arange(S)[None, :]
  mask = jnp.ones((T, S), bool)
  if left is not None:
    mask = mask & (k_pos_1S >= q_pos_T1 - left)
  if right is not None:
    mask = mask & (k_pos_1S <= q_pos_T1 + right)
  return mask


def padding_mask(
  lengths: jax.typing.ArrayLike | None = None,
  *,
  max_length: int | None = None,
  tokens: jax.typing.ArrayLike | None = None,
  pad_id: int = 0,
) -> jax.Array:
  """Key-padding mask: key j may be attended iff it is a real token.

  Give either `lengths` [batch...] with `max_length` (the first `lengths` keys are real), or
  `tokens` [batch..., S] with `pad_id` (keys equal to `pad_id` are padding).

  Returns:
    bool [batch..., 1, 1, S], which broadcasts against [batch..., H, T, S].
  """
  if (lengths is None) == (tokens is None):
    raise ValueError("padding_mask: give exactly one of `lengths` (with `max_length`) or `tokens`")
  if tokens is not None:
    tokens = jnp.asarray(tokens)
    if tokens.ndim < 1:
      raise ValueError(f"padding_mask: tokens must be [batch..., S], got shape {tokens.shape}")
    valid_S = tokens != pad_id
  else:
    if max_length is None:
      raise ValueError("padding_mask: `max_length` is required with `lengths`")
    max_length = _length("padding_mask", "max_length", max_length)
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
      raise ValueError(f"padding_mask: lengths must be integers [batch...], got dtype {lengths.dtype}")
    valid_S = jnp.arange(max_length) < lengths[..., None]
  return valid_S[..., None, None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical AND of the given masks, skipping None; None when all are None.

  Raises:
    ValueError: when a mask is not boolean or the masks do not broadcast together.
  """
  present = [jnp.asarray(m) for m in masks if m is not None]
  if not present:
    return None
  for i, m in enumerate(present):
    if m.dtype != jnp.bool_:
      raise ValueError(f"combine_masks: mask {i} must be boolean (True = may attend), got {m.dtype}")
  try:
    np.broadcast_shapes(*(jnp.shape(m) for m in present))
  except ValueError:
    shapes = ", ".join(str(jnp.shape(m)) for m in present)
    raise ValueError(f"combine_masks: masks do not broadcast together: {shapes}") from None
  return functools.reduce(jnp.logical_and, present)


def attendable_keys(
  mask: jax.Array | None, query_positions: jax.Array, *, num_keys: int, is_causal: bool = False
) -> jax.Array:
  """How many keys each query may attend: [..., H or 1, T] int32.

  The count SSMax's log n and sigmoid attention's -log n bias are made of (a query's count does not
  depend on how far its batch is padded). From `mask` (boolean, broadcastable to [..., H, T, S]; None:
  every key) and, with `is_causal`, the rule key j <= the query's position. Key padding under the
  causal rule ([..., 1, 1, S]) is a running count, never a [T, S] array.

  Args:
    mask: None, or [..., H or 1, T or 1, S] boolean, True = may attend.
    query_positions: [T] int, each query's position among the S keys (an offset when decoding).
    num_keys: S.
    is_causal: whether key j > the query's position is masked too.
  """
  q_pos_T = jnp.asarray(query_positions)
  S = num_keys
  if mask is None:
    n_T = jnp.minimum(q_pos_T + 1, S) if is_causal else jnp.full(q_pos_T.shape, S)
    return n_T[None].astype(jnp.int32)
  if is_causal and mask.shape[-2] == 1:
    running = jnp.cumsum(mask[..., 0, :].astype(jnp.int32), axis=-1)  # [..., H or 1, S]
    return jnp.take(running, jnp.clip(q_pos_T, 0, S - 1), axis=-1)
  if is_causal:
    mask = mask & (jnp.arange(S) <= q_pos_T[:, None])
  n = jnp.sum(mask, axis=-1, dtype=jnp.int32)  # [..., H or 1, T or 1]
  return jnp.broadcast_to(n, (*n.shape[:-1], q_pos_T.shape[0]))
