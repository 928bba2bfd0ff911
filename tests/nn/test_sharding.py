"""Tests for attn.nn.sharding: inside `logical_axis_names()` every named parameter of every model
carries one logical name per axis (from the project's vocabulary), the big ones are all named, and
outside it `init` returns plain arrays; the residual constraint is a no-op without a mesh."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn import sharding
from attn.nn.config import ModelConfig
from attn.nn.models import EncoderTagger, LanguageModel, Transformer

TOKENS = jnp.ones((2, 5), jnp.int32)


def _models():
  base = dict(vocab_size=24, d_model=16, num_heads=4, d_ff=32, dropout_rate=0.0, max_length=8)
  yield "seq2seq", Transformer(ModelConfig(**base)), (TOKENS, TOKENS)
  untied = ModelConfig(**{**base, "tie_output": False, "num_kv_heads": 2, "positions": "learned"})
  yield "lm (untied, grouped, learned positions)", LanguageModel(untied), (TOKENS,)
  tagger = ModelConfig(**{**base, "num_classes": 5, "crf": "free", "feature_buckets": 16})
  yield "tagger (features, crf)", EncoderTagger(tagger), (TOKENS, jnp.ones((2, 5, 3), jnp.int32))


@pytest.mark.parametrize(
  ("name", "model", "inputs"), list(_models()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_named_parameters_carry_one_known_name_per_axis(name, model, inputs):
  with sharding.logical_axis_names():
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)["params"]
  known = {*sharding.PARAMETER_AXES, None}
  named = unnamed = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(
    boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  ):
    where = f"{name}: {jax.tree_util.keystr(path)}"
    if isinstance(leaf, nn.LogicallyPartitioned):
      assert len(leaf.names) == leaf.value.ndim, where
      assert set(leaf.names) <= known, where
      named += int(np.prod(leaf.value.shape))
    else:
      unnamed += int(np.prod(leaf.shape))
  # Every matrix is named; what stays unnamed (norm scales, per-head scalars, the CRF's) is small.
  assert unnamed < 0.1 * named, (name, named, unnamed)


def test_outside_the_context_init_returns_plain_arrays():
  model = Transformer(ModelConfig(vocab_size=24, d_model=16, num_heads=4, d_ff=32))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), TOKENS, TOKENS)["params"]
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and not any(isinstance(x, nn.LogicallyPartitioned) for x in leaves)


def test_the_residual_constraint_is_a_no_op_without_a_mesh():
  x = jnp.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_array_equal(jax.jit(sharding.constrain_residual)(x), x)
  np.testing.assert_array_equal(sharding.constrain_residual(x[0]), x[0])
