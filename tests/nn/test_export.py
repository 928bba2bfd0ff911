"""Tests for attn/nn/export.py: a random GPT-2-shaped LanguageModel of attn's, written as a Hugging
Face folder, opens in transformers with our logits (also edited: no biases, another logit scale,
heads gated off), converts back through attn.nn.pretrained to the same parameters and config, and
what GPT-2 cannot express is refused in one line naming the field."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn import export, heads, pretrained
from attn.nn.config import ModelConfig
from attn.nn.models import LanguageModel

GPT2_SHAPED = ModelConfig(
  vocab_size=97, d_model=32, num_heads=4, d_ff=128, num_encoder_layers=0, num_decoder_layers=2,
  dropout_rate=0.0, norm="pre", positions="learned", norm_kind="layer", norm_epsilon=1e-5,
  max_length=32, activation="gelu", init="gpt2", pad_id=None,
)  # fmt: skip


def _random_params(config: ModelConfig, seed: int = 0, *, init: bool = True) -> dict:
  """`model.init`'s parameters, with every leaf moved off its initial value (biases start at 0,
  norm scales at 1), so that every term of the conversion is exercised. `init=False`: only the
  shapes of `model.init` (traced, not compiled: the fast tier), filled with random numbers."""
  model = LanguageModel(config)
  args = (jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))
  params = (model.init(*args) if init else jax.eval_shape(model.init, *args))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
    lambda x: (
      (np.asarray(x) if init else 1.0) + np.float32(0.1) * rng.standard_normal(x.shape, np.float32)
    ),
    params,
  )


def _tokens(config: ModelConfig, seed: int = 0, shape=(3, 20)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, config.vocab_size, shape)


# (config changes, gates) of a model trained or edited here: the plain one; one without biases,
# a learned logit scale and two heads pruned by a gate of 0; one with a float scale and dropout.
EDITS = {
  "plain": ({}, None),
  "no_bias_learned_scale_pruned": (
    {"use_bias": False, "scale": "learned"}, {0: [1, 0, 1, 1], 1: [0, 1, 1, 0.5]}
  ),
  "float_scale_dropout": ({"scale": 0.3, "dropout_rate": 0.1, "attention_dropout_rate": 0.1}, None),
}  # fmt: skip


def _edited(name: str):
  """(config, params, gates or None) of one of EDITS."""
  changes, per_layer = EDITS[name]
  config = GPT2_SHAPED.replace(**changes)
  params = _random_params(config)
  gates = None
  if per_layer is not None:
    gates = heads.head_gates(params)
    for layer, values in per_layer.items():
      gates["decoder"][f"layer_{layer}"]["self_attention"]["gate"] = jnp.asarray(values, jnp.float32)
  return config, params, gates


@pytest.mark.slow  # Imports torch and transformers.
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_exported_model_gives_our_logits_in_transformers(tmp_path, edit):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config, params, gates = _edited(edit)
  export.write_folder(str(tmp_path), *export.to_hf(config, params, gates=gates))
  hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  tokens = _tokens(config)
  variables = {"params": params} if gates is None else {"params": params, "head_gates": gates}
  ours = LanguageModel(config).apply(variables, tokens)
  with torch.no_grad():
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


def test_a_written_folder_converts_back_to_the_same_model(tmp_path):
  params = _random_params(GPT2_SHAPED, init=False)
  hf_config, tensors = export.to_hf(GPT2_SHAPED, params)
  assert hf_config["n_inner"] == 128 and hf_config["layer_norm_epsilon"] == 1e-5
  assert "transformer.h.1.attn.c_attn.weight" in tensors and "lm_head.weight" not in tensors
  assert tensors["transformer.h.1.attn.c_attn.weight"].shape == (32, 96)
  export.write_folder(str(tmp_path), hf_config, tensors)
  config, back = pretrained.convert(*pretrained.read_folder(str(tmp_path)))
  assert config == GPT2_SHAPED
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  for ours, theirs in zip(
    jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(ours), theirs)


@pytest.mark.slow  # Compiles two models (about 8 s on 2 cores).
def test_folded_edits_give_the_same_function_after_the_round_trip(tmp_path):
  """An edited model (no biases, a learned scale, pruned heads) comes back as a plain GPT-2 with
  the same logits (no torch: through attn.nn.pretrained)."""
  config, params, gates = _edited("no_bias_learned_scale_pruned")
  export.write_folder(str(tmp_path), *export.to_hf(config, params, gates=gates))
  back_config, back = pretrained.convert(*pretrained.read_folder(str(tmp_path)))
  assert (back_config.use_bias, back_config.scale) == (True, "none")
  tokens = _tokens(config, 1)
  ours = LanguageModel(config).apply({"params": params, "head_gates": gates}, tokens)
  theirs = LanguageModel(back_config).apply({"params": back}, tokens)
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
  "changes, field",
  [
    ({"norm": "post"}, "norm"),
    ({"positions": "rope"}, "positions"),
    ({"positions": "alibi"}, "positions"),
    ({"norm_kind": "rms"}, "norm_kind"),
    ({"activation": "relu"}, "activation"),
    ({"tie_output": False}, "tie_output"),
    ({"init": "default"}, "init"),
    ({"qk_norm": "rms"}, "qk_norm"),
    ({"logit_soft_cap": 30.0}, "logit_soft_cap"),
    ({"attention_sink": True}, "attention_sink"),
    ({"attention_kind": "ssmax"}, "attention_kind"),
    ({"num_kv_heads": 2}, "num_kv_heads"),
    ({"head_dim_policy": "fixed_head_dim", "head_dim": 4}, "head_dim"),
    ({"d_ff": 0}, "d_ff"),
    ({"num_decoder_layers": 0}, "num_decoder_layers"),
    ({"attention_window": 8}, "attention_window"),
    ({"ff_glu": True}, "ff_glu"),
    ({"embed_norm": True}, "embed_norm"),
    # Fields no exporter reads are refused by name (export._READ_OR_INERT), new variants included.
    ({"attention_gate": "headwise"}, "attention_gate"),
    ({"value_residual": "learned"}, "value_residual"),
  ],
)
def test_what_gpt2_cannot_express_is_refused_naming_the_field(changes, field):
  config = GPT2_SHAPED.replace(**changes)
  with pytest.raises(ValueError, match=rf"^{field}: .* cannot be exported to GPT-2 \(") as raised:
    export.to_hf(config, {})
  assert "\n" not in str(raised.value)


def test_bad_model_type_and_gates_are_one_line():
  with pytest.raises(ValueError, match=r"^model_type: 'bloom' is not exported; supported: gpt2"):
    export.to_hf(GPT2_SHAPED, {}, model_type="bloom")
  params = _random_params(GPT2_SHAPED, init=False)
  with pytest.raises(ValueError, match=r"^gates: no decoder.layer_0.self_attention.gate"):
    export.to_hf(GPT2_SHAPED, params, gates={})


# Llama.


def _llama_shaped(**changes) -> ModelConfig:
  """A Llama-shaped config: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied, no biases."""
  fields = dict(
    vocab_size=97, d_model=32, num_heads=4, num_kv_heads=2, d_ff=48, num_encoder_layers=0,
    num_decoder_layers=2, dropout_rate=0.0, norm="pre", positions="rope", rope_theta=500.0,
    norm_kind="rms", norm_epsilon=1e-6, max_length=64, tie_output=False, activation="silu",
    ff_glu=True, init="gpt2", use_bias=False, qkv_bias=False, out_bias=False, pad_id=None,
  )  # fmt: skip
  return ModelConfig(**{**fields, **changes})


def _llama_params(config: ModelConfig, *, init: bool = True) -> dict:
  params = _random_params(config, init=init)
  if not config.tie_output:  # Llama's lm_head has no bias: ours must be zero (as initialised).
    params["head"]["logits"]["bias"] = np.zeros_like(params["head"]["logits"]["bias"])
  return params


# (config changes, gates): the plain one; tied with Qwen2-style query/key/value biases, exact GELU, a
# learned scale and a pruned head; one with init="default" (sqrt(D) folded into the untied table).
LLAMA_EDITS = {
  "plain": ({}, None),
  "tied_qkv_bias_learned_scale_pruned": (
    {"tie_output": True, "qkv_bias": True, "activation": "gelu_exact", "scale": "learned"},
    {0: [1, 0, 1, 1]},
  ),
  "default_init_float_scale": (
    {"init": "default", "scale": 0.5, "use_bias": True, "out_bias": None}, None
  ),
}  # fmt: skip


@pytest.mark.slow  # Imports torch and transformers.
@pytest.mark.parametrize("edit", list(LLAMA_EDITS))
def test_an_exported_llama_gives_our_logits_in_transformers(tmp_path, edit):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  changes, per_layer = LLAMA_EDITS[edit]
  config = _llama_shaped(**changes)
  params = _llama_params(config)
  gates = None
  if per_layer is not None:
    gates = heads.head_gates(params)
    for layer, values in per_layer.items():
      gates["decoder"][f"layer_{layer}"]["self_attention"]["gate"] = jnp.asarray(values, jnp.float32)
  export.write_folder(str(tmp_path), *export.to_hf(config, params, gates=gates, model_type="llama"))
  hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens = _tokens(config)
  variables = {"params": params} if gates is None else {"params": params, "head_gates": gates}
  ours = LanguageModel(config).apply(variables, tokens)
  with torch.no_grad():
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


def test_a_written_llama_folder_converts_back_to_the_same_model(tmp_path):
  config = _llama_shaped()
  params = _llama_params(config, init=False)
  hf_config, tensors = export.to_hf(config, params, model_type="llama")
  assert (hf_config["num_key_value_heads"], hf_config["attention_bias"]) == (2, False)
  assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (16, 32)
  export.write_folder(str(tmp_path), hf_config, tensors)
  back_config, back = pretrained.convert(*pretrained.read_folder(str(tmp_path)))
  assert back_config == config
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  for ours, theirs in zip(
    jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(ours), theirs)


@pytest.mark.parametrize(
  "changes, field",
  [
    ({"positions": "learned"}, "positions"),
    ({"norm_kind": "layer"}, "norm_kind"),
    ({"ff_glu": False}, "ff_glu"),
    ({"activation": "relu"}, "activation"),
    ({"rope_fraction": 0.5}, "rope_fraction"),
    ({"attention_window": 8}, "attention_window"),
    ({"qk_norm": "rms"}, "qk_norm"),
    ({"init": "default", "tie_output": True}, "init"),
    ({"attention_gate": "elementwise"}, "attention_gate"),
    ({"value_residual": "shared"}, "value_residual"),
  ],
)
def test_what_llama_cannot_express_is_refused_naming_the_field(changes, field):
  with pytest.raises(ValueError, match=rf"^{field}: .* cannot be exported to Llama") as raised:
    export.to_hf(_llama_shaped(**changes), {}, model_type="llama")
  assert "\n" not in str(raised.value)
  params = _llama_params(_llama_shaped(), init=False)
  params["head"]["logits"]["bias"] = params["head"]["logits"]["bias"] + 1.0
  with pytest.raises(ValueError, match=r"^tie_output: False cannot be exported to Llama with a non"):
    export.to_hf(_llama_shaped(), params, model_type="llama")
