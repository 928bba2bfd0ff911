"""Models built from the blocks: the paper's encoder-decoder `Transformer`, an `EncoderTagger` (for
NER) and a decoder-only `LanguageModel`. Token id `config.pad_id` is masked out as a key everywhere.

Each model returns one structure whatever is asked: logits, or a tagger's `TaggerOutput`. The
attention weights are not an output: every attention layer records them in the "intermediates"
collection when the caller makes it mutable; `attention_weights` applies a model so and returns them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from attn.core import crf as crf_lib
from attn.core import masks
from attn.core.positions import sinusoidal_positions
from attn.nn import hooks, sharding
from attn.nn.attention import INTERMEDIATES, WEIGHTS, MultiHeadAttention, SelfAttention
from attn.nn.blocks import Decoder, DecoderBlock, Encoder, EncoderBlock, layer_norm
from attn.nn.config import GPT2_INIT_STD, ModelConfig
from attn.nn.tokenwise import tokenwise

Array = jax.Array


def encoder_self_mask(tokens_BS: Array, config: ModelConfig) -> Array:
  """The encoder self-attention mask: real keys only and, when `config.attention_window` is set, only
  keys within that many positions of the query (the local-window baseline). bool [B, 1, 1 or S, S]."""
  mask = None if config.pad_id is None else masks.padding_mask(tokens=tokens_BS, pad_id=config.pad_id)
  if config.attention_window is None:
    return mask
  S = tokens_BS.shape[-1]
  return masks.combine_masks(mask, masks.local_window_mask(S, S, window=config.attention_window))


def _key_valid(tokens_BT: Array, config: ModelConfig) -> Array | None:
  """bool [B, T]: False where a token is padding; None when the config has no padding token."""
  return None if config.pad_id is None else tokens_BT != config.pad_id


class Embedder(nn.Module):
  """Token embeddings scaled by sqrt(D), plus positions, (a norm under `config.embed_norm`, "norm"),
  then dropout; `attend` gives tied logits.

  The table is initialised with std 1/sqrt(D), so that after the sqrt(D) scaling (the paper's) token
  vectors have unit-variance entries, and tied output logits start with unit variance. Under
  `config.init = "gpt2"` it is normal(0.02) and not scaled (GPT-2, nanoGPT).
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    token_std = GPT2_INIT_STD if cfg.init == "gpt2" else cfg.d_model**-0.5
    self.table = nn.Embed(
      cfg.vocab_size,
      cfg.d_model,
      embedding_init=sharding.named(nn.initializers.normal(token_std), (sharding.VOCAB, sharding.EMBED)),
      name="tokens",
    )
    if cfg.positions == "learned":
      self.position_table = nn.Embed(
        cfg.max_length,
        cfg.d_model,
        embedding_init=sharding.named(nn.initializers.normal(0.02), (None, sharding.EMBED)),
        name="positions",
      )
    if cfg.feature_buckets:
      self.feature_table = nn.Embed(
        cfg.feature_buckets,
        cfg.d_model,
        embedding_init=sharding.named(nn.initializers.normal(cfg.d_model**-0.5), (None, sharding.EMBED)),
        name="features",
      )
    if cfg.embed_norm:
      self.norm = layer_norm(cfg, "norm")
    self.dropout = nn.Dropout(cfg.dropout_rate)
    if hooks.tracing():  # Hook points only while run_with_cache / run_with_hooks trace.
      self.hook_embed, self.hook_pos_embed = hooks.HookPoint(), hooks.HookPoint()

  def _hook(self, name: str, x: Array, like: Array | None = None) -> Array:
    """`x` through hook point `name` while hooks trace (broadcast to `like`'s shape, so that a
    position embedding is cached per example, [B, T, D], as TransformerLens caches it), else `x`."""
    if not hooks.tracing():
      return x
    return getattr(self, f"hook_{name}")(x if like is None else jnp.broadcast_to(x, like.shape))

  def __call__(
    self,
    tokens_BT: Array,
    positions_BT: Array | None = None,
    *,
    features_BTF: Array | None = None,
    deterministic=True,
  ):
    """tokens [B, T] (and optional hashed features [B, T, F], used when config.feature_buckets > 0)
    -> [B, T, D]."""
    cfg = self.config
    x_BTD = _lookup(self.table, tokens_BT, sharding.VOCAB)
    if cfg.init != "gpt2":
      x_BTD = x_BTD * jnp.sqrt(cfg.d_model).astype(jnp.float32)
    x_BTD = self._hook("embed", x_BTD)
    if features_BTF is not None and cfg.feature_buckets:
      x_BTD = x_BTD + self.embed_features(features_BTF)
    if positions_BT is None:
      positions_BT = jnp.arange(tokens_BT.shape[-1])
    if cfg.positions == "sinusoidal":
      x_BTD = x_BTD + self._hook("pos_embed", sinusoidal_positions(positions_BT, cfg.d_model), x_BTD)
    elif cfg.positions == "learned":
      x_BTD = x_BTD + self._hook("pos_embed", _lookup(self.position_table, positions_BT), x_BTD)
    if cfg.embed_norm:
      x_BTD = self.norm(x_BTD)
    return self.dropout(x_BTD, deterministic=deterministic).astype(cfg.compute_dtype)

  def attend(self, x_BTD: Array) -> Array:
    return self.table.attend(x_BTD.astype(jnp.float32))

  def embed_features(self, features_BTF: Array) -> Array:
    """Hashed features [B, T, F] (non-negative ints, 0 = empty slot) -> [B, T, D].

    Each hash picks row 1 + hash mod (feature_buckets - 1), so a task hashes into any range and the
    table size stays a model choice. The rows of a token's non-empty slots are summed and divided by
    sqrt(their count), then scaled by sqrt(D) like the tokens: unit-variance entries at initialisation
    whatever the number of features.
    """
    valid_BTF = features_BTF > 0
    ids_BTF = jnp.where(valid_BTF, features_BTF % (self.config.feature_buckets - 1) + 1, 0)
    rows_BTFD = _lookup(self.feature_table, ids_BTF) * valid_BTF[..., None]
    count_BT1 = jnp.maximum(valid_BTF.sum(-1, keepdims=True), 1).astype(jnp.float32)
    return rows_BTFD.sum(-2) * jnp.sqrt(self.config.d_model / count_BT1)


def _lookup(table: nn.Embed, ids: Array, rows_axis: str | None = None) -> Array:
  """`table(ids)` with the table's D whole first (FSDP gathers a weight where it is used): a lookup
  into a D-sharded table gives D-sharded rows, which XLA re-splits by the batch only by replicating
  them. A no-op outside a mesh."""
  embedding = nn.with_logical_constraint(table.embedding, (rows_axis, None))
  return jnp.take(embedding, ids, axis=0)


class CharEncoder(nn.Module):
  """Each word from its characters (Ma & Hovy 2016): chars [B, T, W] -> [B, T, D].

  Characters (code point + 1; 0 = none) pick row 1 + c mod (char_buckets - 1) of a table of width
  char_dim; a convolution of width 3 over the word, ReLU, the maximum over the word's characters,
  and a Dense to D. A word with no characters (padding) gives a zero vector.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, chars_BTW: Array) -> Array:
    cfg = self.config
    valid_BTW = chars_BTW > 0
    ids_BTW = jnp.where(valid_BTW, chars_BTW % (cfg.char_buckets - 1) + 1, 0)
    table = nn.Embed(
      cfg.char_buckets, cfg.char_dim, embedding_init=nn.initializers.normal(1.0), name="table"
    )
    x_BTWC = table(ids_BTW) * valid_BTW[..., None]
    x_BTWC = nn.relu(nn.Conv(cfg.char_dim, (3,), padding="SAME", name="conv")(x_BTWC))
    pooled_BTC = jnp.max(jnp.where(valid_BTW[..., None], x_BTWC, 0.0), axis=-2)
    words_BTD = nn.Dense(cfg.d_model, name="project")(pooled_BTC)
    return words_BTD * jnp.any(valid_BTW, axis=-1, keepdims=True)


class _OutputHead(nn.Module):
  """Logits over the vocabulary: the embedding transposed (tied) or a separate Dense."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array, embedder: Embedder) -> Array:
    return hooks.hook("logits", self._logits(x_BTD, embedder))

  def _logits(self, x_BTD: Array, embedder: Embedder) -> Array:
    if self.config.tie_output:
      return tokenwise(embedder.attend, x_BTD)
    kernel_init = sharding.named(self.config.kernel_init(), (sharding.EMBED, sharding.VOCAB))
    bias_init = sharding.named(nn.initializers.zeros_init(), (sharding.VOCAB,))
    dense = nn.Dense(
      self.config.vocab_size,
      dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=bias_init,
      name="logits",
    )
    return tokenwise(dense, x_BTD)


class Transformer(nn.Module):
  """The encoder-decoder of "Attention Is All You Need".

  `__call__(src [B, S], tgt_in [B, T]) -> logits [B, T, V]`, where `tgt_in` is the target shifted
  right (starting with `bos_id`). `encode` and `decode` are exposed for decoding and inspection.
  """

  config: ModelConfig
  decode: bool = False

  def setup(self):
    cfg = self.config
    self.embedder = Embedder(cfg)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg, decode=self.decode)
    self.head = _OutputHead(cfg)

  def encode(self, src_BS: Array, *, deterministic=True) -> Array:
    """src [B, S] -> encoded [B, S, D]."""
    src_mask = encoder_self_mask(src_BS, self.config)
    x_BSD = self.embedder(src_BS, deterministic=deterministic)
    return self.encoder(x_BSD, mask=src_mask, deterministic=deterministic)

  def decode_logits(
    self,
    tgt_in_BT: Array,
    encoded_BSD: Array,
    src_BS: Array,
    *,
    positions_BT=None,
    deterministic=True,
  ) -> Array:
    """tgt_in [B, T] and the encoder output -> logits [B, T, V].

    In decode mode `positions_BT` must give each token's position (the cache offset onwards).
    """
    cfg = self.config
    if self.decode and positions_BT is None and not self.is_initializing():
      raise ValueError("positions_BT is required in decode mode (the cache offset onwards)")
    key_valid_BT = _key_valid(tgt_in_BT, cfg)  # Cached with the keys in decode mode.
    cross_mask = None if cfg.pad_id is None else masks.padding_mask(tokens=src_BS, pad_id=cfg.pad_id)
    y_BTD = self.embedder(tgt_in_BT, positions_BT, deterministic=deterministic)
    y_BTD = self.decoder(
      y_BTD,
      encoded_BSD,
      self_key_valid=key_valid_BT,
      cross_mask=cross_mask,
      deterministic=deterministic,
    )
    return self.head(y_BTD, self.embedder)

  def __call__(self, src_BS: Array, tgt_in_BT: Array, *, deterministic=True) -> Array:
    """Returns logits [B, T, V]."""
    encoded = self.encode(src_BS, deterministic=deterministic)
    return self.decode_logits(tgt_in_BT, encoded, src_BS, deterministic=deterministic)


