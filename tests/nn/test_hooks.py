"""Tests for attn/nn/hooks.py: the cache's names and identities (the residual stream is the sum of
what the sublayers write; each head's result sums to the attention output), a hook that returns its
input changes no bit, hooks replace under jit, and a plain apply makes no hook point."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn import hooks, models
from attn.nn.config import ModelConfig

TOKENS = jnp.array([[1, 5, 6, 7, 5, 6], [1, 8, 9, 3, 8, 9]], jnp.int32)


def _config(**changes) -> ModelConfig:
  fields = dict(
    vocab_size=11, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=2, num_decoder_layers=2,
    max_length=16, norm="pre", positions="learned", num_classes=3, dropout_rate=0.0,
  )  # fmt: skip
  return ModelConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def lm():
  model = models.LanguageModel(_config())
  params = jax.jit(model.init)(jax.random.key(0), TOKENS)["params"]
  return model, params


def test_the_language_model_names_every_activation_in_order(lm):
  model, params = lm
  names = hooks.names(model, params, TOKENS)
  block = [
    "resid_pre",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.pattern",
    "attn.z",
    "attn_out",
    "resid_mid",
    "mlp_out",
    "resid_post",
  ]
  assert names == [
    "embed",
    "pos_embed",
    *[f"blocks.{i}.{n}" for i in range(2) for n in block],
    "ln_final",
    "logits",
  ]


def test_the_cache_holds_the_residual_streams_sums(lm):
  model, params = lm
  logits, cache = jax.jit(lambda p, t: hooks.run_with_cache(model, p, t))(params, TOKENS)
  np.testing.assert_array_equal(cache["logits"], logits)
  np.testing.assert_allclose(cache["blocks.0.resid_pre"], cache["embed"] + cache["pos_embed"], rtol=1e-6)
  for i in range(2):
    b = f"blocks.{i}."
    np.testing.assert_allclose(
      cache[b + "resid_mid"], cache[b + "resid_pre"] + cache[b + "attn_out"], atol=1e-5
    )
    np.testing.assert_allclose(
      cache[b + "resid_post"], cache[b + "resid_mid"] + cache[b + "mlp_out"], atol=1e-5
    )
    attention = params["decoder"][f"layer_{i}"]["self_attention"]
    results = hooks.head_results(cache[b + "attn.z"], attention)  # [B, T, H, D]
    np.testing.assert_allclose(
      results.sum(-2) + attention["out"]["bias"], cache[b + "attn_out"], atol=1e-5
    )
    pattern = cache[b + "attn.pattern"]
    assert pattern.shape == (2, 2, 6, 6)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.triu(pattern, 1).max()) == 0.0  # Causal.
  # The same numbers as the plain apply, which builds no hook point.
  np.testing.assert_allclose(logits, model.apply({"params": params}, TOKENS), atol=1e-5)
  _, only = hooks.run_with_cache(model, params, TOKENS, names=["blocks.1.attn.pattern"])
  assert list(only) == ["blocks.1.attn.pattern"]


def test_a_hook_that_returns_its_input_changes_no_bit(lm):
  model, params = lm
  names = hooks.names(model, params, TOKENS)
  run = jax.jit(lambda p, t: hooks.run_with_cache(model, p, t)[0])
  hooked = jax.jit(lambda p, t: hooks.run_with_hooks(model, p, t, hooks={n: lambda x: x for n in names}))
  np.testing.assert_array_equal(hooked(params, TOKENS), run(params, TOKENS))


def test_a_hook_replaces_the_activation_and_what_follows(lm):
  model, params = lm
  _, clean = hooks.run_with_cache(model, params, TOKENS)

  # Zeroing every head's z of layer 1 leaves only the output bias in its attention output.
  def zero(x):
    return jnp.zeros_like(x)

  logits, cache = hooks._apply(model, params, (TOKENS,), {"blocks.1.attn.z": zero}, None, {})
  bias = params["decoder"]["layer_1"]["self_attention"]["out"]["bias"]
  np.testing.assert_allclose(
    cache["blocks.1.attn_out"], jnp.broadcast_to(bias, clean["blocks.1.attn_out"].shape), atol=1e-6
  )
  np.testing.assert_array_equal(
    cache["blocks.1.resid_pre"], clean["blocks.1.resid_pre"]
  )  # Before it: the same.
  assert not np.allclose(logits, clean["logits"])
  # A pattern hook feeds the values: uniform causal attention in layer 0.
  T = TOKENS.shape[1]
  uniform = jnp.tril(jnp.ones((T, T))) / jnp.arange(1, T + 1)[:, None]
  _, patched = hooks._apply(
    model,
    params,
    (TOKENS,),
    {"blocks.0.attn.pattern": lambda p: jnp.broadcast_to(uniform, p.shape)},
    None,
    {},
  )
  v = patched["blocks.0.attn.v"]  # [B, S, H, K]
  np.testing.assert_allclose(
    patched["blocks.0.attn.z"], jnp.einsum("ts,bshk->bthk", uniform, v), atol=1e-5
  )


def test_an_unknown_name_is_one_line(lm):
  model, params = lm
  with pytest.raises(
    ValueError, match=r"^hooks: no hook point named 'blocks\.7\.attn\.z' in this model; it has "
  ):
    hooks.run_with_hooks(model, params, TOKENS, hooks={"blocks.7.attn.z": lambda x: x})


def test_a_plain_apply_makes_no_hook_point(lm):
  model, params = lm
  _, state = model.apply({"params": params}, TOKENS, mutable=True)
  assert "hook" not in str(jax.tree_util.tree_structure(state))
  assert not hooks.tracing()


def test_the_encoder_decoder_and_the_tagger_name_their_stacks():
  config = _config(num_encoder_layers=1, num_decoder_layers=1)
  seq2seq = models.Transformer(config)
  params = seq2seq.init(jax.random.key(0), TOKENS, TOKENS[:, :4])["params"]
  names = set(hooks.names(seq2seq, params, TOKENS, TOKENS[:, :4]))
  assert {
    "encoder.blocks.0.attn.pattern",
    "decoder.blocks.0.cross_attn.pattern",
    "decoder.blocks.0.resid_mid_cross",
    "decoder.blocks.0.cross_attn_out",
    "logits",
  } <= names
  _, cache = hooks.run_with_cache(
    seq2seq, params, TOKENS, TOKENS[:, :4], names=["decoder.blocks.0.cross_attn.pattern"]
  )
  assert cache["decoder.blocks.0.cross_attn.pattern"].shape == (2, 2, 4, 6)
  # One embedder serves both stacks; each call has its own names, and each feeds its stack.
  assert {"encoder.embed", "encoder.pos_embed", "decoder.embed", "decoder.pos_embed"} <= names
  assert not {"embed", "pos_embed"} & names
  _, cache = hooks.run_with_cache(seq2seq, params, TOKENS, TOKENS[:, :4])
  for stack, T in (("encoder", 6), ("decoder", 4)):
    assert cache[f"{stack}.embed"].shape == cache[f"{stack}.pos_embed"].shape == (2, T, 16)
    np.testing.assert_allclose(
      cache[f"{stack}.blocks.0.resid_pre"],
      cache[f"{stack}.embed"] + cache[f"{stack}.pos_embed"],
      rtol=1e-6,
    )
  tagger = models.EncoderTagger(config)
  params = tagger.init(jax.random.key(0), TOKENS)["params"]
  names = hooks.names(tagger, params, TOKENS)
  assert "blocks.0.attn.pattern" in names and names[-1] == "logits"


def test_an_attention_only_model_has_no_feed_forward():
  model = models.LanguageModel(_config(d_ff=0))
  params = model.init(jax.random.key(0), TOKENS)["params"]
  assert not [k for k in params["decoder"]["layer_0"] if k.startswith("feed_forward")]
  logits, cache = hooks.run_with_cache(model, params, TOKENS)
  assert "blocks.0.mlp_out" not in cache
  np.testing.assert_array_equal(cache["blocks.0.resid_post"], cache["blocks.0.resid_mid"])
  np.testing.assert_allclose(logits, model.apply({"params": params}, TOKENS), atol=1e-5)
