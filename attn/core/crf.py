"""A linear-chain CRF over per-token tag scores: log-likelihood (the forward algorithm) and Viterbi.

Pure functions, no parameters of their own: the emissions come from a tagger, the transition scores
from wherever the caller keeps them (`attn.nn` learns them). Both run under `jit` as one `lax.scan`
over the sequence; a mask (True = a real token) may leave any positions out, a row with none scores 0
and decodes to nothing. Forbidden moves (IOB2's "I-X only after B-X or I-X") are transition scores of
`FORBIDDEN`, a large finite negative number rather than -inf, so no legal input gives NaN or inf.

Shapes: emissions [B, T, C] (C tags), tags int [B, T], mask bool [B, T], transitions [C, C] (from the
row's tag to the column's), start and end [C].
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FORBIDDEN = -1e4


def _arrays(emissions, transitions, start, end):
  """As jax arrays: emissions in their dtype (at least float32 for the sums), the scores in float32."""
  emissions = jnp.asarray(emissions)
  emissions = emissions.astype(jnp.promote_types(emissions.dtype, jnp.float32))
  return emissions, *(jnp.asarray(x, jnp.float32) for x in (transitions, start, end))


def _check(emissions: jax.Array, transitions: jax.Array, start: jax.Array, end: jax.Array) -> int:
  if emissions.ndim != 3:
    raise ValueError(f"crf: emissions must be [batch, length, tags], got shape {emissions.shape}")
  c = emissions.shape[-1]
  if transitions.shape != (c, c) or start.shape != (c,) or end.shape != (c,):
    raise ValueError(
      f"crf: with {c} tags, transitions must be ({c}, {c}) and start, end ({c},); got "
      f"{transitions.shape}, {start.shape}, {end.shape}"
    )
  return c


def _mask(mask: jax.Array | None, emissions: jax.Array) -> jax.Array:
  if mask is None:
    return jnp.ones(emissions.shape[:2], bool)
  mask = jnp.asarray(mask)
  if mask.shape != emissions.shape[:2] or mask.dtype != jnp.bool_:
    raise ValueError(f"crf: mask must be bool {emissions.shape[:2]}, got {mask.dtype} {mask.shape}")
  return mask


def log_partition(
  emissions: jax.Array,
  transitions: jax.Array,
  start: jax.Array,
  end: jax.Array,
  mask: jax.Array | None = None,
) -> jax.Array:
  """log Z per sequence [B]: the log-sum-exp of the scores of all tag sequences of the masked tokens."""
  emissions, transitions, start, end = _arrays(emissions, transitions, start, end)
  _check(emissions, transitions, start, end)
  mask = _mask(mask, emissions)
  batch, _, c = emissions.shape

  def step(carry, inputs):
    alpha_BC, started_B = carry
    emit_BC, valid_B = inputs
    moved = jax.nn.logsumexp(alpha_BC[:, :, None] + transitions[None], axis=1) + emit_BC
    first = start[None] + emit_BC
    new = jnp.where(started_B[:, None], moved, first)
    return (jnp.where(valid_B[:, None], new, alpha_BC), started_B | valid_B), None

  init = (jnp.zeros((batch, c), jnp.float32), jnp.zeros((batch,), bool))
  (alpha_BC, started_B), _ = jax.lax.scan(
    step, init, (jnp.swapaxes(emissions, 0, 1), jnp.swapaxes(mask, 0, 1))
  )
  return jnp.where(started_B, jax.nn.logsumexp(alpha_BC + end[None], axis=-1), 0.0)


def sequence_score(
  emissions: jax.Array,
  tags: jax.Array,
  transitions: jax.Array,
  start: jax.Array,
  end: jax.Array,
  mask: jax.Array | None = None,
) -> jax.Array:
  """The score [B] of the given tag sequences: emissions, start, transitions between consecutive
  masked tokens, and end."""
  emissions, transitions, start, end = _arrays(emissions, transitions, start, end)
  c = _check(emissions, transitions, start, end)
  mask = _mask(mask, emissions)
  tags = jnp.asarray(tags)
  if tags.shape != emissions.shape[:2]:
    raise ValueError(f"crf: tags must be {emissions.shape[:2]}, got {tags.shape}")
  tags = jnp.clip(tags, 0, c - 1)
  emit_BT = jnp.take_along_axis(emissions, tags[..., None], axis=-1)[..., 0]

  def step(carry, inputs):
    score_B, prev_B, started_B = carry
    emit_B, tag_B, valid_B = inputs
    move_B = jnp.where(started_B, transitions[prev_B, tag_B], start[tag_B])
    score_B = score_B + jnp.where(valid_B, emit_B + move_B, 0.0)
    prev_B = jnp.where(valid_B, tag_B, prev_B)
    return (score_B, prev_B, started_B | valid_B), None

  batch = emissions.shape[0]
  init = (jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), tags.dtype), jnp.zeros((batch,), bool))
  (score_B, last_B, started_B), _ = jax.lax.scan(
    step, init, tuple(jnp.swapaxes(x, 0, 1) for x in (emit_BT, tags, mask))
  )
  return score_B + jnp.where(started_B, end[last_B], 0.0)


def log_likelihood(
  emissions: jax.Array,
  tags: jax.Array,
  transitions: jax.Array,
  start: jax.Array,
  end: jax.Array,
  mask: jax.Array | None = None,
) -> jax.Array:
  """log p(tags | emissions) per sequence [B] (0 for a row with no tokens); its negation is the loss."""
  return sequence_score(emissions, tags, transitions, start, end, mask) - log_partition(
    emissions, transitions, start, end, mask
  )


def viterbi(
  emissions: jax.Array,
  transitions: jax.Array,
  start: jax.Array,
  end: jax.Array,
  mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The best tag sequence per row: (tags int32 [B, T], 0 at masked positions; its score [B])."""
  emissions, transitions, start, end = _arrays(emissions, transitions, start, end)
  _check(emissions, transitions, start, end)
  mask = _mask(mask, emissions)
  batch, _, c = emissions.shape
  identity_BC = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (batch, c))

  def forward(carry, inputs):
    delta_BC, started_B = carry
    emit_BC, valid_B = inputs
    candidates_BCC = delta_BC[:, :, None] + transitions[None]
    moved = jnp.max(candidates_BCC, axis=1) + emit_BC
    new = jnp.where(started_B[:, None], moved, start[None] + emit_BC)
    pointer_BC = jnp.argmax(candidates_BCC, axis=1).astype(jnp.int32)
    pointer_BC = jnp.where((valid_B & started_B)[:, None], pointer_BC, identity_BC)
    return (jnp.where(valid_B[:, None], new, delta_BC), started_B | valid_B), pointer_BC

  init = (jnp.zeros((batch, c), jnp.float32), jnp.zeros((batch,), bool))
  (delta_BC, started_B), pointers_TBC = jax.lax.scan(
    forward, init, (jnp.swapaxes(emissions, 0, 1), jnp.swapaxes(mask, 0, 1))
  )
  final_BC = delta_BC + end[None]
  best_B = jnp.argmax(final_BC, axis=-1).astype(jnp.int32)

  def backward(tag_B, pointer_BC):
    # The tag at step t is carried in; the pointer of step t gives the tag at t - 1.
    return jnp.take_along_axis(pointer_BC, tag_B[:, None], axis=-1)[:, 0], tag_B

  _, tags_TB = jax.lax.scan(backward, best_B, pointers_TBC, reverse=True)
  tags = jnp.where(mask, jnp.swapaxes(tags_TB, 0, 1), 0)
  return tags, jnp.where(started_B, jnp.max(final_BC, axis=-1), 0.0)


def iob2_constraints(tag_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Which moves IOB2 allows: (transitions bool [C, C], start bool [C]); True = allowed.

  "I-X" may follow only "B-X" or "I-X", and may not open a sentence; every other tag may go anywhere.
  Add `np.where(allowed, 0, FORBIDDEN)` to the learned scores to forbid the rest.
  """
  names = list(tag_names)

  def inside_of(name: str) -> str | None:
    return name[2:] if name.startswith("I-") else None

  allowed = np.ones((len(names), len(names)), bool)
  start = np.ones(len(names), bool)
  for j, to in enumerate(names):
    kind = inside_of(to)
    if kind is None:
      continue
    start[j] = False
    for i, src in enumerate(names):
      allowed[i, j] = src in (f"B-{kind}", f"I-{kind}")
  return allowed, start
