"""Tests for attn/nn/pretrained.py: a randomly initialised GPT-2 of `transformers`' own, copied into
attn's LanguageModel, gives transformers' logits and TransformerLens' cache (its TransformerBridge over
the same model), patterns and head-detector scores; bad configs and tensors are one line each."""

from __future__ import annotations

import numpy as np
import pytest

from attn.nn import pretrained

GPT2 = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  """(transformers' GPT2LMHeadModel, our model, our params) with the same random weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from attn.nn.models import LanguageModel

  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).eval()
  with torch.no_grad():  # Non-zero biases and norm parameters, so every term is exercised.
    for name, p in hf.named_parameters():
      if name.endswith("bias") or ".ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
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
