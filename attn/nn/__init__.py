"""Layer 2: Flax linen modules and models over the pure functions of `attn.core`.

`config` (ModelConfig: every model hyperparameter, validated), `attention` (SelfAttention,
MultiHeadAttention: project, reshape, call `attn.core`), `blocks` (feed-forward, encoder and decoder
blocks and stacks), `models` (Transformer, EncoderTagger and its TaggerOutput, LanguageModel; the
attention weights the layers record, `models.attention_weights`) and `decoding` (cached greedy and beam
search).
"""

from attn.nn.attention import MultiHeadAttention, SelfAttention
from attn.nn.blocks import Decoder, DecoderBlock, Encoder, EncoderBlock, FeedForward, attention_layer
from attn.nn.config import ModelConfig
from attn.nn.decoding import beam_decode, greedy_decode
from attn.nn.models import EncoderTagger, LanguageModel, TaggerOutput, Transformer

__all__ = [
  "Decoder",
  "DecoderBlock",
  "Encoder",
  "EncoderBlock",
  "EncoderTagger",
  "FeedForward",
  "LanguageModel",
  "ModelConfig",
  "MultiHeadAttention",
  "SelfAttention",
  "TaggerOutput",
  "Transformer",
  "attention_layer",
  "beam_decode",
  "greedy_decode",
]
