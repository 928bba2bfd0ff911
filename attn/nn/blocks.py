"""Transformer blocks and stacks: attention and feed-forward sublayers with residuals and layer norm."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn.nn import hooks, sharding
from attn.nn.attention import MultiHeadAttention
from attn.nn.config import RELATIVE_POSITIONS, ModelConfig
from attn.nn.latent import MultiHeadLatentAttention
from attn.nn.tokenwise import tokenwise

Array = jax.Array


# ModelConfig fields that MultiHeadAttention takes under the same name.
_SAME_NAMED_FIELDS = (
  "rope_fraction",
  "t5_num_buckets",
  "t5_max_distance",
  "qk_norm",
  "logit_soft_cap",
  "attention_sink",
  "attention_kind",
  "attention_gate",
  "rope_interleaved",
)


def attention_layer(
  config: ModelConfig,
  name: str,
  decode: bool = False,
  *,
  stack_layers: int | None = None,
  cross: bool = False,
  layer_index: int = 0,
) -> MultiHeadAttention:
  """A MultiHeadAttention set up from the model config; `stack_layers`, the blocks of the stack it
  belongs to, scales its output projection's initialisation under init="gpt2". Relative positions
  (RoPE, ALiBi, T5 bias) and value residual learning belong to self-attention only: a `cross` layer
  gets neither. With `config.mla_kv_rank` a self-attention layer is a MultiHeadLatentAttention."""
  relative = config.positions in RELATIVE_POSITIONS and not cross
  layer, latent = MultiHeadAttention, {}
  if config.mla_kv_rank is not None and not cross:
    layer = MultiHeadLatentAttention
    latent = dict(kv_rank=config.mla_kv_rank, q_rank=config.mla_q_rank, rope_dim=config.mla_rope_dim)
  return layer(
    num_heads=config.num_heads,
    head_dim_policy=config.head_dim_policy,
    head_dim=config.head_dim,
    num_kv_heads=config.num_kv_heads,
    scale=config.scale,
    dropout_rate=config.attention_dropout_rate,
    use_bias=config.use_bias,
    qkv_bias=config.qkv_bias,
    out_bias=config.out_bias,
    dtype=config.compute_dtype,
    decode=decode,
    implementation=config.attention_implementation,
    kernel_init=config.kernel_init(),
    out_kernel_init=config.kernel_init(residual_layers=stack_layers or 1),
    positions=config.positions if relative else "none",
    ssmax_length=config.max_length,
    rope_base=config.rope_theta,
    value_residual="none" if cross else config.value_residual,
    forget_gate=config.forget_gate and not cross,  # Causal self-attention only (the module checks).
    differential=config.differential,
    layer_index=layer_index,  # The block's, from 0 (differential attention's lambda_init).
    **{field: getattr(config, field) for field in _SAME_NAMED_FIELDS},
    **latent,
    name=name,
  )


def layer_norm(config: ModelConfig, name: str) -> nn.Module:
  """The block norm of `config.norm_kind`: LayerNorm with a learned scale (and a learned bias when
  `config.use_bias`), or RMSNorm (scale only)."""
  if config.norm_kind == "rms":
    return nn.RMSNorm(epsilon=config.norm_epsilon, dtype=config.compute_dtype, name=name)
  return nn.LayerNorm(
    epsilon=config.norm_epsilon, use_bias=config.use_bias, dtype=config.compute_dtype, name=name
  )


# The feed-forward nonlinearities of ModelConfig.activation.
_ACTIVATION_FNS = {
  "relu": nn.relu,
  "gelu": nn.gelu,  # The tanh approximation.
  "gelu_exact": functools.partial(nn.gelu, approximate=False),
  "silu": nn.silu,
}


class FeedForward(nn.Module):
  """Position-wise feed-forward: Dense(d_ff) "wi", nonlinearity, dropout, Dense(D) "wo"; under
  `config.ff_glu` gated, wo(act(wi(x)) * wi_up(x)) (SwiGLU with "silu"). `stack_layers`: the blocks
  of its stack (scales wo's initialisation under init="gpt2")."""

  config: ModelConfig
  stack_layers: int = 1

  @nn.compact
  def __call__(self, x_BTD: Array, *, deterministic: bool = True) -> Array:
    cfg = self.config
    dense = functools.partial(nn.Dense, use_bias=cfg.use_bias, dtype=cfg.compute_dtype)
    wi_init = sharding.named(cfg.kernel_init(), (sharding.EMBED, sharding.MLP))
    wi_bias = sharding.named(nn.initializers.zeros_init(), (sharding.MLP,))
    h_BTF = tokenwise(dense(cfg.d_ff, kernel_init=wi_init, bias_init=wi_bias, name="wi"), x_BTD)
    h_BTF = _ACTIVATION_FNS[cfg.activation](h_BTF)
    if cfg.ff_glu:
      up = dense(cfg.d_ff, kernel_init=wi_init, bias_init=wi_bias, name="wi_up")
      h_BTF = h_BTF * tokenwise(up, x_BTD)
    h_BTF = nn.Dropout(cfg.dropout_rate)(h_BTF, deterministic=deterministic)
    wo_init = sharding.named(
      cfg.kernel_init(residual_layers=self.stack_layers), (sharding.MLP, sharding.EMBED)
    )
    wo_bias = sharding.named(nn.initializers.zeros_init(), (sharding.EMBED,))
    wo = dense(x_BTD.shape[-1], kernel_init=wo_init, bias_init=wo_bias, name="wo")
    return tokenwise(wo, h_BTF)


# The hook point (attn.nn.hooks) of each sublayer's output.
_OUT_HOOKS = {
  "self_attention": "attn_out",
  "cross_attention": "cross_attn_out",
  "feed_forward": "mlp_out",
}


def _residual(config: ModelConfig, name: str, x: Array, sublayer: Callable, deterministic: bool):
  """x + Dropout(sublayer(x)) with layer norm after the sum (post-LN, the paper) or on the sublayer's
  input (pre-LN). Called inside a compact method, so the norm "{name}_norm" belongs to the caller.
  """
  norm = layer_norm(config, f"{name}_norm")
  y = hooks.hook(_OUT_HOOKS[name], sublayer(norm(x) if config.norm == "pre" else x))
  x = x + nn.Dropout(config.dropout_rate)(y, deterministic=deterministic)
  # A block boundary: the batch over the mesh's data axes (tensor parallelism's all-reduce lands here).
  return sharding.constrain_residual(x if config.norm == "pre" else norm(x))


def _sow_activation_diagnostics(module: nn.Module, x_BTD: Array, valid_BT: Array | None) -> None:
  """Only when the "diagnostics" collection is mutable (as the attention layers' statistics): the
  block output's largest absolute entry ("max_activation", the massive-activations measure of Sun
  et al. 2024) and its kurtosis ("activation_kurtosis": the fourth standardised moment over the D
  entries of each token's residual, 3 for a Gaussian, averaged over the tokens), over the real
  tokens (`valid_BT` False at padding; None: every token)."""
  if not module.is_mutable_collection("diagnostics"):
    return
  x = x_BTD.astype(jnp.float32)
  valid = jnp.ones(x.shape[:-1], bool) if valid_BT is None else jnp.broadcast_to(valid_BT, x.shape[:-1])
  module.sow("diagnostics", "max_activation", jnp.max(jnp.where(valid[..., None], jnp.abs(x), 0.0)))
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.mean(centred**2, axis=-1)
  kurtosis = jnp.mean(centred**4, axis=-1) / jnp.maximum(variance**2, 1e-12)
  count = jnp.maximum(valid.sum(), 1)
  module.sow("diagnostics", "activation_kurtosis", jnp.sum(jnp.where(valid, kurtosis, 0.0)) / count)


def _valid_keys(mask: Array | None) -> Array | None:
  """bool [B, T]: the tokens some query may attend, from an encoder mask [B, 1, 1 or T, T] (False
  at padding; a local window keeps each token visible to itself); None without a mask."""
  if mask is None:
    return None
  return jnp.any(mask, axis=tuple(range(max(mask.ndim - 3, 0), mask.ndim - 1)))


def _attend_self(self_attn: nn.Module, first_values: Array | None, carry: dict, **kwargs) -> Callable:
  """The self-attention sublayer for `_residual`: under value residual learning it takes the stack's
  first layer's values (`first_values`; None in the first layer) and leaves this call's values in
  `carry["values"]`."""
  if self_attn.value_residual == "none":
    return lambda h: self_attn(h, **kwargs)

  def attend(h):
    out, carry["values"] = self_attn(h, first_values=first_values, return_values=True, **kwargs)
    return out

  return attend


class EncoderBlock(nn.Module):
  """Self-attention then feed-forward, each in a residual. Its attention layer, "self_attention",
  records its weights [B, H, T, T] when "intermediates" is mutable (see `MultiHeadAttention`)."""

  config: ModelConfig
  layer_index: int = 0  # The block's index in its stack, from 0.

  @nn.compact
  def __call__(self, x_BTD, *, mask=None, deterministic=True, first_values=None, return_values=False):
    """x [B, T, D], mask broadcastable to [B, H, T, T] -> [B, T, D]. Under `config.value_residual`:
    `first_values`, the first block's self-attention values [B, T, G, K] (None in the first block),
    and with `return_values` the block returns (x, its self-attention's values)."""
    layers = self.config.num_encoder_layers
    x_BTD = hooks.hook("resid_pre", x_BTD)
    self_attn = attention_layer(
      self.config, "self_attention", stack_layers=layers, layer_index=self.layer_index
    )
    carry = {}
    x_BTD = _residual(
      self.config,
      "self_attention",
      x_BTD,
      _attend_self(self_attn, first_values, carry, mask=mask, deterministic=deterministic),
      deterministic,
    )
    x_BTD = hooks.hook("resid_mid", x_BTD)
    if self.config.d_ff:  # 0: an attention-only block.
      ff = FeedForward(self.config, stack_layers=layers, name="feed_forward")
      x_BTD = _residual(
        self.config,
        "feed_forward",
        x_BTD,
        lambda h: ff(h, deterministic=deterministic),
        deterministic,
      )
    x_BTD = hooks.hook("resid_post", x_BTD)
    _sow_activation_diagnostics(self, x_BTD, _valid_keys(mask))
    return (x_BTD, carry.get("values")) if return_values else x_BTD


class DecoderBlock(nn.Module):
  """Masked self-attention, cross-attention to the encoder (unless `cross_attention` is False, as in
  a decoder-only language model), then feed-forward, each in a residual. Its attention layers,
  "self_attention" and "cross_attention", record their weights [B, H, T, T] and [B, H, T, S] when
  "intermediates" is mutable (see `MultiHeadAttention`)."""

  config: ModelConfig
  decode: bool = False
  cross_attention: bool = True
  layer_index: int = 0  # The block's index in its stack, from 0.

  @nn.compact
  def __call__(
    self,
    x_BTD,
    encoded_BSD=None,
    *,
    self_mask=None,
    self_key_valid=None,
    self_window=None,
    cross_mask=None,
    deterministic=True,
    first_values=None,
    return_values=False,
  ):
    """x [B, T, D], encoded [B, S, D] -> [B, T, D]. `self_window`: the self-attention's causal
    sliding window w (query i sees keys j with i - j <= w), None = all. `first_values` and
    `return_values` as in `EncoderBlock` (in decode mode, the values of this call's tokens)."""
    cfg = self.config
    layers = cfg.num_decoder_layers
    x_BTD = hooks.hook("resid_pre", x_BTD)
    self_attn = attention_layer(
      cfg, "self_attention", decode=self.decode, stack_layers=layers, layer_index=self.layer_index
    )
    carry = {}
    attend = _attend_self(
      self_attn,
      first_values,
      carry,
      mask=self_mask,
      key_valid=self_key_valid,
      is_causal=True,
      window=self_window,
      deterministic=deterministic,
    )
    x_BTD = _residual(cfg, "self_attention", x_BTD, attend, deterministic)
    x_BTD = hooks.hook("resid_mid", x_BTD)
    if self.cross_attention:
      if encoded_BSD is None:
        raise ValueError("DecoderBlock: encoded_BSD is required when cross_attention is on")
      cross_attn = attention_layer(
        cfg, "cross_attention", stack_layers=layers, cross=True, layer_index=self.layer_index
      )
      x_BTD = _residual(
        cfg,
        "cross_attention",
        x_BTD,
        lambda h: cross_attn(h, encoded_BSD, mask=cross_mask, deterministic=deterministic),
        deterministic,
      )
      x_BTD = hooks.hook("resid_mid_cross", x_BTD)
    if cfg.d_ff:  # 0: an attention-only block.
      ff = FeedForward(cfg, stack_layers=layers, name="feed_forward")
      x_BTD = _residual(
        cfg, "feed_forward", x_BTD, lambda h: ff(h, deterministic=deterministic), deterministic
      )
    x_BTD = hooks.hook("resid_post", x_BTD)
    _sow_activation_diagnostics(self, x_BTD, self_key_valid)
    return (x_BTD, carry.get("values")) if return_values else x_BTD


class Encoder(nn.Module):
  """A stack of `config.num_encoder_layers` EncoderBlocks (and a final layer norm under pre-LN)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, *, mask=None, deterministic=True):
    """Returns [B, T, D]. The blocks are "layer_0", "layer_1", ..."""
    first_values = None  # Under config.value_residual: the first block's self-attention values.
    for i in range(self.config.num_encoder_layers):
      block = EncoderBlock(self.config, layer_index=i, name=f"layer_{i}")
      if self.config.value_residual != "none" and i == 0:
        x_BTD, first_values = block(x_BTD, mask=mask, deterministic=deterministic, return_values=True)
      else:
        x_BTD = block(x_BTD, mask=mask, deterministic=deterministic, first_values=first_values)
    if self.config.norm == "pre":
      x_BTD = hooks.hook("ln_final", layer_norm(self.config, "final_norm")(x_BTD))
    return x_BTD


class Decoder(nn.Module):
  """A stack of `config.num_decoder_layers` DecoderBlocks (and a final layer norm under pre-LN)."""

  config: ModelConfig
  decode: bool = False
  cross_attention: bool = True

  @nn.compact
  def __call__(
    self,
    x_BTD,
    encoded_BSD=None,
    *,
    self_mask=None,
    self_key_valid=None,
    self_window=None,
    cross_mask=None,
    deterministic=True,
  ):
    """Returns [B, T, D]. The blocks are "layer_0", "layer_1", ..."""
    first_values = None  # Under config.value_residual: the first block's self-attention values.
    for i in range(self.config.num_decoder_layers):
      block = DecoderBlock(
        self.config,
        decode=self.decode,
        cross_attention=self.cross_attention,
        layer_index=i,
        name=f"layer_{i}",
      )
      first = self.config.value_residual != "none" and i == 0
      out = block(
        x_BTD,
        encoded_BSD,
        self_mask=self_mask,
        self_key_valid=self_key_valid,
        self_window=self_window,
        cross_mask=cross_mask,
        deterministic=deterministic,
        first_values=first_values,
        return_values=first,
      )
      x_BTD, first_values = out if first else (out, first_values)
    if self.config.norm == "pre":
      x_BTD = hooks.hook("ln_final", layer_norm(self.config, "final_norm")(x_BTD))
    return x_BTD
