"""Tests for attn/nn/lens.py: the logit lens of the last residual is the model's logits, and the
direct logit attribution's parts sum to them, for tied and untied heads, LayerNorm and RMSNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn import hooks, lens, models
from attn.nn.config import ModelConfig

TOKENS = jnp.array([[1, 5, 6, 7, 5, 6], [1, 8, 9, 3, 8, 9]], jnp.int32)


def _model(**changes):
  fields = dict(
    vocab_size=11, d_model=16, num_heads=2, d_ff=32, num_decoder_layers=2, max_length=16,
    norm="pre", positions="learned", dropout_rate=0.0,
  )  # fmt: skip
  model = models.LanguageModel(ModelConfig(**{**fields, **changes}))
  params = model.init(jax.random.key(0), TOKENS)["params"]
  # Non-zero biases and norm parameters, so the constant terms are exercised too.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
    tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  )
  return model, params


@pytest.mark.parametrize(
  "changes",
  [
    {},
    {"tie_output": False},
    {"norm_kind": "rms", "use_bias": False},
    {"d_ff": 0},
    {"norm_epsilon": 0.5},
    {"norm_kind": "rms", "norm_epsilon": 0.5},  # Large: used everywhere.
  ],
)
def test_the_lens_of_the_last_layer_is_the_logits_and_the_attribution_sums_to_them(changes):
  model, params = _model(**changes)
  logits, cache = hooks.run_with_cache(model, params, TOKENS)
  last = lens.logit_lens(model, params, cache["blocks.1.resid_post"])
  np.testing.assert_allclose(last, logits, atol=1e-5)
  first = lens.logit_lens(model, params, cache["blocks.0.resid_post"])
  assert first.shape == logits.shape and not np.allclose(first, logits, atol=1e-3)
  parts = lens.direct_logit_attribution(model, params, cache)
  assert {"embed", "blocks.0.attn.head_0", "blocks.1.attn.head_1", "constant"} <= set(parts)
  assert ("blocks.0.mlp_out" in parts) == bool(model.config.d_ff)
  np.testing.assert_allclose(sum(parts.values()), logits, atol=1e-5)


def test_the_lens_refuses_what_it_cannot_read():
  model, params = _model(norm="post")
  _, cache = hooks.run_with_cache(model, params, TOKENS)
  np.testing.assert_allclose(
    lens.logit_lens(model, params, cache["blocks.1.resid_post"]), cache["logits"], atol=1e-5
  )
  with pytest.raises(ValueError, match=r"^direct_logit_attribution: needs norm='pre'"):
    lens.direct_logit_attribution(model, params, cache)
  tagger = models.EncoderTagger(
    ModelConfig(vocab_size=11, d_model=16, num_heads=2, d_ff=16, num_classes=3)
  )
  with pytest.raises(ValueError, match=r"^lens: needs a LanguageModel"):
    lens.logit_lens(tagger, {}, cache["embed"])
