"""Pretrained checkpoints in Hugging Face's layout into attn's models: a `ModelConfig` from the
checkpoint's config.json and a parameter tree of `LanguageModel` (or `EncoderTagger`) from its
tensors (numpy arrays by their state-dict names, as `safetensors.numpy.load_file` or a torch
`state_dict()` gives them).

GPT-2 (`GPT2LMHeadModel`, `model_type="gpt2"`): learned positions, pre-LN with LayerNorm's
epsilon from the config, GELU in its tanh form ("gelu_new"), the fused Conv1D query/key/value
projection split into per-head kernels [D, H, K], biases everywhere, the output tied to the token
embedding. Options the models do not implement (another activation, attention scaled by the inverse
layer index, ...) are refused in one line naming the config field; a tensor whose shape does not
match the config, in one line naming the tensor.

GPT-2 has no padding token: its config has `pad_id=None`, so no token is masked as a key (give
`gpt2_config` a `pad_id` to read sequences padded with that token).

Llama, Mistral and Qwen2 (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`; one
converter, `llama_config` / `llama_params`): RoPE (the "rotate half" pairs) with `rope_theta`, pre-norm
RMSNorm with `rms_norm_eps`, the gated feed-forward (gate_proj -> "wi", up_proj -> "wi_up",
down_proj -> "wo"), grouped-query heads (`num_key_value_heads`), `head_dim` when it is not hidden /
heads ("fixed_head_dim"), the output tied or untied (`tie_word_embeddings`; an untied head gets a zero
bias), Llama's `attention_bias` and `mlp_bias`, Qwen2's query/key/value biases (no output or
feed-forward bias), and a sliding window in every layer (Mistral's `sliding_window` W is attn's
`attention_window` W - 1). `pad_id` is `pad_token_id` when it is in the vocabulary, else None. At
inference `attention_dropout` does not matter and is ignored, as are `initializer_range`,
`use_cache` and `pretraining_tp` (the same numbers). Refused, in one line naming the field:
`hidden_act` other than silu/swish and the GELUs ("gelu" is the erf form, attn's "gelu_exact"),
`rope_scaling`, a `rope_parameters` rope_type other than "default", `partial_rotary_factor` other
than 1, a sliding window in some layers only (Qwen2's `max_window_layers`, or `layer_types`), and a
`layer_types` entry other than full or sliding attention.

BERT and RoBERTa (`BertModel`/`BertForTokenClassification`, `RobertaModel`/`...ForTokenClassification`;
`bert_config` / `bert_params`) into `EncoderTagger`: post-LN blocks with biases, learned absolute
positions (RoBERTa's numbered from its pad_token_id + 1, as fairseq numbers them: the table's first
rows are dropped), the embedding LayerNorm (`embed_norm`) with `layer_norm_eps`, `hidden_act` ("gelu"
is the erf form), token types folded into the position table (row 0 added to every position: exact
for one-segment inputs, how a tagger reads a sentence), and the classification head of a
`*ForTokenClassification` checkpoint or a fresh one. Refused: `position_embedding_type` other than
"absolute", `is_decoder`, `add_cross_attention`, another `hidden_act`.

`read_folder` reads a model folder as `save_pretrained` writes it (config.json and model.safetensors,
or shards with their index), through safetensors' numpy API (no torch), and `convert` turns it into
(ModelConfig, params) by the config's `model_type` (`CONVERTERS`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping

import numpy as np

from attn.nn.config import ModelConfig

# GPT-2's "gelu_new" and "gelu_pytorch_tanh" are both the tanh approximation, attn's "gelu".
_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def gpt2_config(hf: Mapping, *, pad_id: int | None = None, dtype: str = "float32") -> ModelConfig:
  """The `ModelConfig` of a GPT-2 checkpoint's config.json (a dict).

  Raises:
    ValueError: naming the config field this model cannot follow.
  """
  if hf.get("model_type", "gpt2") != "gpt2":
    raise ValueError(f"model_type: expected 'gpt2', got {hf.get('model_type')!r}")
  activation = hf.get("activation_function", "gelu_new")
  if activation not in _GPT2_ACTIVATIONS:
    raise ValueError(
      f"activation_function: {activation!r} is not implemented; expected one of {_GPT2_ACTIVATIONS}"
    )
  for field, unsupported in (
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("add_cross_attention", True),
    ("tie_word_embeddings", False),
  ):
    if hf.get(field, not unsupported) == unsupported:
      raise ValueError(f"{field}: {unsupported} is not implemented")
  d_model = int(hf["n_embd"])
  bos = hf.get("bos_token_id")
  eos = hf.get("eos_token_id")
  vocab_size = int(hf["vocab_size"])
  return ModelConfig(
    vocab_size=vocab_size,
    d_model=d_model,
    num_heads=int(hf["n_head"]),
    d_ff=int(hf.get("n_inner") or 4 * d_model),
    num_encoder_layers=0,
    num_decoder_layers=int(hf["n_layer"]),
    dropout_rate=0.0,
    scale="sqrt_d" if hf.get("scale_attn_weights", True) else "none",
    norm="pre",
    positions="learned",
    norm_kind="layer",
    norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
    max_length=int(hf["n_positions"]),
    tie_output=True,
    activation="gelu",
    init="gpt2",
    use_bias=True,
    dtype=dtype,
    pad_id=pad_id,
    bos_id=bos if isinstance(bos, int) and 0 <= bos < vocab_size else 1,
    eos_id=eos if isinstance(eos, int) and 0 <= eos < vocab_size else 2,
  )


def _take(
  tensors: Mapping, name: str, shape: tuple[int, ...], prefixes: tuple[str, ...] = ("", "transformer.")
) -> np.ndarray:
  """The tensor `name` under the first of `prefixes` that has it (GPT2LMHeadModel's names, or
  GPT2Model's, by default), as float32 of `shape`."""
  for prefix in prefixes:
    if prefix + name in tensors:
      x = np.asarray(tensors[prefix + name], np.float32)
      if x.shape != shape:
        raise ValueError(f"{prefix + name}: shape {x.shape}, expected {shape} from the config")
      return x
  raise ValueError(f"{prefixes[-1]}{name}: missing from the checkpoint")


def gpt2_params(tensors: Mapping, config: ModelConfig) -> dict:
  """`LanguageModel(config)`'s parameters from a GPT-2 state dict ({name: array}).

  Raises:
    ValueError: naming a missing tensor or one whose shape does not match `config`.
  """
  D, H, V, F = config.d_model, config.num_heads, config.vocab_size, config.d_ff
  K = D // H

  def norm(name):
    return {
      "scale": _take(tensors, f"{name}.weight", (D,)),
      "bias": _take(tensors, f"{name}.bias", (D,)),
    }

  decoder = {"final_norm": norm("ln_f")}
  for i in range(config.num_decoder_layers):
    h = f"h.{i}"
    qkv_kernel = _take(tensors, f"{h}.attn.c_attn.weight", (D, 3 * D))  # Conv1D: x @ W + b.
    qkv_bias = _take(tensors, f"{h}.attn.c_attn.bias", (3 * D,))
    attention = {
      name: {
        "kernel": qkv_kernel[:, j * D : (j + 1) * D].reshape(D, H, K),
        "bias": qkv_bias[j * D : (j + 1) * D].reshape(H, K),
      }
      for j, name in enumerate(("query", "key", "value"))
    }
    attention["out"] = {
      "kernel": _take(tensors, f"{h}.attn.c_proj.weight", (D, D)).reshape(H, K, D),
      "bias": _take(tensors, f"{h}.attn.c_proj.bias", (D,)),
    }
    decoder[f"layer_{i}"] = {
      "self_attention_norm": norm(f"{h}.ln_1"),
      "self_attention": attention,
      "feed_forward_norm": norm(f"{h}.ln_2"),
      "feed_forward": {
        "wi": {
          "kernel": _take(tensors, f"{h}.mlp.c_fc.weight", (D, F)),
          "bias": _take(tensors, f"{h}.mlp.c_fc.bias", (F,)),
        },
        "wo": {
          "kernel": _take(tensors, f"{h}.mlp.c_proj.weight", (F, D)),
          "bias": _take(tensors, f"{h}.mlp.c_proj.bias", (D,)),
        },
      },
    }
  embedder = {
    "tokens": {"embedding": _take(tensors, "wte.weight", (V, D))},
    "positions": {"embedding": _take(tensors, "wpe.weight", (config.max_length, D))},
  }
  return {"decoder": decoder, "embedder": embedder}


# --------------------------------------------------------------------------------------------------
# Llama, Mistral, Qwen2.
# --------------------------------------------------------------------------------------------------

LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2")
# Hugging Face's hidden_act -> attn's activation ("gelu" is Hugging Face's erf GELU).
_LLAMA_ACTIVATIONS = {
  "silu": "silu",
  "swish": "silu",
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
}
_FROM_CONFIG = "from config.json"


def _in_vocab(token, vocab_size: int) -> int | None:
  """A token id of config.json (an int, or a list whose first id counts) if it is in the vocabulary."""
  if isinstance(token, list) and token:
    token = token[0]
  if isinstance(token, int) and not isinstance(token, bool) and 0 <= token < vocab_size:
    return token
  return None


def _llama_window(hf: Mapping, num_layers: int) -> int | None:
  """attn's causal window w (keys i - j <= w) from the sliding-window fields, or None (all keys).

  Hugging Face's `sliding_window` W lets query i see key j iff i - j < W, so w = W - 1. Mistral
  slides in every layer when `sliding_window` is set; Qwen2 only under `use_sliding_window`, in the
  layers from `max_window_layers` on (its `layer_types`), which must then be all of them.
  """
  layer_types = hf.get("layer_types")
  if hf["model_type"] == "qwen2":
    if not hf.get("use_sliding_window", False):
      return None
    if layer_types is None:  # An older config.json: derived as Qwen2Config derives it.
      first = int(hf.get("max_window_layers", 28))
      layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
  if layer_types is not None:
    unknown = sorted({t for t in layer_types if t not in ("sliding_attention", "full_attention")})
    if unknown:
      raise ValueError(f"layer_types: {unknown[0]!r} is not implemented")
    sliding = sum(t == "sliding_attention" for t in layer_types)
    if 0 < sliding < len(layer_types):
      field = "max_window_layers" if hf["model_type"] == "qwen2" else "layer_types"
      raise ValueError(
        f"{field}: sliding-window attention in {sliding} of {len(layer_types)} layers only is not "
        "implemented (all or none)"
      )
    if not sliding:
      return None
  window = hf.get("sliding_window")
  if window is None:
    return None
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"sliding_window: must be a positive int or null, got {window!r}")
  return window - 1


