"""One dataclass of model hyperparameters, so models take `config` rather than long keyword lists."""

from __future__ import annotations

import dataclasses
import numbers

import flax.linen as nn
import jax.numpy as jnp

from attn.core.attention import CANNOT_SERVE, IMPLEMENTATIONS
from attn.core.positions import t5_bucket_problem
from attn.core.scaling import SCALE_CHOICES

# Scale choices of the Flax modules: the pure functions' choices, plus two that need parameters.
# "learned": a learned per-head multiplier on the logits, initialised to 1/sqrt(K).
# "init_folded": 1/sqrt(K) folded into the query projection's initialisation (as T5 does), and no
#   multiplier at run time. It starts where "sqrt_d" starts, but training can move it away.
MODULE_SCALE_CHOICES = (*SCALE_CHOICES, "learned", "init_folded")

# How the per-head dim K follows from the number of heads H.
# "fixed_model_dim": K = D / H, the paper's choice; a heads sweep then also changes K, and so sqrt(K).
# "fixed_head_dim": K is `head_dim` whatever H is; the heads then project to H * K features.
HEAD_DIM_POLICIES = ("fixed_model_dim", "fixed_head_dim")

NORM_POSITIONS = ("post", "pre")  # post-LN as in the paper; pre-LN trains more stably when deep.
# Where order comes from. Added to the embeddings: "sinusoidal" (the paper), "learned". Inside every
# self-attention layer: "rope" (rotary q and k), "alibi" (linear distance penalties), "t5_bias"
# (learned bucketed bias). "none" (NoPE): no positions at all.
# "xpos": RoPE whose pairs also decay with the distance (Sun et al. 2022; scale_base 512, gamma 0.4).
POSITION_KINDS = ("sinusoidal", "learned", "rope", "alibi", "t5_bias", "none", "xpos")
RELATIVE_POSITIONS = ("rope", "alibi", "t5_bias", "xpos")
QK_NORMS = ("none", "rms")
# "softpick" (Zuhri et al. 2025) and "stick_breaking" (Tan et al. 2025; naive only) are the pure
# function's kinds of the same names; "ssmax" is the softmax with the logits times s_h log n.
ATTENTION_KINDS = ("softmax", "sigmoid", "ssmax", "softpick", "stick_breaking")
# Gated attention (Qiu et al. 2025): each head's output times sigmoid(x W_g) before the output
# projection, x the layer's query input. "headwise": one gate per head (W_g [D, H]); "elementwise":
# one per head and head-dim entry (W_g [D, H, K]).
ATTENTION_GATES = ("none", "headwise", "elementwise")
# Value residual learning (Zhou et al. 2025) in every self-attention stack: "learned" (ResFormer)
# mixes each later layer's values with the stack's first layer's, l1 * V_n + l2 * V_1, two learned
# scalars per layer starting at 0.5; "shared" (SVFormer) gives every later layer V_1 itself (no value
# projection of its own).
VALUE_RESIDUALS = ("none", "learned", "shared")
NORM_KINDS = ("layer", "rms")
# EncoderTagger's output: per-token softmax, or a linear-chain CRF with learned transitions ("free"),
# or one whose IOB2-invalid moves (I-X not after B-X or I-X) are forbidden ("iob2").
CRF_KINDS = ("none", "free", "iob2")
# Feed-forward nonlinearities: "gelu" is the tanh approximation (GPT-2), "gelu_exact" the erf form
# (BERT), "silu" (x * sigmoid(x); Llama's SwiGLU gate under ff_glu).
ACTIVATIONS = ("relu", "gelu", "silu", "gelu_exact")
# Initialisation of the weights.
# "default": token embeddings normal(1/sqrt(D)) scaled by sqrt(D) at lookup (unit-variance entries,
#   the paper's scaling), kernels LeCun-normal.
# "gpt2": GPT-2's and nanoGPT's: embeddings and kernels normal(0.02), no sqrt(D) scaling, and the
#   projections that write into the residual stream (attention out, feed-forward wo) normal(0.02 /
#   sqrt(2 * layers)).
INIT_SCHEMES = ("default", "gpt2")
GPT2_INIT_STD = 0.02
DTYPES = ("float32", "bfloat16", "float16")


def check_choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(
      f"{field}: unknown choice {value!r}; expected one of {', '.join(map(repr, choices))}"
    )


