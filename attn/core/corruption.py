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
) -> tuple[jax.Array, jax.Array]:
  """Replaces each eligible token by `mask_id` with probability `rate`.

  Args:
    rng: PRNG key.
    tokens: int [batch..., T].
    rate: probability in [0, 1] that an eligible token is replaced.
    mask_id: the id written in place of a corrupted token.
    eligible: bool, broadcastable to `tokens`; only these positions may be corrupted (pass
      `tokens != pad_id` to leave padding alone). Defaults to all positions.

  Returns:
    (corrupted tokens, bool array of the positions that were replaced), both shaped like `tokens`;
    a denoising loss is usually taken on the replaced positions only.
  """
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate <= 1.0:
    raise ValueError(f"corrupt_tokens: rate must be a number in [0, 1], got {rate!r}")
  if isinstance(mask_id, bool) or not jnp.issubdtype(jnp.result_type(mask_id), jnp.integer):
    raise ValueError(f"corrupt_tokens: mask_id must be an int, got {mask_id!r}")
  tokens = jnp.asarray(tokens)
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"corrupt_tokens: tokens must be integer ids, got {tokens.dtype}")
  replaced = jax.random.bernoulli(rng, rate, jnp.shape(tokens))
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
  return jnp.where(replaced, jnp.asarray(mask_id, tokens.dtype), tokens), replaced