def llama_config(
  hf: Mapping, *, pad_id: int | str | None = _FROM_CONFIG, dtype: str = "float32"
) -> ModelConfig:
  """The `ModelConfig` of a Llama, Mistral or Qwen2 checkpoint's config.json (a dict). `pad_id`:
  the padding token; by default config.json's `pad_token_id` when it is in the vocabulary, else None.

  Raises:
    ValueError: naming the config field this model cannot follow.
  """
  model_type = hf.get("model_type")
  if model_type not in LLAMA_MODEL_TYPES:
    raise ValueError(f"model_type: expected one of {LLAMA_MODEL_TYPES}, got {model_type!r}")
  act = hf.get("hidden_act", "silu")
  if act not in _LLAMA_ACTIVATIONS:
    raise ValueError(
      f"hidden_act: {act!r} is not implemented; expected one of {tuple(_LLAMA_ACTIVATIONS)}"
    )
  if hf.get("rope_scaling") is not None:
    raise ValueError(f"rope_scaling: {hf['rope_scaling']!r} is not implemented (plain RoPE only)")
  rope = hf.get("rope_parameters") or {}
  if not isinstance(rope, Mapping):
    raise ValueError(f"rope_parameters: expected an object, got {rope!r}")
  if rope.get("rope_type", "default") != "default":
    raise ValueError(f"rope_parameters: rope_type {rope['rope_type']!r} is not implemented")
  for field in ("partial_rotary_factor",):
    value = rope.get(field, hf.get(field))
    if value not in (None, 1, 1.0):
      raise ValueError(f"{field}: {value!r} is not implemented")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  d_model, H = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  G = int(hf.get("num_key_value_heads") or H)
  head_dim = int(hf.get("head_dim") or d_model // H)
  fixed = d_model % H == 0 and head_dim == d_model // H
  layers = int(hf["num_hidden_layers"])
  vocab_size = int(hf["vocab_size"])
  qwen2 = model_type == "qwen2"
  attention_bias = bool(hf.get("attention_bias", False))
  return ModelConfig(
    vocab_size=vocab_size,
    d_model=d_model,
    num_heads=H,
    head_dim_policy="fixed_model_dim" if fixed else "fixed_head_dim",
    head_dim=None if fixed else head_dim,
    num_kv_heads=None if G == H else G,
    d_ff=int(hf["intermediate_size"]),
    num_encoder_layers=0,
    num_decoder_layers=layers,
    dropout_rate=0.0,
    scale="sqrt_d",
    norm="pre",
    positions="rope",
    rope_theta=float(theta),
    norm_kind="rms",
    norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
    max_length=int(hf.get("max_position_embeddings", 2048)),
    tie_output=bool(hf.get("tie_word_embeddings", False)),
    activation=_LLAMA_ACTIVATIONS[act],
    ff_glu=True,
    init="gpt2",
    use_bias=bool(hf.get("mlp_bias", False)),
    qkv_bias=True if qwen2 else attention_bias,
    out_bias=False if qwen2 else attention_bias,
    attention_window=_llama_window(hf, layers),
    dtype=dtype,
    pad_id=_in_vocab(hf.get("pad_token_id"), vocab_size) if pad_id == _FROM_CONFIG else pad_id,
    bos_id=_in_vocab(hf.get("bos_token_id"), vocab_size) or 1,
    eos_id=_in_vocab(hf.get("eos_token_id"), vocab_size) or 2,
  )


def llama_params(tensors: Mapping, config: ModelConfig) -> dict:
  """`LanguageModel(config)`'s parameters from a Llama, Mistral or Qwen2 state dict ({name: array}:
  LlamaForCausalLM's names, or LlamaModel's without the "model." prefix).

  Raises:
    ValueError: naming a missing tensor or one whose shape does not match `config`.
  """
  D, H, V, F = config.d_model, config.num_heads, config.vocab_size, config.d_ff
  K = config.resolved_head_dim
  G = config.num_kv_heads or H

  def take(name, shape):
    return _take(tensors, name, shape, prefixes=("", "model."))

  def into_heads(name, heads, bias):  # A torch Linear [heads * K, D] as a kernel [D, heads, K].
    out = {"kernel": take(f"{name}.weight", (heads * K, D)).T.reshape(D, heads, K)}
    if bias:
      out["bias"] = take(f"{name}.bias", (heads * K,)).reshape(heads, K)
    return out

  def out_of_heads(name, bias):  # A torch Linear [D, H * K] as a kernel [H, K, D].
    out = {"kernel": take(f"{name}.weight", (D, H * K)).T.reshape(H, K, D)}
    if bias:
      out["bias"] = take(f"{name}.bias", (D,))
    return out

  def dense(name, n_in, n_out, bias):  # A torch Linear [n_out, n_in] as a kernel [n_in, n_out].
    out = {"kernel": take(f"{name}.weight", (n_out, n_in)).T}
    if bias:
      out["bias"] = take(f"{name}.bias", (n_out,))
    return out

  qkv_bias, out_bias, ff_bias = config.resolved_qkv_bias, config.resolved_out_bias, config.use_bias
  decoder = {"final_norm": {"scale": take("norm.weight", (D,))}}
  for i in range(config.num_decoder_layers):
    h = f"layers.{i}"
    decoder[f"layer_{i}"] = {
      "self_attention_norm": {"scale": take(f"{h}.input_layernorm.weight", (D,))},
      "self_attention": {
        "query": into_heads(f"{h}.self_attn.q_proj", H, qkv_bias),
        "key": into_heads(f"{h}.self_attn.k_proj", G, qkv_bias),
        "value": into_heads(f"{h}.self_attn.v_proj", G, qkv_bias),
        "out": out_of_heads(f"{h}.self_attn.o_proj", out_bias),
      },
      "feed_forward_norm": {"scale": take(f"{h}.post_attention_layernorm.weight", (D,))},
      "feed_forward": {
        "wi": dense(f"{h}.mlp.gate_proj", D, F, ff_bias),
        "wi_up": dense(f"{h}.mlp.up_proj", D, F, ff_bias),
        "wo": dense(f"{h}.mlp.down_proj", F, D, ff_bias),
      },
    }
  params = {
    "decoder": decoder,
    "embedder": {"tokens": {"embedding": take("embed_tokens.weight", (V, D))}},
  }
  if not config.tie_output:
    kernel = _take(tensors, "lm_head.weight", (V, D), prefixes=("",)).T
    params["head"] = {"logits": {"kernel": kernel, "bias": np.zeros((V,), np.float32)}}
  return params


# --------------------------------------------------------------------------------------------------
# BERT and RoBERTa encoders into EncoderTagger.
# --------------------------------------------------------------------------------------------------

_TYPES = "embeddings.token_type_embeddings.weight"
# hidden_act -> attn's activation: BERT's "gelu" is the exact (erf) form.
_BERT_ACTIVATIONS = {
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "relu": "relu",
}


def bert_config(hf: Mapping, *, dtype: str = "float32") -> ModelConfig:
  """The `ModelConfig` of an `EncoderTagger` from a BERT or RoBERTa checkpoint's config.json: post-LN
  blocks with biases, learned absolute positions, a LayerNorm on the embeddings (`embed_norm`), its
  epsilon, the activation of `hidden_act`, and `num_classes` from its labels (a fresh classification
  head when the checkpoint has none; at least 2).

  Raises:
    ValueError: naming the config field this model cannot follow.
  """
  model_type = hf.get("model_type", "bert")
  if model_type not in ("bert", "roberta"):
    raise ValueError(f"model_type: expected 'bert' or 'roberta', got {model_type!r}")
  activation = hf.get("hidden_act", "gelu")
  if activation not in _BERT_ACTIVATIONS:
    raise ValueError(
      f"hidden_act: {activation!r} is not implemented; expected one of {tuple(_BERT_ACTIVATIONS)}"
    )
  kind = hf.get("position_embedding_type", "absolute")
  if kind != "absolute":
    raise ValueError(f"position_embedding_type: {kind!r} is not implemented; expected 'absolute'")
  for field in ("is_decoder", "add_cross_attention"):
    if hf.get(field, False):
      raise ValueError(f"{field}: True is not implemented (an encoder is converted)")
  vocab_size = int(hf["vocab_size"])
  pad = hf.get("pad_token_id")
  pad_id = pad if isinstance(pad, int) and 0 <= pad < vocab_size else None
  # RoBERTa numbers positions from pad_id + 1 (fairseq's convention): its first rows are never used.
  offset = pad_id + 1 if model_type == "roberta" and pad_id is not None else 0
  labels = hf.get("id2label") or {}
  num_classes = max(int(hf.get("num_labels", len(labels)) or len(labels)), 2)
  names = tuple(str(labels.get(i, labels.get(str(i), f"LABEL_{i}"))) for i in range(num_classes))
  return ModelConfig(
    vocab_size=vocab_size,
    num_classes=num_classes,
    class_names=names,
    d_model=int(hf["hidden_size"]),
    num_heads=int(hf["num_attention_heads"]),
    d_ff=int(hf["intermediate_size"]),
    num_encoder_layers=int(hf["num_hidden_layers"]),
    num_decoder_layers=0,
    dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
    attention_dropout_rate=float(hf.get("attention_probs_dropout_prob", 0.1)),
    norm="post",
    positions="learned",
    norm_kind="layer",
    norm_epsilon=float(hf.get("layer_norm_eps", 1e-12)),
    embed_norm=True,
    max_length=int(hf["max_position_embeddings"]) - offset,
    activation=_BERT_ACTIVATIONS[activation],
    init="gpt2",
    use_bias=True,
    dtype=dtype,
    pad_id=pad_id,
    bos_id=0,
    eos_id=0,
  )


def bert_params(
  tensors: Mapping, config: ModelConfig, *, model_type: str = "bert", seed: int = 0
) -> dict:
  """`EncoderTagger(config)`'s parameters from a BERT or RoBERTa state dict. Token types are folded
  into the position table (row 0 added to every position): exact for single-segment inputs, which is
  how a tagger reads a sentence. The classifier is the checkpoint's (`*ForTokenClassification`) when
  it has one of `config.num_classes` rows, else fresh: normal(0.02) weights (BERT's initialiser, from
  `seed`), zero bias.

  Raises:
    ValueError: naming a missing tensor or one whose shape does not match `config`.
  """
  D, H, V, F = config.d_model, config.num_heads, config.vocab_size, config.d_ff
  K = D // H
  prefixes = ("", f"{model_type}.")  # BertModel's names, or *ForTokenClassification's.
  offset = config.pad_id + 1 if model_type == "roberta" and config.pad_id is not None else 0

  def take(name, shape):
    return _take(tensors, name, shape, prefixes)

  def linear(name, d_in, d_out):  # torch's Linear: y = x @ W.T + b, W [out, in].
    return take(f"{name}.weight", (d_out, d_in)).T, take(f"{name}.bias", (d_out,))

  def norm(name):
    return {"scale": take(f"{name}.weight", (D,)), "bias": take(f"{name}.bias", (D,))}

  encoder = {}
  for i in range(config.num_encoder_layers):
    layer = f"encoder.layer.{i}"
    attention = {}
    for part in ("query", "key", "value"):
      kernel, bias = linear(f"{layer}.attention.self.{part}", D, D)
      attention[part] = {"kernel": kernel.reshape(D, H, K), "bias": bias.reshape(H, K)}
    kernel, bias = linear(f"{layer}.attention.output.dense", D, D)
    attention["out"] = {"kernel": kernel.reshape(H, K, D), "bias": bias}
    wi, wi_bias = linear(f"{layer}.intermediate.dense", D, F)
    wo, wo_bias = linear(f"{layer}.output.dense", F, D)
    encoder[f"layer_{i}"] = {
      "self_attention": attention,
      "self_attention_norm": norm(f"{layer}.attention.output.LayerNorm"),
      "feed_forward": {"wi": {"kernel": wi, "bias": wi_bias}, "wo": {"kernel": wo, "bias": wo_bias}},
      "feed_forward_norm": norm(f"{layer}.output.LayerNorm"),
    }
  positions = take("embeddings.position_embeddings.weight", (config.max_length + offset, D))[offset:]
  types_name = next((p + _TYPES for p in prefixes if p + _TYPES in tensors), None)
  if types_name is None:
    raise ValueError(f"{prefixes[-1]}{_TYPES}: missing from the checkpoint")
  types = np.asarray(tensors[types_name], np.float32)
  if types.ndim != 2 or types.shape[1] != D:
    raise ValueError(
      f"{types_name}: shape {types.shape}, expected (type_vocab_size, {D}) from the config"
    )
  embedder = {
    "tokens": {"embedding": take("embeddings.word_embeddings.weight", (V, D))},
    "positions": {"embedding": positions + types[0]},
    "norm": norm("embeddings.LayerNorm"),
  }
  C = config.num_classes
  if "classifier.weight" in tensors and np.shape(tensors["classifier.weight"]) == (C, D):
    kernel, bias = linear("classifier", D, C)
  else:
    kernel = np.random.default_rng(seed).normal(0.0, 0.02, (D, C)).astype(np.float32)
    bias = np.zeros((C,), np.float32)
  return {"embedder": embedder, "encoder": encoder, "classifier": {"kernel": kernel, "bias": bias}}


# --------------------------------------------------------------------------------------------------
# Folders and dispatch.
# --------------------------------------------------------------------------------------------------

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
  """A model folder this module cannot read: one line naming the file, field or tensor."""


def read_folder(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json as a dict, {tensor name: numpy array}) of a Hugging Face model folder: one
  `model.safetensors`, or the shards its `model.safetensors.index.json` lists.

  Raises:
    CheckpointError: naming the missing or unreadable file.
  """
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  if not os.path.isdir(folder):
    raise CheckpointError(f"{folder}: not a folder")
  config_path = os.path.join(folder, CONFIG_FILE)
  try:
    with open(config_path, encoding="utf-8") as f:
      hf_config = json.load(f)
  except FileNotFoundError:
    raise CheckpointError(
      f"{config_path}: missing (a model folder as save_pretrained writes it)"
    ) from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{config_path}: not readable JSON ({e})") from None
  if not isinstance(hf_config, dict):
    raise CheckpointError(f"{config_path}: expected a JSON object")
  index_path = os.path.join(folder, WEIGHTS_INDEX_FILE)
  if os.path.exists(index_path):
    try:
      with open(index_path, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
      raise CheckpointError(f"{index_path}: not an index with a weight_map ({e})") from None
  elif os.path.exists(os.path.join(folder, WEIGHTS_FILE)):
    shards = [WEIGHTS_FILE]
  else:
    found = sorted(
      n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack"))
    )
    hint = f" (found {', '.join(found)}: save it with safe_serialization=True)" if found else ""
    raise CheckpointError(f"{os.path.join(folder, WEIGHTS_FILE)}: missing{hint}")
  tensors: dict[str, np.ndarray] = {}
  for shard in shards:
    path = os.path.join(folder, shard)
    try:
      tensors.update(load_file(path))
    except FileNotFoundError:
      raise CheckpointError(f"{path}: missing (listed in {WEIGHTS_INDEX_FILE})") from None
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
  return hf_config, tensors


# model_type -> (config.json -> ModelConfig, (tensors, config) -> params).
CONVERTERS: dict[str, tuple[Callable[..., ModelConfig], Callable[[Mapping, ModelConfig], dict]]] = {
  "gpt2": (gpt2_config, gpt2_params),
  **{model_type: (llama_config, llama_params) for model_type in LLAMA_MODEL_TYPES},
  "bert": (bert_config, bert_params),
  "roberta": (bert_config, functools.partial(bert_params, model_type="roberta")),
}


def convert_config(hf_config: Mapping, *, dtype: str = "float32") -> ModelConfig:
  """The `ModelConfig` of a checkpoint's config.json (a dict), by its `model_type`, without its
  tensors. A tagger's (BERT, RoBERTa) has `num_classes` > 0 and no decoder; a language model's has
  decoder layers only.

  Raises:
    CheckpointError: naming the unsupported model type or config field.
  """
  model_type = hf_config.get("model_type")
  if model_type not in CONVERTERS:
    raise CheckpointError(
      f"model_type: {model_type!r} is not supported; supported: {', '.join(sorted(CONVERTERS))}"
    )
  try:
    return CONVERTERS[model_type][0](hf_config, dtype=dtype)
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"config.json: field {e} missing or of the wrong type") from None
  except ValueError as e:
    raise CheckpointError(str(e)) from None


def convert(hf_config: Mapping, tensors: Mapping, *, dtype: str = "float32") -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) of a checkpoint, by its config's `model_type`.

  Raises:
    CheckpointError: naming the unsupported model type, config field or mismatched tensor.
  """
  config = convert_config(hf_config, dtype=dtype)
  try:
    return config, CONVERTERS[hf_config["model_type"]][1](tensors, config)
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"config.json: field {e} missing or of the wrong type") from None
  except ValueError as e:
    raise CheckpointError(str(e)) from None