def check_module_scale(field: str, scale) -> None:
  if isinstance(scale, str):
    check_choice(field, scale, MODULE_SCALE_CHOICES)
  elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < float("inf"):
    raise ValueError(
      f"{field}: expected one of {', '.join(map(repr, MODULE_SCALE_CHOICES))} or a positive float, "
      f"got {scale!r}"
    )


def head_dim_for(field: str, policy: str, num_heads: int, model_dim: int, head_dim: int | None) -> int:
  """Resolves K from the head-dim policy; raises ValueError naming `field` when it cannot."""
  check_choice(f"{field}head_dim_policy", policy, HEAD_DIM_POLICIES)
  if num_heads <= 0:
    raise ValueError(f"{field}num_heads: must be positive, got {num_heads}")
  if policy == "fixed_model_dim":
    if model_dim % num_heads:
      raise ValueError(
        f"{field}num_heads: {num_heads} heads do not divide the model dim {model_dim} "
        "under head_dim_policy='fixed_model_dim'"
      )
    return model_dim // num_heads
  if head_dim is None or head_dim <= 0:
    raise ValueError(
      f"{field}head_dim: head_dim_policy='fixed_head_dim' needs a positive head_dim, got {head_dim}"
    )
  return head_dim


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of `Transformer`, `EncoderTagger` and `LanguageModel`. Checked on construction."""

  vocab_size: int = 1000  # V, shared by source and target (one embedding table).
  num_classes: int = 0  # Tags predicted per token by EncoderTagger; unused elsewhere.
  feature_buckets: int = 0  # Rows of the hashed token-feature table (EncoderTagger); 0 = none.
  char_buckets: int = 0  # Rows of the character table of EncoderTagger's word encoder; 0 = none.
  char_dim: int = 32  # Width of the character embeddings and of the character convolution.
  crf: str = "none"  # EncoderTagger's output layer: one of CRF_KINDS.
  class_names: tuple[str, ...] = ()  # The tags' names (from the task); "iob2" reads them.
  d_model: int = 256  # D, the width of the residual stream.
  num_heads: int = 4  # H, query heads per attention layer.
  head_dim_policy: str = "fixed_model_dim"  # "fixed_model_dim" (K = D/H) or "fixed_head_dim".
  head_dim: int | None = None  # K under "fixed_head_dim"; must be None or equal D/H otherwise.
  num_kv_heads: int | None = None  # G key/value heads (G divides H); None means G = H.
  d_ff: int = 1024  # Hidden width of the feed-forward sublayer; 0: none (an attention-only model).
  num_encoder_layers: int = 2  # Encoder blocks (Transformer, EncoderTagger).
  num_decoder_layers: int = 2  # Decoder blocks (Transformer, LanguageModel).
  dropout_rate: float = 0.1  # Dropout on embeddings and sublayer outputs (training only).
  attention_dropout_rate: float = 0.0  # Dropout on attention weights (training only).
  scale: str | float = "sqrt_d"  # Logit scale: one of MODULE_SCALE_CHOICES or a positive float.
  norm: str = "post"  # "post" (paper) or "pre" layer norm.
  positions: str = "sinusoidal"  # One of POSITION_KINDS.
  rope_fraction: float = 1.0  # Share of the head dim RoPE rotates, in (0, 1].
  t5_num_buckets: int = 32  # T5 bias: buckets (half per direction in the encoder).
  t5_max_distance: int = 128  # T5 bias: distances beyond share the last bucket.
  qk_norm: str = "none"  # "rms": q and k RMS-normalised with a learned per-head scale.
  logit_soft_cap: float | None = None  # cap * tanh(logits / cap) before the softmax; None = off.
  attention_sink: bool = False  # A learned per-head sink logit in the softmax's denominator.
  attention_kind: str = "softmax"  # "softmax", "sigmoid" (bias -log S), "ssmax" (s_h log n), ...
  attention_gate: str = "none"  # Gated attention: "none", "headwise" or "elementwise" (ATTENTION_GATES).
  value_residual: str = "none"  # Values mixed with the first layer's: "none", "learned", "shared".
  forget_gate: bool = False  # FoX (Lin et al. 2025): per-head forget gates in causal self-attention.
  differential: bool = False  # Differential attention (Ye et al. 2024): num_heads // 2 heads of 2 maps.
  rope_interleaved: bool = False  # RoPE's / xPos's pairs adjacent (2i, 2i + 1), GPT-J's layout.
  # Multi-head latent attention (DeepSeek-V2; attn/nn/latent.py) in every self-attention layer:
  mla_kv_rank: int | None = None  # C, the key/value latent's width (the cache holds it); None = off.
  mla_q_rank: int | None = None  # The query latent's width under MLA; None = a plain query projection.
  mla_rope_dim: int = 0  # R, MLA's decoupled RoPE dims (even; > 0 exactly when positions='rope').
  norm_kind: str = "layer"  # Block norms: "layer" (LayerNorm) or "rms" (RMSNorm).
  norm_epsilon: float = 1e-6  # Added to the variance in every norm (flax's default; GPT-2: 1e-5).
  max_length: int = 512  # Longest sequence for learned positions.
  tie_output: bool = True  # Output projection shares the embedding table (as in the paper).
  activation: str = "relu"  # Feed-forward nonlinearity: one of ACTIVATIONS ("relu", the paper's).
  ff_glu: bool = False  # Gated feed-forward: wo(act(wi(x)) * wi_up(x)) (SwiGLU under "silu").
  init: str = "default"  # Weight initialisation: one of INIT_SCHEMES ("default" or "gpt2").
  use_bias: bool = True  # Biases in the attention projections, the feed-forward and the layer norms.
  qkv_bias: bool | None = None  # Biases in the query/key/value projections; None follows use_bias.
  out_bias: bool | None = None  # A bias in the attention output projection; None follows use_bias.
  rope_theta: float = 10000.0  # RoPE's base: position / theta^(2i / R) (positions="rope" only).
  embed_norm: bool = False  # A norm (norm_kind) over the embeddings' sum before dropout (BERT).
  dtype: str = "float32"  # Computation dtype; parameters stay float32.
  attention_implementation: str | None = None  # "naive", "flash", "jax"; None chooses per call.
  # Local attention, None = all: encoder self-attention sees keys with |i - j| <= w, and a
  # LanguageModel's causal self-attention keys with 0 <= i - j <= w (Mistral's sliding_window W is
  # w = W - 1). A Transformer's decoder is not windowed.
  attention_window: int | None = None
  pad_id: int | None = 0  # Padding token: masked as a key, ignored by losses; None: no padding token.
  bos_id: int = 1  # Start token the decoder is fed first.
  eos_id: int = 2  # End token; decoding stops a sequence there.

  def __post_init__(self):
    positive = ("vocab_size", "d_model", "max_length")
    for field in positive:
      if getattr(self, field) <= 0:
        raise ValueError(f"{field}: must be positive, got {getattr(self, field)}")
    for field in ("d_ff", "num_classes", "num_encoder_layers", "num_decoder_layers"):
      if getattr(self, field) < 0:
        raise ValueError(f"{field}: must be non-negative, got {getattr(self, field)}")
    if self.feature_buckets == 1 or self.feature_buckets < 0:
      raise ValueError(
        f"feature_buckets: must be 0 (no features) or at least 2, got {self.feature_buckets}"
      )
    if self.char_buckets == 1 or self.char_buckets < 0 or self.char_dim <= 0:
      raise ValueError(
        f"char_buckets: must be 0 (no characters) or at least 2, with a positive char_dim; got "
        f"{self.char_buckets} and {self.char_dim}"
      )
    check_choice("crf", self.crf, CRF_KINDS)
    if self.crf == "iob2" and len(self.class_names) != self.num_classes:
      raise ValueError(
        f"crf: 'iob2' needs the names of the {self.num_classes} classes, got {len(self.class_names)}"
      )
    K = head_dim_for("", self.head_dim_policy, self.num_heads, self.d_model, self.head_dim)
    if self.head_dim_policy == "fixed_model_dim" and self.head_dim not in (None, K):
      raise ValueError(
        f"head_dim: {self.head_dim} contradicts head_dim_policy='fixed_model_dim', which gives "
        f"K = d_model / num_heads = {K}; leave it None or use 'fixed_head_dim'"
      )
    G = self.num_kv_heads
    if G is not None and (G <= 0 or self.num_heads % G):
      raise ValueError(f"num_kv_heads: {G} must be positive and divide num_heads={self.num_heads}")
    for field in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(f"{field}: must be in [0, 1), got {getattr(self, field)}")
    check_module_scale("scale", self.scale)
    check_choice("norm", self.norm, NORM_POSITIONS)
    check_choice("positions", self.positions, POSITION_KINDS)
    check_choice("qk_norm", self.qk_norm, QK_NORMS)
    check_choice("attention_kind", self.attention_kind, ATTENTION_KINDS)
    check_choice("attention_gate", self.attention_gate, ATTENTION_GATES)
    check_choice("value_residual", self.value_residual, VALUE_RESIDUALS)
    for field in ("forget_gate", "differential", "rope_interleaved"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"{field}: must be a bool, got {getattr(self, field)!r}")
    if self.differential and (self.num_heads % 2 or (self.num_kv_heads or 0) % 2):
      raise ValueError(
        "differential: needs an even num_heads and num_kv_heads (two query/key heads per "
        f"differential head), got {self.num_heads} and {self.num_kv_heads}"
      )
    check_choice("norm_kind", self.norm_kind, NORM_KINDS)
    eps = self.norm_epsilon
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0.0 < eps < 1.0:
      raise ValueError(f"norm_epsilon: must be a float in (0, 1), got {eps!r}")
    if isinstance(self.rope_fraction, bool) or not 0.0 < self.rope_fraction <= 1.0:
      raise ValueError(f"rope_fraction: must be in (0, 1], got {self.rope_fraction!r}")
    if self.positions in ("rope", "xpos") and int(self.resolved_head_dim * self.rope_fraction) < 2:
      raise ValueError(
        f"rope_fraction: {self.rope_fraction} of head dim {self.resolved_head_dim} rotates no pair"
      )
    for bidirectional in (True, False):  # An encoder's layers, then a decoder's.
      problem = t5_bucket_problem(self.t5_num_buckets, self.t5_max_distance, bidirectional=bidirectional)
      if problem:
        raise ValueError(f"t5_num_buckets: {problem.replace('max_distance', 't5_max_distance')}")
    cap = self.logit_soft_cap
    if cap is not None and (isinstance(cap, bool) or not 0.0 < cap < float("inf")):
      raise ValueError(f"logit_soft_cap: must be None or a positive float, got {cap!r}")
    if self.attention_sink and self.attention_kind not in ("softmax", "ssmax"):
      raise ValueError(
        f"attention_sink: a sink adds to a softmax's denominator; {self.attention_kind} has none"
      )
    check_choice("activation", self.activation, ACTIVATIONS)
    for field in ("ff_glu", "embed_norm"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"{field}: must be a bool, got {getattr(self, field)!r}")
    for field in ("qkv_bias", "out_bias"):
      if getattr(self, field) is not None and not isinstance(getattr(self, field), bool):
        raise ValueError(
          f"{field}: must be None (follow use_bias) or a bool, got {getattr(self, field)!r}"
        )
    theta = self.rope_theta
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not 0 < theta < float("inf"):
      raise ValueError(f"rope_theta: must be a positive float, got {theta!r}")
    check_choice("init", self.init, INIT_SCHEMES)
    check_choice("dtype", self.dtype, DTYPES)
    if self.attention_implementation is not None:
      check_choice("attention_implementation", self.attention_implementation, IMPLEMENTATIONS)
    self._check_implementation()
    self._check_latent()
    w = self.attention_window
    if w is not None and (isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0):
      raise ValueError(f"attention_window: must be None (full attention) or an int >= 0, got {w!r}")
    if self.positions == "sinusoidal" and self.d_model % 2:
      raise ValueError(f"d_model: sinusoidal positions need an even d_model, got {self.d_model}")
    for field in ("pad_id", "bos_id", "eos_id"):
      value = getattr(self, field)
      if field == "pad_id" and value is None:  # A checkpoint without one (GPT-2, Llama).
        continue
      if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{field}: must be an int, got {value!r}")
      if not 0 <= value < self.vocab_size:
        raise ValueError(
          f"{field}: {getattr(self, field)} is outside the vocabulary [0, {self.vocab_size})"
        )

  def _check_latent(self) -> None:
    """Multi-head latent attention's fields, and what it does not combine with, in one line each."""
    C, Cq, R = self.mla_kv_rank, self.mla_q_rank, self.mla_rope_dim
    for field, value in (("mla_kv_rank", C), ("mla_q_rank", Cq)):
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{field}: must be None or a positive int, got {value!r}")
    if isinstance(R, bool) or not isinstance(R, int) or R < 0 or R % 2:
      raise ValueError(f"mla_rope_dim: must be an even int >= 0, got {R!r}")
    if C is None:
      for field, value in (("mla_q_rank", Cq), ("mla_rope_dim", R)):
        if value:
          raise ValueError(f"{field}: {value!r} needs multi-head latent attention (mla_kv_rank)")
      return
    if (self.positions == "rope") != (R > 0):
      raise ValueError(
        f"mla_rope_dim: {R} with positions={self.positions!r}; MLA's decoupled RoPE key needs "
        "mla_rope_dim > 0 exactly when positions='rope'"
      )
    unsupported = {  # Fields MLA does not combine with: set, each is refused by name.
      "positions": self.positions in ("alibi", "t5_bias"),
      "num_kv_heads": self.num_kv_heads is not None,
      "value_residual": self.value_residual != "none",
      "attention_gate": self.attention_gate != "none",
      "qk_norm": self.qk_norm != "none",
      "logit_soft_cap": self.logit_soft_cap is not None,
      "attention_sink": self.attention_sink,
      "attention_kind": self.attention_kind != "softmax",
      "scale": self.scale == "init_folded",
      "rope_fraction": self.rope_fraction != 1.0,
      "forget_gate": getattr(self, "forget_gate", False),  # Where these fields exist.
      "differential": getattr(self, "differential", False),
      # jax.nn's kernel needs the value head dim K to equal the key's, K + R.
      "attention_implementation": self.attention_implementation == "jax" and R > 0,
    }
    for field, on in unsupported.items():
      if on:
        raise ValueError(
          f"{field}: {getattr(self, field)!r} is not supported with multi-head latent attention "
          "(mla_kv_rank)"
        )

  def _check_implementation(self) -> None:
    """What the chosen attention implementation cannot run (`attn.core.attention.CANNOT_SERVE`),
    refused here naming the field rather than at trace time."""
    impl = self.attention_implementation
    cannot = CANNOT_SERVE.get(impl, frozenset())
    if self.attention_dropout_rate > 0 and "dropout" in cannot:
      raise ValueError(
        f"attention_dropout_rate: {self.attention_dropout_rate} needs the weights, which "
        f"attention_implementation={impl!r} never forms; use 'naive' or None (chooses per call)"
      )
    asked = {  # The option of CANNOT_SERVE, and the field that asks for it.
      "soft_cap": ("logit_soft_cap", self.logit_soft_cap is not None),
      "sink": ("attention_sink", self.attention_sink),
      "sigmoid": ("attention_kind", self.attention_kind == "sigmoid"),
      "softpick": ("attention_kind", self.attention_kind == "softpick"),
      "stick_breaking": ("attention_kind", self.attention_kind == "stick_breaking"),
      "value_head_dim": ("differential", self.differential),  # Values of 2K against keys of K.
    }
    for option, (field, on) in asked.items():
      if on and option in cannot:
        serve = [repr(i) for i in IMPLEMENTATIONS if option not in CANNOT_SERVE[i]]
        raise ValueError(
          f"{field}: {getattr(self, field)!r} is not served by attention_implementation={impl!r}; "
          f"use {', '.join(serve)} or None"
        )

  @property
  def resolved_head_dim(self) -> int:
    return head_dim_for("", self.head_dim_policy, self.num_heads, self.d_model, self.head_dim)

  def kernel_init(self, *, residual_layers: int | None = None):
    """The initialiser of a kernel. `residual_layers`: for a projection that writes into the
    residual stream, the blocks of its stack (under "gpt2" its std is 0.02 / sqrt(2 * that))."""
    if self.init == "default":
      return nn.initializers.lecun_normal()
    if residual_layers is None:
      return nn.initializers.normal(GPT2_INIT_STD)
    return nn.initializers.normal(GPT2_INIT_STD / (2 * max(residual_layers, 1)) ** 0.5)

  @property
  def resolved_qkv_bias(self) -> bool:
    return self.use_bias if self.qkv_bias is None else self.qkv_bias

  @property
  def resolved_out_bias(self) -> bool:
    return self.use_bias if self.out_bias is None else self.out_bias

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)
