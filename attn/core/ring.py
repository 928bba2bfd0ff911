"""Ring attention (Liu et al. 2023): the sequence axis sharded over a mesh axis, O(T / n) memory each.

Queries, keys and values are cut along the sequence into n equal chunks, one per device of the mesh
axis (`jax.shard_map`). Each device keeps its query chunk and passes its key/value chunk round the
ring with `jax.lax.ppermute`: at step s, device i holds the keys of device (i - s) mod n and runs the
flash path's tile kernels on them (`attn.core.flash`: online softmax, tiles of at most
[chunk, block_q, block_k] logits), which give that chunk's output and row log-sum-exp; the chunks'
partial results are merged by their log-sum-exps. A device holds its query chunk, the key/value
chunk it works on and the one arriving: nothing of length T or S, and no [T, S] array.

The backward pass is a custom VJP that rings too (not autodiff through the forward, nor
`jax.checkpoint`): it saves only each device's output and log-sum-exp, then passes each key/value
chunk round the ring again together with its gradient accumulators, so that after n steps every
chunk's dk and dv arrive back at the device that owns it; each step runs flash's backward tiles
against the final log-sum-exp (the probabilities are recomputed, exp(s - lse), as in flash).

Causal masks skip work as flash does: a key chunk wholly after a device's queries (source > i) is
skipped (`lax.switch`, no tile computed, forward or backward), the device's own chunk runs flash's
causal tiles (skipping those above the diagonal), and earlier chunks run unmasked. The work is
therefore unbalanced (device i computes i + 1/2 chunks' worth): a striped or zig-zag layout would
balance it but permutes the sequence, which this module leaves to a later issue.

Semantics are those of `attn.dot_product_attention(implementation="flash")`: key padding masks
(masked keys are zeroed first, so NaN there has no influence), grouped-query heads (key/value chunks
travel with their G heads and are repeated to H on arrival), fully masked rows (output 0, gradients
0), the logit soft-cap, sink logits and ALiBi's or T5's relative bias, computed per tile from the
global positions (query offset i * T / n, key offset source * S / n). Not supported: a dense bias or a
[T, S] mask (they would defeat the point), and the sigmoid kind (its -log n needs global counts).
On the CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` gives 8 devices that share the
cores: a ring there measures overhead, not speed-up (`python -m benchmarks.ring`). Measured on the
2-core CPU, causal (1, 8, T, 64) float32 forward + backward, 8 forced devices against one-device
flash, each in a fresh process (2026-12-02): T = 16384, 16.1 s against 15.3 s a step (ratio 1.05), XLA
temporaries 179 MiB per device against flash's 257 MiB, process peak 2091 MiB (all 8 devices) against
755 MiB; T = 65536, one timed step each on a machine loaded by other jobs, 348 s against 367 s (0.95,
noise), 244 MiB of temporaries per device against 1028 MiB, process peak 4230 MiB against 2105 MiB.

Inside this module arrays are [N, L, K] rows as in flash, N = batch x heads flattened.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attn.core import flash
from attn.core import positions as relative_positions
from attn.core.scaling import Scale, resolve_scale

# This module reuses flash's tile kernels (`_forward_*`, `_backward_*`, `_over_chunks`, ...): they are
# private to flash, but ring attention is flash's online softmax run over chunks held elsewhere, and a
# second copy of the kernels would drift.


def _rows(x, block: int):
  """[B, L, heads, K] -> [B * heads, Lp, K] float32, L padded with zeros to a multiple of `block`."""
  B, L, heads, K = x.shape
  x = jnp.swapaxes(x, 1, 2).astype(jnp.float32).reshape(B * heads, L, K)
  return flash._pad_axis(x, 1, block)


def _unrows(x, B: int, L: int):
  """[B * heads, Lp, K] -> [B, L, heads, K] (padding dropped)."""
  x = x[:, :L]
  return jnp.swapaxes(x.reshape(B, -1, L, x.shape[-1]), 1, 2)


def _repeat_heads(x, B: int, H: int):
  """[B * G, L, K] -> [B * H, L, K]: query head h reads key/value head h // (H // G), as flash's
  `jnp.repeat` does."""
  BG, L, K = x.shape
  G = BG // B
  return jnp.broadcast_to(x.reshape(B, G, 1, L, K), (B, G, H // G, L, K)).reshape(B * H, L, K)


def _sum_groups(x, B: int, G: int):
  """[B * H, L, K] -> [B * G, L, K]: the gradient of `_repeat_heads`."""
  BH, L, K = x.shape
  return x.reshape(B, G, BH // (B * G), L, K).sum(2).reshape(B * G, L, K)


def _mask_rows(mask_BS, H: int):
  """Key padding [B, Sp] -> the flash kernel's [N or 1, 1, Sp] (rows broadcast over the queries)."""
  B, Sp = mask_BS.shape
  if B == 1:
    return mask_BS.reshape(1, 1, Sp)
  return jnp.broadcast_to(mask_BS[:, None, None, :], (B, H, 1, Sp)).reshape(B * H, 1, Sp)


