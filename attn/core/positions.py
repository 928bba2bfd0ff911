"""Positional encodings. Attention alone ignores order; these give it back.

- `sinusoidal_positions`: the original Transformer's fixed table, added to the embeddings.
- `rope`: rotary embeddings of queries and keys (logits depend on i - j only), in either pair layout:
  rotate-half (GPT-NeoX, Llama; the default) or interleaved (GPT-J, RoFormer; `interleaved=True`).
- `xpos`: RoPE with a per-pair exponential decay in i - j (Sun et al. 2022), for length extrapolation.
- `alibi_slopes`, `alibi_bias`: ALiBi's linear logit bias; `t5_buckets`: T5's bucketed relative
  positions; `RelativeBias`: either, described by its parameters so flash can compute it per tile.
"""

from __future__ import annotations

import dataclasses
import functools

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


def _positions_array(name: str, positions) -> jax.Array:
  positions = jnp.asarray(positions)
  if not (jnp.issubdtype(positions.dtype, jnp.integer) or jnp.issubdtype(positions.dtype, jnp.floating)):
    raise ValueError(f"{name}: positions must be numbers, got dtype {positions.dtype}")
  return positions


def _broadcasts(shape: tuple[int, ...], to: tuple[int, ...]) -> bool:
  """Whether an array of `shape` broadcasts to `to` (numpy's rules, right-aligned)."""
  return all(a in (1, b) for a, b in zip(reversed(shape), reversed(to), strict=False))


