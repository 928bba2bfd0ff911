"""Blocked ("flash") attention: online softmax over key blocks, O(T + S) memory, custom backward.

The naive path materialises the [T, S] logits, their softmax and, under autodiff, what the backward
pass needs of them: O(T * S) memory and several passes over it. This path never holds more than one
[block_q, block_k] tile of logits per (batch, head): the forward keeps a running row maximum, row sum
and output per query block (Milakov & Gimelshein 2018; Dao et al. 2022), and saves only the output and
each row's log-sum-exp. The backward pass recomputes each tile from those. Under `is_causal`, tiles that
lie wholly above the diagonal are skipped in both passes, which roughly halves the work.

Works on any backend (it is plain jax.lax); on a GPU, `jax.nn.dot_product_attention` (cuDNN) is
usually the faster choice, and `attn.dot_product_attention(implementation=None)` picks it there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Tile sizes. Large enough that each tile's matmuls run near the machine's matmul rate, small enough
# that a tile of logits stays in cache. On the 2-core CPU, 256 x 256 was the best or near the best of
# 128, 256 and 512 at the benchmark's shapes (timed by hand, 2026-11-25); a new machine may want others.
BLOCK_Q = 256
BLOCK_K = 256


def _pad_axis(x, axis, multiple, value=0, *, broadcasts=False):
  """Pads `axis` to a multiple of `multiple`. With `broadcasts` (masks, bias), a size-1 axis is left
  alone: it broadcasts over every tile."""
  size = x.shape[axis]
  pad = (-size) % multiple
  if pad == 0 or (broadcasts and size == 1):
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _tile(x, i, block_q, j, block_k):
  """The [.., block_q, block_k] tile (i, j) of a mask or bias whose last two axes are T (or 1) and
  S (or 1); broadcast axes are kept at size 1."""
  if x is None:
    return None
  if x.shape[-2] != 1:
    x = jax.lax.dynamic_slice_in_dim(x, i * block_q, block_q, axis=x.ndim - 2)
  if x.shape[-1] != 1:
    x = jax.lax.dynamic_slice_in_dim(x, j * block_k, block_k, axis=x.ndim - 1)
  return x


def _tile_logits(
  q_i, k_j, bias, mask, i, j, *, block_q, block_k, num_keys, causal_offset, is_causal,
  pad_mask=True, causal_mask=True,
):  # fmt: skip
  """Scaled logits of tile (i, j), -inf where masked: [B, H, block_q, block_k] float32.

  `pad_mask` and `causal_mask` may be turned off (statically) for tiles that need them not: every
  elementwise op between the matmul and the softmax costs (on the CPU, the masks' `where` made an
  unmasked 512 x 512 forward about 2.5x slower).
  """
  s = jnp.einsum("bhqk,bhsk->bhqs", q_i, k_j, preferred_element_type=jnp.float32)
  if bias is not None:
    s = s + _tile(bias, i, block_q, j, block_k)
  allowed = None
  k_pos = j * block_k + jnp.arange(block_k)
  if pad_mask:
    allowed = (k_pos < num_keys)[None, :]  # Padding added to reach a whole number of tiles.
  if is_causal and causal_mask:
    q_pos = i * block_q + jnp.arange(block_q) + causal_offset
    causal = k_pos[None, :] <= q_pos[:, None]
    allowed = causal if allowed is None else allowed & causal
  if mask is not None:
    tile = _tile(mask, i, block_q, j, block_k)
    allowed = tile if allowed is None else allowed & tile
  return s if allowed is None else jnp.where(allowed, s, -jnp.inf)


def _key_blocks_for(i, *, block_q, block_k, num_key_blocks, causal_offset, is_causal):
  """Key blocks [0, end) that query block i can see: all, or up to the diagonal under is_causal."""
  if not is_causal:
    return num_key_blocks
  last_q = (i + 1) * block_q - 1 + causal_offset
  return jnp.clip(last_q // block_k + 1, 0, num_key_blocks)


def _first_query_block_for(j, *, block_q, block_k, num_query_blocks, causal_offset, is_causal):
  """The first query block that can see key block j."""
  if not is_causal:
    return 0
  first_q = j * block_k - causal_offset  # The first query position that sees key j * block_k.
  return jnp.clip(first_q // block_q, 0, num_query_blocks)


def _forward(q, k, v, bias, mask, config):
  """q [B, H, Tp, K] (pre-scaled), k [B, H, Sp, K], v [B, H, Sp, Kv] -> out, lse [B, H, Tp]."""
  block_q, block_k = config["block_q"], config["block_k"]
  B, H, Tp, _ = q.shape
  Kv = v.shape[-1]
  n_q, n_k = Tp // block_q, k.shape[2] // block_k
  tile_args = {k_: config[k_] for k_ in ("block_q", "block_k", "num_keys", "causal_offset", "is_causal")}
  blocks = {k_: config[k_] for k_ in ("block_q", "block_k", "causal_offset", "is_causal")}

  def query_block(i):
    q_i = jax.lax.dynamic_slice_in_dim(q, i * block_q, block_q, axis=2)

    def step(j, carry):
      m, row_sum, acc = carry
      k_j = jax.lax.dynamic_slice_in_dim(k, j * block_k, block_k, axis=2)
      v_j = jax.lax.dynamic_slice_in_dim(v, j * block_k, block_k, axis=2)
      s = _tile_logits(q_i, k_j, bias, mask, i, j, **tile_args)
      m_new = jnp.maximum(m, s.max(-1))
      m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)  # A row with nothing seen yet.
      p = jnp.exp(s - m_safe[..., None])
      correction = jnp.exp(m - m_safe)
      row_sum = row_sum * correction + p.sum(-1)
      acc = acc * correction[..., None] + jnp.einsum(
        "bhqs,bhsk->bhqk", p.astype(v.dtype), v_j, preferred_element_type=jnp.float32
      )
      return m_new, row_sum, acc

    init = (
      jnp.full((B, H, block_q), -jnp.inf, jnp.float32),
      jnp.zeros((B, H, block_q), jnp.float32),
      jnp.zeros((B, H, block_q, Kv), jnp.float32),
    )
    end = _key_blocks_for(i, num_key_blocks=n_k, **blocks)
    m, row_sum, acc = jax.lax.fori_loop(0, end, step, init)
    empty = row_sum == 0.0  # No key to attend: the output is exactly 0.
    out = acc / jnp.where(empty, 1.0, row_sum)[..., None]
    # +inf makes exp(s - lse) exactly 0 for such rows in the backward pass.
    lse = jnp.where(
      empty, jnp.inf, jnp.where(jnp.isneginf(m), 0.0, m) + jnp.log(jnp.where(empty, 1.0, row_sum))
    )
    return out, lse

  out, lse = jax.lax.map(query_block, jnp.arange(n_q))  # [n_q, B, H, block_q, ...]
  out = jnp.moveaxis(out, 0, 2).reshape(B, H, Tp, Kv)
  lse = jnp.moveaxis(lse, 0, 2).reshape(B, H, Tp)
  return out, lse


def _backward(q, k, v, bias, mask, out, lse, d_out, config):
  """Gradients of q, k, v (and bias) from the saved output and log-sum-exp, tile by tile."""
  block_q, block_k = config["block_q"], config["block_k"]
  Tp, Sp = q.shape[2], k.shape[2]
  n_q, n_k = Tp // block_q, Sp // block_k
  tile_args = {k_: config[k_] for k_ in ("block_q", "block_k", "num_keys", "causal_offset", "is_causal")}
  blocks = {k_: config[k_] for k_ in ("block_q", "block_k", "causal_offset", "is_causal")}
  delta = jnp.sum(d_out.astype(jnp.float32) * out, axis=-1)  # [B, H, Tp]: rowsum(dO * O).
  d_bias = None if bias is None else jnp.zeros(bias.shape, jnp.float32)

  def key_block(j, carry):
    dq, d_bias = carry
    k_j = jax.lax.dynamic_slice_in_dim(k, j * block_k, block_k, axis=2)
    v_j = jax.lax.dynamic_slice_in_dim(v, j * block_k, block_k, axis=2)

    def step(i, inner):
      dq, d_bias, dk_j, dv_j = inner
      q_i = jax.lax.dynamic_slice_in_dim(q, i * block_q, block_q, axis=2)
      do_i = jax.lax.dynamic_slice_in_dim(d_out, i * block_q, block_q, axis=2)
      lse_i = jax.lax.dynamic_slice_in_dim(lse, i * block_q, block_q, axis=2)
      delta_i = jax.lax.dynamic_slice_in_dim(delta, i * block_q, block_q, axis=2)
      s = _tile_logits(q_i, k_j, bias, mask, i, j, **tile_args)
      p = jnp.exp(s - lse_i[..., None])  # The forward's probabilities, recomputed.
      dv_j = dv_j + jnp.einsum("bhqs,bhqk->bhsk", p, do_i, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhqk,bhsk->bhqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_i[..., None])
      dq_i = jnp.einsum("bhqs,bhsk->bhqk", ds, k_j, preferred_element_type=jnp.float32)
      dq = jax.lax.dynamic_update_slice_in_dim(
        dq, jax.lax.dynamic_slice_in_dim(dq, i * block_q, block_q, axis=2) + dq_i, i * block_q, axis=2
      )
      dk_j = dk_j + jnp.einsum("bhqs,bhqk->bhsk", ds, q_i, preferred_element_type=jnp.float32)
      if d_bias is not None:
        d_bias = _add_tile(d_bias, ds, i, block_q, j, block_k)
      return dq, d_bias, dk_j, dv_j

    init = (dq, d_bias, jnp.zeros(k_j.shape, jnp.float32), jnp.zeros(v_j.shape, jnp.float32))
    start = _first_query_block_for(j, num_query_blocks=n_q, **blocks)
    dq, d_bias, dk_j, dv_j = jax.lax.fori_loop(start, n_q, step, init)
    return (dq, d_bias), (dk_j, dv_j)

  (dq, d_bias), (dk, dv) = jax.lax.scan(
    lambda carry, j: key_block(j, carry), (jnp.zeros(q.shape, jnp.float32), d_bias), jnp.arange(n_k)
  )
  B, H = q.shape[:2]
  dk = jnp.moveaxis(dk, 0, 2).reshape(B, H, Sp, k.shape[-1])
  dv = jnp.moveaxis(dv, 0, 2).reshape(B, H, Sp, v.shape[-1])
  return dq, dk, dv, d_bias


def _add_tile(d_bias, ds, i, block_q, j, block_k):
  """Adds the tile's logit gradient into d_bias, summed over the axes where the bias broadcasts."""
  sum_axes = tuple(a for a in range(ds.ndim) if d_bias.shape[a] == 1 and ds.shape[a] != 1)
  ds = ds.sum(axis=sum_axes, keepdims=True)
  start = [0] * d_bias.ndim
  if d_bias.shape[-2] != 1:
    start[-2] = i * block_q
  if d_bias.shape[-1] != 1:
    start[-1] = j * block_k
  current = jax.lax.dynamic_slice(d_bias, start, ds.shape)
  return jax.lax.dynamic_update_slice(d_bias, current + ds, start)