def _kernel(c, is_causal: bool) -> dict:
  """The flash kernel's config dict for one chunk."""
  return {**dict(c["kernel"]), "is_causal": is_causal}


def _chunk_forward(q, k, v, mask, rel, q_offset, kernel):
  """Flash's forward of q [N, Tp, K] against one key chunk: out [N, Tp, Kv] and lse [N, Tp], with
  lse -inf (not flash's +inf) for a row that saw no key, so that it weighs 0 in the merge."""
  forward = flash._forward_unrolled if flash._unrolled(q, k, kernel) else flash._forward_looped

  def per_chunk(q, k, v, rel, mask, q_offset):
    return forward(q, k, v, (None, mask, None, None, rel, q_offset), kernel)

  out, lse = flash._over_chunks(per_chunk, (q, k, v, rel), (mask, q_offset), kernel["chunk"])
  return out, jnp.where(lse == jnp.inf, -jnp.inf, lse)


def _chunk_backward(q, k, v, mask, rel, q_offset, out, lse, d_out, kernel):
  """Flash's backward tiles of one key chunk against the final out and lse: (dq, dk, dv, d_rel)."""
  backward = flash._backward_unrolled if flash._unrolled(q, k, kernel) else flash._backward_looped

  def per_chunk(q, k, v, out, lse, d_out, rel, mask, q_offset):
    aux = (None, mask, None, None, rel, q_offset)
    return backward(q, k, v, aux, out, lse, d_out, kernel)

  dq, dk, dv, _, d_rel = flash._over_chunks(
    per_chunk, (q, k, v, out, lse, d_out, rel), (mask, q_offset), kernel["chunk"]
  )
  return dq, dk, dv, d_rel


def _merge(out, lse, out_c, lse_c):
  """Two partial softmax results of the same rows merged by their log-sum-exps; a row that is empty
  in both (lse -inf) stays out 0, lse -inf, with no NaN (the shift is 0 there, not -inf - -inf)."""
  shift = jnp.maximum(lse, lse_c)
  shift = jnp.where(shift == -jnp.inf, 0.0, shift)
  w, w_c = jnp.exp(lse - shift), jnp.exp(lse_c - shift)
  total = w + w_c
  out = (out * w[..., None] + out_c * w_c[..., None]) / jnp.where(total == 0.0, 1.0, total)[..., None]
  return out, shift + jnp.log(total)


def _by_chunk(c, source, i, skip, run, operands):
  """run(is_causal, *operands) for key chunk `source` on device i; under is_causal, skip(*operands)
  for a chunk wholly after the device's queries, the causal tiles for its own chunk, and unmasked
  tiles for the earlier ones (T == S, so chunk boundaries line up)."""
  if not c["is_causal"]:
    return run(False, *operands)
  branch = jnp.where(source == i, 1, jnp.where(source < i, 2, 0))
  return jax.lax.switch(
    branch, [skip, functools.partial(run, True), functools.partial(run, False)], *operands
  )


def _rotate(xs, axis_name: str, n: int):
  """Every array of `xs` (a tuple, None entries kept) passed to the next device of the ring."""
  perm = [(j, (j + 1) % n) for j in range(n)]
  return tuple(None if x is None else jax.lax.ppermute(x, axis_name, perm) for x in xs)


def _local(x, c):
  """The device's query rows (scaled), key/value rows ([B * G, Sp, K], G heads), key padding
  [B, Sp] (or None), and the extras."""
  q = _rows(x["q"], c["block_q"]) * c["multiplier"]
  k, v = _rows(x["k"], c["block_k"]), _rows(x["v"], c["block_k"])
  mask = x.get("mask")
  if mask is not None:
    mask = flash._pad_axis(mask, 1, c["block_k"], False)
  return q, k, v, mask, x.get("rel"), x.get("q_offset")


