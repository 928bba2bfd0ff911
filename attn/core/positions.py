"""Positional encodings. Attention alone ignores order; these give it back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_positions(
  positions: int | jax.typing.ArrayLike, dim: int, *, max_timescale: float = 10_000.0
) -> jax.Array:
  """The paper's encodings: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)).

  Args:
    positions: a length T (for positions 0..T-1) or an integer array [..., T] of positions, which may
      be traced (cached decoding passes the cache offset).
    dim: D, even.
    max_timescale: the 10000 of the formula.

  Returns:
    float32 [T, D] or [..., T, D].
  """
  if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim <= 0 or dim % 2:
    raise ValueError(f"sinusoidal_positions: dim must be positive and even, got {dim!r}")
  if isinstance(positions, bool | float):
    raise ValueError(
      f"sinusoidal_positions: positions must be a length (int) or an array, got {positions!r}"
    )
  if isinstance(positions, int | np.integer):  # A length, not a single position.
    if positions < 0:
      raise ValueError(f"sinusoidal_positions: the length must be non-negative, got {positions}")
    positions = jnp.arange(positions)
  if not isinstance(positions, jax.Array):
    positions = np.asarray(positions)
  if positions.dtype.kind not in "iuf":
    raise ValueError(f"sinusoidal_positions: positions must be numbers, got dtype {positions.dtype}")
  pos = jnp.asarray(positions, jnp.float32)[..., None]  # [..., T, 1]
  inv_freq = max_timescale ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [D/2]
  angles = pos * inv_freq  # [..., T, D/2]
  # Interleave so that even channels hold sin and odd channels cos, exactly as the formula reads.
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)
