"""Pretrained checkpoints in Hugging Face's layout into attn's models: a `ModelConfig` from the
checkpoint's config.json and a parameter tree of `LanguageModel` from its tensors (numpy arrays by
their state-dict names, as `safetensors.numpy.load_file` or a torch `state_dict()` gives them).

GPT-2 (`GPT2LMHeadModel`, `model_type="gpt2"`) so far: learned positions, pre-LN with LayerNorm's
epsilon from the config, GELU in its tanh form ("gelu_new"), the fused Conv1D query/key/value
projection split into per-head kernels [D, H, K], biases everywhere, the output tied to the token
embedding. Options the models do not implement (another activation, attention scaled by the inverse
layer index, ...) are refused in one line naming the config field; a tensor whose shape does not
match the config, in one line naming the tensor.

GPT-2 has no padding token, while `LanguageModel` masks `pad_id` as a key: `pad_id` is the argument
of `gpt2_config` (default 0, the token "!"), and sequences that contain it are read as padded there.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attn.nn.config import ModelConfig

# GPT-2's "gelu_new" and "gelu_pytorch_tanh" are both the tanh approximation, attn's "gelu".
_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def gpt2_config(hf: Mapping, *, pad_id: int = 0, dtype: str = "float32") -> ModelConfig:
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


def _take(tensors: Mapping, name: str, shape: tuple[int, ...]) -> np.ndarray:
  for prefix in ("", "transformer."):  # GPT2LMHeadModel's names, or GPT2Model's.
    if prefix + name in tensors:
      x = np.asarray(tensors[prefix + name], np.float32)
      if x.shape != shape:
        raise ValueError(f"{prefix + name}: shape {x.shape}, expected {shape} from the config")
      return x
  raise ValueError(f"transformer.{name}: missing from the checkpoint")


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