# Up to this many tiles the loops are unrolled in Python: XLA then sees static slices, fuses each
# tile's softmax with its matmuls and schedules across tiles, and causal tiles are skipped at trace
# time. On the 2-core CPU the unrolled forward ran about 3x faster than the looped one at T = 512.
# Beyond it (long sequences) the loops stay loops, keeping compile time and program size bounded.
UNROLL_MAX_TILES = 64


def _visible(i, j, config) -> bool:
  """Whether tile (i, j) has any key that a query may see under the causal rule (static i, j)."""
  if not config["is_causal"]:
    return True
  last_q = (i + 1) * config["block_q"] - 1 + config["causal_offset"]
  return j * config["block_k"] <= last_q


# The running maximum starts at this finite floor rather than -inf, so no -inf test is needed between
# the reduction and the exponential (such a test costs as much as the masks above): a row that has
# seen only masked keys keeps the floor, exp(-inf - floor) is 0, and its sum stays 0.
_MAX_FLOOR = -1e30


def _tile_masks(i, j, config, n_k):
  """Static: does tile (i, j) need the padding mask (the last key tile, if padded) and the causal mask
  (a tile crossing the diagonal)?"""
  pad = j == n_k - 1 and config["num_keys"] % config["block_k"] != 0
  first_q = i * config["block_q"] + config["causal_offset"]
  causal = config["is_causal"] and (j + 1) * config["block_k"] - 1 > first_q
  return {"pad_mask": pad, "causal_mask": causal}


