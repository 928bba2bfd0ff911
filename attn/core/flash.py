"""Blocked ("flash") attention: online softmax over key blocks, O(T + S) memory, custom backward.

The naive path materialises the [T, S] logits, their softmax and, under autodiff, what the backward
pass needs of them: O(T * S) memory and several passes over it. This path never holds more than one
[chunk, block_q, block_k] tile of logits: the forward keeps a running row maximum, row sum and output
per query block (Milakov & Gimelshein 2018; Dao et al. 2022), and saves only the output and each
row's log-sum-exp. The backward pass recomputes each tile from those. Under `is_causal`, tiles that lie
wholly above the diagonal are skipped in both passes, which roughly halves the work.

Where the time goes (measured on the 2-core CPU, XLA's CPU backend, (8, 8, 512, 64) float32):
- Memory traffic, not arithmetic. A [64, 512, 512] tile of logits is 64 MiB; writing it and reading it
  back for the exponential cost more than the matmuls (the q @ k^T einsum alone took 34 ms, of which
  the matmul's share at the machine's rate is 12 ms). The (batch x head) axis is therefore cut into
  chunks whose tile fits the cache (`backend_tile_bytes`), one chunk at a time (`lax.map`): the
  forward went from about 97 ms to about 31 ms, torch's fused kernel's time.
- Matmul layouts. XLA's CPU dot was about 3x slower for a product that contracts the leading axis of
  its left operand (p^T @ dO, dS^T @ Q in the backward) than for the plain forms. The backward therefore
  transposes p and dS explicitly (an optimization barrier stops XLA from folding the transpose back
  into the dot): about 127 ms -> 70 ms for the backward of one 512 x 512 chunk sweep.

Variants, each computed inside the tiles with the same semantics as the naive path: a logit soft-cap
(cap * tanh(s / cap)), a per-head sink logit in the softmax's denominator (the carry starts from it),
the elementwise sigmoid with bias -log n (no normalisation, so no running maximum; n is counted from
the mask beforehand), and ALiBi's or T5's relative-position bias computed per tile from the tile's
positions (`attn.RelativeBias`): no [T, S] bias is ever built, and their gradients (the slopes, T5's
bucket table) are summed per tile along its diagonals, where the distance is constant. Softpick
(Zuhri et al. 2025) accumulates both of its sums online, each rescaled by exp(m_old - m_new) as the
running maximum m (started at 0, so m >= 0) grows; its backward recomputes e^(x - m) / D from the
saved m + log D as the softmax does its probabilities. Forgetting attention's bias
query_c[i] - key_c[j] (FoX) is added per tile from the two [N, L] vectors; their gradients are the
row sums and minus the column sums of each tile's logit gradient. The forward returns each row's
log-sum-exp too (`return_lse`), whose cotangent enters the backward as delta - d_lse.

Works on any backend (it is plain jax.lax); on a GPU, `jax.nn.dot_product_attention` (cuDNN) is
usually the faster choice, and `attn.dot_product_attention(implementation=None)` picks it there.
Inside this module arrays are [N, L, K], N = batch x heads flattened.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from attn.core import masks
from attn.core import positions as relative_positions

# Tile sizes: a tile is [chunk, block_q, block_k] float32 logits. block_q x block_k sets how much of
# each row one step sees; `chunk` (how many (batch, head) pairs share a step) is the largest divisor
# of N whose tile stays within the backend's tile budget (`backend_tile_bytes`), so the tile and its
# exponential stay in cache. On the 2-core CPU (2 MiB L2, 32 MiB L3), 512 x 512 tiles were the fastest
# tried at T = 512 and among the fastest at T = 4096 (noisy timings, 2026-11-25), and one (batch, head)
# pair per step (a 1 MiB tile, within L2) beat 4 MiB against torch's SDPA in interleaved rounds at
# (8, 8, 512, 64) forward+backward (2026-12-05: 1.12x and 1.17x causal, against 1.02x and 0.92x, on a
# loaded machine); other backends keep 4 MiB. A new machine may want others.
BLOCK_Q = 512
BLOCK_K = 512
TILE_BYTES = 4 * 2**20  # Every backend but the CPU.
CPU_TILE_BYTES = 2**20


def backend_tile_bytes(backend: str | None = None) -> int:
  """The tile budget of `backend` (default: JAX's default backend): CPU_TILE_BYTES on the CPU,
  TILE_BYTES elsewhere."""
  return CPU_TILE_BYTES if (backend or jax.default_backend()) == "cpu" else TILE_BYTES


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
  S (or 1); broadcast axes are kept at size 1. i and j may be Python ints or traced."""
  if x is None:
    return None
  if x.shape[-2] != 1:
    x = jax.lax.dynamic_slice_in_dim(x, i * block_q, block_q, axis=x.ndim - 2)
  if x.shape[-1] != 1:
    x = jax.lax.dynamic_slice_in_dim(x, j * block_k, block_k, axis=x.ndim - 1)
  return x


def _relative_distance(q_offset, i, block_q, j, block_k, transposed):
  """Query minus key position over tile (i, j): [block_q, block_k] int32 (or [block_k, block_q])."""
  q_pos = q_offset + i * block_q + jnp.arange(block_q)
  k_pos = j * block_k + jnp.arange(block_k)
  if transposed:
    return q_pos[None, :] - k_pos[:, None]
  return q_pos[:, None] - k_pos[None, :]


def _relative_tile(rel, q_offset, i, j, *, block_q, block_k, relative, transposed):
  """The relative-position bias of tile (i, j) for each row: [N, block_q, block_k] (or transposed).
  `rel` is [N, 1] ALiBi slopes or [N, num_buckets] T5 tables; `relative` the static description."""
  distance = _relative_distance(q_offset, i, block_q, j, block_k, transposed)
  if relative[0] == "alibi":
    return -rel[:, :1, None] * jnp.abs(distance).astype(jnp.float32)
  _, bidirectional, num_buckets, max_distance = relative
  buckets = relative_positions.t5_buckets(
    -distance, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
  )
  return jnp.take(rel, buckets, axis=1)


def _diagonal_sums(x):
  """x [N, A, B] -> [N, A + B - 1]: entry c sums x[:, a, b] over a - b = c - (B - 1) (one diagonal,
  where a tile's relative distance is constant). Columns reversed, each row padded by A and the rows
  re-cut one shorter: element (a, b) then lands in column a + (B - 1 - b)."""
  N, A, B = x.shape
  y = jnp.pad(x[:, :, ::-1], ((0, 0), (0, 0), (0, A)))  # [N, A, A + B]
  y = y.reshape(N, A * (A + B))[:, : A * (A + B - 1)].reshape(N, A, A + B - 1)
  return y.sum(1)


def _relative_grad(ds, q_offset, i, j, *, block_q, block_k, relative):
  """The gradient of the relative bias's parameters from tile (i, j)'s logit gradient ds
  [N, block_q, block_k]: [N, 1] for ALiBi's slopes, [N, num_buckets] for T5's table."""
  diagonals = _diagonal_sums(ds)  # [N, block_q + block_k - 1]
  c = jnp.arange(block_q + block_k - 1)
  distance = q_offset + i * block_q - j * block_k + c - (block_k - 1)  # Query minus key.
  if relative[0] == "alibi":
    return -(diagonals @ jnp.abs(distance).astype(jnp.float32))[:, None]
  _, bidirectional, num_buckets, max_distance = relative
  buckets = relative_positions.t5_buckets(
    -distance, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
  )
  return diagonals @ jax.nn.one_hot(buckets, num_buckets, dtype=jnp.float32)


def _tile_logits(
  q_i, k_j, aux, i, j, *, block_q, block_k, num_keys, is_causal, soft_cap=None, kind="softmax",
  relative=None, pad_mask=True, causal_mask=True, transposed=False,
):  # fmt: skip
  """Scaled logits of tile (i, j) (plus the bias and the relative bias, then soft-capped to
  cap * tanh(s / cap) when `soft_cap`), -inf where masked: [N, block_q, block_k] float32, or with
  `transposed` [N, block_k, block_q] (keys first, as the backward pass wants them). `aux` holds the
  per-row extras (see `_flash`); `kind` is read by the callers.

  `pad_mask` and `causal_mask` may be turned off (statically) for tiles that need them not: every
  elementwise op between the matmul and the softmax costs (on the CPU, the masks' `where` made an
  unmasked 512 x 512 forward about 2.5x slower).
  """
  del kind
  bias, mask, _, _, rel, q_offset = aux[:6]
  forget_q, forget_k = _forget_of(aux)
  swap = (lambda x: jnp.swapaxes(x, -1, -2)) if transposed else (lambda x: x)
  if transposed:
    s = jnp.einsum("nsk,nqk->nsq", k_j, q_i, preferred_element_type=jnp.float32)
  else:
    s = jnp.einsum("nqk,nsk->nqs", q_i, k_j, preferred_element_type=jnp.float32)
  if bias is not None:
    s = s + swap(_tile(bias, i, block_q, j, block_k))
  if relative is not None:
    s = s + _relative_tile(
      rel, q_offset, i, j, block_q=block_q, block_k=block_k, relative=relative, transposed=transposed
    )
  if forget_q is not None:  # query_c[i] - key_c[j], from the two vectors.
    fq = _rows_of(forget_q, i, block_q)
    fk = jax.lax.dynamic_slice_in_dim(forget_k, j * block_k, block_k, axis=1)
    s = s + (fq[:, None, :] - fk[:, :, None] if transposed else fq[:, :, None] - fk[:, None, :])
  if soft_cap is not None:
    s = soft_cap * jnp.tanh(s / soft_cap)
  allowed = None
  k_pos = j * block_k + jnp.arange(block_k)
  if pad_mask:
    allowed = (k_pos < num_keys)[None, :]  # Padding added to reach a whole number of tiles.
  if is_causal and causal_mask:
    q_pos = i * block_q + jnp.arange(block_q)
    causal = k_pos[None, :] <= q_pos[:, None]
    allowed = causal if allowed is None else allowed & causal
  if mask is not None:
    tile = _tile(mask, i, block_q, j, block_k)
    allowed = tile if allowed is None else allowed & tile
  return s if allowed is None else jnp.where(swap(allowed), s, -jnp.inf)


def _sigmoid_weights(s, log_n_i, transposed=False):
  """The sigmoid kind's weights sigmoid(s - log n) of a tile (0 where s is -inf, i.e. masked);
  `log_n_i` [N or 1, block_q]."""
  shift = log_n_i[:, None, :] if transposed else log_n_i[:, :, None]
  return jax.nn.sigmoid(s - shift)


def _transposed(x):
  """x with its last two axes swapped, materialised: the barrier keeps XLA from folding the transpose
  into the consuming dot, whose transposed-operand form was about 3x slower on the CPU."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


# The running maximum starts at this finite floor rather than -inf, so no -inf test is needed between
# the reduction and the exponential (such a test costs as much as the masks above): a row that has
# seen only masked keys keeps the floor, exp(-inf - floor) is 0, and its sum stays 0.
_MAX_FLOOR = -1e30

_TILE_ARGS = ("block_q", "block_k", "num_keys", "is_causal", "soft_cap", "kind", "relative")


def _online_step(carry, s, v_j):
  """One key tile of the online softmax: carry (row max, row sum, output accumulator)."""
  m, row_sum, acc = carry
  m_new = jnp.maximum(m, s.max(-1))
  p = jnp.exp(s - m_new[..., None])
  correction = jnp.exp(m - m_new)
  row_sum = row_sum * correction + p.sum(-1)
  acc = acc * correction[..., None] + jnp.einsum(
    "nqs,nsk->nqk", p, v_j, preferred_element_type=jnp.float32
  )
  return m_new, row_sum, acc


def _sigmoid_step(carry, s, v_j, log_n_i):
  """One key tile of the sigmoid kind: the weights need no normalisation, only the output sum."""
  m, row_sum, acc = carry
  w = _sigmoid_weights(s, log_n_i)
  return m, row_sum, acc + jnp.einsum("nqs,nsk->nqk", w, v_j, preferred_element_type=jnp.float32)


# Softpick's eps, as the naive path's (attn.core.attention.SOFTPICK_EPS).
SOFTPICK_EPS = 1e-6


def _softpick_step(carry, s, v_j):
  """One key tile of softpick: carry (running max m >= 0, running sum of |e^(x - m) - e^-m|,
  accumulator of relu(e^(x - m) - e^-m) v), both sums rescaled by e^(m_old - m_new)."""
  m, row_sum, acc = carry
  m_new = jnp.maximum(m, s.max(-1))
  shifted = jnp.exp(s - m_new[..., None]) - jnp.exp(-m_new)[..., None]
  magnitude = jnp.where(s > -jnp.inf, jnp.abs(shifted), 0.0)  # Masked keys count 0.
  correction = jnp.exp(m - m_new)
  row_sum = row_sum * correction + magnitude.sum(-1)
  acc = acc * correction[..., None] + jnp.einsum(
    "nqs,nsk->nqk", jax.nn.relu(shifted), v_j, preferred_element_type=jnp.float32
  )
  return m_new, row_sum, acc


def _forget_of(aux):
  """The forget gates' cumulative sums (query [N, Tp], key [N, Sp]) of `aux`, or (None, None);
  `aux` of six entries (as ring attention builds it) has none."""
  return (aux[6], aux[7]) if len(aux) > 6 else (None, None)


def _step(carry, s, v_j, aux, i, config):
  if config["kind"] == "softpick":
    return _softpick_step(carry, s, v_j)
  if config["kind"] == "sigmoid":
    return _sigmoid_step(carry, s, v_j, _rows_of(aux[3], i, config["block_q"]))
  return _online_step(carry, s, v_j)


def _rows_of(x, i, block_q):
  """Rows [i * block_q, (i + 1) * block_q) of a per-query array [N or 1, Tp]."""
  return jax.lax.dynamic_slice_in_dim(x, i * block_q, block_q, axis=1)


def _finish(m, row_sum, acc, kind="softmax"):
  """Output and log-sum-exp of a query block; a row that saw no key gets output 0 and lse +inf (so
  exp(s - lse) is exactly 0 for it in the backward pass). Softpick's "lse" is m + log D, D its
  denominator sum |e^(x - m) - e^-m| + eps e^-m (> 0, so a row with no key gets 0 / D = 0)."""
  if kind == "softpick":
    denom = row_sum + SOFTPICK_EPS * jnp.exp(-m)
    return acc / denom[..., None], m + jnp.log(denom)
  empty = row_sum == 0.0
  out = acc / jnp.where(empty, 1.0, row_sum)[..., None]
  lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, row_sum)))
  return out, lse


def _init_carry(n, block_q, kv, sink=None, kind="softmax"):
  """The carry before any key: max at the floor and sum 0; with a sink [N], the sink is the first
  "key" seen (max = sink, sum = exp(0) = 1, value 0). The sigmoid kind keeps its sum at 1 (no
  normalisation)."""
  if sink is not None:
    m, row_sum = jnp.broadcast_to(sink[:, None], (n, block_q)), jnp.ones((n, block_q), jnp.float32)
  elif kind == "sigmoid":
    m, row_sum = jnp.zeros((n, block_q), jnp.float32), jnp.ones((n, block_q), jnp.float32)
  elif kind == "softpick":  # The running max starts at 0: m = max(row max, 0).
    m, row_sum = jnp.zeros((n, block_q), jnp.float32), jnp.zeros((n, block_q), jnp.float32)
  else:
    m, row_sum = jnp.full((n, block_q), _MAX_FLOOR, jnp.float32), jnp.zeros((n, block_q), jnp.float32)
  return m, row_sum, jnp.zeros((n, block_q, kv), jnp.float32)


def _backward_tile(
  s_T, lse_i, delta_i, q_i, k_j, v_j, do_i, soft_cap=None, log_n_i=None, kind="softmax"
):
  """Gradient contributions of one tile, (dq_i, dk_j, dv_j, d_logits), from the recomputed logits
  `s_T` [N, block_k, block_q] (keys first: three of the four products then take their operands in
  the fast layout, and one transpose serves the fourth and d_logits). Under `soft_cap`, `s_T` holds
  the capped logits c tanh(x / c), whose derivative in x is 1 - (s / c)^2. With `log_n_i` (the
  sigmoid kind) the weights are sigmoid(s - log n), whose derivative is w (1 - w). Softpick's
  weights are w = relu(g - e^-L), g = e^(s - L), L = m + log D (`lse_i`), and its logit gradient
  g ([s > 0] dp - sign(s) delta), delta = rowsum(dO * O) = sum_j w_j dp_j as the softmax's."""
  if kind == "softpick":
    g_T = jnp.exp(s_T - lse_i[:, None, :])  # e^(x - m) / D; 0 where masked.
    p_T = jax.nn.relu(g_T - jnp.exp(-lse_i)[:, None, :])
  elif log_n_i is None:
    p_T = jnp.exp(s_T - lse_i[:, None, :])  # The forward's probabilities, recomputed.
  else:
    p_T = _sigmoid_weights(s_T, log_n_i, transposed=True)
  dv_j = jnp.einsum("nsq,nqk->nsk", p_T, do_i, preferred_element_type=jnp.float32)
  dp_T = jnp.einsum("nsk,nqk->nsq", v_j, do_i, preferred_element_type=jnp.float32)
  sigmoid = log_n_i is not None
  if kind == "softpick":
    ds_T = g_T * (jnp.where(s_T > 0.0, dp_T, 0.0) - jnp.sign(s_T) * delta_i[:, None, :])
  elif sigmoid:
    ds_T = dp_T * p_T * (1.0 - p_T)
  else:
    ds_T = p_T * (dp_T - delta_i[:, None, :])
  if soft_cap is not None:  # Masked entries (-inf, where p and ds are 0) get the factor 1.
    ds_T = ds_T * (1.0 - jnp.square(jnp.where(jnp.isfinite(s_T), s_T, 0.0) / soft_cap))
  dk_j = jnp.einsum("nsq,nqk->nsk", ds_T, q_i, preferred_element_type=jnp.float32)
  ds = _transposed(ds_T)
  dq_i = jnp.einsum("nqs,nsk->nqk", ds, k_j, preferred_element_type=jnp.float32)
  return dq_i, dk_j, dv_j, ds


def _tile_grads(q_i, k_j, v_j, do_i, lse_i, delta_i, aux, i, j, config, masks=None):
  """Recomputes tile (i, j) and returns (dq_i, dk_j, dv_j, d_bias tile or None, d_rel or None)."""
  tile_args = {name: config[name] for name in _TILE_ARGS}
  s = _tile_logits(q_i, k_j, aux, i, j, **tile_args, **(masks or {}), transposed=True)
  log_n_i = _rows_of(aux[3], i, config["block_q"]) if config["kind"] == "sigmoid" else None
  dq_i, dk, dv, ds = _backward_tile(
    s, lse_i, delta_i, q_i, k_j, v_j, do_i, config["soft_cap"], log_n_i, config["kind"]
  )
  d_rel = None
  if config["relative"] is not None:
    d_rel = _relative_grad(
      ds, aux[5], i, j, block_q=config["block_q"], block_k=config["block_k"],
      relative=config["relative"],
    )  # fmt: skip
  return dq_i, dk, dv, ds, d_rel


# ----------------------------------------------------------------------------------------------------
# Long sequences: loops over tiles (bounded program size and compile time).


def _key_blocks_for(i, *, block_q, block_k, num_key_blocks, is_causal):
  """Key blocks [0, end) that query block i can see: all, or up to the diagonal under is_causal."""
  if not is_causal:
    return num_key_blocks
  last_q = (i + 1) * block_q - 1
  return jnp.clip(last_q // block_k + 1, 0, num_key_blocks)


def _first_query_block_for(j, *, block_q, block_k, num_query_blocks, is_causal):
  """The first query block that can see key block j."""
  if not is_causal:
    return 0
  return jnp.clip(j * block_k // block_q, 0, num_query_blocks)


def _forward_looped(q, k, v, aux, config):
  """q [N, Tp, K] (pre-scaled), k [N, Sp, K], v [N, Sp, Kv] -> out [N, Tp, Kv], lse [N, Tp]."""
  block_q, block_k = config["block_q"], config["block_k"]
  N, Tp, _ = q.shape
  n_q, n_k = Tp // block_q, k.shape[1] // block_k
  tile_args = {name: config[name] for name in _TILE_ARGS}

  def query_block(i):
    q_i = jax.lax.dynamic_slice_in_dim(q, i * block_q, block_q, axis=1)

    def step(j, carry):
      k_j = jax.lax.dynamic_slice_in_dim(k, j * block_k, block_k, axis=1)
      v_j = jax.lax.dynamic_slice_in_dim(v, j * block_k, block_k, axis=1)
      s = _tile_logits(q_i, k_j, aux, i, j, **tile_args)
      return _step(carry, s, v_j, aux, i, config)

    end = _key_blocks_for(
      i, block_q=block_q, block_k=block_k, num_key_blocks=n_k, is_causal=config["is_causal"]
    )
    init = _init_carry(N, block_q, v.shape[-1], aux[2], config["kind"])
    return _finish(*jax.lax.fori_loop(0, end, step, init), kind=config["kind"])

  out, lse = jax.lax.map(query_block, jnp.arange(n_q))  # [n_q, N, block_q, ...]
  return jnp.moveaxis(out, 0, 1).reshape(N, Tp, -1), jnp.moveaxis(lse, 0, 1).reshape(N, Tp)


def _delta(out, d_out, d_lse):
  """rowsum(dO * O) [N, Tp], less the log-sum-exp's cotangent (d lse / d s = p, so it enters each
  tile's p (dp - delta) as one more term of delta)."""
  delta = jnp.sum(d_out * out, axis=-1)
  return delta if d_lse is None else delta - d_lse


def _with_forget_grads(aux, grads, d_forget_q, d_forget_k):
  """The backward's results: (dq, dk, dv, d_bias, d_rel), and the forget gates' gradients (or None)
  after them when `aux` has their slots (ring attention's six-entry aux has none)."""
  return grads if len(aux) <= 6 else (*grads, d_forget_q, d_forget_k)


def _zero_grads(aux):
  """Zero accumulators for the gradients of the bias and the relative bias's parameters (or None)."""
  bias, rel = aux[0], aux[4]
  d_bias = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  d_rel = None if rel is None else jnp.zeros(rel.shape, jnp.float32)
  return d_bias, d_rel


def _backward_looped(q, k, v, aux, out, lse, d_out, config, d_lse=None):
  """Gradients of q, k, v, the bias and the relative bias's parameters (and the forget gates'
  cumulative sums, see `_with_forget_grads`), tile by tile."""
  block_q, block_k = config["block_q"], config["block_k"]
  Tp = q.shape[1]
  n_q, n_k = Tp // block_q, k.shape[1] // block_k
  delta = _delta(out, d_out, d_lse)  # [N, Tp]: rowsum(dO * O) (- d_lse).
  d_bias, d_rel = _zero_grads(aux)
  forget = _forget_of(aux)[0] is not None
  d_fq = jnp.zeros((q.shape[0], Tp), jnp.float32) if forget else None

  def key_block(carry, j):
    dq, d_bias, d_rel, d_fq = carry
    k_j = jax.lax.dynamic_slice_in_dim(k, j * block_k, block_k, axis=1)
    v_j = jax.lax.dynamic_slice_in_dim(v, j * block_k, block_k, axis=1)

    def step(i, inner):
      dq, d_bias, d_rel, d_fq, dk_j, dv_j, d_fk_j = inner
      rows = lambda x: jax.lax.dynamic_slice_in_dim(x, i * block_q, block_q, axis=1)
      dq_i, dk, dv, ds, d_rel_tile = _tile_grads(
        rows(q), k_j, v_j, rows(d_out), rows(lse), rows(delta), aux, i, j, config
      )
      dq = jax.lax.dynamic_update_slice_in_dim(dq, rows(dq) + dq_i, i * block_q, axis=1)
      if d_bias is not None:
        d_bias = _add_tile(d_bias, ds, i, block_q, j, block_k)
      if d_rel is not None:
        d_rel = d_rel + d_rel_tile
      if d_fq is not None:
        d_fq = jax.lax.dynamic_update_slice_in_dim(d_fq, rows(d_fq) + ds.sum(-1), i * block_q, 1)
        d_fk_j = d_fk_j - ds.sum(-2)
      return dq, d_bias, d_rel, d_fq, dk_j + dk, dv_j + dv, d_fk_j

    d_fk_j = jnp.zeros(k_j.shape[:2], jnp.float32) if forget else None
    init = (
      dq, d_bias, d_rel, d_fq, jnp.zeros(k_j.shape, jnp.float32), jnp.zeros(v_j.shape, jnp.float32),
      d_fk_j,
    )  # fmt: skip
    start = _first_query_block_for(
      j, block_q=block_q, block_k=block_k, num_query_blocks=n_q, is_causal=config["is_causal"]
    )
    dq, d_bias, d_rel, d_fq, dk_j, dv_j, d_fk_j = jax.lax.fori_loop(start, n_q, step, init)
    return (dq, d_bias, d_rel, d_fq), (dk_j, dv_j, d_fk_j)

  (dq, d_bias, d_rel, d_fq), (dk, dv, d_fk) = jax.lax.scan(
    key_block, (jnp.zeros(q.shape, jnp.float32), d_bias, d_rel, d_fq), jnp.arange(n_k)
  )
  dk = jnp.moveaxis(dk, 0, 1).reshape(k.shape)
  dv = jnp.moveaxis(dv, 0, 1).reshape(v.shape)
  if d_fk is not None:
    d_fk = jnp.moveaxis(d_fk, 0, 1).reshape(k.shape[:2])
  return _with_forget_grads(aux, (dq, dk, dv, d_bias, d_rel), d_fq, d_fk)


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


# ----------------------------------------------------------------------------------------------------
# Up to UNROLL_MAX_TILES tiles: loops unrolled in Python. XLA then sees static slices, fuses each
# tile's softmax with its neighbours and schedules across tiles, and causal tiles are skipped at trace
# time. On the 2-core CPU the unrolled forward ran about 3x faster than the looped one at T = 512.
# Beyond it (long sequences) the loops stay loops, keeping compile time and program size bounded.
UNROLL_MAX_TILES = 64


def _visible(i, j, config) -> bool:
  """Whether tile (i, j) has any key that a query may see under the causal rule (static i, j)."""
  return not config["is_causal"] or j * config["block_k"] <= (i + 1) * config["block_q"] - 1


def _tile_masks(i, j, config, n_k):
  """Static: does tile (i, j) need the padding mask (the last key tile, if padded) and the causal mask
  (a tile crossing the diagonal)?"""
  pad = j == n_k - 1 and config["num_keys"] % config["block_k"] != 0
  causal = config["is_causal"] and (j + 1) * config["block_k"] - 1 > i * config["block_q"]
  return {"pad_mask": pad, "causal_mask": causal}


def _forward_unrolled(q, k, v, aux, config):
  block_q, block_k = config["block_q"], config["block_k"]
  n_q, n_k = q.shape[1] // block_q, k.shape[1] // block_k
  tile_args = {name: config[name] for name in _TILE_ARGS}
  outs, lses = [], []
  for i in range(n_q):
    q_i = q[:, i * block_q : (i + 1) * block_q]
    carry = _init_carry(q.shape[0], block_q, v.shape[-1], aux[2], config["kind"])
    for j in range(n_k):
      if not _visible(i, j, config):
        continue
      keys = slice(j * block_k, (j + 1) * block_k)
      s = _tile_logits(q_i, k[:, keys], aux, i, j, **tile_args, **_tile_masks(i, j, config, n_k))
      carry = _step(carry, s, v[:, keys], aux, i, config)
    out, lse = _finish(*carry, kind=config["kind"])
    outs.append(out)
    lses.append(lse)
  return jnp.concatenate(outs, axis=1), jnp.concatenate(lses, axis=1)


def _backward_unrolled(q, k, v, aux, out, lse, d_out, config, d_lse=None):
  block_q, block_k = config["block_q"], config["block_k"]
  n_q, n_k = q.shape[1] // block_q, k.shape[1] // block_k
  delta = _delta(out, d_out, d_lse)
  d_bias, d_rel = _zero_grads(aux)
  forget = _forget_of(aux)[0] is not None
  dq = [jnp.zeros(q[:, :block_q].shape, jnp.float32) for _ in range(n_q)]
  d_fq = [jnp.zeros((q.shape[0], block_q), jnp.float32) for _ in range(n_q)]
  dks, dvs, d_fks = [], [], []
  for j in range(n_k):
    keys = slice(j * block_k, (j + 1) * block_k)
    k_j, v_j = k[:, keys], v[:, keys]
    dk_j = jnp.zeros(k_j.shape, jnp.float32)
    dv_j = jnp.zeros(v_j.shape, jnp.float32)
    d_fk_j = jnp.zeros(k_j.shape[:2], jnp.float32)
    for i in range(n_q):
      if not _visible(i, j, config):
        continue
      rows = slice(i * block_q, (i + 1) * block_q)
      dq_i, dk, dv, ds, d_rel_tile = _tile_grads(
        q[:, rows], k_j, v_j, d_out[:, rows], lse[:, rows], delta[:, rows], aux, i, j, config,
        _tile_masks(i, j, config, n_k),
      )  # fmt: skip
      dq[i] = dq[i] + dq_i
      dk_j, dv_j = dk_j + dk, dv_j + dv
      if d_bias is not None:
        d_bias = _add_tile(d_bias, ds, i, block_q, j, block_k)
      if d_rel is not None:
        d_rel = d_rel + d_rel_tile
      if forget:
        d_fq[i] = d_fq[i] + ds.sum(-1)
        d_fk_j = d_fk_j - ds.sum(-2)
    dks.append(dk_j)
    dvs.append(dv_j)
    d_fks.append(d_fk_j)
  dq = jnp.concatenate(dq, axis=1)
  grads = (dq, jnp.concatenate(dks, axis=1), jnp.concatenate(dvs, axis=1), d_bias, d_rel)
  if not forget:
    return _with_forget_grads(aux, grads, None, None)
  return _with_forget_grads(aux, grads, jnp.concatenate(d_fq, 1), jnp.concatenate(d_fks, 1))


def _unrolled(q, k, config) -> bool:
  return (q.shape[1] // config["block_q"]) * (k.shape[1] // config["block_k"]) <= UNROLL_MAX_TILES


# ----------------------------------------------------------------------------------------------------
# Chunks of the (batch x head) axis, one at a time.


def _over_chunks(fn, mapped, shared, chunk, summed=()):
  """Runs fn(*mapped_chunk, *shared_chunk) on chunks of `chunk` rows of the leading axis N.

  `mapped` arrays are [N, ...] (or None). A `shared` array (mask, bias, ...) is [N, ...] (chunked
  with the rest) or of another leading size, or a scalar (handed whole to every chunk), or None. Each
  output of fn is [chunk, ...] and comes back [N, ...], except those whose index is in `summed` (the
  gradient of a shared bias): summed over the chunks.
  """
  N = mapped[0].shape[0]
  if chunk >= N:
    return fn(*mapped, *shared)
  n = N // chunk
  split = lambda x: x.reshape(n, chunk, *x.shape[1:])
  chunked = [x is not None and x.ndim >= 1 and x.shape[0] == N for x in shared]

  def body(xs):
    xs_mapped, xs_shared = xs
    shared_chunk = [x if c else s for x, s, c in zip(xs_shared, shared, chunked, strict=True)]
    return fn(*xs_mapped, *shared_chunk)

  xs = (
    tuple(None if x is None else split(x) for x in mapped),
    tuple(split(s) if c else None for s, c in zip(shared, chunked, strict=True)),
  )
  outs = jax.lax.map(body, xs)
  return tuple(
    None if o is None else (o.sum(0) if n in summed else o.reshape(N, *o.shape[2:]))
    for n, o in enumerate(outs)
  )


# `aux`, the per-row extras of the kernel, always in this order (each may be None):
#   bias [N or 1, Tp or 1, Sp or 1], mask (bool, the same), sink logits [N], log n [N or 1, Tp] (the
#   sigmoid kind's bias), relative-bias parameters [N, P] (ALiBi's slope, T5's bucket table), the
#   query offset (int32 scalar: query t sits at position offset + t, key s at s), and the forget
#   gates' cumulative sums at the queries [N, Tp] and at the keys [N, Sp] (ring attention passes
#   only the first six).


@functools.partial(jax.custom_vjp, nondiff_argnums=(11,))
def _flash(q, k, v, bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k, config):
  """(out [N, Tp, Kv], lse [N, Tp]); lse is +inf for a row that saw no key (softpick: m + log D)."""
  return _flash_fwd(q, k, v, bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k, config)[0]


def _flash_fwd(q, k, v, bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k, config):
  config = dict(config)
  forward = _forward_unrolled if _unrolled(q, k, config) else _forward_looped

  def per_chunk(q, k, v, sink, rel, forget_q, forget_k, bias, mask, log_n, q_offset):
    return forward(q, k, v, (bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k), config)

  out, lse = _over_chunks(
    per_chunk, (q, k, v, sink, rel, forget_q, forget_k), (bias, mask, log_n, q_offset),
    config["chunk"],
  )  # fmt: skip
  residuals = (q, k, v, bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k, out, lse)
  return (out, lse), residuals


def _flash_bwd(config, residuals, cotangents):
  q, k, v, bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k, out, lse = residuals
  d_out, d_lse = cotangents
  config = dict(config)
  backward = _backward_unrolled if _unrolled(q, k, config) else _backward_looped
  # A row with no key has lse +inf (-inf outside) and no gradient through it.
  d_lse = jnp.where(lse == jnp.inf, 0.0, d_lse.astype(jnp.float32))

  def per_chunk(q, k, v, out, lse, d_out, d_lse, sink, rel, forget_q, forget_k, bias, mask, log_n,
                q_offset):  # fmt: skip
    aux = (bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k)
    return backward(q, k, v, aux, out, lse, d_out, config, d_lse)

  d_out = d_out.astype(jnp.float32)
  summed = (3,) if bias is not None and bias.shape[0] == 1 else ()
  dq, dk, dv, d_bias, d_rel, d_fq, d_fk = _over_chunks(
    per_chunk, (q, k, v, out, lse, d_out, d_lse, sink, rel, forget_q, forget_k),
    (bias, mask, log_n, q_offset), config["chunk"], summed,
  )  # fmt: skip
  d_sink = None
  if sink is not None:  # The sink's weight exp(sink - lse) times its "value" 0, less delta.
    delta = _delta(out, d_out, d_lse)  # [N, Tp]
    d_sink = -jnp.sum(jnp.exp(sink[:, None] - lse) * delta, axis=1).astype(sink.dtype)
  cast = lambda g, x: None if x is None else g.astype(x.dtype)
  return (
    dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), cast(d_bias, bias), None, d_sink,
    None, cast(d_rel, rel), None, cast(d_fq, forget_q), cast(d_fk, forget_k),
  )  # fmt: skip


_flash.defvjp(_flash_fwd, _flash_bwd)


def chunk_for(N: int, block_q: int, block_k: int, tile_bytes: int | None = None) -> int:
  """The largest divisor of N whose [chunk, block_q, block_k] float32 tile fits `tile_bytes` (default:
  the default backend's, `backend_tile_bytes()`), at least 1."""
  budget = tile_bytes if tile_bytes is not None else backend_tile_bytes()
  limit = max(1, budget // (4 * block_q * block_k))
  return max(d for d in range(1, min(N, limit) + 1) if N % d == 0)


def flash_attention(
  query, key, value, *, mask=None, bias=None, multiplier: float, is_causal: bool = False,
  logit_soft_cap: float | None = None, kind: str = "softmax", sink_logits=None,
  relative_bias: relative_positions.RelativeBias | None = None, block_q: int | None = None,
  block_k: int | None = None, chunk: int | None = None, forget_cumsum=None, return_lse: bool = False,
):  # fmt: skip
  """Blocked attention on validated inputs (see `attn.dot_product_attention`).

  Args:
    query: [B, T, H, K]; key [B, S, G, K]; value [B, S, G, Kv] (G divides H); one batch axis.
    mask: bool, broadcastable to [B, H, T, S] with 4 dims, or None.
    bias: broadcastable to [B, H, T, S] with 4 dims, or None.
    multiplier: the logit scale.
    is_causal: query i sees key j iff j <= i (top-left aligned); tiles above the diagonal are skipped.
    logit_soft_cap: logits (with the biases) become cap * tanh(logits / cap) in each tile; None: off.
    kind: "softmax", "sigmoid" (weights sigmoid(logit - log n), n the keys the row may attend) or
      "softpick" (see `attn.core.attention`).
    sink_logits: [H] or [B, H] sink logits of the softmax, or None.
    relative_bias: ALiBi's or T5's bias, computed per tile from positions (no [T, S] array).
    block_q, block_k: tile sizes (default BLOCK_Q, BLOCK_K, shrunk to the lengths).
    chunk: (batch, head) pairs per step, a divisor of B * H (default `chunk_for`: the tile fits the
      backend's budget, `backend_tile_bytes()`).
    forget_cumsum: (query_c [B, T, H], key_c [B, S, H]): query_c[i] - key_c[j] added to the logits
      per tile (FoX), or None.
    return_lse: also return the float32 log-sum-exp of each row's logits [B, H, T] (-inf for a row
      with no key; the sink included); the softmax kind.

  Returns:
    [B, T, H, Kv] in the query's dtype (and the lse when `return_lse`).
  """
  B, T, H, _ = query.shape
  S, G = key.shape[1], key.shape[2]
  N = B * H
  block_q = min(block_q or BLOCK_Q, _round_up(T, 8))
  block_k = min(block_k or BLOCK_K, _round_up(S, 8))
  chunk = chunk or chunk_for(N, block_q, block_k)
  if N % chunk:
    raise ValueError(f"chunk: {chunk} does not divide batch x heads = {N}")

  # [B, L, heads, K] -> [B * H, L, K]; key/value heads repeated to H (O(S * H * K) memory, like q).
  def rows(x, repeat=1):
    x = jnp.repeat(jnp.swapaxes(x, 1, 2), repeat, axis=1).astype(jnp.float32)
    return x.reshape(N, *x.shape[2:])

  q = _pad_axis(rows(query) * multiplier, 1, block_q)
  k = _pad_axis(rows(key, H // G), 1, block_k)
  v = _pad_axis(rows(value, H // G), 1, block_k)

  def per_row(x, fill):  # [B or 1, H or 1, T or 1, S or 1] -> [N or 1, T or 1, S or 1], padded.
    if x is None:
      return None
    if x.shape[0] == 1 and x.shape[1] == 1:
      x = x.reshape(1, *x.shape[2:])
    else:
      x = jnp.broadcast_to(x, (B, H, *x.shape[2:])).reshape(N, *x.shape[2:])
    x = _pad_axis(x, 1, block_q, fill, broadcasts=True)
    return _pad_axis(x, 2, block_k, False if x.dtype == jnp.bool_ else 0, broadcasts=True)

  def per_head(x_HP):  # [H, P] -> [N, P]: each (batch, head) row gets its head's parameters.
    return jnp.broadcast_to(x_HP[None], (B, *x_HP.shape)).reshape(N, x_HP.shape[-1])

  log_n = None
  if kind == "sigmoid":
    log_n = _pad_axis(per_row(_log_counts(mask, T, S, is_causal)[..., None], 0.0)[..., 0], 1, block_q)
  sink = None
  if sink_logits is not None:
    sink = jnp.broadcast_to(jnp.asarray(sink_logits, jnp.float32), (B, H)).reshape(N)
  relative, rel, q_offset = None, None, None
  if relative_bias is not None:
    relative = relative_bias.static()
    rel = per_head(relative_bias.per_head_params())  # [N, 1] slopes or [N, num_buckets] tables.
    q_offset = jnp.asarray(relative_bias.query_offset, jnp.int32)
  mask = per_row(mask, True)
  bias = None if bias is None else per_row(bias.astype(jnp.float32), 0)
  config = (
    ("block_q", block_q), ("block_k", block_k), ("num_keys", S), ("is_causal", bool(is_causal)),
    ("chunk", chunk), ("soft_cap", None if logit_soft_cap is None else float(logit_soft_cap)),
    ("kind", kind), ("relative", relative),
  )  # fmt: skip
  forget_q, forget_k = None, None
  if forget_cumsum is not None:  # [B, L, H] -> [N, Lp]
    forget_q, forget_k = (
      _pad_axis(jnp.swapaxes(c.astype(jnp.float32), 1, 2).reshape(N, -1), 1, block)
      for c, block in zip(forget_cumsum, (block_q, block_k), strict=True)
    )
  out, lse = _flash(q, k, v, bias, mask, sink, log_n, rel, q_offset, forget_q, forget_k, config)
  out = jnp.swapaxes(out[:, :T].reshape(B, H, T, -1), 1, 2).astype(query.dtype)
  if not return_lse:
    return out
  lse = lse[:, :T].reshape(B, H, T)
  return out, jnp.where(lse == jnp.inf, -jnp.inf, lse)


def _log_counts(mask, T: int, S: int, is_causal: bool):
  """log n per query row, n the keys it may attend (at least 1): [B or 1, H or 1, T] float32, from
  the 4-D mask (or None) and the causal rule (`masks.attendable_keys`)."""
  n = masks.attendable_keys(mask, jnp.arange(T), num_keys=S, is_causal=is_causal)
  n = n.reshape((1,) * (3 - n.ndim) + n.shape)
  return jnp.log(jnp.maximum(n, 1).astype(jnp.float32))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
