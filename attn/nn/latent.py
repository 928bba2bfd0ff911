"""Multi-head latent attention (MLA; DeepSeek-V2, arXiv 2405.04434, section 2.1): keys and values
from one low-rank latent per token, so the decode cache holds that latent and one shared RoPE key.

Per token x [D] (K the head dim, C = `kv_rank`, R = `rope_dim`):
  c_KV = RMSNorm(W_DKV x) [C]                     the latent: all that the cache keeps of the keys/values
  k_C,h = W_UK,h c_KV [K],  v_h = W_UV,h c_KV [K]  per head h, re-expanded from the latent
  k_R = RoPE(W_KR x) [R]                           the decoupled RoPE key, shared by every head
  q_h = [q_C,h ; RoPE(q_R,h)] [K + R]              from x (or from a compressed, normalised query latent)
  logit_h = q_h . [k_C,h ; k_R] * scale            ("sqrt_d": 1/sqrt(K + R))
The reference is transformers' `DeepseekV2Attention` (q_a_proj / q_a_layernorm / q_b_proj,
kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj): the same maps, with the rotate-half RoPE
layout (the reference's interleaved one is a fixed permutation of the R channels).

In decode mode the "cache" collection holds only "cached_latent" [batch..., S_max, C] and
"cached_rope_key" [batch..., S_max, R] (absent when R = 0), beside MultiHeadAttention's per-token
"cached_key_valid" flag and "cache_index"; each call re-expands the keys and values of the whole
cache from the latent (the non-absorbed form: correctness first).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn.core import masks
from attn.core import positions as relative
from attn.nn import hooks, sharding
from attn.nn.attention import INTERMEDIATES, WEIGHTS, MultiHeadAttention, _weighted_values, _window_mask
from attn.nn.config import ModelConfig, check_module_scale, head_dim_for
from attn.nn.tokenwise import tokenwise

Array = jax.Array

# MultiHeadAttention's fields this layer reads, or that only the variants it refuses read (the
# builder sets them whatever the variant): any other set away from its default is refused by name.
_READ_OR_INERT = frozenset({
  "num_heads", "head_dim_policy", "head_dim", "qkv_features", "out_features", "scale",
  "dropout_rate", "use_bias", "qkv_bias", "out_bias", "dtype", "param_dtype", "kernel_init",
  "out_kernel_init", "bias_init", "decode", "implementation", "positions", "rope_fraction",
  "rope_base", "rope_interleaved", "t5_num_buckets", "t5_max_distance", "ssmax_length",
  "layer_index", "parent", "name",
})  # fmt: skip

LATENT_NORM_EPSILON = 1e-6  # The RMSNorms of the latents (kv_a_layernorm, q_a_layernorm).


def cache_bytes_per_token(config: ModelConfig) -> int:
  """Bytes the decode cache holds per token per self-attention layer, in `config.dtype`: keys and
  values 2 * G * K (MHA: G = H; GQA: G = num_kv_heads), MLA's latent and shared RoPE key C + R.
  Not counted: the one-byte "cached_key_valid" flag per token that every kind keeps besides."""
  itemsize = jnp.dtype(config.dtype).itemsize
  if config.mla_kv_rank is not None:
    return (config.mla_kv_rank + config.mla_rope_dim) * itemsize
  G = config.num_heads if config.num_kv_heads is None else config.num_kv_heads
  return 2 * G * config.resolved_head_dim * itemsize


class MultiHeadLatentAttention(MultiHeadAttention):
  """Multi-head latent attention; self-attention only. Called as MultiHeadAttention is (mask,
  key_valid, is_causal, window, deterministic; the decode cache, the "intermediates" record
  "attention_weights" [batch..., H, T, S], the diagnostics, "head_gates", the hook points q [.., T,
  H, K + R], k [.., S, H, K + R] (expanded, rotated; the whole cache in decode mode), v [.., S, H, K],
  pattern and z), with MultiHeadAttention's fields plus three. Refused in one line naming the field:
  cross-attention, positions other than "none" / "rope", scale "init_folded", rope_fraction < 1,
  and every other MultiHeadAttention option set away from its default (num_kv_heads,
  value_residual, attention_gate, qk_norm, logit_soft_cap, attention_sink, attention_kind, ...).

  Parameters: "query" [D, H, K + R] (or "query_down" [D, Cq], "query_norm", "query_up" [Cq, H, K + R]
  under `q_rank`), "kv_down" [D, C], "kv_norm", "key_up" [C, H, K], "value_up" [C, H, K], "key_rope"
  [D, R] (when R > 0), "out" [H, K, D].

  Attributes:
    kv_rank: C, the key/value latent's width (required).
    q_rank: the query latent's width; None = queries projected from the input directly.
    rope_dim: R, the decoupled RoPE dims of queries and the shared key (even); 0 = none. Positions
      "rope" need R > 0, and R > 0 needs positions "rope" (its base: `rope_base`).
  """

  kv_rank: int | None = None
  q_rank: int | None = None
  rope_dim: int = 0

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array | None = None,
    *,
    mask: Array | None = None,
    key_valid: Array | None = None,
    is_causal: bool = False,
    window: int | None = None,
    deterministic: bool = True,
    first_values: Array | None = None,
    return_values: bool = False,
    inputs_k: Array | None = None,
    inputs_v: Array | None = None,
  ) -> Array:
    """x [batch..., T, D] -> [batch..., T, out_features]; arguments as MultiHeadAttention's."""
    if any(a is not None and a is not inputs_q for a in (inputs_kv, inputs_k, inputs_v)):
      raise ValueError(
        "MultiHeadLatentAttention: self-attention only (no inputs_kv, inputs_k, inputs_v)"
      )
    if first_values is not None or return_values:
      raise ValueError("value_residual: not supported with multi-head latent attention")
    self._check()
    check_module_scale("scale", self.scale)
    x = inputs_q
    H, R = self.num_heads, self.rope_dim
    K = head_dim_for("", self.head_dim_policy, H, self.qkv_features or x.shape[-1], self.head_dim)
    q_BTHE = self._queries(x, H, K + R)
    c_BSC = self._latent(x)
    kr_BSR = self._rope_key(x) if R else None
    offset = self._cache_offset()
    q_pos_T = offset + jnp.arange(x.shape[-2])
    if R:  # The shared key is cached rotated, at its own positions.
      interleaved = getattr(self, "rope_interleaved", False)  # GPT-J's adjacent pairs.
      rotate = functools.partial(relative.rope, base=self.rope_base, interleaved=interleaved)
      q_BTHE = jnp.concatenate([q_BTHE[..., :K], rotate(q_BTHE[..., K:], q_pos_T)], axis=-1)
      kr_BSR = rotate(kr_BSR[..., None, :], offset + jnp.arange(kr_BSR.shape[-2]))[..., 0, :]
    if key_valid is not None and key_valid.shape != c_BSC.shape[:-1]:
      raise ValueError(f"key_valid must be [batch..., S] = {c_BSC.shape[:-1]}, got {key_valid.shape}")
    if self.decode:
      c_BSC, kr_BSR, mask, fits_cache = self._update_latent_cache(c_BSC, kr_BSR, mask, key_valid)
    else:
      if key_valid is not None:
        mask = masks.combine_masks(mask, key_valid[..., None, None, :])
      fits_cache = True
    k_BSHE, v_BSHK = self._expand(c_BSC, kr_BSR, H, K)
    q_BTHE, k_BSHE, v_BSHK = (
      hooks.hook(n, a) for n, a in zip("qkv", (q_BTHE, k_BSHE, v_BSHK), strict=True)
    )
    q_BTHE, runtime_scale = self._scale_queries(q_BTHE)
    if window is not None:
      mask = masks.combine_masks(mask, _window_mask(window, q_pos_T, k_BSHE.shape[-3], self.decode))
    variant = self._variant()
    is_causal = is_causal and not self.decode  # Decode mode's mask is causal over the cache already.
    record = self.is_mutable_collection(INTERMEDIATES)
    if hooks.tracing():
      weights, _ = self._naive_weights(q_BTHE, k_BSHE, mask, None, runtime_scale, is_causal, variant)
      weights = hooks.hook("pattern", weights)
      out_BTHK = _weighted_values(weights, v_BSHK)
    else:
      out_BTHK, weights = self._attend(
        q_BTHE, k_BSHE, v_BSHK, mask, None, runtime_scale, is_causal, deterministic, record, variant,
      )  # fmt: skip
    out_BTHK = hooks.hook("z", out_BTHK)
    if record:
      if weights is None:
        weights, _ = self._naive_weights(q_BTHE, k_BSHE, mask, None, runtime_scale, is_causal, variant)
      self.sow(INTERMEDIATES, WEIGHTS, weights)
    if self.is_mutable_collection("diagnostics"):
      self._sow_diagnostics(q_BTHE, k_BSHE, mask, None, runtime_scale, is_causal, variant)
    out_BTHK = self._gate_heads(out_BTHK)
    out = self._dense_out(out_BTHK, self.out_features or x.shape[-1])
    if fits_cache is not True:
      out = jnp.where(fits_cache, out, jnp.nan)
    return out

  def _check(self) -> None:
    """One line naming the field for what this layer does not do."""
    kv_rank, R = self.kv_rank, self.rope_dim
    if isinstance(kv_rank, bool) or not isinstance(kv_rank, int) or kv_rank <= 0:
      raise ValueError(f"mla_kv_rank: must be a positive int, got {kv_rank!r}")
    if self.q_rank is not None and (not isinstance(self.q_rank, int) or self.q_rank <= 0):
      raise ValueError(f"mla_q_rank: must be None or a positive int, got {self.q_rank!r}")
    if isinstance(R, bool) or not isinstance(R, int) or R < 0 or R % 2:
      raise ValueError(f"mla_rope_dim: must be an even int >= 0, got {R!r}")
    if self.positions not in ("none", "rope") or (self.positions == "rope") != (R > 0):
      raise ValueError(
        f"positions: {self.positions!r} with mla_rope_dim={R}; MLA takes 'rope' exactly when "
        "mla_rope_dim > 0 (its decoupled key), else positions added to the embeddings or none"
      )
    if self.scale == "init_folded" or self.rope_fraction != 1.0:
      field = "scale" if self.scale == "init_folded" else "rope_fraction"
      raise ValueError(f"{field}: not supported with multi-head latent attention (mla_kv_rank)")
    # Any other MultiHeadAttention option (those to come included) refused unless at its default.
    for field in dataclasses.fields(MultiHeadAttention):
      if field.name in _READ_OR_INERT or field.default is dataclasses.MISSING:
        continue
      if getattr(self, field.name) != field.default:
        raise ValueError(
          f"{field.name}: {getattr(self, field.name)!r} is not supported with multi-head latent "
          "attention (mla_kv_rank)"
        )

  def _dense(self, features, name: str, axes: tuple, axis: int = -1) -> nn.DenseGeneral:
    return nn.DenseGeneral(
      features,
      axis=axis,
      use_bias=self.use_bias if self.qkv_bias is None else self.qkv_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=sharding.named(self.kernel_init, axes),
      bias_init=sharding.named(self.bias_init, axes[1:]),
      name=name,
    )

  def _norm(self, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(
      epsilon=LATENT_NORM_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )

  def _queries(self, x: Array, H: int, E: int) -> Array:
    """[batch..., T, H, K + R]: from x, or from its normalised query latent under `q_rank`."""
    heads = (sharding.HEADS, sharding.HEAD_DIM)
    if self.q_rank is None:
      return tokenwise(self._dense((H, E), "query", (sharding.EMBED, *heads)), x)
    c_q = tokenwise(self._dense(self.q_rank, "query_down", (sharding.EMBED, None)), x)
    c_q = self._norm("query_norm")(c_q)
    return tokenwise(self._dense((H, E), "query_up", (None, *heads)), c_q)

  def _latent(self, x: Array) -> Array:
    """c_KV [batch..., S, C], normalised: what the cache holds."""
    c = tokenwise(self._dense(self.kv_rank, "kv_down", (sharding.EMBED, None)), x)
    return self._norm("kv_norm")(c)

  def _rope_key(self, x: Array) -> Array:
    """W_KR x [batch..., S, R], before its rotation."""
    return tokenwise(self._dense(self.rope_dim, "key_rope", (sharding.EMBED, None)), x)

  def _expand(self, c_BSC: Array, kr_BSR: Array | None, H: int, K: int) -> tuple[Array, Array]:
    """Keys [batch..., S, H, K + R] ([k_C,h ; k_R], k_R the same for every head) and values
    [batch..., S, H, K] re-expanded from the latent."""
    heads = (None, sharding.HEADS, sharding.HEAD_DIM)
    k_BSHK = tokenwise(self._dense((H, K), "key_up", heads), c_BSC)
    v_BSHK = tokenwise(self._dense((H, K), "value_up", heads), c_BSC)
    if kr_BSR is None:
      return k_BSHK, v_BSHK
    kr_BSHR = jnp.broadcast_to(kr_BSR[..., None, :], (*kr_BSR.shape[:-1], H, kr_BSR.shape[-1]))
    return jnp.concatenate([k_BSHK, kr_BSHR.astype(k_BSHK.dtype)], axis=-1), v_BSHK

  def _update_latent_cache(
    self, c_BTC: Array, kr_BTR: Array | None, mask: Array | None, valid_BT: Array | None
  ):
    """Writes this call's latents (and rotated shared keys) at the cache index; returns the whole
    cache's, its mask, and whether the new tokens fitted (True, or a traced bool under jit)."""
    new = {"cached_latent": c_BTC}
    if kr_BTR is not None:
      new["cached_rope_key"] = kr_BTR
    cached, mask, fits = self._write_cache(new, 1, "[batch..., S, C]", mask, valid_BT)
    return cached[0], cached[1] if kr_BTR is not None else None, mask, fits