class CRFScores(nn.Module):
  """A linear-chain CRF's learned scores: (transitions [C, C], start [C], end [C]), zero at init.

  Under `config.crf = "iob2"` the moves IOB2 forbids (I-X after anything but B-X or I-X, or opening
  a sentence) get `attn.core.crf.FORBIDDEN` added, so neither the loss nor Viterbi takes them.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self):
    c = self.config.num_classes
    zeros = nn.initializers.zeros
    transitions = self.param("transitions", zeros, (c, c), jnp.float32)
    start = self.param("start", zeros, (c,), jnp.float32)
    end = self.param("end", zeros, (c,), jnp.float32)
    if self.config.crf == "iob2":
      allowed, may_start = crf_lib.iob2_constraints(self.config.class_names)
      transitions = transitions + jnp.where(allowed, 0.0, crf_lib.FORBIDDEN)
      start = start + jnp.where(may_start, 0.0, crf_lib.FORBIDDEN)
    return transitions, start, end


@struct.dataclass
class TaggerOutput:
  """What an `EncoderTagger` returns.

  Attributes:
    logits: [B, T, C]; a CRF's emissions when config.crf is not "none".
    crf: the CRF's (transitions [C, C], start [C], end [C]), for `attn.core.crf.log_likelihood` and
      `viterbi`; None when config.crf is "none".
  """

  logits: jax.Array
  crf: tuple[jax.Array, jax.Array, jax.Array] | None = None


class EncoderTagger(nn.Module):
  """An encoder and a per-token classifier: tokens [B, T] -> tag logits [B, T, num_classes].

  Optional `features_BTF` [B, T, F]: hashed per-token features (word shape, character n-grams, ...)
  whose embeddings are added to the tokens' when config.feature_buckets > 0 (ignored when it is 0);
  optional `chars_BTW` [B, T, W]: each word's characters, encoded by a `CharEncoder` and added when
  config.char_buckets > 0 (ignored when it is 0).

  Returns a `TaggerOutput`: the logits (a CRF's emissions when `config.crf` is not "none") and the
  CRF's (transitions, start, end), or None without a CRF.
  """

  config: ModelConfig

  @nn.compact
  def __call__(
    self,
    tokens_BT: Array,
    features_BTF: Array | None = None,
    chars_BTW: Array | None = None,
    *,
    deterministic=True,
  ) -> TaggerOutput:
    cfg = self.config
    if cfg.num_classes <= 0:
      raise ValueError(f"num_classes: EncoderTagger needs a positive num_classes, got {cfg.num_classes}")
    mask = encoder_self_mask(tokens_BT, cfg)
    x_BTD = Embedder(cfg, name="embedder")(
      tokens_BT, features_BTF=features_BTF, deterministic=deterministic
    )
    if cfg.char_buckets:
      if chars_BTW is None:
        chars_BTW = jnp.zeros((*tokens_BT.shape, 1), jnp.int32)  # No characters: a zero vector.
      words_BTD = CharEncoder(cfg, name="chars")(chars_BTW)
      x_BTD = x_BTD + nn.Dropout(cfg.dropout_rate)(words_BTD, deterministic=deterministic).astype(
        x_BTD.dtype
      )
    x_BTD = Encoder(cfg, name="encoder")(x_BTD, mask=mask, deterministic=deterministic)
    classifier_init = sharding.named(nn.initializers.lecun_normal(), (sharding.EMBED, None))
    classifier = nn.Dense(
      cfg.num_classes, dtype=jnp.float32, kernel_init=classifier_init, name="classifier"
    )
    logits_BTC = hooks.hook("logits", tokenwise(classifier, x_BTD))
    scores = CRFScores(cfg, name="crf")() if cfg.crf != "none" else None
    return TaggerOutput(logits=logits_BTC, crf=scores)


class LanguageModel(nn.Module):
  """A decoder-only language model: tokens [B, T] -> next-token logits [B, T, V].

  Uses `config.num_decoder_layers` blocks of masked self-attention and feed-forward; with
  `config.attention_window` = w, each query sees only the keys at most w positions back (a causal
  sliding window, in decode mode too).
  """

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, tokens_BT: Array, *, positions_BT=None, deterministic=True) -> Array:
    cfg = self.config
    if cfg.num_decoder_layers < 1:
      raise ValueError(
        f"num_decoder_layers: a LanguageModel needs at least one decoder layer, got "
        f"{cfg.num_decoder_layers}"
      )
    if self.decode and positions_BT is None and not self.is_initializing():
      raise ValueError("positions_BT is required in decode mode (the cache offset onwards)")
    key_valid_BT = _key_valid(tokens_BT, cfg)  # Cached with the keys in decode mode.
    embedder = Embedder(cfg, name="embedder")
    x_BTD = embedder(tokens_BT, positions_BT, deterministic=deterministic)
    x_BTD = Decoder(cfg, decode=self.decode, cross_attention=False, name="decoder")(
      x_BTD,
      self_key_valid=key_valid_BT,
      self_window=cfg.attention_window,
      deterministic=deterministic,
    )
    return _OutputHead(cfg, name="head")(x_BTD, embedder)


# --------------------------------------------------------------------------------------------------
# The attention weights, from the "intermediates" the attention layers record.
# --------------------------------------------------------------------------------------------------


def attention_weights(model: nn.Module, variables, *args, method=None, **kwargs) -> tuple[Any, Any]:
  """`model.apply(variables, *args, method=method, **kwargs)` with the "intermediates" collection
  mutable, so that every attention layer records its weights: (the outputs, the weights as
  `recorded_weights` arranges them). The outputs are the plain apply's, bit for bit.

  `kwargs` pass to `apply` (deterministic, rngs, capture_intermediates, ...), but not `mutable`.
  """
  outputs, state = model.apply(variables, *args, method=method, mutable=[INTERMEDIATES], **kwargs)
  return outputs, recorded_weights(model, state.get(INTERMEDIATES, {}), method=method)


def recorded_weights(model: nn.Module, intermediates, *, method=None):
  """The attention weights in `intermediates` (the collection of an apply of `model` that made it
  mutable; `method` as given to that apply), arranged by the model:

    MultiHeadAttention, EncoderBlock: [B, H, T, S]; SelfAttention: [batch..., T, T];
    DecoderBlock: {"self": [B, H, T, T], "cross": [B, H, T, S]} ("cross" only with cross-attention);
    Encoder, EncoderTagger, Transformer.encode: [per layer [B, H, T, T]];
    Decoder, LanguageModel, Transformer.decode_logits: [per layer {"self", "cross"} as a block's];
    Transformer: {"encoder": [...], "decoder": [...]};
    any other module or method: `weights_by_path`.

  Raises:
    ValueError: when a layer recorded no weights, or more than one set (called twice in the apply).
  """
  name = method if isinstance(method, str) else getattr(method, "__name__", "__call__")
  tree = intermediates or {}
  if name == "__call__":
    if isinstance(model, SelfAttention | MultiHeadAttention):
      return _one(tree, ())
    if isinstance(model, EncoderBlock):
      return _one(tree, ("self_attention",))
    if isinstance(model, DecoderBlock):
      return _block_weights(tree, model.cross_attention)
    if isinstance(model, Encoder):
      return _stack_weights(tree, model.config.num_encoder_layers, None)
    if isinstance(model, Decoder):
      return _stack_weights(tree, model.config.num_decoder_layers, model.cross_attention)
    if isinstance(model, EncoderTagger):
      return _stack_weights(tree.get("encoder", {}), model.config.num_encoder_layers, None)
    if isinstance(model, LanguageModel):
      return _stack_weights(tree.get("decoder", {}), model.config.num_decoder_layers, False)
  if isinstance(model, Transformer) and name in ("__call__", "encode", "decode_logits"):
    cfg = model.config
    encoder = lambda: _stack_weights(tree.get("encoder", {}), cfg.num_encoder_layers, None)
    decoder = lambda: _stack_weights(tree.get("decoder", {}), cfg.num_decoder_layers, True)
    if name == "encode":
      return encoder()
    if name == "decode_logits":
      return decoder()
    return {"encoder": encoder(), "decoder": decoder()}
  return weights_by_path(tree)


def weights_by_path(intermediates) -> dict[str, Array]:
  """{the recording layer's module path joined by "/": its weights} for every attention layer in
  `intermediates`, e.g. {"encoder/layer_0/self_attention": [B, H, T, T], ...}; a layer that recorded
  more than once gets "#1", "#2", ... after its path for the later ones."""
  out = {}

  def visit(tree, path):
    for key, value in tree.items():
      if key == WEIGHTS and isinstance(value, tuple):
        for i, w in enumerate(value):
          out["/".join(path) + (f"#{i}" if i else "")] = w
      elif hasattr(value, "items"):
        visit(value, (*path, key))

  visit(intermediates or {}, ())
  return out


def _one(tree, path: tuple[str, ...]) -> Array:
  """The one set of weights the layer at `path` (under `tree`) recorded."""
  node = tree
  for key in path:
    node = node.get(key, {})
  recorded = node.get(WEIGHTS, ())
  if len(recorded) != 1:
    where = "/".join(path) or "the module"
    raise ValueError(
      f"attention weights: {where} recorded {len(recorded)} sets of weights, expected 1 (was "
      f'the "{INTERMEDIATES}" collection mutable, and the layer called once?)'
    )
  return recorded[0]


def _block_weights(tree, cross: bool) -> dict[str, Array]:
  """A DecoderBlock's {"self": ..., "cross": ...} ("cross" only with cross-attention)."""
  out = {"self": _one(tree, ("self_attention",))}
  if cross:
    out["cross"] = _one(tree, ("cross_attention",))
  return out


def _stack_weights(tree, num_layers: int, cross: bool | None) -> list:
  """Per layer of a stack: an EncoderBlock's weights (`cross` None), else a DecoderBlock's."""
  return [
    _one(tree, (f"layer_{i}", "self_attention"))
    if cross is None
    else _block_weights(tree.get(f"layer_{i}", {}), cross)
    for i in range(num_layers)
  ]
