"""Flax linen attention modules: thin wrappers that project, reshape and call the pure functions."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn.core import attention, masks
from attn.core import positions as relative
from attn.nn import hooks, sharding
from attn.nn.config import check_module_scale, head_dim_for
from attn.nn.tokenwise import tokenwise

Array = jax.Array


# The collection and the name under which every attention layer records its weights, only when the
# caller makes the collection mutable (`attn.nn.models.attention_weights` does): e.g.
# intermediates["encoder"]["layer_0"]["self_attention"]["attention_weights"] = (weights,).
INTERMEDIATES = "intermediates"
WEIGHTS = "attention_weights"


class SelfAttention(nn.Module):
  """The notes' first block: weightless self-attention. It has no parameters at all.

  With the "intermediates" collection mutable it records its weights [batch..., T, T] there under
  "attention_weights" (from a pass of their own: the output is the same either way).
  """

  scale: str | float = "sqrt_d"

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    """x [batch..., T, D] -> [batch..., T, D]."""
    if self.is_mutable_collection(INTERMEDIATES):
      _, weights = attention.self_attention(x, mask=mask, scale=self.scale, return_weights=True)
      self.sow(INTERMEDIATES, WEIGHTS, weights)
    return attention.self_attention(x, mask=mask, scale=self.scale)


# The diagnostics' sparsity: the share of attention weights below this (of those a row may give).
SPARSITY_THRESHOLD = 1e-3

# The variable collection of per-head gates (see `attn.nn.heads`): not parameters, passed at apply.
HEAD_GATES = "head_gates"


def _weighted_values(weights_BHTS: Array, v_BSGK: Array) -> Array:
  """The attention output [batch..., T, H, K] of weights [batch..., H, T, S] over values [batch...,
  S, G, K] (each group of H / G query heads shares a value head)."""
  H, G = weights_BHTS.shape[-3], v_BSGK.shape[-2]
  w = weights_BHTS.reshape(*weights_BHTS.shape[:-3], G, H // G, *weights_BHTS.shape[-2:])
  out = jnp.einsum("...grts,...sgk->...tgrk", w, v_BSGK.astype(jnp.float32))
  return out.reshape(*out.shape[:-3], H, out.shape[-1]).astype(v_BSGK.dtype)


def _key_value_inputs(inputs_q, inputs_kv, inputs_k, inputs_v) -> tuple[Array, Array]:
  """(the keys' inputs, the values' inputs): `inputs_kv` for both (None: `inputs_q`), or flax's
  separate `inputs_k` (None: `inputs_q`) and `inputs_v` (None: `inputs_k`)."""
  if inputs_k is None and inputs_v is None:
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    return inputs_kv, inputs_kv
  if inputs_kv is not None:
    raise ValueError("inputs_k: give inputs_kv or inputs_k and inputs_v, not both")
  inputs_k = inputs_q if inputs_k is None else inputs_k
  inputs_v = inputs_k if inputs_v is None else inputs_v
  if jnp.shape(inputs_k)[:-1] != jnp.shape(inputs_v)[:-1]:
    raise ValueError(
      f"inputs_v: must be [batch..., S, D_v] over the keys' [batch..., S] = "
      f"{jnp.shape(inputs_k)[:-1]}, got {jnp.shape(inputs_v)}"
    )
  return inputs_k, inputs_v


def _interleave_heads(a_BHTS: Array, b_BHTS: Array) -> Array:
  """[batch..., H, T, S] twice -> [batch..., 2H, T, S] with head 2h from a, 2h + 1 from b."""
  both = jnp.stack([a_BHTS, b_BHTS], axis=-3)
  return both.reshape(*both.shape[:-4], 2 * both.shape[-4], *both.shape[-2:])


def _window_mask(window: int, q_pos_T: Array, S: int, decode: bool) -> Array:
  """bool [T, S]: query t (at absolute position q_pos_T[t]) may see key j (at position j) only if
  |q_pos_T[t] - j| <= window; with the causal mask, the sliding window i - j <= w. Outside decode mode
  the queries sit at 0..T-1, as `masks.local_window_mask` has them; in decode mode at the cache
  offset onwards, and the causal mask hides the later keys."""
  if isinstance(window, bool) or not isinstance(window, int) or window < 0:
    raise ValueError(f"window: must be None or an int >= 0, got {window!r}")
  if not decode:
    return masks.local_window_mask(q_pos_T.shape[0], S, window=window)
  return jnp.arange(S)[None, :] >= q_pos_T[:, None] - window


def _folded_init(init, multiplier: float):
  def folded(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype) * jnp.asarray(multiplier, dtype)

  return folded


class MultiHeadAttention(nn.Module):
  """Multi-head attention: per-head query/key/value projections, attention, concat, output projection.

  Parameters are laid out as in `flax.linen.MultiHeadDotProductAttention` (query/key/value kernels
  [D, H, K], out kernel [H, K, D]), so weights copy across.

  Attributes:
    num_heads: H.
    head_dim_policy: "fixed_model_dim" (K = qkv_features / H) or "fixed_head_dim" (K = head_dim).
      A heads sweep under "fixed_model_dim" also changes K and so sqrt(K); name the arm you want.
    head_dim: K under "fixed_head_dim".
    num_kv_heads: G key/value heads (G divides H); None means G = H.
    qkv_features: the model dim the heads split under "fixed_model_dim"; defaults to the input dim.
    out_features: output dim; defaults to the query input's dim.
    scale: "sqrt_d", "none", "d", a positive float, "learned" (a per-head multiplier learned from
      1/sqrt(K)) or "init_folded" (1/sqrt(K) folded into the query kernel's initialisation).
    dropout_rate: dropout on the attention weights when not deterministic (rng stream "dropout").
    use_bias: biases in the four projections.
    qkv_bias: biases in the query/key/value projections; None follows use_bias (Qwen2: True).
    out_bias: a bias in the output projection; None follows use_bias.
    decode: keep a key/value cache (collection "cache") for incremental decoding. Initialise with
      inputs of the full length to size the cache; each later call appends its T tokens (any T) and
      attends causally to everything cached so far.
    implementation: of `attn.dot_product_attention`: "naive", "flash", "jax" or None (automatic).

  With the "intermediates" collection mutable (`attn.nn.models.attention_weights`), the layer records
  its attention weights [batch..., H, T, S] (float32, before dropout; S = the cache length in decode
  mode) there under "attention_weights". The naive path hands over the weights it computes; any other
  path gets them from a separate naive pass that does not feed the output, so the output is the same
  whether or not the weights are recorded. Otherwise nothing extra is computed.
  """

  num_heads: int
  head_dim_policy: str = "fixed_model_dim"
  head_dim: int | None = None
  num_kv_heads: int | None = None
  qkv_features: int | None = None
  out_features: int | None = None
  scale: str | float = "sqrt_d"
  dropout_rate: float = 0.0
  use_bias: bool = True
  qkv_bias: bool | None = None
  out_bias: bool | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  out_kernel_init: Any = None  # The output projection's; None = kernel_init.
  bias_init: Any = nn.initializers.zeros_init()
  decode: bool = False
  implementation: str | None = None
  # Relative positions inside the layer: "none", "rope", "xpos" (RoPE with xPos's per-pair decay,
  # Sun et al. 2022: scale_base 512, gamma 0.4), "alibi", "t5_bias".
  positions: str = "none"
  rope_interleaved: bool = False  # RoPE's (and xPos's) pairs adjacent (2i, 2i + 1): GPT-J's layout.
  rope_fraction: float = 1.0  # Share of the head dim RoPE rotates.
  rope_base: float = 10_000.0
  t5_num_buckets: int = 32
  t5_max_distance: int = 128
  qk_norm: str = "none"  # "rms": q and k RMS-normalised over K with a learned scale, before RoPE.
  logit_soft_cap: float | None = None  # cap * tanh(logits / cap) (Gemma 2).
  attention_sink: bool = False  # A learned per-head sink logit in the softmax's denominator.
  # "softmax", "sigmoid", "ssmax" (logits times s_h log n), "softpick" or "stick_breaking" (naive only).
  attention_kind: str = "softmax"
  ssmax_length: int = 512  # SSMax's s_h starts at 1 / log(this): multiplier 1 at that many keys.
  # Gated attention (Qiu et al. 2025): "headwise" or "elementwise" multiplies each head's output by
  # sigmoid(inputs_q W_g + b) (parameter "output_gate", kernel [D, H] or [D, H, K]) before "z" and the
  # output projection; "none" computes nothing.
  attention_gate: str = "none"
  # Value residual learning (Zhou et al. 2025), given `first_values` (the first layer's values of the
  # stack): "learned" attends to l1 * V + l2 * V_1 (parameter "value_mix" = [l1, l2], from 0.5 each),
  # "shared" to V_1 itself (no value projection). Without `first_values` the layer is a first layer.
  value_residual: str = "none"
  # Forgetting attention (FoX, Lin et al. 2025): a per-head forget gate f_t = sigmoid(x_t W_f + b_f)
  # (parameter "forget_gate", kernel [D, H], bias [H]) adds sum_{j < k <= i} log f_k to logit (i, j).
  # Causal self-attention only; decode mode caches the cumulative sums ("cached_forget" [..., S, H]).
  forget_gate: bool = False
  # Differential attention (Ye et al. 2024; microsoft/unilm Diff-Transformer): num_heads counts the
  # query/key heads, paired (2h, 2h + 1) into num_heads // 2 differential heads (the reference's
  # num_heads, "half of Transformer's #heads"); values are num_kv_heads // 2 heads of 2K, so the
  # projections keep their size. Head h outputs RMSNorm(A1 V - lambda A2 V) * (1 - lambda_init),
  # A1, A2 the two maps' attention weights, lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 .
  # lambda_k2) + lambda_init (parameters [K] each, normal(0.1), shared by the heads), lambda_init =
  # 0.8 - 0.6 exp(-0.3 layer_index), the RMSNorm "subln" (scale [2K], eps 1e-5). Two calls of the
  # pure attention sharing V, so every implementation with values of another head dim serves it.
  differential: bool = False
  layer_index: int = 0  # The block's index in its stack, from 0 (differential's lambda_init).

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
  ) -> Array | tuple[Array, Array]:
    """Attends from `inputs_q` [batch..., T, D] to `inputs_kv` [batch..., S, D] (itself if None).

    Args:
      inputs_k, inputs_v: keys and values from separate inputs instead of `inputs_kv`, as flax's
        MultiHeadDotProductAttention takes them: keys from `inputs_k` [batch..., S, D_k] (None:
        `inputs_q`), values from `inputs_v` [batch..., S, D_v] (None: `inputs_k`).
      mask: bool, broadcastable to [batch..., H, T, S]; True = may attend. In decode mode the causal
        mask over the cache is built here, so pass only extra masks of S = the cache length.
      key_valid: bool [batch..., S], False for keys that are padding. In decode mode it covers only
        this call's tokens and is cached with their keys, so padding in a prompt stays masked.
      window: causal sliding window w (with `is_causal` or in decode mode): query i also sees key j
        only if i - j <= w, at absolute positions (the cache's in decode mode); None = no window.
      is_causal: query i sees key j iff j <= i, without a mask array (the fast path then skips the
        masked tiles). Decode mode is always causal over its cache.
      deterministic: disables attention dropout.
      first_values: under `value_residual`, the values [batch..., S, G, K] of the stack's first layer
        for this call's tokens (in decode mode the new tokens only: each layer caches its own mixed
        values); None in the first layer.
      return_values: also return the values this call attends for its tokens ([batch..., S, G, K],
        after the mix; the first layer's are what the later layers take as `first_values`).

    Returns:
      [batch..., T, out_features], and the values when `return_values`.
    """
    inputs_kv, inputs_v = _key_value_inputs(inputs_q, inputs_kv, inputs_k, inputs_v)
    check_module_scale("scale", self.scale)
    causal = is_causal or self.decode
    q_BTHK, k_BSGK, v_BSGK = self._project(inputs_q, inputs_kv, first_values, inputs_v)
    q_BTHK, k_BSGK, v_BSGK = (
      hooks.hook(n, x) for n, x in zip("qkv", (q_BTHK, k_BSGK, v_BSGK), strict=True)
    )
    new_values_BSGK = v_BSGK  # This call's tokens' (the cache holds them too in decode mode).
    q_BTHK, k_BSGK = self._normalize_qk(q_BTHK, k_BSGK)
    offset = self._cache_offset()
    self_attention = inputs_kv is inputs_q and inputs_v is inputs_q
    forget = self._forget_cumsum(inputs_q, self_attention, key_valid, offset, causal)
    q_pos_T = offset + jnp.arange(q_BTHK.shape[-3])
    if self.positions in ("rope", "xpos"):  # Keys are cached rotated, at their own positions.
      rotate = functools.partial(
        relative.rope if self.positions == "rope" else relative.xpos,
        base=self.rope_base,
        fraction=self.rope_fraction,
        interleaved=self.rope_interleaved,
      )
      if self.positions == "xpos":  # Queries scaled by zeta^(n / 512), keys by zeta^(-m / 512).
        q_BTHK = rotate(q_BTHK, q_pos_T, is_key=False)
        k_BSGK = rotate(k_BSGK, offset + jnp.arange(k_BSGK.shape[-3]), is_key=True)
      else:
        q_BTHK = rotate(q_BTHK, q_pos_T)
        k_BSGK = rotate(k_BSGK, offset + jnp.arange(k_BSGK.shape[-3]))
    q_BTHK, runtime_scale = self._scale_queries(q_BTHK)
    k_BSGK, v_BSGK, mask, fits_cache = self._keys_and_mask(k_BSGK, v_BSGK, mask, key_valid)
    if window is not None:
      mask = masks.combine_masks(mask, _window_mask(window, q_pos_T, k_BSGK.shape[-3], self.decode))
    q_BTHK = self._ssmax_queries(q_BTHK, q_pos_T, mask, k_BSGK.shape[-3], causal)
    # Keys sit at 0..S-1 (the whole cache in decode mode), queries from the cache offset on.
    bias = self._position_bias(offset, bidirectional=not causal)
    variant = self._variant()
    if forget is not None:
      variant["forget_cumsum"] = forget
    is_causal = is_causal and not self.decode  # Decode mode's mask is causal over the cache already.
    record = self.is_mutable_collection(INTERMEDIATES)
    if hooks.tracing():  # From the pattern, so a hook on it changes what follows (attn.nn.hooks).
      weights, _ = self._naive_weights(q_BTHK, k_BSGK, mask, bias, runtime_scale, is_causal, variant)
      weights = hooks.hook("pattern", weights)
      if self.differential:  # Heads 2h and 2h + 1 are differential head h's two maps.
        maps = [_weighted_values(weights[..., i::2, :, :], v_BSGK) for i in (0, 1)]
        out_BTHK = self._differential_combine(*maps)
      else:
        out_BTHK = _weighted_values(weights, v_BSGK)
    else:
      out_BTHK, weights = self._attend(
        q_BTHK, k_BSGK, v_BSGK, mask, bias, runtime_scale, is_causal, deterministic, record, variant,
      )  # fmt: skip
    out_BTHK = hooks.hook("z", self._output_gate(inputs_q, out_BTHK))
    if record:
      if weights is None:  # A fused path has no weights: a naive pass of their own, for the record.
        weights, _ = self._naive_weights(q_BTHK, k_BSGK, mask, bias, runtime_scale, is_causal, variant)
      self.sow(INTERMEDIATES, WEIGHTS, weights)
    if self.is_mutable_collection("diagnostics"):
      self._sow_diagnostics(q_BTHK, k_BSGK, mask, bias, runtime_scale, is_causal, variant)
    out_BTHK = self._gate_heads(out_BTHK)
    out = self._dense_out(out_BTHK, self.out_features or inputs_q.shape[-1])
    if fits_cache is not True:
      # Under jit an overfull cache cannot raise; NaN says so instead of silently overwriting the cache.
      out = jnp.where(fits_cache, out, jnp.nan)
    return (out, new_values_BSGK) if return_values else out

  def _project(
    self,
    inputs_q: Array,
    inputs_kv: Array,
    first_values: Array | None = None,
    inputs_v: Array | None = None,
  ) -> tuple[Array, Array, Array]:
    """The query [batch..., T, H, K], key and value [batch..., S, G, K] projections (the values
    mixed with `first_values` under `value_residual`)."""
    D = self.qkv_features or inputs_q.shape[-1]
    H = self.num_heads
    K = head_dim_for("", self.head_dim_policy, H, D, self.head_dim)
    G = H if self.num_kv_heads is None else self.num_kv_heads
    if G <= 0 or H % G:
      raise ValueError(f"num_kv_heads: {G} must be positive and divide num_heads={H}")

    if self.differential and (H % 2 or G % 2):
      raise ValueError(
        f"differential: needs an even num_heads and num_kv_heads (two query/key heads per "
        f"differential head), got {H} and {G}"
      )
    # Differential attention's values: G / 2 heads of 2K (the reference's v_proj, same size).
    G_v, K_v = (G // 2, 2 * K) if self.differential else (G, K)

    def dense(name, heads, init, heads_axis, dim=K):
      return nn.DenseGeneral(
        (heads, dim),
        use_bias=self.use_bias if self.qkv_bias is None else self.qkv_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=sharding.named(init, (sharding.EMBED, heads_axis, sharding.HEAD_DIM)),
        bias_init=sharding.named(self.bias_init, (heads_axis, sharding.HEAD_DIM)),
        name=name,
      )

    q_init = self.kernel_init
    if self.scale == "init_folded":
      q_init = _folded_init(self.kernel_init, K**-0.5)
    inputs_v = inputs_kv if inputs_v is None else inputs_v  # Values from their own inputs.
    value = lambda: tokenwise(dense("value", G_v, self.kernel_init, sharding.KV_HEADS, K_v), inputs_v)
    return (
      tokenwise(dense("query", H, q_init, sharding.HEADS), inputs_q),
      tokenwise(dense("key", G, self.kernel_init, sharding.KV_HEADS), inputs_kv),
      self._residual_values(value, first_values, (*inputs_v.shape[:-1], G_v, K_v)),
    )

  def _residual_values(self, value: Any, first_values: Array | None, shape: tuple) -> Array:
    """The values to attend: this layer's projection `value()`, mixed with (or, under "shared",
    replaced by) the stack's first layer's `first_values` under value residual learning."""
    if self.value_residual not in ("none", "learned", "shared"):
      raise ValueError(f"value_residual: unknown choice {self.value_residual!r}")
    if first_values is None:
      if (
        self.value_residual == "shared"
        and not self.is_initializing()
        and not self.has_variable("params", "value")
      ):
        # A later layer of the shared form applied alone (as the training loop's scale probe
        # applies each layer, reading only its queries and keys): it has no values of its own.
        return jnp.zeros(shape, self.dtype or jnp.float32)
      return value()
    if self.value_residual == "none":
      raise ValueError("value_residual: first_values given to a layer with value_residual='none'")
    if first_values.shape != shape:
      raise ValueError(
        f"value_residual: first_values must be [batch..., S, G, K] = {shape}, got {first_values.shape}"
      )
    if self.value_residual == "shared":
      return first_values
    v_BSGK = value()
    mix = self.param("value_mix", nn.initializers.constant(0.5), (2,), self.param_dtype)
    mix = mix.astype(v_BSGK.dtype)
    return mix[0] * v_BSGK + mix[1] * first_values.astype(v_BSGK.dtype)

  def _output_gate(self, inputs_q: Array, out_BTHK: Array) -> Array:
    """Gated attention (Qiu et al. 2025; their code's `headwise_attn_output_gate` and
    `elementwise_attn_output_gate`): `out` [batch..., T, H, K] times sigmoid(inputs_q W_g + b), W_g
    [D, H] ("headwise", broadcast over K) or [D, H, K] ("elementwise"). As in their code the gate
    projection is initialised as the query projection is (and has its bias), so gates start
    spread around 0.5. Per token: decoding needs no cache for it."""
    if self.attention_gate == "none":
      return out_BTHK
    if self.attention_gate not in ("headwise", "elementwise"):
      raise ValueError(f"attention_gate: unknown choice {self.attention_gate!r}")
    H, K = out_BTHK.shape[-2:]
    headwise = self.attention_gate == "headwise"
    axes = (sharding.HEADS,) if headwise else (sharding.HEADS, sharding.HEAD_DIM)
    dense = nn.DenseGeneral(
      (H,) if headwise else (H, K),
      use_bias=self.use_bias if self.qkv_bias is None else self.qkv_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=sharding.named(self.kernel_init, (sharding.EMBED, *axes)),
      bias_init=sharding.named(self.bias_init, axes),
      name="output_gate",
    )
    gate = jax.nn.sigmoid(tokenwise(dense, inputs_q).astype(jnp.float32))
    if headwise:
      gate = gate[..., None]
    return out_BTHK * gate.astype(out_BTHK.dtype)

  def _forget_cumsum(self, inputs_q, self_attention: bool, key_valid, offset, causal: bool):
    """FoX's (query_c, key_c) for the pure function's `forget_cumsum`, or None without the gate.

    log f = log_sigmoid(inputs W_f + b_f) per token and head (float32), 0 at padding (`key_valid`
    False: a padding token forgets nothing, so padding anywhere leaves the real tokens' logits as
    they are), and c = its cumulative sum over the sequence; logit (i, j) gets c_i - c_j. As in the
    reference code (zhixuan-lin/forgetting-transformer, fgate_type "full") W_f is initialised as
    the other projections and b_f at zero (`bias_init`), so gates start around 0.5. In decode mode
    c continues from the cache's last written position, and the cache keeps c at every key position
    beside the keys ("cached_forget" [batch..., S, H])."""
    if not self.forget_gate:
      return None
    if not causal or not self_attention:
      raise ValueError(
        "forget_gate: FoX is causal self-attention; call with is_causal=True or in decode mode "
        "(an encoder's bidirectional or a cross-attention layer has no forget gate)"
      )
    H = self.num_heads
    dense = nn.DenseGeneral(
      H,
      use_bias=True,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=sharding.named(self.kernel_init, (sharding.EMBED, sharding.HEADS)),
      bias_init=sharding.named(self.bias_init, (sharding.HEADS,)),
      name="forget_gate",
    )
    log_f_BTH = jax.nn.log_sigmoid(tokenwise(dense, inputs_q).astype(jnp.float32))
    if key_valid is not None:
      log_f_BTH = jnp.where(key_valid[..., None], log_f_BTH, 0.0)
    c_BTH = jnp.cumsum(log_f_BTH, axis=-2)
    if not self.decode:
      return c_BTH, c_BTH
    initialized = self.has_variable("cache", "cached_forget")
    cached = self.variable("cache", "cached_forget", jnp.zeros, c_BTH.shape, jnp.float32)
    if not initialized:  # Initialisation only sizes the cache.
      return c_BTH, c_BTH
    *batch, S, _ = cached.value.shape
    T = c_BTH.shape[-2]
    if T > S or c_BTH.shape[:-2] != tuple(batch):  # The key cache refuses these in one line.
      return c_BTH, c_BTH
    last = jax.lax.dynamic_slice_in_dim(cached.value, jnp.maximum(offset - 1, 0), 1, axis=-2)
    c_BTH = c_BTH + jnp.where(offset > 0, last, 0.0)
    zero = jnp.zeros((), offset.dtype)
    start = (zero,) * len(batch) + (offset, zero)
    cached.value = jax.lax.dynamic_update_slice(cached.value, c_BTH, start)
    return c_BTH, cached.value

  def _cache_offset(self):
    """Where this call's tokens start: the cache index in decode mode (0 when it is being sized)."""
    if self.decode and self.has_variable("cache", "cache_index"):
      return self.get_variable("cache", "cache_index")
    return jnp.asarray(0, jnp.int32)

  def _normalize_qk(self, q_BTHK: Array, k_BSGK: Array) -> tuple[Array, Array]:
    """QK-norm (Dehghani et al. 2023; Henry et al. 2020): q and k RMS-normalised over the head dim,
    each times a learned per-head scale [heads, K] (starting at 1)."""
    if self.qk_norm == "none":
      return q_BTHK, k_BSGK

    def rms(x, name):
      scale = self.param(name, nn.initializers.ones, x.shape[-2:], self.param_dtype)
      x32 = x.astype(jnp.float32)
      x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
      return (x32 * scale).astype(x.dtype)

    return rms(q_BTHK, "query_norm"), rms(k_BSGK, "key_norm")

  def _ssmax_queries(
    self, q_BTHK: Array, q_pos_T: Array, mask: Array | None, S: int, causal: bool
  ) -> Array:
    """SSMax (Nakanishi 2025): the logits of a query that sees n keys times s_h log n, s_h learned
    per head (from 1 / log(ssmax_length)); n counts the keys the query may attend (the mask, key
    padding and the causal rule), so a sequence's outputs do not depend on its batch's padding."""
    if self.attention_kind != "ssmax":
      return q_BTHK
    H = q_BTHK.shape[-2]
    init = nn.initializers.constant(1.0 / math.log(max(self.ssmax_length, 2)))
    s_H = self.param("ssmax_scale", init, (H,), self.param_dtype)
    n_hT = masks.attendable_keys(mask, q_pos_T, num_keys=S, is_causal=causal)  # [..., H or 1, T]
    log_n_Th = jnp.swapaxes(jnp.log(jnp.maximum(n_hT, 1).astype(jnp.float32)), -1, -2)
    factor_TH = log_n_Th * s_H
    return q_BTHK * factor_TH[..., None].astype(q_BTHK.dtype)

  def _position_bias(self, offset, *, bidirectional: bool) -> relative.RelativeBias | None:
    """ALiBi's or T5's relative-position logit bias, as `attn.RelativeBias` (None for the other
    kinds): the pure function builds it as [H, T, S] on the naive path and per tile on the flash
    path. T5's table of one learned scalar per bucket and head is this layer's parameter
    `relative_bias`."""
    H = self.num_heads
    if self.positions == "alibi":
      return relative.RelativeBias("alibi", relative.alibi_slopes(H), query_offset=offset)
    if self.positions == "t5_bias":
      table = self.param(
        "relative_bias", nn.initializers.normal(0.02), (self.t5_num_buckets, H), self.param_dtype
      )
      return relative.RelativeBias(
        "t5", table, query_offset=offset, bidirectional=bidirectional,
        num_buckets=self.t5_num_buckets, max_distance=self.t5_max_distance,
      )  # fmt: skip
    return None

  def _variant(self) -> dict:
    """The normalisation options of the pure function: kind, soft-cap, sink logits."""
    sink = None
    if self.attention_sink:
      sink = self.param("sink_logit", nn.initializers.zeros_init(), (self.num_heads,), jnp.float32)
    return dict(
      kind="softmax" if self.attention_kind == "ssmax" else self.attention_kind,
      logit_soft_cap=self.logit_soft_cap,
      sink_logits=sink,
    )

  def _scale_queries(self, q_BTHK: Array) -> tuple[Array, str | float]:
    """Applies the scale choices that need parameters to the queries; returns them and the scale
    left for the pure function ("none" once the queries carry it)."""
    H, K = q_BTHK.shape[-2:]
    if self.scale == "learned":
      log_scale_H = self.param(
        "log_scale", nn.initializers.constant(-0.5 * jnp.log(K)), (H,), self.param_dtype
      )
      return q_BTHK * jnp.exp(log_scale_H)[:, None].astype(q_BTHK.dtype), "none"
    if self.scale == "init_folded":
      return q_BTHK, "none"
    return q_BTHK, self.scale

  def _keys_and_mask(self, k_BSGK: Array, v_BSGK: Array, mask: Array | None, key_valid: Array | None):
    """The keys and values to attend (the whole cache in decode mode), the mask with the padding of
    `key_valid` folded in, and whether the new tokens fitted the cache (True, or a traced bool)."""
    if key_valid is not None and key_valid.shape != k_BSGK.shape[:-2]:
      raise ValueError(f"key_valid must be [batch..., S] = {k_BSGK.shape[:-2]}, got {key_valid.shape}")
    if self.decode:
      return self._update_cache(k_BSGK, v_BSGK, mask, key_valid)
    if key_valid is not None:
      mask = masks.combine_masks(mask, key_valid[..., None, None, :])
    return k_BSGK, v_BSGK, mask, True

  def _attend(
    self, q_BTHK, k_BSGK, v_BSGK, mask, bias, scale, is_causal: bool, deterministic: bool,
    record: bool, variant: dict,
  ):  # fmt: skip
    """`_attend_plain`, or under `differential` its two maps (no weights: a pass of their own)."""
    if not self.differential:
      return self._attend_plain(
        q_BTHK, k_BSGK, v_BSGK, mask, bias, scale, is_causal, deterministic, record, variant
      )
    maps = []
    for i in (0, 1):
      q, k, mask_i, bias_i, variant_i = self._map(i, q_BTHK, k_BSGK, mask, bias, variant)
      out, _ = self._attend_plain(
        q, k, v_BSGK, mask_i, bias_i, scale, is_causal, deterministic, False, variant_i
      )
      maps.append(out)
    return self._differential_combine(*maps), None

  def _map(self, i: int, q_BTHK, k_BSGK, mask, bias, variant: dict):
    """Differential attention's map i (0 or 1): the query and key heads i, i + 2, ... and the
    per-head options cut the same way (a mask's head axis, ALiBi's slopes, T5's table, the sinks,
    the forget gates' sums), so map i of differential head h is query head 2h + i."""
    if mask is not None and mask.ndim >= 3 and mask.shape[-3] > 1:
      mask = mask[..., i::2, :, :]
    if bias is not None:
      bias = dataclasses.replace(bias, params=bias.params[..., i::2])
    variant = dict(variant)
    if variant.get("sink_logits") is not None:
      variant["sink_logits"] = variant["sink_logits"][..., i::2]
    if variant.get("forget_cumsum") is not None:
      variant["forget_cumsum"] = tuple(c[..., i::2] for c in variant["forget_cumsum"])
    return q_BTHK[..., i::2, :], k_BSGK[..., i::2, :], mask, bias, variant

  def _differential_combine(self, out1_BTHK: Array, out2_BTHK: Array) -> Array:
    """Differential attention's heads from their two maps' outputs [batch..., T, H / 2, 2K]:
    RMSNorm(out1 - lambda out2) * (1 - lambda_init), as the reference's forward does."""
    K = out1_BTHK.shape[-1] // 2
    lambda_init = 0.8 - 0.6 * math.exp(-0.3 * self.layer_index)
    init = nn.initializers.normal(0.1)
    names = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
    q1, k1, q2, k2 = (self.param(n, init, (K,), self.param_dtype).astype(jnp.float32) for n in names)
    lam = jnp.exp(jnp.sum(q1 * k1)) - jnp.exp(jnp.sum(q2 * k2)) + lambda_init
    out = out1_BTHK.astype(jnp.float32) - lam * out2_BTHK.astype(jnp.float32)
    norm = nn.RMSNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=self.param_dtype, name="subln")
    return (norm(out) * (1.0 - lambda_init)).astype(out1_BTHK.dtype)

  def _attend_plain(
    self, q_BTHK, k_BSGK, v_BSGK, mask, bias, scale, is_causal: bool, deterministic: bool,
    record: bool, variant: dict,
  ):  # fmt: skip
    """The pure function with the implementation asked for; (output [batch..., T, H, K], weights or
    None). With `record`, the weights come back where the path is naive whether or not they are
    asked for (implementation "naive", or dropout, which only the naive path has); elsewhere asking
    would change the path (None would pick "naive") or be refused ("flash", "jax"), so None comes back
    and the caller takes the weights from a pass of its own, as the diagnostics do."""
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    return_weights = record and (self.implementation == "naive" or dropout_rng is not None)
    result = attention.dot_product_attention(
      q_BTHK,
      k_BSGK,
      v_BSGK,
      mask=mask,
      relative_bias=bias,
      scale=scale,
      is_causal=is_causal,
      dropout_rate=self.dropout_rate if dropout_rng is not None else 0.0,
      dropout_rng=dropout_rng,
      return_weights=return_weights,
      implementation=self.implementation,
      **variant,
    )
    return result if return_weights else (result, None)

  def _gate_heads(self, out_BTHK: Array) -> Array:
    """Each head's output times its gate, when the caller passes the "head_gates" collection
    (`attn.nn.heads`): {"gate": [H]} for this layer. Absent (the default), nothing is computed; a
    gate of 0 removes the head's contribution exactly, as zero rows of the out-projection would."""
    if not self.has_variable(HEAD_GATES, "gate"):
      return out_BTHK
    gate_H = self.get_variable(HEAD_GATES, "gate")
    H = out_BTHK.shape[-2]
    if gate_H.shape != (H,):
      raise ValueError(
        f"head_gates: {'/'.join(self.path)}/gate must be [H] = ({H},), got {gate_H.shape}"
      )
    return out_BTHK * gate_H[:, None].astype(out_BTHK.dtype)

  def _dense_out(self, out_BTHK: Array, features: int) -> Array:
    dense = nn.DenseGeneral(
      features,
      axis=(-2, -1),
      use_bias=self.use_bias if self.out_bias is None else self.out_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=sharding.named(
        self.out_kernel_init or self.kernel_init,
        (sharding.HEADS, sharding.HEAD_DIM, sharding.EMBED),
      ),
      bias_init=sharding.named(self.bias_init, (sharding.EMBED,)),
      name="out",
    )
    return tokenwise(dense, out_BTHK, feature_dims=2)

  def _naive_weights(self, q_BTHK, k_BSGK, mask, bias, scale, is_causal: bool, variant: dict):
    """(the weights [batch..., H, T, S] of `attn.attention_weights`, the mask with the causal one
    folded in when `is_causal`): what the naive path computes, from the same queries and keys."""
    if is_causal:
      mask = masks.combine_masks(mask, masks.causal_mask(q_BTHK.shape[-3], k_BSGK.shape[-3]))
    if self.differential:  # Each map's, interleaved: head 2h + i is differential head h's map i.
      maps = []
      for i in (0, 1):
        q, k, mask_i, bias_i, variant_i = self._map(i, q_BTHK, k_BSGK, mask, bias, variant)
        maps.append(
          attention.attention_weights(q, k, mask=mask_i, relative_bias=bias_i, scale=scale, **variant_i)
        )
      return _interleave_heads(*maps), mask
    weights_BHTS = attention.attention_weights(
      q_BTHK, k_BSGK, mask=mask, relative_bias=bias, scale=scale, **variant
    )
    return weights_BHTS, mask

  def _sow_diagnostics(self, q_BTHK, k_BSGK, mask, bias, scale, is_causal: bool, variant: dict):
    """Records the statistics the scale and heads ablations read, only when the caller makes the
    "diagnostics" collection mutable: the std of the scaled logits over the allowed entries, and the
    mean entropy (nats) and mean maximum of the attention rows that have a key to attend, and the
    largest allowed logit (before a soft-cap); over the same rows, the sink rate (the mean weight on
    key position 0, the gated-attention paper's first-token share) and the sparsity (the share of
    the weights a row may give, i.e. allowed by its mask, below SPARSITY_THRESHOLD = 1e-3).

    They come from a separate naive pass over the same queries and keys (`attention_weights`, [T, S]
    in memory), which does not feed the output: the output, and so every gradient, comes from the
    implementation asked for. The pass runs only where the collection is mutable (at `init` and in
    the training loop's diagnostics step, once per evaluation), never in a training step.
    """
    weights_BHTS, mask = self._naive_weights(q_BTHK, k_BSGK, mask, bias, scale, is_causal, variant)
    if self.differential:
      maps = [self._map(i, q_BTHK, k_BSGK, None, bias, {}) for i in (0, 1)]
      logits = _interleave_heads(
        *(attention.attention_logits(q, k, relative_bias=b, scale=scale) for q, k, _, b, _ in maps)
      )
    else:
      logits = attention.attention_logits(q_BTHK, k_BSGK, relative_bias=bias, scale=scale)
    allowed = jnp.ones(logits.shape, bool) if mask is None else jnp.broadcast_to(mask, logits.shape)
    count = jnp.maximum(allowed.sum(), 1)
    mean = jnp.sum(jnp.where(allowed, logits, 0.0)) / count
    logit_std = jnp.sqrt(jnp.sum(jnp.where(allowed, (logits - mean) ** 2, 0.0)) / count)
    live_rows = weights_BHTS.sum(-1) > 0
    rows = jnp.maximum(live_rows.sum(), 1)
    safe = jnp.where(weights_BHTS > 0, weights_BHTS, 1.0)
    entropy = -jnp.sum(weights_BHTS * jnp.log(safe), axis=-1)
    # The largest raw logit a query may see (before any soft-cap): what grows when attention
    # collapses at high learning rates (Dehghani et al. 2023; Wortsman et al. 2023).
    self.sow("diagnostics", "max_logit", jnp.max(jnp.where(allowed, logits, -jnp.inf), initial=-1e30))
    self.sow("diagnostics", "logit_std", logit_std)
    self.sow("diagnostics", "entropy", jnp.sum(jnp.where(live_rows, entropy, 0.0)) / rows)
    self.sow(
      "diagnostics", "max_weight", jnp.sum(jnp.where(live_rows, weights_BHTS.max(-1), 0.0)) / rows
    )
    self.sow("diagnostics", "sink_rate", jnp.sum(jnp.where(live_rows, weights_BHTS[..., 0], 0.0)) / rows)
    given = allowed & live_rows[..., None]
    small = jnp.sum(given & (weights_BHTS < SPARSITY_THRESHOLD))
    self.sow("diagnostics", "sparsity", small / jnp.maximum(given.sum(), 1))

  def _update_cache(self, k_BTGK: Array, v_BTGK: Array, mask: Array | None, valid_BT: Array | None):
    """Writes this call's keys and values at the cache index.

    Returns the whole cache (keys, values), its mask, and whether the new tokens fitted: True, or a
    traced bool under jit, where an overfull cache cannot raise.
    """
    (keys, values), mask, fits = self._write_cache(
      {"cached_key": k_BTGK, "cached_value": v_BTGK}, 2, "[batch..., S, G, K]", mask, valid_BT
    )
    return keys, values, mask, fits

  def _write_cache(
    self,
    new: dict[str, Array],
    features: int,
    layout: str,
    mask: Array | None,
    valid_BT: Array | None,
  ) -> tuple[list[Array], Array | None, Any]:
    """Writes this call's per-token arrays (`new`: cache variable name -> [batch..., T, ...] with
    `features` axes after T; `layout` names the first one's in errors) at the cache index, with the
    tokens' validity: the one cache mechanism of every layer that caches per token (keys and values
    here, an MLA latent and its RoPE key).

    Returns the whole cache's arrays (in `new`'s order), its mask, and whether the new tokens fitted:
    True, or a traced bool under jit, where an overfull cache cannot raise.
    """
    first_name, first = next(iter(new.items()))
    initialized = self.has_variable("cache", first_name)
    cached = {n: self.variable("cache", n, jnp.zeros, x.shape, x.dtype) for n, x in new.items()}
    lead = first.shape[: first.ndim - features]  # [batch..., T]
    cached_valid = self.variable("cache", "cached_key_valid", jnp.zeros, lead, bool)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    T = lead[-1]
    valid_BT = jnp.ones(lead, bool) if valid_BT is None else valid_BT
    if not initialized:  # Initialisation only sizes the cache: attend as in training.
      mask = masks.combine_masks(mask, masks.causal_mask(T), valid_BT[..., None, None, :])
      return list(new.values()), mask, True
    full = cached[first_name].value.shape
    batch, S = full[: len(lead) - 1], full[len(lead) - 1]
    if lead[:-1] != tuple(batch) or T > S:
      raise ValueError(
        f"decode: {T} new tokens of batch {lead[:-1]} do not fit the cache {full} ({layout})"
      )
    i = index.value
    try:
      if int(i) + T > S:
        raise ValueError(
          f"decode: the cache holds {S} positions, {int(i)} are written; {T} more do not fit"
        )
      fits = True
    except jax.errors.ConcretizationTypeError:
      fits = i + T <= S
    zero = jnp.zeros((), i.dtype)  # Every index of one dtype (Python 0 is int64 under x64).
    start = (zero,) * len(batch) + (i,)
    for name, x in new.items():
      variable = cached[name]
      variable.value = jax.lax.dynamic_update_slice(
        variable.value, x, start + (zero,) * (x.ndim - len(start))
      )
    cached_valid.value = jax.lax.dynamic_update_slice(cached_valid.value, valid_BT, start)
    index.value = i + T
    # New query t sits at cache position i + t: it sees every earlier position and none after it,
    # which also hides the unwritten (zero) tail of the cache.
    return (
      [cached[name].value for name in new],
      masks.combine_masks(
        mask, masks.causal_mask(T, S, offset=i), cached_valid.value[..., None, None, :]
      ),
      fits,
    )