def _forward_unrolled(q, k, v, bias, mask, config):
  block_q, block_k = config["block_q"], config["block_k"]
  n_q, n_k = q.shape[2] // block_q, k.shape[2] // block_k
  tile_args = {k_: config[k_] for k_ in ("block_q", "block_k", "num_keys", "causal_offset", "is_causal")}
  B, H = q.shape[:2]
  outs, lses = [], []
  for i in range(n_q):
    q_i = q[:, :, i * block_q : (i + 1) * block_q]
    m = jnp.full((B, H, block_q), _MAX_FLOOR, jnp.float32)
    row_sum = jnp.zeros((B, H, block_q), jnp.float32)
    acc = jnp.zeros((B, H, block_q, v.shape[-1]), jnp.float32)
    for j in range(n_k):
      if not _visible(i, j, config):
        continue
      k_j, v_j = k[:, :, j * block_k : (j + 1) * block_k], v[:, :, j * block_k : (j + 1) * block_k]
      s = _tile_logits(q_i, k_j, bias, mask, i, j, **tile_args, **_tile_masks(i, j, config, n_k))
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      correction = jnp.exp(m - m_new)
      row_sum = row_sum * correction + p.sum(-1)
      acc = acc * correction[..., None] + jnp.einsum(
        "bhqs,bhsk->bhqk", p, v_j, preferred_element_type=jnp.float32
      )
      m = m_new
    empty = row_sum == 0.0
    outs.append(acc / jnp.where(empty, 1.0, row_sum)[..., None])
    lses.append(jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, row_sum))))
  return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)