def _offset(q_offset, i, source, c):
  """Query minus key offset of key chunk `source` against device i's queries (for the relative
  bias, which depends only on the distance), or None without one."""
  if q_offset is None:
    return None
  return (q_offset + i * c["T_local"] - source * c["S_local"]).astype(jnp.int32)


def _device_forward(x, *, c):
  """One device's ring forward: x holds its q [B, T/n, H, K], k, v [B, S/n, G, K|Kv] and the
  extras; returns out [B, T/n, H, Kv] (query dtype), out rows [N, Tp, Kv] and lse [N, Tp] (float32,
  +inf for a row that saw no key: exp(s - lse) is then 0 in the backward pass)."""
  axis, n, B, H = c["axis_name"], c["n"], c["B"], c["H"]
  i = jax.lax.axis_index(axis)
  q, k, v, mask, rel, q_offset = _local(x, c)
  N, Tp = q.shape[:2]
  out = jnp.zeros((N, Tp, v.shape[-1]), jnp.float32)
  if "sink" in x:  # The sink is one more "key" with value 0: a partial result of lse = sink.
    lse = jnp.broadcast_to(x["sink"][:, None], (N, Tp)).astype(jnp.float32)
  else:
    lse = jnp.full((N, Tp), -jnp.inf, jnp.float32)

  def compute(s, kv, out, lse):
    source = (i - s) % n
    k_c, v_c, mask_c = kv
    offset = _offset(q_offset, i, source, c)

    def run(is_causal, out, lse):
      m = None if mask_c is None else _mask_rows(mask_c, H)
      out_c, lse_c = _chunk_forward(
        q, _repeat_heads(k_c, B, H), _repeat_heads(v_c, B, H), m, rel, offset, _kernel(c, is_causal)
      )
      return _merge(out, lse, out_c, lse_c)

    return _by_chunk(c, source, i, lambda out, lse: (out, lse), run, (out, lse))

  def step(s, carry):
    out, lse, kv = carry
    following = _rotate(kv, axis, n)  # Sent before the compute that it can overlap.
    out, lse = compute(s, kv, out, lse)
    return out, lse, following

  out, lse, kv = jax.lax.fori_loop(0, n - 1, step, (out, lse, (k, v, mask)))
  out, lse = compute(n - 1, kv, out, lse)
  lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)
  return _unrows(out, B, c["T_local"]).astype(x["q"].dtype), out, lse


def _device_backward(x, out, lse, d_out, *, c):
  """One device's ring backward: dq stays, each key/value chunk's dk and dv travel with it and are
  home after n steps. Returns {"q", "k", "v"} gradients (local shards, input dtypes) and the
  relative bias's and the sink's (summed over the ring)."""
  axis, n, B, H, G = c["axis_name"], c["n"], c["B"], c["H"], c["G"]
  i = jax.lax.axis_index(axis)
  q, k, v, mask, rel, q_offset = _local(x, c)
  d_out = _rows(d_out, c["block_q"])
  dq = jnp.zeros(q.shape, jnp.float32)
  d_rel = None if rel is None else jnp.zeros(rel.shape, jnp.float32)

  def compute(s, kv, grads):
    source = (i - s) % n
    k_c, v_c, mask_c, dk_c, dv_c = kv
    offset = _offset(q_offset, i, source, c)

    def run(is_causal, dq, d_rel, dk_c, dv_c):
      m = None if mask_c is None else _mask_rows(mask_c, H)
      dq_s, dk_s, dv_s, d_rel_s = _chunk_backward(
        q, _repeat_heads(k_c, B, H), _repeat_heads(v_c, B, H), m, rel, offset, out, lse, d_out,
        _kernel(c, is_causal),
      )  # fmt: skip
      d_rel = None if d_rel is None else d_rel + d_rel_s
      return dq + dq_s, d_rel, dk_c + _sum_groups(dk_s, B, G), dv_c + _sum_groups(dv_s, B, G)

    dq, d_rel = grads
    dq, d_rel, dk_c, dv_c = _by_chunk(c, source, i, lambda *xs: xs, run, (dq, d_rel, dk_c, dv_c))
    return (k_c, v_c, mask_c, dk_c, dv_c), (dq, d_rel)

  def step(s, carry):
    kv, grads = carry
    kv, grads = compute(s, kv, grads)
    return _rotate(kv, axis, n), grads

  zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  kv, (dq, d_rel) = jax.lax.fori_loop(0, n - 1, step, ((k, v, mask, *zeros), (dq, d_rel)))
  kv, (dq, d_rel) = compute(n - 1, kv, (dq, d_rel))
  dk, dv = _rotate(kv[3:], axis, n)  # The last step: the accumulators come home.
  grads = {
    "q": _unrows(dq * c["multiplier"], B, c["T_local"]).astype(x["q"].dtype),
    "k": _unrows(dk, B, c["S_local"]).astype(x["k"].dtype),
    "v": _unrows(dv, B, c["S_local"]).astype(x["v"].dtype),
  }
  if d_rel is not None:
    grads["rel"] = jax.lax.psum(d_rel, axis).astype(x["rel"].dtype)
  if "sink" in x:  # As in flash: the sink's weight exp(sink - lse) times its value 0, less delta.
    delta = jnp.sum(d_out * out, axis=-1)  # [N, Tp]; 0 on padded rows.
    d_sink = -jnp.sum(jnp.exp(x["sink"][:, None] - lse) * delta, axis=1)
    grads["sink"] = jax.lax.psum(d_sink, axis).astype(x["sink"].dtype)
  return grads


