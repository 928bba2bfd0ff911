"""attn: attention from weightless self-attention to the full Transformer, as pure JAX and Flax.

Layer 1, pure functions (no Flax, no state) are importable from here. The Flax modules and models are
importable from here too, and live in `attn.modules`, `attn.blocks`, `attn.models`, `attn.decoding`.
"""

from attn.attention import (
  attention_logits,
  attention_weights,
  dot_product_attention,
  self_attention,
)
from attn.corruption import corrupt_tokens
from attn.masks import causal_mask, combine_masks, local_window_mask, padding_mask
from attn.positions import sinusoidal_positions
from attn.scaling import SCALE_CHOICES, resolve_scale

__all__ = [
  "SCALE_CHOICES",
  "attention_logits",
  "attention_weights",
  "causal_mask",
  "combine_masks",
  "corrupt_tokens",
  "dot_product_attention",
  "local_window_mask",
  "padding_mask",
  "resolve_scale",
  "self_attention",
  "sinusoidal_positions",
]
