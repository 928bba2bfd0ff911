"""attn's language models out to Hugging Face's layout: the reverse of `attn.nn.pretrained`.

`to_hf(config, params)` gives (config.json as a dict, {state-dict name: numpy array}) and
`write_folder` writes them as `save_pretrained` would (config.json and model.safetensors, through
safetensors' numpy API, no torch), so that `transformers.AutoModelForCausalLM.from_pretrained(folder)`
gives the same logits as `LanguageModel(config).apply({"params": params}, tokens)`.

GPT-2 (`GPT2LMHeadModel`, `model_type="gpt2"`, the default): a `LanguageModel` of pre-LN blocks with
learned positions, LayerNorm, GELU in its tanh form ("gelu_new"), the output tied to the token
embedding and K = D / H.
What GPT-2 cannot express is refused in one ValueError line naming the `ModelConfig` field. What it
can express another way is rewritten exactly: a model without biases (`use_bias=False`) gets zero
biases; a logit scale other than 1/sqrt(K) ("none", "d", a float, "learned", "init_folded") is folded
into the query projection, with `scale_attn_weights=False`; head gates (`attn.nn.heads`, e.g. heads
pruned by a gate of 0) are folded into the out-projection's rows.

Llama (`LlamaForCausalLM`, `model_type="llama"`): pre-norm RMSNorm blocks with RoPE over the whole
head (`rope_theta`), the gated feed-forward (`ff_glu`: gate_proj = "wi", up_proj = "wi_up",
down_proj = "wo") under SiLU or either GELU, grouped-query attention, tied or untied output (an
untied head's bias must be zero: lm_head has none). Biases are all or none per group in Llama
(`attention_bias`: q, k, v and o; `mlp_bias`), so a missing one beside present ones is written as
zeros; the scale is folded as for GPT-2 (Llama always scales by 1/sqrt(K)), and init="default"'s
sqrt(d_model) at lookup into an untied token table. `pretrained.llama_params` inverted.

Not carried over, because they do not change the logits of an unpadded sequence: the dropout rates
(written as GPT-2's `*_pdrop` or Llama's `attention_dropout`, for training), `init` (but for the
folds above), `dtype` (tensors are float32) and the padding token: attn masks `pad_id` as a key by
itself, transformers only through the `attention_mask` its caller passes (written as
`pad_token_id`). `pretrained.convert` of the written folder gives the same parameters, and the same
config up to those fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import numpy as np

from attn.core.scaling import resolve_scale
from attn.nn.config import ModelConfig
from attn.nn.pretrained import CONFIG_FILE, WEIGHTS_FILE

# (field, the value GPT-2 needs, what GPT-2 does instead): every config field that changes the
# function of a LanguageModel and that GPT-2 has no way to express otherwise.
_GPT2_FIXED = (
  ("norm", "pre", "GPT-2 normalises before each sublayer"),
  ("positions", "learned", "GPT-2 adds learned absolute positions"),
  ("norm_kind", "layer", "GPT-2's norms are LayerNorm"),
  ("activation", "gelu", "GPT-2's feed-forward is GELU (tanh form)"),
  ("tie_output", True, "GPT-2's output is tied to the token embedding"),
  ("init", "gpt2", "init='default' scales token embeddings by sqrt(d_model), GPT-2 does not"),
  ("qk_norm", "none", "GPT-2 has no query/key norm"),
  ("logit_soft_cap", None, "GPT-2 has no logit soft cap"),
  ("attention_sink", False, "GPT-2 has no attention sink"),
  ("attention_kind", "softmax", "GPT-2's attention is a softmax"),
  ("attention_window", None, "GPT-2 attends to every earlier key"),
  ("ff_glu", False, "GPT-2's feed-forward is not gated"),
  ("embed_norm", False, "GPT-2 has no norm over the embeddings"),
)


# The ModelConfig fields an exporter reads (turns into the other layout's config or tensors) or that
# cannot change a language model's function once the fixed fields above hold (a tagger's or an
# encoder's fields, dropout, ids, dtype). Every other field must keep its default: so a field added
# to ModelConfig later (a new attention variant) is refused by name until an exporter learns it,
# never dropped in silence.
_READ_OR_INERT = frozenset({
  "vocab_size", "num_classes", "feature_buckets", "char_buckets", "char_dim", "crf", "class_names",
  "d_model", "num_heads", "head_dim_policy", "head_dim", "num_kv_heads", "d_ff",
  "num_encoder_layers", "num_decoder_layers", "dropout_rate", "attention_dropout_rate", "scale",
  "rope_fraction", "t5_num_buckets", "t5_max_distance", "norm_epsilon", "max_length", "use_bias",
  "qkv_bias", "out_bias", "rope_theta", "dtype", "attention_implementation", "pad_id", "bos_id",
  "eos_id", "init", "tie_output", "activation",
})  # fmt: skip


def _check_unknown_fields(config: ModelConfig, fixed, target: str) -> None:
  """Raises ValueError naming the first field that is neither fixed, read nor inert and differs
  from its default."""
  known = _READ_OR_INERT | {field for field, _, _ in fixed}
  for field in dataclasses.fields(ModelConfig):
    if field.name in known:
      continue
    if getattr(config, field.name) != field.default:
      raise ValueError(
        f"{field.name}: {getattr(config, field.name)!r} cannot be exported to {target} (it has no "
        f"such option; needs {field.default!r})"
      )


def _refuse(config: ModelConfig, field: str, why: str) -> None:
  raise ValueError(f"{field}: {getattr(config, field)!r} cannot be exported to GPT-2 ({why})")


def check_gpt2(config: ModelConfig) -> None:
  """Raises ValueError, naming the `ModelConfig` field, when GPT-2 cannot express `config`."""
  for field, needed, why in _GPT2_FIXED:
    if getattr(config, field, needed) != needed:  # (A field this ModelConfig lacks cannot differ.)
      _refuse(config, field, f"{why}; needs {needed!r}")
  _check_unknown_fields(config, _GPT2_FIXED, "GPT-2")
  H = config.num_heads
  if config.num_kv_heads not in (None, H):
    _refuse(config, "num_kv_heads", "GPT-2 has as many key/value heads as query heads")
  if config.resolved_head_dim * H != config.d_model:
    _refuse(config, "head_dim", "GPT-2's heads split d_model: head_dim = d_model / num_heads")
  if config.d_ff == 0:
    _refuse(config, "d_ff", "every GPT-2 block has a feed-forward sublayer")
  if config.num_decoder_layers == 0:
    _refuse(config, "num_decoder_layers", "a GPT-2 has at least one block")


def _query_multiplier(config: ModelConfig, attention: Mapping) -> np.ndarray | None:
  """The per-head multiplier [H] to fold into the queries so that transformers' scale (1/sqrt(K)
  when `scale_attn_weights`, else 1) gives ours; None when nothing is folded."""
  H, K = config.num_heads, config.resolved_head_dim
  scale = config.scale
  if scale in ("sqrt_d", "none", "init_folded"):  # No parameter: transformers' own choices.
    return None
  if scale == "learned":
    return np.exp(np.asarray(attention["log_scale"], np.float64))
  return np.full((H,), resolve_scale(scale, K))  # "d" or a float.


def _gate(gates: Mapping | None, layer: str, H: int) -> np.ndarray | None:
  if gates is None:
    return None
  try:
    gate = np.asarray(gates["decoder"][layer]["self_attention"]["gate"], np.float64)
  except (KeyError, TypeError):
    raise ValueError(
      f"gates: no decoder.{layer}.self_attention.gate (attn.nn.heads.head_gates)"
    ) from None
  if gate.shape != (H,):
    raise ValueError(
      f"gates: decoder.{layer}.self_attention.gate has shape {gate.shape}, expected {(H,)}"
    )
  return gate


def _f32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def gpt2_tensors(config: ModelConfig, params: Mapping, gates: Mapping | None = None) -> dict:
  """GPT2LMHeadModel's state dict ({name: float32 array}) of `LanguageModel(config)`'s params
  (`pretrained.gpt2_params` inverted). The tied `lm_head.weight` is left out, as save_pretrained
  leaves it out.

  Raises:
    ValueError: naming the config field GPT-2 cannot express, or a gates entry that is missing.
  """
  check_gpt2(config)
  D, H, F = config.d_model, config.num_heads, config.d_ff
  K = D // H
  decoder = params["decoder"]

  def bias(layer: Mapping, shape) -> np.ndarray:
    return _f32(layer["bias"]) if "bias" in layer else np.zeros(shape, np.float32)

  def norm(name: str, layer: Mapping) -> dict:
    return {f"{name}.weight": _f32(layer["scale"]), f"{name}.bias": bias(layer, (D,))}

  out = {"transformer.wte.weight": _f32(params["embedder"]["tokens"]["embedding"])}
  out["transformer.wpe.weight"] = _f32(params["embedder"]["positions"]["embedding"])
  for i in range(config.num_decoder_layers):
    block, h = decoder[f"layer_{i}"], f"transformer.h.{i}"
    attention = block["self_attention"]
    kernels = [np.asarray(attention[n]["kernel"], np.float64) for n in ("query", "key", "value")]
    biases = [np.asarray(bias(attention[n], (H, K)), np.float64) for n in ("query", "key", "value")]
    multiplier = _query_multiplier(config, attention)
    if multiplier is not None:
      kernels[0] = kernels[0] * multiplier[:, None]
      biases[0] = biases[0] * multiplier[:, None]
    out_kernel = np.asarray(attention["out"]["kernel"], np.float64)  # [H, K, D]
    gate = _gate(gates, f"layer_{i}", H)
    if gate is not None:
      out_kernel = out_kernel * gate[:, None, None]
    out.update(norm(f"{h}.ln_1", block["self_attention_norm"]))
    out[f"{h}.attn.c_attn.weight"] = _f32(np.concatenate([k.reshape(D, D) for k in kernels], 1))
    out[f"{h}.attn.c_attn.bias"] = _f32(np.concatenate([b.reshape(D) for b in biases]))
    out[f"{h}.attn.c_proj.weight"] = _f32(out_kernel.reshape(D, D))
    out[f"{h}.attn.c_proj.bias"] = bias(attention["out"], (D,))
    out.update(norm(f"{h}.ln_2", block["feed_forward_norm"]))
    ff = block["feed_forward"]
    out[f"{h}.mlp.c_fc.weight"] = _f32(ff["wi"]["kernel"])
    out[f"{h}.mlp.c_fc.bias"] = bias(ff["wi"], (F,))
    out[f"{h}.mlp.c_proj.weight"] = _f32(ff["wo"]["kernel"])
    out[f"{h}.mlp.c_proj.bias"] = bias(ff["wo"], (D,))
  out.update(norm("transformer.ln_f", decoder["final_norm"]))
  return out


def gpt2_hf_config(config: ModelConfig) -> dict:
  """GPT2Config's fields (config.json) of `config`.

  Raises:
    ValueError: naming the config field GPT-2 cannot express.
  """
  check_gpt2(config)
  return {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "vocab_size": config.vocab_size,
    "n_positions": config.max_length,
    "n_embd": config.d_model,
    "n_layer": config.num_decoder_layers,
    "n_head": config.num_heads,
    "n_inner": config.d_ff,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": float(config.norm_epsilon),
    "scale_attn_weights": config.scale == "sqrt_d",  # Any other scale is folded into the queries.
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "tie_word_embeddings": True,
    "embd_pdrop": float(config.dropout_rate),
    "resid_pdrop": float(config.dropout_rate),
    "attn_pdrop": float(config.attention_dropout_rate),
    "initializer_range": 0.02,
    "bos_token_id": config.bos_id,
    "eos_token_id": config.eos_id,
    "pad_token_id": config.pad_id,
    "use_cache": True,
  }


def to_hf(
  config: ModelConfig, params: Mapping, *, gates: Mapping | None = None, model_type: str = "gpt2"
) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json as a dict, {state-dict name: float32 array}) of `LanguageModel(config)` with
  `params`, in the layout of `model_type`'s Hugging Face model. `gates`: head gates
  ("head_gates" collection, `attn.nn.heads`) folded into the out-projections; None: all open.

  Raises:
    ValueError: one line naming the `ModelConfig` field the target cannot express (or the model type).
  """
  if model_type not in EXPORTERS:
    raise ValueError(f"model_type: {model_type!r} is not exported; supported: {', '.join(EXPORTERS)}")
  if "params" in params and "decoder" not in params:  # The variables, {"params": ...}.
    params = params["params"]
  return EXPORTERS[model_type](config, params, gates)


