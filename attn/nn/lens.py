"""What each layer already says about the next token, and who said it, for a `LanguageModel`:
the logit lens and direct logit attribution, from the activations of `attn.nn.hooks.run_with_cache`.

- `logit_lens(model, params, residual)`: a residual stream [B, T, D] (any layer's `resid_pre`,
  `resid_mid` or `resid_post`) through the final norm and the unembedding, as the model does with
  its last one. The norm is recomputed from that residual (its own mean and scale), never the last
  layer's cached statistics (TransformerLens issue 1076 was that bug); the last block's
  `resid_post` gives the model's logits.
- `direct_logit_attribution(model, params, cache)`: the final residual split into what wrote it (the
  embeddings, each head's result, each attention output bias, each feed-forward output) and each part
  through the unembedding with the final norm's scale frozen at the final residual's: the parts'
  logits, plus the final norm's and head's constant terms, sum to the model's logits.

Post-LN models have no final norm: the last residual is already normalised, and a component's
share of it is not linear, so `direct_logit_attribution` needs `norm="pre"`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn.nn import hooks
from attn.nn.models import LanguageModel


def _check(model) -> None:
  if not isinstance(model, LanguageModel):
    raise ValueError(f"lens: needs a LanguageModel, got {type(model).__name__}")


def _final_norm(model, params, x_BTD: jax.Array) -> jax.Array:
  """The decoder's final norm applied to `x` (its own statistics); `x` itself under post-LN."""
  cfg = model.config
  if cfg.norm != "pre":
    return x_BTD
  eps = cfg.norm_epsilon
  norm = nn.RMSNorm(epsilon=eps) if cfg.norm_kind == "rms" else nn.LayerNorm(eps, use_bias=cfg.use_bias)
  return norm.apply({"params": params["decoder"]["final_norm"]}, x_BTD.astype(jnp.float32))


def _unembed(model, params, x_BTD: jax.Array, *, bias: bool = True) -> jax.Array:
  """Logits [B, T, V] of a final (normed) residual: the tied embedding or the head's kernel."""
  x = x_BTD.astype(jnp.float32)
  if model.config.tie_output:
    return x @ params["embedder"]["tokens"]["embedding"].astype(jnp.float32).T
  head = params["head"]["logits"]
  out = x @ head["kernel"].astype(jnp.float32)
  return out + head["bias"] if bias and "bias" in head else out


def logit_lens(model, params, residual_BTD) -> jax.Array:
  """[B, T, V] logits of a residual stream read as if it were the last (see the module docstring)."""
  _check(model)
  return _unembed(model, params, _final_norm(model, params, residual_BTD))


def direct_logit_attribution(model, params, cache: dict) -> dict[str, jax.Array]:
  """{component: [B, T, V] logits} whose sum is the model's logits (float32 rounding apart): "embed",
  "pos_embed" (when the model adds positions), "blocks.L.attn.head_h" for each head,
  "blocks.L.attn.bias" (the output projection's bias), "blocks.L.mlp_out", and "constant" (the final
  norm's bias and the head's bias). `cache` is `run_with_cache`'s of the model (every name).

  The final norm's scale is frozen at the final residual's: a LayerNorm's normalisation is
  (x - mean(x)) / std(x) with std taken once from the whole residual, linear in each part; an
  RMSNorm's x / rms(x) likewise."""
  _check(model)
  cfg = model.config
  if cfg.norm != "pre":
    raise ValueError("direct_logit_attribution: needs norm='pre' (a final norm to freeze)")
  final = cache[f"blocks.{cfg.num_decoder_layers - 1}.resid_post"].astype(jnp.float32)
  norm_params = params["decoder"]["final_norm"]
  eps = cfg.norm_epsilon
  if cfg.norm_kind == "rms":
    scale = jax.lax.rsqrt(jnp.mean(final**2, -1, keepdims=True) + eps)
    center = lambda x: x
  else:
    scale = jax.lax.rsqrt(jnp.var(final, -1, keepdims=True) + eps)
    center = lambda x: x - jnp.mean(x, -1, keepdims=True)
  gamma = norm_params["scale"].astype(jnp.float32)

  def through(x_BTD):
    return _unembed(model, params, center(x_BTD.astype(jnp.float32)) * scale * gamma, bias=False)

  parts = {"embed": cache["embed"]}
  if "pos_embed" in cache:
    parts["pos_embed"] = jnp.broadcast_to(cache["pos_embed"], final.shape)
  for layer in range(cfg.num_decoder_layers):
    b = f"blocks.{layer}."
    attention = params["decoder"][f"layer_{layer}"]["self_attention"]
    results = hooks.head_results(cache[b + "attn.z"], attention)  # [B, T, H, D]
    for h in range(results.shape[-2]):
      parts[f"{b}attn.head_{h}"] = results[..., h, :]
    if "bias" in attention["out"]:
      parts[f"{b}attn.bias"] = jnp.broadcast_to(attention["out"]["bias"], final.shape)
    if b + "mlp_out" in cache:
      parts[f"{b}mlp_out"] = cache[b + "mlp_out"]
  out = {name: through(x) for name, x in parts.items()}
  constant = jnp.zeros((*final.shape[:-1], out["embed"].shape[-1]), jnp.float32)
  if "bias" in norm_params:
    constant = constant + _unembed(
      model, params, jnp.broadcast_to(norm_params["bias"], final.shape), bias=False
    )
  head = params.get("head", {}).get("logits", {})
  if not cfg.tie_output and "bias" in head:
    constant = constant + head["bias"]
  out["constant"] = constant
  return out
