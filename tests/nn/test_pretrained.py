"""Tests for attn/nn/pretrained.py: a randomly initialised GPT-2 of `transformers`' own, copied into
attn's LanguageModel, gives transformers' logits and TransformerLens' cache (its TransformerBridge over
the same model), patterns and head-detector scores; bad configs and tensors are one line each."""

from __future__ import annotations

import numpy as np
import pytest

from attn.nn import pretrained

GPT2 = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)


def _random_gpt2():
  """transformers' GPT2LMHeadModel, random, with non-zero biases and norm parameters."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).eval()
  with torch.no_grad():  # Non-zero biases and norm parameters, so every term is exercised.
    for name, p in hf.named_parameters():
      if name.endswith("bias") or ".ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
  return hf


@pytest.fixture(scope="module")
def gpt2():
  """(transformers' GPT2LMHeadModel, our model, our params) with the same random weights."""
  from attn.nn.models import LanguageModel

  hf = _random_gpt2()
  config = pretrained.gpt2_config(hf.config.to_dict())
  tensors = {name: t.detach().numpy() for name, t in hf.state_dict().items()}
  return hf, LanguageModel(config), pretrained.gpt2_params(tensors, config)


def _tokens(seed=0, shape=(3, 20)):
  return np.random.default_rng(seed).integers(1, GPT2["vocab_size"], shape)  # 0 is pad_id here.


@pytest.mark.slow  # Imports torch and transformers.
def test_gpt2_gives_transformers_logits(gpt2):
  import torch

  hf, model, params = gpt2
  tokens = _tokens()
  ours = model.apply({"params": params}, tokens)
  with torch.no_grad():
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


@pytest.mark.slow  # Imports torch, transformers and transformer-lens.
def test_gpt2_cache_patterns_and_detectors_match_transformer_lens(gpt2, tmp_path):
  import torch

  bridge_module = pytest.importorskip("transformer_lens.model_bridge")
  from transformer_lens import head_detector

  from attn.core import detectors
  from attn.nn import hooks

  hf, model, params = gpt2
  hf.save_pretrained(tmp_path)
  bridge = bridge_module.TransformerBridge.boot_transformers(str(tmp_path), hf_model=hf)
  tokens = _tokens(1)
  logits, cache = hooks.run_with_cache(model, params, tokens)
  with torch.no_grad():
    their_logits, theirs = bridge.run_with_cache(torch.as_tensor(tokens))
  np.testing.assert_allclose(logits, their_logits.numpy(), atol=2e-5, rtol=1e-5)
  pairs = {"embed": "hook_embed", "pos_embed": "hook_pos_embed"}
  for layer in range(GPT2["n_layer"]):
    for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
      pairs[f"blocks.{layer}.{name}"] = f"blocks.{layer}.hook_{name}"
    for name in ("q", "k", "v", "z", "pattern"):
      pairs[f"blocks.{layer}.attn.{name}"] = f"blocks.{layer}.attn.hook_{name}"
  for ours, name in pairs.items():
    theirs_value = theirs[name].numpy()
    assert cache[ours].shape == theirs_value.shape, (ours, cache[ours].shape, theirs_value.shape)
    np.testing.assert_allclose(cache[ours], theirs_value, atol=2e-5, rtol=1e-5, err_msg=ours)
  # The detectors, on a repeated random sequence, against TransformerLens' detect_head itself.
  segment = _tokens(2, (1, 8))
  repeated = np.concatenate([segment, segment], 1)
  _, cache = hooks.run_with_cache(model, params, repeated)
  patterns = np.stack([cache[f"blocks.{i}.attn.pattern"] for i in range(GPT2["n_layer"])], 1)
  # detect_head tokenizes a string with the model's tokenizer; this tiny model has none, so its
  # to_tokens is given the tokens themselves (the rest of detect_head runs as it is).
  bridge.to_tokens = lambda seq, *args, **kwargs: torch.as_tensor(repeated)
  for kind in detectors.HEAD_KINDS:
    for measure in detectors.ERROR_MEASURES:
      for exclude_bos, exclude_current in ((False, False), (True, True)):
        ours = detectors.detect_heads(
          patterns, repeated, kind, error_measure=measure, exclude_bos=exclude_bos,
          exclude_current_token=exclude_current,
        )  # fmt: skip
        reference = head_detector.detect_head(
          bridge, "the tokens above", kind, error_measure=measure, exclude_bos=exclude_bos,
          exclude_current_token=exclude_current,
        )  # fmt: skip
        np.testing.assert_allclose(  # detect_head rounds its scores to 3 decimals.
          ours, reference.numpy(), rtol=0, atol=5e-4 + 1e-6, err_msg=f"{kind} {measure} {exclude_bos}"
        )


def test_gpt2_config_refuses_what_the_model_cannot_follow():
  with pytest.raises(ValueError, match=r"^activation_function: 'relu' is not implemented"):
    pretrained.gpt2_config({**GPT2, "activation_function": "relu"})
  with pytest.raises(ValueError, match=r"^scale_attn_by_inverse_layer_idx: True is not implemented$"):
    pretrained.gpt2_config({**GPT2, "scale_attn_by_inverse_layer_idx": True})
  with pytest.raises(ValueError, match=r"^model_type: expected 'gpt2', got 'llama'$"):
    pretrained.gpt2_config({**GPT2, "model_type": "llama"})
  config = pretrained.gpt2_config({**GPT2, "layer_norm_epsilon": 1e-5})
  assert (config.norm_epsilon, config.d_ff, config.activation, config.tie_output) == (
    1e-5,
    128,
    "gelu",
    True,
  )


def test_gpt2_params_name_a_missing_or_misshapen_tensor():
  config = pretrained.gpt2_config(GPT2)
  with pytest.raises(ValueError, match=r"^transformer.ln_f.weight: missing from the checkpoint$"):
    pretrained.gpt2_params({}, config)
  tensors = {"transformer.ln_f.weight": np.zeros(31)}
  with pytest.raises(
    ValueError, match=r"^transformer.ln_f.weight: shape \(31,\), expected \(32,\) from"
  ):
    pretrained.gpt2_params(tensors, config)


@pytest.mark.slow  # Imports torch and transformers.
@pytest.mark.parametrize("shard", [None, "20KB"])
def test_a_saved_folder_converts_to_transformers_logits(tmp_path, shard):
  import torch

  hf = _random_gpt2()  # Not the fixture's: TransformerBridge may have wrapped that one.
  hf.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
  assert (tmp_path / pretrained.WEIGHTS_INDEX_FILE).exists() == bool(shard)
  config, params = pretrained.convert(*pretrained.read_folder(str(tmp_path)))
  from attn.nn.models import LanguageModel

  tokens = np.random.default_rng(3).integers(0, GPT2["vocab_size"], (2, 16))
  tokens[:, 3] = 0  # No padding token: id 0 is a real token, attended to.
  ours = LanguageModel(config).apply({"params": params}, tokens)
  with torch.no_grad():
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


def test_bad_folders_are_one_line(tmp_path):
  with pytest.raises(pretrained.CheckpointError, match=r"config.json: missing"):
    pretrained.read_folder(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model_type": "gpt2"')
  with pytest.raises(pretrained.CheckpointError, match=r"config.json: not readable JSON"):
    pretrained.read_folder(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(
    pretrained.CheckpointError, match=r"model.safetensors: missing \(found pytorch_model.bin: save"
  ):
    pretrained.read_folder(str(tmp_path))
  from safetensors.numpy import save_file

  save_file({"wte.weight": np.zeros((4, 2), np.float32)}, str(tmp_path / "model.safetensors"))
  data = (tmp_path / "model.safetensors").read_bytes()
  (tmp_path / "model.safetensors").write_bytes(data[:-5])  # Truncated.
  with pytest.raises(pretrained.CheckpointError, match=r"model.safetensors: not a readable safetensors"):
    pretrained.read_folder(str(tmp_path))
  with pytest.raises(pretrained.CheckpointError, match=r"^model_type: 'bloom' is not supported"):
    pretrained.convert({"model_type": "bloom"}, {})
  with pytest.raises(pretrained.CheckpointError, match=r"^config.json: field 'n_embd' missing"):
    pretrained.convert({"model_type": "gpt2"}, {})
  with pytest.raises(pretrained.CheckpointError, match=r"^transformer.ln_f.weight: missing"):
    pretrained.convert({"model_type": "gpt2", **GPT2}, {})


# --------------------------------------------------------------------------------------------------
# Llama, Mistral, Qwen2.
# --------------------------------------------------------------------------------------------------

LLAMA = dict(
  vocab_size=101,
  hidden_size=32,
  intermediate_size=72,
  num_hidden_layers=2,
  num_attention_heads=4,
  max_position_embeddings=64,
  bos_token_id=1,
  eos_token_id=2,
)
# name: (transformers' class prefix, config fields). MHA, GQA and MQA; tied and untied; biases; a
# sliding window of 4 over 12 tokens; head_dim != hidden / heads.
LLAMA_CASES = {
  "llama_mha_untied": ("Llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
  "llama_gqa_tied_biases": (
    "Llama",
    dict(num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
  ),
  "llama_mqa_head_dim": ("Llama", dict(num_key_value_heads=1, head_dim=16, pad_token_id=0)),
  "qwen2_gqa_tied": ("Qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True)),
  "mistral_window": ("Mistral", dict(num_key_value_heads=2, sliding_window=4)),
  "qwen2_window": (
    "Qwen2",
    dict(num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=0),
  ),
}


def _random_llama(kind: str, fields: dict):
  """transformers' {kind}ForCausalLM, random, every parameter perturbed (non-zero biases, norm
  weights away from 1)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = getattr(transformers, f"{kind}Config")(**{**LLAMA, **fields})
  torch.manual_seed(0)
  hf = getattr(transformers, f"{kind}ForCausalLM")(config).eval()
  with torch.no_grad():
    for _, p in hf.named_parameters():
      p.add_(0.1 * torch.randn_like(p))
  return hf


@pytest.fixture(scope="module", params=sorted(LLAMA_CASES))
def llama(request, tmp_path_factory):
  """(name, transformers' model, our config, our params), the folder save_pretrained wrote converted."""
  jax = pytest.importorskip("jax")
  from attn.nn.models import LanguageModel

  hf = _random_llama(*LLAMA_CASES[request.param])
  folder = tmp_path_factory.mktemp(request.param)
  hf.save_pretrained(str(folder))
  config, params = pretrained.convert(*pretrained.read_folder(str(folder)))
  tokens = np.zeros((1, 4), np.int32)
  shapes = jax.eval_shape(LanguageModel(config).init, jax.random.key(0), tokens)["params"]
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, params)
  return request.param, hf, config, params


LLAMA_DIFFS: dict[str, float] = {}  # The largest logit difference per case (printed with -s).


@pytest.mark.slow  # Imports torch and transformers.
def test_llama_family_gives_transformers_logits_on_a_right_padded_batch(llama):
  import torch

  from attn.nn.models import LanguageModel

  name, hf, config, params = llama
  tokens = np.random.default_rng(1).integers(3, LLAMA["vocab_size"], (3, 12))
  lengths = np.array([12, 9, 5])
  real = np.arange(12)[None, :] < lengths[:, None]
  tokens = np.where(real, tokens, 0)  # Right-padded with 0 (the padding token where there is one).
  ours = np.asarray(LanguageModel(config).apply({"params": params}, tokens))
  with torch.no_grad():
    mask = torch.as_tensor(real.astype(np.int64))
    theirs = hf(torch.as_tensor(tokens), attention_mask=mask).logits.numpy()
  diff = float(np.max(np.abs(ours - theirs)[real]))
  LLAMA_DIFFS[name] = diff
  print(f"{name}: largest logit difference {diff:.2e}")
  np.testing.assert_allclose(ours[real], theirs[real], atol=2e-5, rtol=1e-5)
  if config.attention_window is not None:  # The window matters over these 12 tokens.
    assert config.attention_window == 3
    full = LanguageModel(config.replace(attention_window=None)).apply({"params": params}, tokens)
    assert np.max(np.abs(np.asarray(full) - theirs)[real]) > 1e-3


@pytest.mark.slow  # Imports torch and transformers.
def test_llama_family_greedy_decoding_gives_transformers_generate(llama):
  """8 new tokens after a 6-token prompt (14 > the sliding window of 4), with no end token."""
  import torch

  from attn.nn.decoding import greedy_decode
  from attn.nn.models import LanguageModel

  _, hf, config, params = llama
  prompt = np.random.default_rng(2).integers(3, LLAMA["vocab_size"], (2, 6))
  ours = greedy_decode(LanguageModel(config), params, prompt, max_new_tokens=8, eos_id=-1)
  with torch.no_grad():
    theirs = hf.generate(
      torch.as_tensor(prompt),
      attention_mask=torch.ones(prompt.shape, dtype=torch.long),
      max_new_tokens=8,
      min_new_tokens=8,
      do_sample=False,
      pad_token_id=0,
    )[:, 6:].numpy()
  np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_llama_config_maps_the_fields():
  config = pretrained.llama_config({**LLAMA, "model_type": "llama", "rms_norm_eps": 1e-5})
  assert (config.norm_kind, config.norm, config.positions, config.activation, config.ff_glu) == (
    "rms",
    "pre",
    "rope",
    "silu",
    True,
  )
  assert (config.norm_epsilon, config.rope_theta, config.tie_output, config.init) == (
    1e-5,
    10000.0,
    False,
    "gpt2",
  )
  assert (config.pad_id, config.num_kv_heads, config.attention_window) == (None, None, None)
  assert (config.resolved_qkv_bias, config.resolved_out_bias, config.use_bias) == (False, False, False)
  qwen2 = pretrained.llama_config(
    {**LLAMA, "model_type": "qwen2", "num_key_value_heads": 2, "pad_token_id": 7, "rope_theta": 1e6}
  )
  assert (qwen2.resolved_qkv_bias, qwen2.resolved_out_bias, qwen2.use_bias) == (True, False, False)
  assert (qwen2.num_kv_heads, qwen2.pad_id, qwen2.rope_theta) == (2, 7, 1e6)
  assert pretrained.llama_config({**LLAMA, "model_type": "llama", "pad_token_id": 500}).pad_id is None
  mistral = pretrained.llama_config({**LLAMA, "model_type": "mistral", "sliding_window": 4096})
  assert mistral.attention_window == 4095
  wide = pretrained.llama_config({**LLAMA, "model_type": "llama", "head_dim": 16})
  assert (wide.head_dim_policy, wide.resolved_head_dim) == ("fixed_head_dim", 16)
  qwen2_all_sliding = pretrained.llama_config(
    {
      **LLAMA,
      "model_type": "qwen2",
      "use_sliding_window": True,
      "sliding_window": 8,
      "max_window_layers": 0,
    }
  )
  assert qwen2_all_sliding.attention_window == 7
  qwen2_off = {"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 8}
  assert pretrained.llama_config({**LLAMA, **qwen2_off}).attention_window is None
  gelu = pretrained.llama_config({**LLAMA, "model_type": "llama", "hidden_act": "gelu"})
  assert gelu.activation == "gelu_exact"


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"^rope_scaling: .* is not implemented"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, r"^rope_parameters: rope_type 'yarn'"),
    ({"hidden_act": "relu2"}, r"^hidden_act: 'relu2' is not implemented"),
    (
      {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
      r"^max_window_layers: sliding-window attention in 1 of 2 layers only is not implemented",
    ),
    ({"model_type": "mistral", "sliding_window": 0}, r"^sliding_window: must be a positive int"),
    ({"model_type": "gemma"}, r"^model_type: expected one of"),
  ],
)
def test_llama_config_refuses_what_the_model_cannot_follow_in_one_line(fields, message):
  with pytest.raises(ValueError, match=message) as error:
    pretrained.llama_config({**LLAMA, "model_type": "llama", **fields})
  assert "\n" not in str(error.value)
  if "model_type" not in message:  # convert() refuses a model type it has no converter for itself.
    with pytest.raises(pretrained.CheckpointError, match=message):
      pretrained.convert({**LLAMA, "model_type": "llama", **fields}, {})


def test_llama_params_name_a_missing_or_misshapen_tensor():
  config = pretrained.llama_config({**LLAMA, "model_type": "llama", "num_key_value_heads": 2})
  with pytest.raises(ValueError, match=r"^model.norm.weight: missing from the checkpoint$"):
    pretrained.llama_params({}, config)
  D, F, V = 32, 72, 101
  tensors = {"model.norm.weight": np.ones(D), "model.embed_tokens.weight": np.zeros((V, D))}
  for i in range(2):
    h = f"model.layers.{i}"
    tensors |= {
      f"{h}.input_layernorm.weight": np.ones(D),
      f"{h}.post_attention_layernorm.weight": np.ones(D),
      f"{h}.self_attn.q_proj.weight": np.zeros((D, D)),
      f"{h}.self_attn.k_proj.weight": np.zeros((16, D)),
      f"{h}.self_attn.v_proj.weight": np.zeros((16, D)),
      f"{h}.self_attn.o_proj.weight": np.zeros((D, D)),
      f"{h}.mlp.gate_proj.weight": np.zeros((F, D)),
      f"{h}.mlp.up_proj.weight": np.zeros((F, D)),
      f"{h}.mlp.down_proj.weight": np.zeros((D, F)),
    }
  with pytest.raises(ValueError, match=r"^lm_head.weight: missing from the checkpoint$"):
    pretrained.llama_params(tensors, config)
  params = pretrained.llama_params({**tensors, "lm_head.weight": np.ones((V, D))}, config)
  assert params["head"]["logits"]["kernel"].shape == (D, V)
  np.testing.assert_array_equal(params["head"]["logits"]["bias"], np.zeros(V))
  bad = {**tensors, "model.layers.1.self_attn.k_proj.weight": np.zeros((D, D))}
  with pytest.raises(
    pretrained.CheckpointError,
    match=r"^model.layers.1.self_attn.k_proj.weight: shape \(32, 32\), expected \(16, 32\) from the",
  ):
    pretrained.convert({**LLAMA, "model_type": "llama", "num_key_value_heads": 2}, bad)


# BERT and RoBERTa encoders into EncoderTagger.

BERT = dict(
  vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
  max_position_embeddings=40, num_labels=5,
)  # fmt: skip


@pytest.mark.slow  # Imports torch and transformers.
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("head", [True, False])
def test_bert_and_roberta_give_transformers_tag_logits_on_a_padded_batch(tmp_path, model_type, head):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from attn.nn.models import EncoderTagger

  torch.manual_seed(0)
  if model_type == "bert":
    hf = transformers.BertForTokenClassification(transformers.BertConfig(**BERT))
  else:
    hf = transformers.RobertaForTokenClassification(transformers.RobertaConfig(**BERT, pad_token_id=1))
  hf.eval()
  with torch.no_grad():  # Non-zero biases, norms and token types, so every term is exercised.
    for name, p in hf.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name or "token_type" in name:
        p.add_(0.1 * torch.randn_like(p))
  encoder = getattr(hf, model_type)
  (hf if head else encoder).save_pretrained(tmp_path)  # With its classifier, or the bare encoder.
  config, params = pretrained.convert(*pretrained.read_folder(str(tmp_path)))
  assert (config.num_classes, config.embed_norm, config.activation) == (
    5,  # The encoder's config.json keeps num_labels too.
    True,
    "gelu_exact",
  )
  tokens = np.random.default_rng(0).integers(3, BERT["vocab_size"], (3, 12))
  tokens[1, 8:], tokens[2, 5:] = config.pad_id, config.pad_id  # Right-padded rows.
  real = tokens != config.pad_id
  model = EncoderTagger(config)
  from attn.nn import hooks

  output, cache = hooks.run_with_cache(model, params, tokens)
  with torch.no_grad():
    mask = torch.as_tensor(real.astype(np.int64))
    hidden = encoder(torch.as_tensor(tokens), attention_mask=mask).last_hidden_state.numpy()
    logits = hf(torch.as_tensor(tokens), attention_mask=mask).logits.numpy()
  last = np.asarray(cache[f"blocks.{BERT['num_hidden_layers'] - 1}.resid_post"])
  np.testing.assert_allclose(last[real], hidden[real], atol=2e-5)
  if head:
    np.testing.assert_allclose(np.asarray(output.logits)[real], logits[real], atol=2e-5)
    plain = model.apply({"params": params}, tokens).logits  # The same without hooks.
    np.testing.assert_allclose(np.asarray(plain)[real], logits[real], atol=2e-5)


def test_bert_config_refuses_what_the_tagger_cannot_follow():
  with pytest.raises(ValueError, match=r"^position_embedding_type: 'relative_key' is not implemented"):
    pretrained.bert_config({**BERT, "position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match=r"^hidden_act: 'mish' is not implemented"):
    pretrained.bert_config({**BERT, "hidden_act": "mish"})
  with pytest.raises(ValueError, match=r"^is_decoder: True is not implemented"):
    pretrained.bert_config({**BERT, "is_decoder": True})
  with pytest.raises(
    pretrained.CheckpointError, match=r"^bert\.encoder\.layer\.0\..*: missing from the checkpoint$"
  ):
    pretrained.convert({"model_type": "bert", **BERT}, {})
  roberta = pretrained.convert_config({"model_type": "roberta", **BERT, "pad_token_id": 1})
  assert (roberta.max_length, roberta.pad_id, roberta.norm, roberta.positions) == (
    38,
    1,
    "post",
    "learned",
  )