def write_folder(folder: str, hf_config: Mapping, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes config.json and model.safetensors into `folder` (made if missing), as save_pretrained
  writes a model that fits one file."""
  from safetensors.numpy import save_file

  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    f.write("\n")
  arrays = {name: np.ascontiguousarray(x) for name, x in tensors.items()}
  save_file(arrays, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------
# Llama.
# --------------------------------------------------------------------------------------------------

# attn's activation -> Llama's hidden_act (its MLP is act(gate_proj(x)) * up_proj(x)).
_LLAMA_ACTIVATIONS = {"silu": "silu", "gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu"}
_LLAMA_FIXED = (
  ("norm", "pre", "Llama normalises before each sublayer"),
  ("positions", "rope", "Llama rotates queries and keys (RoPE)"),
  ("rope_fraction", 1.0, "Llama rotates the whole head"),
  ("norm_kind", "rms", "Llama's norms are RMSNorm"),
  ("ff_glu", True, "Llama's feed-forward is gated: down(act(gate(x)) * up(x))"),
  ("qk_norm", "none", "Llama has no query/key norm"),
  ("logit_soft_cap", None, "Llama has no logit soft cap"),
  ("attention_sink", False, "Llama has no attention sink"),
  ("attention_kind", "softmax", "Llama's attention is a softmax"),
  ("attention_window", None, "Llama attends to every earlier key"),
  ("embed_norm", False, "Llama has no norm over the embeddings"),
)


def check_llama(config: ModelConfig) -> None:
  """Raises ValueError, naming the `ModelConfig` field, when Llama cannot express `config`."""
  for field, needed, why in _LLAMA_FIXED:
    if getattr(config, field, not needed) != needed:  # A field this ModelConfig lacks: refused.
      raise ValueError(
        f"{field}: {getattr(config, field, None)!r} cannot be exported to Llama ({why}; needs "
        f"{needed!r})"
      )
  _check_unknown_fields(config, _LLAMA_FIXED, "Llama")
  if config.activation not in _LLAMA_ACTIVATIONS:
    raise ValueError(
      f"activation: {config.activation!r} cannot be exported to Llama (its hidden_act has no "
      f"gated {config.activation}; one of {tuple(_LLAMA_ACTIVATIONS)})"
    )
  if config.init != "gpt2" and config.tie_output:
    raise ValueError(
      "init: 'default' cannot be exported to Llama with tie_output=True (tokens are scaled by "
      "sqrt(d_model) at lookup, the tied output is not; Llama scales neither)"
    )
  if config.d_ff == 0:
    raise ValueError("d_ff: 0 cannot be exported to Llama (every block has a feed-forward sublayer)")
  if config.num_decoder_layers == 0:
    raise ValueError("num_decoder_layers: 0 cannot be exported to Llama (at least one block)")


def llama_hf_config(config: ModelConfig) -> dict:
  """LlamaConfig's fields (config.json) of `config`; biases are decided by `llama_tensors`'s
  params (`attention_bias`, `mlp_bias`), so `to_hf` completes them.

  Raises:
    ValueError: naming the config field Llama cannot express.
  """
  check_llama(config)
  theta = float(config.rope_theta)
  return {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": config.vocab_size,
    "hidden_size": config.d_model,
    "intermediate_size": config.d_ff,
    "num_hidden_layers": config.num_decoder_layers,
    "num_attention_heads": config.num_heads,
    "num_key_value_heads": config.num_kv_heads or config.num_heads,
    "head_dim": config.resolved_head_dim,
    "hidden_act": _LLAMA_ACTIVATIONS[config.activation],
    "max_position_embeddings": config.max_length,
    "rms_norm_eps": float(config.norm_epsilon),
    "rope_theta": theta,
    "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": float(config.attention_dropout_rate),
    "tie_word_embeddings": bool(config.tie_output),
    "initializer_range": 0.02,
    "bos_token_id": config.bos_id,
    "eos_token_id": config.eos_id,
    "pad_token_id": config.pad_id,
    "use_cache": True,
  }


def llama_tensors(config: ModelConfig, params: Mapping, gates: Mapping | None = None) -> dict:
  """LlamaForCausalLM's state dict ({name: float32 array}) of `LanguageModel(config)`'s params
  (`pretrained.llama_params` inverted): torch Linear weights [out, in]; a missing bias is written
  as zeros where another projection of its group (q/k/v/o, gate/up/down) has one.

  Raises:
    ValueError: naming the config field Llama cannot express, or a gates entry that is missing.
  """
  check_llama(config)
  D, H, F = config.d_model, config.num_heads, config.d_ff
  K = config.resolved_head_dim
  G = config.num_kv_heads or H
  decoder = params["decoder"]
  out: dict[str, np.ndarray] = {}
  table = np.asarray(params["embedder"]["tokens"]["embedding"], np.float64)
  if config.init != "gpt2":  # Untied (checked): the lookup's sqrt(D) folded into the table.
    table = table * np.sqrt(config.d_model)
  out["model.embed_tokens.weight"] = _f32(table)
  for i in range(config.num_decoder_layers):
    block, h = decoder[f"layer_{i}"], f"model.layers.{i}"
    attention = block["self_attention"]
    query = np.asarray(attention["query"]["kernel"], np.float64)  # [D, H, K]
    query_bias = np.asarray(attention["query"].get("bias", np.zeros((H, K))), np.float64)
    multiplier = _query_multiplier(config, attention)
    if config.scale != "sqrt_d":  # Llama always scales by 1/sqrt(K): ours over that, folded in.
      m = (np.ones((H,)) if multiplier is None else multiplier) * np.sqrt(K)
      query, query_bias = query * m[:, None], query_bias * m[:, None]
    out_kernel = np.asarray(attention["out"]["kernel"], np.float64)  # [H, K, D]
    gate = _gate(gates, f"layer_{i}", H)
    if gate is not None:
      out_kernel = out_kernel * gate[:, None, None]
    kernels = {
      "q_proj": query,
      "k_proj": attention["key"]["kernel"],
      "v_proj": attention["value"]["kernel"],
    }
    heads = {"q_proj": H, "k_proj": G, "v_proj": G}
    with_bias = any("bias" in attention[n] for n in ("query", "key", "value", "out"))
    for name, kernel in kernels.items():
      out[f"{h}.self_attn.{name}.weight"] = _f32(np.asarray(kernel).reshape(D, heads[name] * K).T)
    out[f"{h}.self_attn.o_proj.weight"] = _f32(out_kernel.reshape(H * K, D).T)
    if with_bias:
      biases = {
        "q_proj": query_bias,
        "k_proj": attention["key"].get("bias"),
        "v_proj": attention["value"].get("bias"),
      }
      for name, b in biases.items():
        size = heads[name] * K
        out[f"{h}.self_attn.{name}.bias"] = _f32(np.zeros(size) if b is None else np.reshape(b, size))
      out[f"{h}.self_attn.o_proj.bias"] = _f32(attention["out"].get("bias", np.zeros(D)))
    ff = block["feed_forward"]
    ff_bias = any("bias" in ff[n] for n in ("wi", "wi_up", "wo"))
    for ours, theirs, size in (("wi", "gate_proj", F), ("wi_up", "up_proj", F), ("wo", "down_proj", D)):
      out[f"{h}.mlp.{theirs}.weight"] = _f32(np.asarray(ff[ours]["kernel"]).T)
      if ff_bias:
        out[f"{h}.mlp.{theirs}.bias"] = _f32(ff[ours].get("bias", np.zeros(size)))
    out[f"{h}.input_layernorm.weight"] = _f32(block["self_attention_norm"]["scale"])
    out[f"{h}.post_attention_layernorm.weight"] = _f32(block["feed_forward_norm"]["scale"])
  out["model.norm.weight"] = _f32(decoder["final_norm"]["scale"])
  if not config.tie_output:
    head = params["head"]["logits"]
    if "bias" in head and np.any(np.asarray(head["bias"]) != 0):
      raise ValueError(
        "tie_output: False cannot be exported to Llama with a non-zero output bias (head.logits.bias;"
        " Llama's lm_head has none)"
      )
    out["lm_head.weight"] = _f32(np.asarray(head["kernel"]).T)
  return out


def _llama(config: ModelConfig, params: Mapping, gates: Mapping | None) -> tuple[dict, dict]:
  hf_config, tensors = llama_hf_config(config), llama_tensors(config, params, gates)
  hf_config["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in tensors
  hf_config["mlp_bias"] = "model.layers.0.mlp.gate_proj.bias" in tensors
  return hf_config, tensors


def _gpt2(config: ModelConfig, params: Mapping, gates: Mapping | None) -> tuple[dict, dict]:
  return gpt2_hf_config(config), gpt2_tensors(config, params, gates)


# model_type -> (config, params, gates) -> (config.json, tensors).
EXPORTERS = {"gpt2": _gpt2, "llama": _llama}
