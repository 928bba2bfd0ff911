"""Corrupting input tokens for denoising training (the notes' other "masking").

This is not an attention mask: it changes the tokens a model sees, so that it learns to fill the gaps.
Attention masks live in `attn.core.masks`.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def corrupt_tokens(
  rng: jax.Array,
  tokens: jax.Array,
  rate: float,
  mask_id: int,
  *,
  eligible: jax.Array | None = None,
  random_fraction: float = 0.0,
  keep_fraction: float = 0.0,
  random_range: tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Chooses each eligible token with probability `rate` and corrupts it.

  A chosen token becomes `mask_id`, except that a `random_fraction` of them become a uniformly random
  id from `random_range` = [low, high) and a `keep_fraction` stay as they are (BERT's 80 / 10 / 10
  is random_fraction = keep_fraction = 0.1). The defaults mask every chosen token.

  Args:
    rng: PRNG key.
    tokens: int [batch..., T].
    rate: probability in [0, 1] that an eligible token is chosen.
    mask_id: the id written in place of a masked token.
    eligible: bool, broadcastable to `tokens`; only these positions may be corrupted (pass
      `tokens != pad_id` to leave padding alone). Defaults to all positions.
    random_fraction, keep_fraction: shares of the chosen tokens replaced by a random id or kept;
      each in [0, 1], their sum at most 1.
    random_range: [low, high) of the random ids (e.g. past the special tokens, to the vocabulary
      size); required when random_fraction > 0.

  Returns:
    (corrupted tokens, bool array of the chosen positions), both shaped like `tokens`; a denoising
    loss is usually taken on the chosen positions only (kept ones included, as in BERT).
  """
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate <= 1.0:
    raise ValueError(f"corrupt_tokens: rate must be a number in [0, 1], got {rate!r}")
  if isinstance(mask_id, bool) or not jnp.issubdtype(jnp.result_type(mask_id), jnp.integer):
    raise ValueError(f"corrupt_tokens: mask_id must be an int, got {mask_id!r}")
  tokens = jnp.asarray(tokens)
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"corrupt_tokens: tokens must be integer ids, got {tokens.dtype}")
  for name, value in (("random_fraction", random_fraction), ("keep_fraction", keep_fraction)):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
      raise ValueError(f"corrupt_tokens: {name} must be a number in [0, 1], got {value!r}")
  if random_fraction + keep_fraction > 1.0:
    raise ValueError(
      f"corrupt_tokens: random_fraction + keep_fraction must be at most 1, got "
      f"{random_fraction} + {keep_fraction}"
    )
  if random_fraction > 0 and (
    random_range is None or len(random_range) != 2 or not 0 <= random_range[0] < random_range[1]
  ):
    raise ValueError(
      f"corrupt_tokens: random_fraction > 0 needs random_range = (low, high) with 0 <= low < high, "
      f"got {random_range!r}"
    )
  choose_rng, kind_rng, id_rng = jax.random.split(rng, 3)
  replaced = jax.random.bernoulli(choose_rng, rate, jnp.shape(tokens))
  if eligible is not None:
    eligible = jnp.asarray(eligible)
    if eligible.dtype != jnp.bool_:
      raise ValueError(f"corrupt_tokens: eligible must be boolean, got {eligible.dtype}")
    try:
      ok = np.broadcast_shapes(eligible.shape, tokens.shape) == tokens.shape
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(
        f"corrupt_tokens: eligible of shape {eligible.shape} does not broadcast to tokens {tokens.shape}"
      )
    replaced = replaced & eligible
  corrupted = jnp.where(replaced, jnp.asarray(mask_id, tokens.dtype), tokens)
  if random_fraction == 0.0 and keep_fraction == 0.0:
    return corrupted, replaced
  u = jax.random.uniform(kind_rng, jnp.shape(tokens))
  if random_fraction > 0:
    low, high = random_range
    random_ids = jax.random.randint(id_rng, jnp.shape(tokens), low, high, tokens.dtype)
    corrupted = jnp.where(replaced & (u < random_fraction), random_ids, corrupted)
  keep = replaced & (u >= random_fraction) & (u < random_fraction + keep_fraction)
  return jnp.where(keep, tokens, corrupted), replaced
