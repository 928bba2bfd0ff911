"""Layer 1: pure functions of attention. No Flax, no state; safe under `jit`, `vmap` and `grad`.

`scaling` (the logit multiplier, one named choice), `masks` (boolean, True = may attend), `attention`
(the naive reference, the choice of implementation and `dot_product_attention`), `flash` (tiled
attention with an online softmax), `positions` (sinusoidal encodings, RoPE, ALiBi, T5 buckets) and
`corruption` (input-token noise for denoising: the notes' other "masking", kept apart from attention
masks), `crf` (a linear-chain CRF) and `ring` (ring attention: the sequence sharded over a mesh axis).
"""

from attn.core.attention import (
  attention_logits,
  attention_weights,
  choose_implementation,
  dot_product_attention,
  self_attention,
)
from attn.core.corruption import corrupt_tokens
from attn.core.masks import (
  attendable_keys,
  causal_mask,
  combine_masks,
  local_window_mask,
  padding_mask,
)
from attn.core.positions import (
  RelativeBias,
  alibi_bias,
  alibi_slopes,
  rope,
  sinusoidal_positions,
  t5_buckets,
  xpos,
)
from attn.core.ring import ring_attention
from attn.core.scaling import SCALE_CHOICES, resolve_scale

__all__ = [
  "SCALE_CHOICES",
  "RelativeBias",
  "alibi_bias",
  "alibi_slopes",
  "attendable_keys",
  "attention_logits",
  "attention_weights",
  "causal_mask",
  "choose_implementation",
  "combine_masks",
  "corrupt_tokens",
  "dot_product_attention",
  "local_window_mask",
  "padding_mask",
  "resolve_scale",
  "ring_attention",
  "rope",
  "self_attention",
  "sinusoidal_positions",
  "t5_buckets",
  "xpos",
]
