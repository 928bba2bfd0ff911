"""Tests for the Transformer blocks and stacks in `attn.blocks`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn
from attn.nn.blocks import Decoder, DecoderBlock, Encoder, EncoderBlock, FeedForward
from attn.nn.config import ModelConfig
from attn.nn.models import attention_weights

B, T, S, D, H = 2, 5, 7, 16, 4
ATOL = 1e-5
CFG = ModelConfig(
  vocab_size=11,
  d_model=D,
  num_heads=H,
  d_ff=32,
  num_encoder_layers=2,
  num_decoder_layers=2,
  dropout_rate=0.1,
)
CAUSAL = attn.causal_mask(T)


def _normal(seed, shape):
  """Standard normal inputs from NumPy, which needs no XLA compilation per shape."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


X = _normal(0, (B, T, D))
ENC = _normal(1, (B, S, D))


def _init(module, *args, **kwargs):
  return module.init(jax.random.key(0), *args, **kwargs)


def _param_shapes(module, *args, **kwargs):
  """Parameter shapes from tracing `init` alone (no compilation)."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  return jax.tree_util.tree_map(lambda a: a.shape, variables["params"])


# Blocks.


def test_feed_forward_shapes_and_activation():
  params = _param_shapes(FeedForward(CFG), X)
  assert params["wi"] == {"kernel": (D, 32), "bias": (32,)}
  assert params["wo"] == {"kernel": (32, D), "bias": (D,)}
  assert set(params) == {"wi", "wo"}
  relu = FeedForward(CFG)
  variables = _init(relu, X)
  out = relu.apply(variables, X)
  assert out.shape == (B, T, D)
  gelu = FeedForward(CFG.replace(activation="gelu")).apply(variables, X)
  assert not np.allclose(out, gelu, atol=1e-4)


def _dense(p, x):
  return x @ p["kernel"] + p.get("bias", 0.0)


@pytest.mark.parametrize(
  "activation,fn",
  [
    ("relu", jax.nn.relu),
    ("gelu", lambda h: jax.nn.gelu(h, approximate=True)),
    ("gelu_exact", lambda h: jax.nn.gelu(h, approximate=False)),
    ("silu", jax.nn.silu),
  ],
)
@pytest.mark.parametrize("glu", [False, True])
def test_feed_forward_gated_and_activations_by_hand(activation, fn, glu):
  """ff_glu: wo(act(wi(x)) * wi_up(x)), "wi" the activated (gate) branch; else wo(act(wi(x)))."""
  module = FeedForward(CFG.replace(activation=activation, ff_glu=glu, use_bias=glu))
  params = _init(module, X)["params"]
  assert set(params) == ({"wi", "wi_up", "wo"} if glu else {"wi", "wo"})
  if glu:
    assert params["wi_up"]["kernel"].shape == (D, 32) and "bias" in params["wi_up"]
  params = jax.tree.map(lambda p: p + 0.1, params)  # Non-zero biases.
  h = fn(_dense(params["wi"], X))
  if glu:
    h = h * _dense(params["wi_up"], X)
  want = _dense(params["wo"], h)
  np.testing.assert_allclose(module.apply({"params": params}, X), want, atol=ATOL, rtol=1e-5)


def test_gelu_exact_differs_from_the_tanh_form():
  variables = _init(FeedForward(CFG.replace(activation="gelu")), X)
  tanh = FeedForward(CFG.replace(activation="gelu")).apply(variables, X * 3)
  erf = FeedForward(CFG.replace(activation="gelu_exact")).apply(variables, X * 3)
  assert not np.allclose(tanh, erf, atol=1e-6)


def test_encoder_block_shapes():
  block = EncoderBlock(CFG)
  variables = _init(block, X)
  assert set(variables["params"]) == {
    "self_attention",
    "self_attention_norm",
    "feed_forward",
    "feed_forward_norm",
  }
  out, weights = attention_weights(block, variables, X)
  assert out.shape == (B, T, D)
  assert weights.shape == (B, H, T, T)
  np.testing.assert_allclose(weights.sum(-1), np.ones((B, H, T)), atol=1e-5)
  np.testing.assert_allclose(block.apply(variables, X), out, atol=ATOL)


def test_decoder_block_shapes():
  block = DecoderBlock(CFG)
  variables = _init(block, X, ENC, self_mask=CAUSAL)
  assert set(variables["params"]) == {
    "self_attention",
    "self_attention_norm",
    "cross_attention",
    "cross_attention_norm",
    "feed_forward",
    "feed_forward_norm",
  }
  out, weights = attention_weights(block, variables, X, ENC, self_mask=CAUSAL)
  assert out.shape == (B, T, D)
  assert set(weights) == {"self", "cross"}
  assert weights["self"].shape == (B, H, T, T)
  assert weights["cross"].shape == (B, H, T, S)
  upper = np.triu(np.ones((T, T), bool), k=1)
  assert np.all(np.asarray(weights["self"])[..., upper] == 0)
  np.testing.assert_allclose(weights["cross"].sum(-1), np.ones((B, H, T)), atol=1e-5)


def test_decoder_block_without_cross_attention():
  block = DecoderBlock(CFG, cross_attention=False)
  variables = _init(block, X, self_mask=CAUSAL)
  assert set(variables["params"]) == {
    "self_attention",
    "self_attention_norm",
    "feed_forward",
    "feed_forward_norm",
  }
  out, weights = attention_weights(block, variables, X, self_mask=CAUSAL)
  assert out.shape == (B, T, D)
  assert set(weights) == {"self"}
  assert weights["self"].shape == (B, H, T, T)


def test_decoder_block_with_cross_attention_requires_encoded():
  with pytest.raises(ValueError, match="encoded"):
    _param_shapes(DecoderBlock(CFG), X, self_mask=CAUSAL)
  with pytest.raises(ValueError, match="encoded"):
    _param_shapes(Decoder(CFG), X, self_mask=CAUSAL)


def test_encoder_block_post_and_pre_ln_differ():
  post = EncoderBlock(CFG)
  pre = EncoderBlock(CFG.replace(norm="pre"))
  variables = _init(post, X)
  # The same parameters serve both: only where the norms sit differs.
  assert _param_shapes(pre, X) == _param_shapes(post, X)
  out_post = post.apply(variables, X)
  out_pre = pre.apply(variables, X)
  assert np.all(np.isfinite(out_post)) and np.all(np.isfinite(out_pre))
  assert not np.allclose(out_post, out_pre, atol=1e-3)
  # Post-LN ends in a layer norm (initialised to scale 1, bias 0): every token is normalised.
  np.testing.assert_allclose(out_post.mean(-1), np.zeros((B, T)), atol=1e-4)
  np.testing.assert_allclose(out_post.var(-1), np.ones((B, T)), atol=1e-2)
  # Pre-LN ends in a residual sum: its tokens are not normalised.
  assert not np.allclose(out_pre.var(-1), np.ones((B, T)), atol=1e-2)


def test_decoder_block_post_and_pre_ln_differ():
  post = DecoderBlock(CFG)
  pre = DecoderBlock(CFG.replace(norm="pre"))
  variables = _init(post, X, ENC, self_mask=CAUSAL)
  out_post = post.apply(variables, X, ENC, self_mask=CAUSAL)
  out_pre = pre.apply(variables, X, ENC, self_mask=CAUSAL)
  assert np.all(np.isfinite(out_post)) and np.all(np.isfinite(out_pre))
  assert not np.allclose(out_post, out_pre, atol=1e-3)
  np.testing.assert_allclose(out_post.var(-1), np.ones((B, T)), atol=1e-2)
  assert not np.allclose(out_pre.var(-1), np.ones((B, T)), atol=1e-2)


# Stacks.


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("n", [1, 3])
def test_encoder_layers_and_final_norm(norm, n):
  cfg = CFG.replace(norm=norm, num_encoder_layers=n)
  params = _param_shapes(Encoder(cfg), X)
  layers = {f"layer_{i}" for i in range(n)}
  assert set(params) == (layers | {"final_norm"} if norm == "pre" else layers)
  if norm == "pre":
    assert params["final_norm"] == {"scale": (D,), "bias": (D,)}


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("cross_attention", [True, False])
def test_decoder_layers_and_final_norm(norm, n, cross_attention):
  cfg = CFG.replace(norm=norm, num_decoder_layers=n)
  decoder = Decoder(cfg, cross_attention=cross_attention)
  params = _param_shapes(decoder, X, ENC if cross_attention else None, self_mask=CAUSAL)
  layers = {f"layer_{i}" for i in range(n)}
  assert set(params) == (layers | {"final_norm"} if norm == "pre" else layers)
  for i in range(n):
    has_cross = {"cross_attention", "cross_attention_norm"} <= set(params[f"layer_{i}"])
    assert has_cross == cross_attention
    if cross_attention:
      assert params[f"layer_{i}"]["cross_attention"]["key"]["kernel"] == (D, H, D // H)


def test_encoder_num_layers_follows_the_config():
  # Different layer counts must give different functions, so the count is really used.
  shallow = Encoder(CFG.replace(num_encoder_layers=1))
  deep = Encoder(CFG.replace(num_encoder_layers=2))
  variables = _init(deep, X)
  assert set(variables["params"]) == {"layer_0", "layer_1"}
  out_deep = deep.apply(variables, X)
  first = {"params": {"layer_0": variables["params"]["layer_0"]}}
  out_shallow = shallow.apply(first, X)
  assert not np.allclose(out_deep, out_shallow, atol=1e-3)
  # The deep stack is the shallow one followed by the second block.
  second = EncoderBlock(CFG).apply({"params": variables["params"]["layer_1"]}, out_shallow)
  np.testing.assert_allclose(out_deep, second, atol=ATOL)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_shapes_and_weights(norm):
  encoder = Encoder(CFG.replace(norm=norm))
  variables = _init(encoder, X)
  mask = attn.padding_mask(lengths=jnp.array([T, 3]), max_length=T)
  out, weights = attention_weights(encoder, variables, X, mask=mask)
  assert out.shape == (B, T, D)
  assert np.all(np.isfinite(out))
  assert isinstance(weights, list) and len(weights) == CFG.num_encoder_layers
  for w in weights:
    assert w.shape == (B, H, T, T)
    np.testing.assert_allclose(w.sum(-1), np.ones((B, H, T)), atol=1e-5)
    assert np.all(np.asarray(w)[1, ..., 3:] == 0)  # The padded keys of sequence 1.
  np.testing.assert_allclose(encoder.apply(variables, X, mask=mask), out, atol=ATOL)


def test_encoder_post_and_pre_ln_differ():
  post = Encoder(CFG)
  pre = Encoder(CFG.replace(norm="pre"))
  pre_variables = _init(pre, X)
  post_params = {k: v for k, v in pre_variables["params"].items() if k != "final_norm"}
  out_post = post.apply({"params": post_params}, X)
  out_pre = pre.apply(pre_variables, X)
  assert np.all(np.isfinite(out_post)) and np.all(np.isfinite(out_pre))
  assert not np.allclose(out_post, out_pre, atol=1e-3)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_shapes_and_weights(norm):
  decoder = Decoder(CFG.replace(norm=norm))
  variables = _init(decoder, X, ENC, self_mask=CAUSAL)
  out, weights = attention_weights(decoder, variables, X, ENC, self_mask=CAUSAL)
  assert out.shape == (B, T, D)
  assert np.all(np.isfinite(out))
  assert isinstance(weights, list) and len(weights) == CFG.num_decoder_layers
  for w in weights:
    assert set(w) == {"self", "cross"}
    assert w["self"].shape == (B, H, T, T)
    assert w["cross"].shape == (B, H, T, S)


def test_decoder_without_cross_attention_shapes_and_weights():
  decoder = Decoder(CFG, cross_attention=False)
  variables = _init(decoder, X, self_mask=CAUSAL)
  out, weights = attention_weights(decoder, variables, X, self_mask=CAUSAL)
  assert out.shape == (B, T, D)
  assert len(weights) == CFG.num_decoder_layers
  for w in weights:
    assert set(w) == {"self"}
    assert w["self"].shape == (B, H, T, T)


def test_decoder_post_and_pre_ln_differ():
  post = Decoder(CFG)
  pre = Decoder(CFG.replace(norm="pre"))
  pre_variables = _init(pre, X, ENC, self_mask=CAUSAL)
  post_params = {k: v for k, v in pre_variables["params"].items() if k != "final_norm"}
  out_post = post.apply({"params": post_params}, X, ENC, self_mask=CAUSAL)
  out_pre = pre.apply(pre_variables, X, ENC, self_mask=CAUSAL)
  assert not np.allclose(out_post, out_pre, atol=1e-3)


# Dropout.


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_dropout_only_when_not_deterministic(stack):
  cfg = CFG.replace(dropout_rate=0.3, attention_dropout_rate=0.3)
  if stack == "encoder":
    module, args, kwargs = Encoder(cfg), (X,), {}
  else:
    module, args, kwargs = Decoder(cfg), (X, ENC), {"self_mask": CAUSAL}
  variables = _init(module, *args, **kwargs)
  clean = module.apply(variables, *args, **kwargs)
  rngs = {"dropout": jax.random.key(3)}
  same = module.apply(variables, *args, **kwargs, deterministic=True, rngs=rngs)
  np.testing.assert_allclose(same, clean, atol=ATOL)
  dropped = module.apply(variables, *args, **kwargs, deterministic=False, rngs=rngs)
  assert dropped.shape == clean.shape
  assert np.all(np.isfinite(dropped))
  assert not np.allclose(dropped, clean, atol=1e-3)
  other = module.apply(
    variables, *args, **kwargs, deterministic=False, rngs={"dropout": jax.random.key(4)}
  )
  assert not np.allclose(other, dropped, atol=1e-3)
  # With both rates at zero, training mode is the same function.
  quiet = module.clone(config=cfg.replace(dropout_rate=0.0, attention_dropout_rate=0.0))
  np.testing.assert_allclose(
    quiet.apply(variables, *args, **kwargs, deterministic=False, rngs=rngs), clean, atol=ATOL
  )


# Causality.


def _position_jacobian(module, variables, *args, **kwargs):
  """|d out[t] / d x[s]| summed over batch and features: [T, S] for the first sequence."""

  def f(x):
    return module.apply(variables, x, *args, **kwargs)[0]

  jac = jax.jit(jax.jacrev(f))(X)  # [T, D, B, T, D]
  return np.abs(np.asarray(jac[:, :, 0])).sum(axis=(1, 3))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_is_causal_by_gradient(norm):
  decoder = Decoder(CFG.replace(norm=norm))
  variables = _init(decoder, X, ENC, self_mask=CAUSAL)
  jac = _position_jacobian(decoder, variables, ENC, self_mask=CAUSAL)
  future = np.triu(np.ones((T, T), bool), k=1)
  assert np.all(jac[future] == 0)
  assert np.all(jac[~future] > 0)


def test_decoder_is_causal_without_a_mask_while_the_encoder_sees_the_future():
  """A decoder block's self-attention is masked self-attention by definition (is_causal), so no mask
  is needed; the encoder, with no mask, lets later tokens reach earlier ones (the check can fail)."""
  future = np.triu(np.ones((T, T), bool), k=1)
  decoder = Decoder(CFG, cross_attention=False)
  variables = _init(decoder, X)
  jac = _position_jacobian(decoder, variables)
  assert np.all(jac[future] == 0)
  assert np.all(jac[~future] > 0)
  encoder = Encoder(CFG)
  assert np.all(_position_jacobian(encoder, _init(encoder, X))[future] > 0)


def test_blocks_record_the_largest_activation_and_the_kurtosis_of_their_output():
  """With "diagnostics" mutable, each block records its output's largest |entry| and the fourth
  standardised moment over D of each token's residual, averaged over the real tokens (padding, here
  the last token of example 1, counts in neither); an encoder's blocks take the real tokens from
  their mask."""
  config = CFG.replace(dropout_rate=0.0)
  block = DecoderBlock(config, cross_attention=False)
  valid = jnp.array([[True] * T, [True] * (T - 1) + [False]])
  # init makes every collection mutable, "diagnostics" too: one pass gives outputs and statistics.
  out, variables = block.init_with_output(jax.random.key(0), X, self_key_valid=valid)
  stats = variables["diagnostics"]
  real = np.asarray(out)[np.asarray(valid)]  # [tokens, D]
  centred = real - real.mean(-1, keepdims=True)
  kurtosis = (centred**4).mean(-1) / (centred**2).mean(-1) ** 2
  np.testing.assert_allclose(stats["max_activation"][0], np.abs(real).max(), rtol=1e-6)
  np.testing.assert_allclose(stats["activation_kurtosis"][0], kurtosis.mean(), rtol=1e-5)
  assert {"entropy", "sink_rate", "sparsity"} <= set(stats["self_attention"])
  encoder = Encoder(config)
  mask = attn.padding_mask(jnp.array([T, T - 2]), max_length=T)
  names = {"max_activation", "activation_kurtosis", "self_attention"}
  assert set(_init(encoder, X, mask=mask)["diagnostics"]["layer_1"]) == names