def _rotate(
  name: str,
  x_BTHK: jax.typing.ArrayLike,
  positions: jax.typing.ArrayLike,
  *,
  base: float,
  fraction: float,
  interleaved: bool,
  scale_of=None,
) -> jax.Array:
  """RoPE's rotation of the first R channels, the rest unchanged; `scale_of(pos [..., T, 1, 1], R)`,
  when given, returns a per-pair multiplier [..., T, 1, R/2] of the rotated channels (xPos)."""
  x = jnp.asarray(x_BTHK)
  K = x.shape[-1]
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"{name}: fraction must be in (0, 1], got {fraction}")
  R = int(K * fraction) // 2 * 2
  if R == 0:
    raise ValueError(f"{name}: fraction {fraction} of head dim {K} rotates no pair of channels")
  pos = _positions_array(name, positions).astype(jnp.float32)
  lead = x.shape[:-2]  # [batch..., T]
  if (
    pos.ndim == 0
    or pos.ndim > len(lead)
    or pos.shape[-1] != lead[-1]
    or not _broadcasts(pos.shape, lead)
  ):
    raise ValueError(
      f"{name}: positions of shape {tuple(pos.shape)} do not fit x of shape {tuple(x.shape)} "
      f"([batch..., T, H, K]): expected [T] or [batch..., T] with T = {lead[-1] if lead else '?'}"
    )
  inv_freq = base ** (-jnp.arange(0, R, 2, dtype=jnp.float32) / R)  # [R/2]
  angles = pos[..., :, None, None] * inv_freq  # [..., T, 1, R/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if scale_of is not None:
    scale = scale_of(pos[..., :, None, None], R)  # [..., T, 1, R/2]
    cos, sin = cos * scale, sin * scale
  rotated, rest = x[..., :R].astype(jnp.float32), x[..., R:]
  if interleaved:  # Pairs (2i, 2i + 1), GPT-J's rotate_every_two.
    a, b = rotated[..., 0::2], rotated[..., 1::2]
    out = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(rotated.shape)
  else:  # Pairs (i, i + R/2), GPT-NeoX's rotate_half.
    a, b = rotated[..., : R // 2], rotated[..., R // 2 :]
    out = jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
  out = out.astype(x.dtype)
  return jnp.concatenate([out, rest], axis=-1) if R < K else out


def rope(
  x_BTHK: jax.typing.ArrayLike,
  positions: jax.typing.ArrayLike,
  *,
  base: float = 10_000.0,
  fraction: float = 1.0,
  interleaved: bool = False,
) -> jax.Array:
  """Rotary position embedding (Su et al. 2021): rotates each pair of channels (i, i + R/2) of the
  first R = fraction * K channels by the angle position / base^(2i / R); the rest pass unchanged.

  Applied to queries and keys, it makes the logit q_i . k_j depend on their positions only through
  i - j. By default the pairs are the "rotate half" halves (GPT-NeoX, Llama, x-transformers), not
  adjacent channels; `interleaved=True` rotates the adjacent pairs (2i, 2i + 1) instead (GPT-J,
  RoFormer, Mesh Transformer JAX's `rotate_every_two`). The two layouts are the same rotation up to a
  fixed permutation of the R rotated channels, so a checkpoint must be read in the layout it was
  trained in (or its projections permuted).

  Args:
    x_BTHK: [batch..., T, H, K] queries or keys.
    positions: [T] or [batch..., T] integer positions (the cache offset onwards when decoding).
    base: the 10000 of the formula.
    fraction: the share of the head dim rotated; R = fraction * K rounded down to an even number.
    interleaved: pair adjacent channels (2i, 2i + 1) rather than (i, i + R/2).

  Returns:
    [batch..., T, H, K] in x's dtype (the rotation is computed in float32).
  """
  return _rotate("rope", x_BTHK, positions, base=base, fraction=fraction, interleaved=bool(interleaved))


def xpos(
  x_BTHK: jax.typing.ArrayLike,
  positions: jax.typing.ArrayLike,
  *,
  is_key: bool,
  scale_base: float = 512.0,
  gamma: float = 0.4,
  base: float = 10_000.0,
  fraction: float = 1.0,
  interleaved: bool = False,
) -> jax.Array:
  """xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer"): RoPE whose rotated pair i is also
  scaled by zeta_i^(n / scale_base) for a query at position n and zeta_i^(-n / scale_base) for a key,
  with zeta_i = (2i / R + gamma) / (1 + gamma) in (0, 1).

  So q_n . k_m still depends on the positions only through n - m, and each pair's contribution is
  multiplied by zeta_i^((n - m) / scale_base), which decays as a key lies farther before the query
  (xPos is meant for causal attention: for a key after the query the factor grows instead).
  microsoft/torchscale's XPOS (the paper's code) uses the interleaved pairs (`interleaved=True`);
  lucidrains' rotary-embedding-torch (`use_xpos`) the rotate-half ones (the default here, as `rope`).
  Positions may be shifted by any constant common to queries and keys without changing the logits:
  torchscale centres them on the middle of the sequence, keeping the scales near 1 (with gamma 0.4 the
  lowest pair's scale moves 3.5x per scale_base positions, so float32 overflows some 36 000 positions
  from zero).

  Args:
    x_BTHK: [batch..., T, H, K] queries or keys.
    positions: [T] or [batch..., T] positions, the same frame for queries and keys.
    is_key: keys take zeta^(-n / scale_base), queries zeta^(n / scale_base).
    scale_base: the 512 of the paper: positions per power of zeta.
    gamma: the 0.4 of the paper; larger decays more slowly. Positive.
    base, fraction, interleaved: as `rope`'s; the scale applies to the R rotated channels only.

  Returns:
    [batch..., T, H, K] in x's dtype (computed in float32).
  """
  if not gamma > 0.0:
    raise ValueError(f"xpos: gamma must be positive, got {gamma}")
  if not scale_base > 0.0:
    raise ValueError(f"xpos: scale_base must be positive, got {scale_base}")
  sign = -1.0 if is_key else 1.0

  def scale_of(pos, R):
    zeta = (jnp.arange(0, R, 2, dtype=jnp.float32) / R + gamma) / (1.0 + gamma)  # [R/2]
    return jnp.exp(sign * pos / scale_base * jnp.log(zeta))

  return _rotate(
    "xpos",
    x_BTHK,
    positions,
    base=base,
    fraction=fraction,
    interleaved=bool(interleaved),
    scale_of=scale_of,
  )


def alibi_slopes(num_heads: int) -> jax.Array:
  """ALiBi's per-head slopes (Press et al. 2022): the geometric sequence 2^(-8 h / H), h = 1..H, for H
  a power of two; otherwise those of the next lower power of two, then every other slope of the next
  higher one (the paper's reference code). float32 [H]."""
  if num_heads <= 0:
    raise ValueError(f"alibi_slopes: num_heads must be positive, got {num_heads}")

  def powers(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  lower = 2 ** int(np.floor(np.log2(num_heads)))
  slopes = powers(lower)
  if lower < num_heads:
    slopes += powers(2 * lower)[0::2][: num_heads - lower]
  return jnp.asarray(slopes, jnp.float32)


def alibi_bias(
  query_positions: jax.typing.ArrayLike,
  key_positions: jax.typing.ArrayLike,
  slopes_H: jax.typing.ArrayLike,
) -> jax.Array:
  """ALiBi's logit bias -slope_h * |i - j| for query position i and key position j: [..., H, T, S].

  In a causal layer only j <= i is attended, where this is the paper's -slope * (i - j); the
  symmetric |i - j| is the bidirectional form (as x-transformers has it) for an encoder.
  """
  qp = _positions_array("alibi_bias", query_positions).astype(jnp.float32)
  kp = _positions_array("alibi_bias", key_positions).astype(jnp.float32)
  distance = jnp.abs(qp[..., :, None] - kp[..., None, :])  # [..., T, S]
  return -jnp.asarray(slopes_H, jnp.float32)[:, None, None] * distance[..., None, :, :]


def t5_bucket_problem(num_buckets: int, max_distance: int, *, bidirectional: bool) -> str | None:
  """Why `t5_buckets` cannot bucket with these settings, or None: each direction needs 2 exact
  buckets (num_buckets >= 4 bidirectional, >= 2 causal) and max_distance beyond the exact ones (the
  logarithmic buckets divide by log(max_distance / exact))."""
  per_direction = num_buckets // 2 if bidirectional else num_buckets
  if per_direction >= 2 and max_distance > per_direction // 2:
    return None
  return (
    f"{num_buckets} buckets ({'bidirectional' if bidirectional else 'causal'}) need at least "
    f"{4 if bidirectional else 2} and a max_distance above {max(per_direction // 2, 1)}, got "
    f"max_distance={max_distance}"
  )


def t5_buckets(
  relative_position: jax.typing.ArrayLike,
  *,
  bidirectional: bool,
  num_buckets: int = 32,
  max_distance: int = 128,
) -> jax.Array:
  """T5's relative-position buckets (Raffel et al. 2020, mesh_tensorflow's `_relative_position_bucket`)
  of key position minus query position: exact buckets for small distances, logarithmic ones up to
  `max_distance`, one bucket beyond. Bidirectional: half the buckets for keys after the query.
  Causal: keys after the query share bucket 0 (they are masked anyway). int32, the input's shape.

  Raises:
    ValueError: fewer than 2 exact buckets per direction (num_buckets >= 4; >= 2 causal) or a
      max_distance not beyond them (the logarithmic buckets would divide by zero).
  """
  problem = t5_bucket_problem(num_buckets, max_distance, bidirectional=bidirectional)
  if problem:
    raise ValueError(f"t5_buckets: {problem}")
  relative = _positions_array("t5_buckets", relative_position).astype(jnp.int32)
  n = -relative  # Query position minus key position.
  bucket = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  large = max_exact + (
    jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
    / np.log(max_distance / max_exact)
    * (num_buckets - max_exact)
  ).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["params", "query_offset"],
  meta_fields=["kind", "bidirectional", "num_buckets", "max_distance"],
)
@dataclasses.dataclass(frozen=True)
class RelativeBias:
  """ALiBi's or T5's relative-position logit bias, described by its parameters rather than as an
  [H, T, S] array, so that the flash path can compute it per tile (and its gradient there). Query t
  sits at position `query_offset + t` (the cache index in cached decoding), key s at position s.

  Attributes:
    kind: "alibi" (params: slopes [H], bias -slope * |i - j|) or "t5" (params: the bucket table
      [num_buckets, H], bias table[bucket(j - i)], see `t5_buckets`).
    params: as `kind` says; float.
    query_offset: int or int32 scalar (may be traced).
    bidirectional, num_buckets, max_distance: T5's bucketing (static).
  """

  kind: str
  params: jax.Array
  query_offset: jax.typing.ArrayLike = 0
  bidirectional: bool = True
  num_buckets: int = 32
  max_distance: int = 128

  def __post_init__(self):
    if self.kind not in ("alibi", "t5"):
      raise ValueError(f"RelativeBias.kind: unknown choice {self.kind!r}; expected 'alibi' or 't5'")

  def check(self, num_heads: int) -> None:
    """Raises ValueError naming the shape when `params` does not fit `num_heads` query heads."""
    want = (num_heads,) if self.kind == "alibi" else (self.num_buckets, num_heads)
    if tuple(jnp.shape(self.params)) != want:
      what = "slopes [H]" if self.kind == "alibi" else "table [num_buckets, H]"
      raise ValueError(
        f"relative_bias: {self.kind} needs {what} = {want} for {num_heads} query heads, got params "
        f"of shape {tuple(jnp.shape(self.params))}"
      )

  def static(self) -> tuple:
    """The hashable description the flash kernel specialises on."""
    if self.kind == "alibi":
      return ("alibi", None, None, None)
    return ("t5", bool(self.bidirectional), int(self.num_buckets), int(self.max_distance))

  def per_head_params(self) -> jax.Array:
    """[H, 1] slopes or [H, num_buckets] tables, float32."""
    params = jnp.asarray(self.params, jnp.float32)
    return params[:, None] if self.kind == "alibi" else params.T

  def dense(self, T: int, S: int) -> jax.Array:
    """The bias as an array: [H, T, S] float32."""
    q_pos = jnp.asarray(self.query_offset, jnp.int32) + jnp.arange(T)
    k_pos = jnp.arange(S)
    if self.kind == "alibi":
      return alibi_bias(q_pos, k_pos, self.params)
    buckets_TS = t5_buckets(
      k_pos[None, :] - q_pos[:, None],
      bidirectional=self.bidirectional,
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
    )
    return jnp.moveaxis(jnp.asarray(self.params, jnp.float32)[buckets_TS], -1, 0)
