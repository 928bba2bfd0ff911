"""attn: attention from weightless self-attention to the full Transformer, as pure JAX and Flax.

The floors, each importing only those below it (WORKSPACE.md draws the tree):
  attn.core   pure functions: scaling, masks, attention and flash, positions, corruption (no Flax)
  attn.nn     Flax modules and models: ModelConfig, MultiHeadAttention, blocks, Transformer, decoding
  attn.tasks  where batches come from: the Task protocol and its tasks, an explicit registry
  attn.train  one run: setup, the pure jitted steps, the loop with checkpoints
  attn.runs   run directories, the metrics writer, sweeps, comparison tables, plots (imports no attn)

The pure functions of `attn.core` are importable from here.
"""

from attn.core import (
  SCALE_CHOICES,
  RelativeBias,
  alibi_bias,
  alibi_slopes,
  attendable_keys,
  attention_logits,
  attention_weights,
  causal_mask,
  combine_masks,
  corrupt_tokens,
  dot_product_attention,
  local_window_mask,
  padding_mask,
  resolve_scale,
  rope,
  self_attention,
  sinusoidal_positions,
  t5_buckets,
  xpos,
)

__all__ = [
  "SCALE_CHOICES",
  "RelativeBias",
  "alibi_bias",
  "alibi_slopes",
  "attendable_keys",
  "attention_logits",
  "attention_weights",
  "causal_mask",
  "combine_masks",
  "corrupt_tokens",
  "dot_product_attention",
  "local_window_mask",
  "padding_mask",
  "resolve_scale",
  "rope",
  "self_attention",
  "sinusoidal_positions",
  "t5_buckets",
  "xpos",
]