def _specs(x, axis_name: str) -> dict:
  """Sequence-sharded arrays split on axis 1 over the ring; the per-row extras replicated."""
  sharded = ("q", "k", "v", "mask")
  return {name: P(None, axis_name) if name in sharded else P() for name in x}


def _shard_map(fn, c, in_specs, out_specs):
  # check_vma=False: the causal lax.switch mixes a skip branch (values as they came) with computed
  # ones; every output's sharding is given by out_specs, and the replicated ones are psummed.
  return jax.shard_map(
    functools.partial(fn, c=c), mesh=c["mesh"], in_specs=in_specs, out_specs=out_specs,
    check_vma=False,
  )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _ring(x, config):
  return _ring_fwd(x, config)[0]


def _ring_fwd(x, config):
  c = dict(config)
  seq = P(None, c["axis_name"])
  fn = _shard_map(_device_forward, c, (_specs(x, c["axis_name"]),), (seq, seq, seq))
  out, out_rows, lse = fn(x)
  return out, (x, out_rows, lse)


def _ring_bwd(config, residuals, d_out):
  x, out_rows, lse = residuals
  c = dict(config)
  specs = _specs(x, c["axis_name"])
  seq = P(None, c["axis_name"])
  grad_specs = {name: specs[name] for name in x if name not in ("mask", "q_offset")}
  fn = _shard_map(_device_backward, c, (specs, seq, seq, seq), grad_specs)
  grads = fn(x, out_rows, lse, d_out)
  return ({name: grads.get(name) for name in x},)


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  *,
  mesh: Mesh,
  axis_name: str,
  mask: jax.Array | None = None,
  is_causal: bool = False,
  scale: Scale = "sqrt_d",
  logit_soft_cap: float | None = None,
  sink_logits: jax.Array | None = None,
  relative_bias: relative_positions.RelativeBias | None = None,
  block_q: int | None = None,
  block_k: int | None = None,
  chunk: int | None = None,
) -> jax.Array:
  """Attention with the sequence sharded over the mesh axis `axis_name`: the flash path's results,
  computed by n = mesh.shape[axis_name] devices passing key/value chunks round a ring.

  Args:
    query: [B, T, H, K] (one batch axis); T divisible by n.
    key: [B, S, G, K], G dividing H; S divisible by n.
    value: [B, S, G, Kv].
    mesh: the device mesh; other axes than `axis_name` hold replicas.
    axis_name: the mesh axis that the sequence (T and S) is split over.
    mask: key padding, bool [B, S] (True = may attend), split like the keys; or None.
    is_causal: query i sees key j iff j <= i (needs T == S); key chunks after a device's queries
      are skipped, forward and backward.
    scale: "sqrt_d", "none", "d" or a positive float multiplier (see `attn.resolve_scale`).
    logit_soft_cap: logits become cap * tanh(logits / cap) in each tile; None: off.
    sink_logits: [H] or [B, H] sink logits of the softmax (see `attn.attention_weights`), or None.
    relative_bias: ALiBi's or T5's bias (`attn.RelativeBias`), from the global positions.
    block_q, block_k, chunk: the flash tiles on each device (see `attn.core.flash.flash_attention`;
      the defaults are shrunk to T / n and S / n).

  Returns:
    [B, T, H, Kv] in the query's dtype, split over `axis_name` along T. A query with no key to
    attend gets zeros (and zero gradients).

  Raises:
    ValueError: for shapes that do not fit (naming them), a length that does not divide by the
      ring size, an axis the mesh lacks, or is_causal with T != S.
  """
  for name, x in (("query", query), ("key", key), ("value", value)):
    if jnp.ndim(x) != 4:
      raise ValueError(f"ring_attention: {name} must be [B, length, heads, head_dim], got {x.shape}")
  B, T, H, K = query.shape
  S, G = key.shape[1], key.shape[2]
  if key.shape[0] != B or value.shape[:3] != key.shape[:3] or key.shape[-1] != K or H % G:
    raise ValueError(
      f"ring_attention: query [B, T, H, K] {query.shape}, key [B, S, G, K] {key.shape} and value "
      f"[B, S, G, Kv] {value.shape} do not fit (G must divide H)"
    )
  if axis_name not in mesh.axis_names:
    raise ValueError(f"ring_attention: the mesh has no axis {axis_name!r}: {mesh.axis_names}")
  n = mesh.shape[axis_name]
  for what, length in (("query length T", T), ("key length S", S)):
    if length % n:
      raise ValueError(
        f"ring_attention: the {what} = {length} does not divide by the ring size {n} (mesh axis "
        f"{axis_name!r})"
      )
  if is_causal and T != S:
    raise ValueError(f"ring_attention: is_causal needs T == S (self-attention), got T={T}, S={S}")
  x = {"q": query, "k": key, "v": value}
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != (B, S) or mask.dtype != jnp.bool_:
      raise ValueError(
        f"ring_attention: mask must be key padding, bool [B, S] = {(B, S)}, got {mask.dtype} "
        f"{mask.shape}"
      )
    # Keys that no query may attend are zeroed, so that NaN stored there (padding often holds
    # garbage) cannot leak through 0 * NaN; their gradients are then exactly 0.
    keep = mask[:, :, None, None]
    x.update(mask=mask, k=jnp.where(keep, key, 0).astype(key.dtype))
    x["v"] = jnp.where(keep, value, 0).astype(value.dtype)
  N = B * H
  T_local, S_local = T // n, S // n
  block_q = min(block_q or flash.BLOCK_Q, flash._round_up(T_local, 8))
  block_k = min(block_k or flash.BLOCK_K, flash._round_up(S_local, 8))
  chunk = chunk or flash.chunk_for(N, block_q, block_k)
  if N % chunk:
    raise ValueError(f"ring_attention: chunk {chunk} does not divide batch x heads = {N}")
  relative = None
  if relative_bias is not None:
    relative_bias.check(H)
    relative = relative_bias.static()
    params_HP = relative_bias.per_head_params()  # [H, 1] slopes or [H, num_buckets] tables.
    x["rel"] = jnp.broadcast_to(params_HP[None], (B, *params_HP.shape)).reshape(N, -1)
    x["q_offset"] = jnp.asarray(relative_bias.query_offset, jnp.int32)
  if sink_logits is not None:
    x["sink"] = jnp.broadcast_to(jnp.asarray(sink_logits, jnp.float32), (B, H)).reshape(N)
  if logit_soft_cap is not None and not 0.0 < float(logit_soft_cap) < float("inf"):
    raise ValueError(f"ring_attention: logit_soft_cap must be a positive float, got {logit_soft_cap}")
  kernel = (
    ("block_q", block_q), ("block_k", block_k), ("num_keys", S_local), ("chunk", chunk),
    ("soft_cap", None if logit_soft_cap is None else float(logit_soft_cap)), ("kind", "softmax"),
    ("relative", relative),
  )  # fmt: skip
  config = (
    ("mesh", mesh), ("axis_name", axis_name), ("n", n), ("B", B), ("H", H), ("G", G),
    ("T_local", T_local), ("S_local", S_local), ("block_q", block_q), ("block_k", block_k),
    ("multiplier", resolve_scale(scale, K)), ("is_causal", bool(is_causal)), ("kernel", kernel),
  )  # fmt: skip
  # Laid out as the ring expects (a no-op for inputs already split over the axis; under jit, a
  # resharding; Auto or Explicit mesh axes alike): callers may pass whole arrays.
  specs = _specs(x, axis_name)
  x = {name: jax.device_put(value, NamedSharding(mesh, specs[name])) for name, value in x.items()}
  return _ring(x, config)