def _backward_unrolled(q, k, v, bias, mask, out, lse, d_out, config):
  block_q, block_k = config["block_q"], config["block_k"]
  n_q, n_k = q.shape[2] // block_q, k.shape[2] // block_k
  tile_args = {k_: config[k_] for k_ in ("block_q", "block_k", "num_keys", "causal_offset", "is_causal")}
  delta = jnp.sum(d_out.astype(jnp.float32) * out, axis=-1)
  d_bias = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  dq = [jnp.zeros(q[:, :, :block_q].shape, jnp.float32) for _ in range(n_q)]
  dks, dvs = [], []
  for j in range(n_k):
    k_j, v_j = k[:, :, j * block_k : (j + 1) * block_k], v[:, :, j * block_k : (j + 1) * block_k]
    dk_j = jnp.zeros(k_j.shape, jnp.float32)
    dv_j = jnp.zeros(v_j.shape, jnp.float32)
    for i in range(n_q):
      if not _visible(i, j, config):
        continue
      rows = slice(i * block_q, (i + 1) * block_q)
      q_i, do_i = q[:, :, rows], d_out[:, :, rows]
      s = _tile_logits(q_i, k_j, bias, mask, i, j, **tile_args, **_tile_masks(i, j, config, n_k))
      p = jnp.exp(s - lse[:, :, rows, None])
      dv_j = dv_j + jnp.einsum("bhqs,bhqk->bhsk", p, do_i, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhqk,bhsk->bhqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = p * (dp - delta[:, :, rows, None])
      dq[i] = dq[i] + jnp.einsum("bhqs,bhsk->bhqk", ds, k_j, preferred_element_type=jnp.float32)
      dk_j = dk_j + jnp.einsum("bhqs,bhqk->bhsk", ds, q_i, preferred_element_type=jnp.float32)
      if d_bias is not None:
        d_bias = _add_tile(d_bias, ds, i, block_q, j, block_k)
    dks.append(dk_j)
    dvs.append(dv_j)
  return jnp.concatenate(dq, axis=2), jnp.concatenate(dks, axis=2), jnp.concatenate(dvs, axis=2), d_bias


def _unrolled(q, k, config) -> bool:
  return (q.shape[2] // config["block_q"]) * (k.shape[2] // config["block_k"]) <= UNROLL_MAX_TILES


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, bias, mask, config):
  return _flash_fwd(q, k, v, bias, mask, config)[0]


def _flash_fwd(q, k, v, bias, mask, config):
  config = dict(config)
  forward = _forward_unrolled if _unrolled(q, k, config) else _forward
  out, lse = forward(q, k, v, bias, mask, config)
  return out, (q, k, v, bias, mask, out, lse)


def _flash_bwd(config, residuals, d_out):
  q, k, v, bias, mask, out, lse = residuals
  config = dict(config)
  backward = _backward_unrolled if _unrolled(q, k, config) else _backward
  dq, dk, dv, d_bias = backward(q, k, v, bias, mask, out, lse, d_out, config)
  return (
    dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
    None if bias is None else d_bias.astype(bias.dtype), None,
  )  # fmt: skip


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
  query, key, value, *, mask=None, bias=None, multiplier: float, is_causal: bool = False,
  block_q: int | None = None, block_k: int | None = None,
):  # fmt: skip
  """Blocked attention on validated inputs (see `attn.dot_product_attention`).

  Args:
    query: [B, T, H, K]; key [B, S, G, K]; value [B, S, G, Kv] (G divides H); one batch axis.
    mask: bool, broadcastable to [B, H, T, S] with 4 dims, or None.
    bias: broadcastable to [B, H, T, S] with 4 dims, or None.
    multiplier: the logit scale.
    is_causal: query i sees key j iff j <= i (top-left aligned); tiles above the diagonal are skipped.
    block_q, block_k: tile sizes (default BLOCK_Q, BLOCK_K, shrunk to the lengths).

  Returns:
    [B, T, H, Kv] in the query's dtype.
  """
  T, H = query.shape[1], query.shape[2]
  S, G = key.shape[1], key.shape[2]
  block_q = min(block_q or BLOCK_Q, _round_up(T, 8))
  block_k = min(block_k or BLOCK_K, _round_up(S, 8))
  # [B, L, heads, K] -> [B, heads, L, K]; key/value heads repeated to H (O(S * H * K) memory, like q).
  q = jnp.swapaxes(query, 1, 2).astype(jnp.float32) * multiplier
  k = jnp.repeat(jnp.swapaxes(key, 1, 2), H // G, axis=1).astype(jnp.float32)
  v = jnp.repeat(jnp.swapaxes(value, 1, 2), H // G, axis=1).astype(jnp.float32)
  q = _pad_axis(q, 2, block_q)
  k, v = _pad_axis(k, 2, block_k), _pad_axis(v, 2, block_k)
  if mask is not None:
    mask = _pad_axis(
      _pad_axis(mask, 2, block_q, True, broadcasts=True), 3, block_k, False, broadcasts=True
    )
  if bias is not None:
    bias = _pad_axis(
      _pad_axis(bias.astype(jnp.float32), 2, block_q, broadcasts=True), 3, block_k, broadcasts=True
    )
  config = (
    ("block_q", block_q), ("block_k", block_k), ("num_keys", S), ("causal_offset", 0),
    ("is_causal", bool(is_causal)),
  )  # fmt: skip
  out = _flash(q, k, v, bias, mask, config)[:, :, :T]
  return jnp.swapaxes(out, 1, 2).astype(query.dtype)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
