"""Tests for attn.models: Embedder, Transformer, EncoderTagger and LanguageModel.

Small configs only. Forward passes go through module-scoped jitted functions so that each shape and
config compiles once; tests that share a fixture reuse its compiled forward pass.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.core import crf as crf_lib
from attn.core.positions import sinusoidal_positions
from attn.nn.blocks import Decoder
from attn.nn.config import ModelConfig
from attn.nn.models import (
  CharEncoder,
  Embedder,
  EncoderTagger,
  LanguageModel,
  TaggerOutput,
  Transformer,
  attention_weights,
  encoder_self_mask,
  recorded_weights,
  weights_by_path,
)

V, D, H, C = 30, 16, 2, 5
NUM_ENCODER_LAYERS, NUM_DECODER_LAYERS = 1, 1

# Source and target use disjoint token sets, so changing a table row shows which side reads it.
# The second source row ends in padding (pad_id = 0).
SRC = jnp.array([[11, 12, 13, 14, 15, 16], [17, 18, 19, 0, 0, 0]], jnp.int32)
TGT = jnp.array([[1, 3, 4, 5, 6], [1, 7, 8, 3, 4]], jnp.int32)
SRC_VALID = np.asarray(SRC) != 0
B, S = SRC.shape
T = TGT.shape[1]


def make_config(**changes) -> ModelConfig:
  fields = dict(
    vocab_size=V,
    num_classes=C,
    d_model=D,
    num_heads=H,
    d_ff=32,
    num_encoder_layers=NUM_ENCODER_LAYERS,
    num_decoder_layers=NUM_DECODER_LAYERS,
    dropout_rate=0.0,
    max_length=16,
  )
  fields.update(changes)
  return ModelConfig(**fields)


def param_paths(params) -> set[str]:
  """'a/b/c' for every parameter leaf."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return {"/".join(str(k.key) for k in path) for path, _ in leaves}


def param_shapes(model, *args) -> dict:
  """The parameter tree as ShapeDtypeStructs (traced only, nothing compiled)."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"]


def _is_decoder_call(module, method_name) -> bool:
  return isinstance(module, Decoder) and method_name == "__call__"


def make_forward(model: Transformer):
  """A jitted (params, src, tgt) -> (logits, weights, decoder output before the output head)."""

  @jax.jit
  def forward(params, src, tgt):
    logits, state = model.apply(
      {"params": params},
      src,
      tgt,
      capture_intermediates=_is_decoder_call,
      mutable=["intermediates"],
    )
    # The attention layers' records and the Decoder's captured output share the collection.
    weights = recorded_weights(model, state["intermediates"])
    (decoder_out,) = state["intermediates"]["decoder"]["__call__"]
    return logits, weights, decoder_out

  return forward


@pytest.fixture(scope="module")
def transformer():
  """The tied, sinusoidal, post-LN Transformer: (model, params, forward)."""
  model = Transformer(make_config())
  params = jax.jit(model.init)(jax.random.PRNGKey(0), SRC, TGT)["params"]
  return model, params, make_forward(model)


@pytest.fixture(scope="module")
def untied_transformer():
  model = Transformer(make_config(tie_output=False))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), SRC, TGT)["params"]
  return model, params, make_forward(model)


@pytest.fixture(scope="module")
def base_outputs(transformer):
  _, params, forward = transformer
  return forward(params, SRC, TGT)


# --------------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["none", "sinusoidal", "learned"])
def test_embedder_scales_tokens_by_sqrt_d_and_adds_positions(positions):
  d_model = 32
  config = make_config(d_model=d_model, positions=positions, max_length=8, dropout_rate=0.0)
  tokens = jnp.array([[3, 7, 7, 29], [0, 5, 3, 3]], jnp.int32)
  embedder = Embedder(config)
  variables = embedder.init(jax.random.PRNGKey(2), tokens)
  out = np.asarray(embedder.apply(variables, tokens))
  table = np.asarray(variables["params"]["tokens"]["embedding"])
  assert table.shape == (V, d_model)
  expected = table[np.asarray(tokens)] * np.sqrt(d_model)
  if positions == "sinusoidal":
    expected = expected + np.asarray(sinusoidal_positions(tokens.shape[1], d_model))
  elif positions == "learned":
    position_table = np.asarray(variables["params"]["positions"]["embedding"])
    assert position_table.shape == (8, d_model)
    expected = expected + position_table[: tokens.shape[1]]
  else:
    assert set(variables["params"]) == {"tokens"}
    # Without positions the same token gets the same vector wherever it stands.
    np.testing.assert_array_equal(out[0, 1], out[0, 2])
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_transformer_logits_shape(base_outputs):
  logits, _, decoder_out = base_outputs
  assert logits.shape == (B, T, V)
  assert logits.dtype == jnp.float32
  assert decoder_out.shape == (B, T, D)
  assert np.all(np.isfinite(logits))


def test_transformer_has_one_embedding_table(transformer):
  _, params, _ = transformer
  embeddings = {p for p in param_paths(params) if p.endswith("embedding")}
  assert embeddings == {"embedder/tokens/embedding"}
  assert set(params["embedder"]) == {"tokens"}
  assert params["embedder"]["tokens"]["embedding"].shape == (V, D)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_shared_table_feeds_both_encoder_and_decoder(untied_transformer):
  """With an untied output, the table reaches the logits only through the encoder's and the
  decoder's inputs: changing rows of source-only or of target-only tokens changes the logits;
  changing unused rows, or the pad row (source padding is masked), does not."""
  _, params, forward = untied_transformer
  table = params["embedder"]["tokens"]["embedding"]
  logits, _, _ = forward(params, SRC, TGT)

  def logits_with_rows_changed(rows):
    new_table = table.at[np.asarray(rows)].add(0.5)
    return forward({**params, "embedder": {"tokens": {"embedding": new_table}}}, SRC, TGT)[0]

  src_tokens, tgt_tokens = set(np.asarray(SRC).ravel()), set(np.asarray(TGT).ravel())
  src_only = sorted(src_tokens - tgt_tokens - {0})
  tgt_only = sorted(tgt_tokens - src_tokens)
  unused = sorted(set(range(V)) - src_tokens - tgt_tokens)
  assert src_only and tgt_only and unused
  assert np.all(np.max(np.abs(logits_with_rows_changed(src_only) - logits), axis=(1, 2)) > 1e-4)
  assert np.all(np.max(np.abs(logits_with_rows_changed(tgt_only) - logits), axis=(1, 2)) > 1e-4)
  np.testing.assert_array_equal(logits_with_rows_changed(unused), logits)
  np.testing.assert_allclose(logits_with_rows_changed([0]), logits, rtol=0, atol=1e-6)


def test_tied_output_reuses_the_embedding_table(transformer, base_outputs):
  _, params, _ = transformer
  assert "head" not in params
  assert not any("logits" in p for p in param_paths(params))
  logits, _, decoder_out = base_outputs
  table = params["embedder"]["tokens"]["embedding"]
  expected = np.einsum("btd,vd->btv", np.asarray(decoder_out), np.asarray(table))
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_untied_output_adds_a_logits_dense(untied_transformer):
  _, params, forward = untied_transformer
  assert {p for p in param_paths(params) if p.startswith("head/")} == {
    "head/logits/kernel",
    "head/logits/bias",
  }
  kernel = np.asarray(params["head"]["logits"]["kernel"])
  bias = np.asarray(params["head"]["logits"]["bias"])
  assert kernel.shape == (D, V) and bias.shape == (V,)
  logits, _, decoder_out = forward(params, SRC, TGT)
  decoder_out = np.asarray(decoder_out)
  np.testing.assert_allclose(logits, decoder_out @ kernel + bias, rtol=1e-5, atol=1e-5)
  table = np.asarray(params["embedder"]["tokens"]["embedding"])
  assert not np.allclose(logits, decoder_out @ table.T, atol=1e-3)


def test_position_kinds_change_params_and_logits(transformer, base_outputs):
  shapes = {
    kind: param_shapes(Transformer(make_config(positions=kind)), SRC, TGT)
    for kind in ("sinusoidal", "learned", "none")
  }
  paths = {kind: param_paths(tree) for kind, tree in shapes.items()}
  assert paths["learned"] - paths["sinusoidal"] == {"embedder/positions/embedding"}
  assert paths["sinusoidal"] == paths["none"]
  assert shapes["learned"]["embedder"]["positions"]["embedding"].shape == (16, D)  # max_length.
  # The same parameters without positions give other logits: the sinusoids were doing something.
  _, params, _ = transformer
  none_logits, _, _ = make_forward(Transformer(make_config(positions="none")))(params, SRC, TGT)
  assert np.max(np.abs(none_logits - base_outputs[0])) > 1e-3


@pytest.mark.parametrize("cut", [1, 3])
def test_transformer_decoder_is_causal(transformer, base_outputs, cut):
  _, params, forward = transformer
  changed = TGT.at[:, cut:].set(jnp.array([20, 21, 22, 23, 24])[: T - cut])
  logits, _, _ = forward(params, SRC, changed)
  np.testing.assert_allclose(logits[:, :cut], base_outputs[0][:, :cut], rtol=0, atol=1e-6)
  assert np.max(np.abs(logits[:, cut:] - base_outputs[0][:, cut:])) > 1e-3


def test_transformer_ignores_appended_source_padding(transformer, base_outputs):
  _, params, forward = transformer
  longer = jnp.concatenate([SRC, jnp.zeros((B, 3), jnp.int32)], axis=1)
  logits, _, _ = forward(params, longer, TGT)
  np.testing.assert_allclose(logits, base_outputs[0], rtol=0, atol=1e-5)
  # The source does matter: changing a real token changes every row's logits.
  logits, _, _ = forward(params, SRC.at[:, 0].set(25), TGT)
  assert np.all(np.max(np.abs(logits - base_outputs[0]), axis=(1, 2)) > 1e-4)


def src_keys(shape) -> np.ndarray:
  """SRC's real (non-pad) tokens as keys, broadcast to weights of `shape` [B, H, T, S]."""
  return np.broadcast_to(SRC_VALID[:, None, None], shape)


def test_transformer_attention_weights(base_outputs):
  _, weights, _ = base_outputs
  assert set(weights) == {"encoder", "decoder"}
  assert len(weights["encoder"]) == NUM_ENCODER_LAYERS
  assert len(weights["decoder"]) == NUM_DECODER_LAYERS
  for w in weights["encoder"]:
    assert w.shape == (B, H, S, S)
    np.testing.assert_allclose(np.sum(w, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(w)[~src_keys(w.shape)], 0)  # Pad keys get no weight.
  lower = np.tril(np.ones((T, T), bool))
  for layer in weights["decoder"]:
    assert set(layer) == {"self", "cross"}
    self_w, cross_w = np.asarray(layer["self"]), np.asarray(layer["cross"])
    assert self_w.shape == (B, H, T, T)
    assert cross_w.shape == (B, H, T, S)
    np.testing.assert_allclose(np.sum(self_w, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(cross_w, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(self_w[..., ~lower], 0)  # No query sees a later target token.
    np.testing.assert_array_equal(cross_w[~src_keys(cross_w.shape)], 0)


def test_attention_weights_have_one_entry_per_layer():
  model = Transformer(make_config(num_encoder_layers=2, num_decoder_layers=3))
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(model.init, key, SRC, TGT)
  assert set(variables) == {"params", "diagnostics"}  # init records no weights.
  out = jax.eval_shape(lambda v, src, tgt: attention_weights(model, v, src, tgt), variables, SRC, TGT)
  logits, weights = out
  assert logits.shape == (B, T, V)
  assert [w.shape for w in weights["encoder"]] == [(B, H, S, S)] * 2
  assert [{k: w.shape for k, w in layer.items()} for layer in weights["decoder"]] == [
    {"self": (B, H, T, T), "cross": (B, H, T, S)}
  ] * 3
  encoded = jax.eval_shape(
    lambda v, src: attention_weights(model, v, src, method=Transformer.encode), variables, SRC
  )
  assert encoded[0].shape == (B, S, D)
  assert [w.shape for w in encoded[1]] == [(B, H, S, S)] * 2
  # The recorded names, stable for caches and hooks: the module path of each attention layer.
  _, state = jax.eval_shape(lambda v: model.apply(v, SRC, TGT, mutable=["intermediates"]), variables)
  assert {k: w.shape for k, w in weights_by_path(state["intermediates"]).items()} == {
    **{f"encoder/layer_{i}/self_attention": (B, H, S, S) for i in range(2)},
    **{f"decoder/layer_{i}/self_attention": (B, H, T, T) for i in range(3)},
    **{f"decoder/layer_{i}/cross_attention": (B, H, T, S) for i in range(3)},
  }


@pytest.mark.parametrize("kind", ["seq2seq", "tagger", "crf_tagger", "lm", "flash_lm"])
def test_recording_weights_changes_no_output(kind):
  """A plain forward pass (nothing mutable) and one that records the weights give the same outputs,
  bit for bit, under jit; the weights have each model's structure."""
  if kind == "seq2seq":
    model, inputs = Transformer(make_config()), (SRC, TGT)
  elif kind in ("tagger", "crf_tagger"):
    crf = "free" if kind == "crf_tagger" else "none"
    model, inputs = EncoderTagger(make_config(crf=crf)), (TAG_TOKENS,)
  else:
    implementation = "flash" if kind == "flash_lm" else None
    model, inputs = LanguageModel(make_config(attention_implementation=implementation)), (LM_TOKENS,)
  params = jax.jit(model.init)(jax.random.PRNGKey(3), *inputs)["params"]
  plain = jax.jit(lambda p, *x: model.apply({"params": p}, *x))(params, *inputs)
  recorded, weights = jax.jit(lambda p, *x: attention_weights(model, {"params": p}, *x))(params, *inputs)
  assert jax.tree.structure(recorded) == jax.tree.structure(plain)
  for got, want in zip(jax.tree.leaves(recorded), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(got, want)
  if kind == "seq2seq":
    assert set(weights) == {"encoder", "decoder"}
  elif kind in ("tagger", "crf_tagger"):
    assert [w.shape for w in weights] == [(2, H, 5, 5)] * NUM_ENCODER_LAYERS
  else:
    T_ = LM_TOKENS.shape[1]
    assert [{k: w.shape for k, w in layer.items()} for layer in weights] == [
      {"self": (2, H, T_, T_)}
    ] * NUM_DECODER_LAYERS
    np.testing.assert_array_equal(
      np.asarray(weights[0]["self"])[..., ~np.tril(np.ones((T_, T_), bool))], 0
    )


def test_tagger_weights_are_the_core_weights_of_its_first_layer():
  """The first encoder layer's recorded weights (post-LN: its input is the embedder's output) equal
  `attn.attention_weights` of its queries and keys under the padding mask."""
  import attn

  model = EncoderTagger(make_config())
  params = jax.jit(model.init)(jax.random.PRNGKey(5), TAG_TOKENS)["params"]
  _, weights = attention_weights(model, {"params": params}, TAG_TOKENS)
  x = Embedder(model.config).apply({"params": params["embedder"]}, TAG_TOKENS)
  layer = params["encoder"]["layer_0"]["self_attention"]
  q, k = (
    jnp.einsum("btd,dhk->bthk", x, layer[name]["kernel"]) + layer[name]["bias"]
    for name in ("query", "key")
  )
  want = attn.attention_weights(q, k, mask=encoder_self_mask(TAG_TOKENS, model.config))
  np.testing.assert_allclose(weights[0], want, rtol=1e-5, atol=1e-6)


def dropout_key(seed: int) -> jax.Array:
  """A dropout key. RBG rather than the default threefry: threefry's dropout masks take seconds to
  compile on CPU, and which bits drop does not matter here."""
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def dropout_model():
  return Transformer(make_config(dropout_rate=0.3, attention_dropout_rate=0.2))


def test_dropout_only_with_deterministic_false_and_rng(transformer, base_outputs, dropout_model):
  _, params, _ = transformer  # Dropout has no parameters: the trees agree.
  model = dropout_model
  eval_logits = jax.jit(lambda p: model.apply({"params": p}, SRC, TGT))(params)
  np.testing.assert_allclose(eval_logits, base_outputs[0], rtol=0, atol=1e-6)

  @jax.jit
  def train_logits(p, key):
    return model.apply({"params": p}, SRC, TGT, deterministic=False, rngs={"dropout": key})

  a = train_logits(params, dropout_key(10))
  again = train_logits(params, dropout_key(10))
  other = train_logits(params, dropout_key(11))
  np.testing.assert_array_equal(a, again)
  assert np.max(np.abs(a - eval_logits)) > 1e-3
  assert np.max(np.abs(a - other)) > 1e-3
  with pytest.raises(flax.errors.InvalidRngError):
    jax.eval_shape(lambda p: model.apply({"params": p}, SRC, TGT, deterministic=False), params)


def test_bfloat16_logits_are_finite(transformer, base_outputs):
  _, params, _ = transformer
  model = Transformer(make_config(dtype="bfloat16"))
  shapes = param_shapes(model, SRC, TGT)
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))  # Params stay float32.
  logits = jax.jit(lambda p: model.apply({"params": p}, SRC, TGT))(params)
  assert logits.shape == (B, T, V)
  assert np.all(np.isfinite(logits))
  # Lower precision, same model: close to the float32 logits, but not computed in float32.
  diff = np.max(np.abs(np.asarray(logits, np.float32) - base_outputs[0]))
  assert 0 < diff < 0.25, diff


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_training_gradient_is_finite(transformer, dropout_model):
  _, params, _ = transformer
  model = dropout_model
  tgt_out = jnp.concatenate([TGT[:, 1:], jnp.array([[2], [0]], jnp.int32)], axis=1)  # eos / pad.
  weights = (tgt_out != 0).astype(jnp.float32)

  @jax.jit
  def loss_and_grad(p, key):
    def loss(p):
      logits = model.apply({"params": p}, SRC, TGT, deterministic=False, rngs={"dropout": key})
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tgt_out[..., None], axis=-1)[..., 0]
      return jnp.sum(nll * weights) / jnp.sum(weights)

    return jax.value_and_grad(loss)(p)

  value, grads = loss_and_grad(params, dropout_key(4))
  assert np.isfinite(value) and value > 0
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path  # Every parameter, encoder included, reaches the loss.


# --------------------------------------------------------------------------------------------------
# EncoderTagger
# --------------------------------------------------------------------------------------------------

TAG_TOKENS = jnp.array([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]], jnp.int32)


@pytest.fixture(scope="module")
def tagger():
  model = EncoderTagger(make_config())
  params = jax.jit(model.init)(jax.random.PRNGKey(5), TAG_TOKENS)["params"]
  return model, params, jax.jit(lambda p, x: model.apply({"params": p}, x).logits)


def test_tagger_logits_shape(tagger):
  model, params, forward = tagger
  out = model.apply({"params": params}, TAG_TOKENS)
  assert isinstance(out, TaggerOutput) and out.crf is None  # No CRF: config.crf is "none".
  logits = forward(params, TAG_TOKENS)
  np.testing.assert_allclose(logits, out.logits, atol=1e-6)
  assert logits.shape == (2, 5, C)
  assert np.all(np.isfinite(logits))
  assert params["classifier"]["kernel"].shape == (D, C)


def test_tagger_needs_num_classes():
  model = EncoderTagger(make_config(num_classes=0))
  with pytest.raises(ValueError, match="num_classes"):
    param_shapes(model, TAG_TOKENS)


def test_tagger_ignores_appended_padding(tagger):
  _, params, forward = tagger
  logits = forward(params, TAG_TOKENS)
  longer = forward(params, jnp.concatenate([TAG_TOKENS, jnp.zeros((2, 3), jnp.int32)], axis=1))
  assert longer.shape == (2, 8, C)
  valid = np.asarray(TAG_TOKENS) != 0
  np.testing.assert_allclose(np.asarray(longer)[:, :5][valid], np.asarray(logits)[valid], atol=1e-5)
  # Real tokens do matter: changing the last token of row 0 changes row 0's other outputs.
  changed = forward(params, TAG_TOKENS.at[0, 4].set(20))
  assert np.max(np.abs(changed[0, :4] - logits[0, :4])) > 1e-4


CRF_NAMES = ("O", "B-person", "I-person", "B-location", "I-location")  # C = 5 classes.


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_crf_tagger_returns_emissions_and_scores_with_iob2_moves_forbidden():
  model = EncoderTagger(make_config(crf="iob2", class_names=CRF_NAMES))
  params = jax.jit(model.init)(jax.random.PRNGKey(5), TAG_TOKENS)["params"]
  assert {k: v.shape for k, v in params["crf"].items()} == {
    "transitions": (C, C),
    "start": (C,),
    "end": (C,),
  }
  out = model.apply({"params": params}, TAG_TOKENS)
  assert isinstance(out, TaggerOutput)
  emissions, (transitions, start, end) = out.logits, out.crf
  assert emissions.shape == (2, 5, C) and np.all(np.isfinite(emissions))
  # The emissions are the classifier's logits: the same parameters without a CRF give them.
  plain = EncoderTagger(make_config(class_names=CRF_NAMES)).apply({"params": params}, TAG_TOKENS)
  np.testing.assert_array_equal(emissions, plain.logits)
  assert transitions[0, 2] == start[2] == crf_lib.FORBIDDEN  # O -> I-person; I-person opening.
  assert transitions[1, 2] == transitions[2, 2] == start[1] == end[2] == 0.0
  free = EncoderTagger(make_config(crf="free"))
  transitions, _, _ = free.apply({"params": params}, TAG_TOKENS).crf
  assert not np.asarray(transitions).any()  # Learned freely: nothing added.
  assert plain.crf is None  # No CRF: no scores.
  with pytest.raises(ValueError, match="crf: 'iob2' needs the names of the 5 classes"):
    make_config(crf="iob2")
  with pytest.raises(ValueError, match="crf: unknown choice"):
    make_config(crf="yes")


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_tagger_with_attention_window_sees_only_window_times_layers():
  # Through L layers of |i - j| <= w, position i reads tokens at most L * w away, and no farther: the
  # local-window baseline of the cue task, which therefore cannot see a cue that stands farther off.
  w, L = 1, 2
  model = EncoderTagger(make_config(attention_window=w, num_encoder_layers=L))
  tokens = jnp.arange(3, 12, dtype=jnp.int32)[None]  # [1, 9]
  params = jax.jit(model.init)(jax.random.PRNGKey(7), tokens)["params"]
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x).logits)
  logits = np.asarray(forward(params, tokens))
  changed = np.asarray(forward(params, tokens.at[0, 8].set(20)))
  reach = 8 - L * w
  np.testing.assert_array_equal(changed[0, :reach], logits[0, :reach])
  assert np.all(np.max(np.abs(changed[0, reach:] - logits[0, reach:]), axis=-1) > 1e-5)
  # A window as wide as the sentence is full attention: same parameters, same logits.
  full = EncoderTagger(make_config(num_encoder_layers=L)).apply({"params": params}, tokens).logits
  wide = EncoderTagger(make_config(attention_window=8, num_encoder_layers=L)).apply(
    {"params": params}, tokens
  )
  wide = wide.logits
  np.testing.assert_allclose(wide, full, atol=1e-6)
  assert np.max(np.abs(np.asarray(full) - logits)) > 1e-4


def test_transformer_encoder_honours_attention_window(transformer):
  model, params = transformer[0], transformer[1]
  windowed = Transformer(model.config.replace(attention_window=0))
  encode = jax.jit(lambda p, x: windowed.apply({"params": p}, x, method=Transformer.encode))
  encoded = np.asarray(encode(params, SRC))
  changed = np.asarray(encode(params, SRC.at[0, 5].set(20)))
  np.testing.assert_array_equal(changed[0, :5], encoded[0, :5])  # Window 0: each token sees itself.


# --------------------------------------------------------------------------------------------------
# LanguageModel
# --------------------------------------------------------------------------------------------------

LM_TOKENS = jnp.array([[1, 3, 4, 5, 6, 7], [1, 8, 9, 10, 11, 12]], jnp.int32)


@pytest.fixture(scope="module")
def language_model():
  model = LanguageModel(make_config())
  params = jax.jit(model.init)(jax.random.PRNGKey(6), LM_TOKENS)["params"]
  return model, params, jax.jit(lambda p, x: model.apply({"params": p}, x))


def test_language_model_logits_shape(language_model):
  _, params, forward = language_model
  logits = forward(params, LM_TOKENS)
  assert logits.shape == (2, 6, V)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("cut", [1, 4])
def test_language_model_is_causal(language_model, cut):
  _, params, forward = language_model
  logits = forward(params, LM_TOKENS)
  changed = forward(params, LM_TOKENS.at[:, cut:].set(25))
  np.testing.assert_allclose(changed[:, :cut], logits[:, :cut], rtol=0, atol=1e-6)
  assert np.max(np.abs(changed[:, cut:] - logits[:, cut:])) > 1e-3


def test_language_model_is_causal_by_gradient(language_model):
  """d logits[:, t] / d (input embedding at s) is zero for every s > t, and nonzero for s <= t."""
  model, params, _ = language_model
  n = LM_TOKENS.shape[1]

  def logits_given_shift(shift_BTD):
    def add_shift(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, Embedder) and context.method_name == "__call__":
        out = out + shift_BTD
      return out

    with flax.linen.intercept_methods(add_shift):
      return model.apply({"params": params}, LM_TOKENS)

  shift = jnp.zeros((*LM_TOKENS.shape, D))
  row_0_logits = lambda x: jnp.sum(logits_given_shift(x)[0], axis=-1)
  jac = jax.jit(jax.jacrev(row_0_logits))(shift)  # [t, B, s, D]
  influence = np.abs(np.asarray(jac)[:, 0]).sum(-1)  # [t, s]: row 0's logits at t, input at s.
  assert influence.shape == (n, n)
  np.testing.assert_array_equal(influence[np.triu_indices(n, 1)], 0.0)
  assert np.all(influence[np.tril_indices(n)] > 0)


def test_language_model_has_no_cross_attention(language_model, transformer):
  _, params, _ = language_model
  paths = param_paths(params)
  assert "decoder/layer_0/self_attention/query/kernel" in paths
  assert not any("cross_attention" in p for p in paths)
  assert not any(p.startswith("encoder/") for p in paths)
  # The check can fail: the encoder-decoder's decoder layers do have cross-attention.
  assert any("cross_attention" in p for p in param_paths(transformer[1]))


# --------------------------------------------------------------------------------------------------
# Hashed token features (EncoderTagger's optional input, attn.ner's word shapes and n-grams)
# --------------------------------------------------------------------------------------------------


def test_embedder_adds_feature_rows_over_non_empty_slots():
  # Hash h picks row 1 + h mod (buckets - 1); slots holding 0 are empty. Rows are summed, divided by
  # sqrt(their count) and scaled by sqrt(D) like the token rows.
  embedder = Embedder(make_config(feature_buckets=11, positions="none"))
  tokens = jnp.array([[5, 6]], jnp.int32)
  features = jnp.array([[[1, 12, 0], [0, 0, 0]]], jnp.int32)
  variables = embedder.init(jax.random.PRNGKey(0), tokens, features_BTF=features)
  out = np.asarray(embedder.apply(variables, tokens, features_BTF=features))
  rows, words = variables["params"]["features"]["embedding"], variables["params"]["tokens"]["embedding"]
  assert rows.shape == (11, D)
  want0 = (words[5] + (rows[2] + rows[3]) / np.sqrt(2)) * np.sqrt(D)
  np.testing.assert_allclose(out[0, 0], want0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[0, 1], words[6] * np.sqrt(D), rtol=1e-5, atol=1e-6)  # No features.


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_tagger_uses_features_only_when_the_config_has_buckets():
  features = jnp.asarray(np.random.default_rng(0).integers(1, 2**30, (2, 5, 3)), jnp.int32)
  model = EncoderTagger(make_config(feature_buckets=17))
  params = jax.jit(model.init)(jax.random.PRNGKey(5), TAG_TOKENS, features)["params"]
  forward = jax.jit(lambda p, x, f: model.apply({"params": p}, x, f).logits)
  logits = np.asarray(forward(params, TAG_TOKENS, features))
  assert logits.shape == (2, 5, C) and np.all(np.isfinite(logits))
  without = model.apply({"params": params}, TAG_TOKENS).logits
  assert np.max(np.abs(logits - np.asarray(without))) > 1e-4
  # An empty slot changes nothing; a hash 16 apart picks the same row (16 = buckets - 1).
  padded = jnp.concatenate([features, jnp.zeros((2, 5, 1), jnp.int32)], axis=-1)
  np.testing.assert_allclose(forward(params, TAG_TOKENS, padded), logits, atol=1e-5)
  np.testing.assert_allclose(forward(params, TAG_TOKENS, features + 16), logits, atol=1e-5)
  # feature_buckets = 0 (the default): no table, and features are ignored.
  plain = EncoderTagger(make_config())
  plain_params = plain.init(jax.random.PRNGKey(5), TAG_TOKENS, features)["params"]
  assert "features" not in plain_params["embedder"]
  np.testing.assert_allclose(
    plain.apply({"params": plain_params}, TAG_TOKENS, features).logits,
    plain.apply({"params": plain_params}, TAG_TOKENS).logits,
    atol=1e-6,
  )


def test_parameter_tree_is_what_saved_checkpoints_hold():
  """The names and shapes of the smoke preset's Transformer parameters, as runs saved before the
  layout change hold them (read off such a run): renaming a module here would make every saved
  checkpoint unreadable."""
  from experiments import base

  config = ModelConfig(**base.get_config("smoke").model, vocab_size=14)
  src = jnp.ones((2, 10), jnp.int32)
  params = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), src, src)["params"]
  shapes = {
    "/".join(k.key for k in path): tuple(v.shape)
    for path, v in jax.tree_util.tree_leaves_with_path(params)
  }
  attention = {f"{p}/kernel": (32, 4, 8) for p in ("query", "key", "value")}
  attention |= {f"{p}/bias": (4, 8) for p in ("query", "key", "value")}
  attention |= {"out/kernel": (4, 8, 32), "out/bias": (32,)}
  feed_forward = {"wi/kernel": (32, 64), "wi/bias": (64,), "wo/kernel": (64, 32), "wo/bias": (32,)}
  norm = {"bias": (32,), "scale": (32,)}

  def layer(prefix, sublayers):
    out = {}
    for name, params in sublayers.items():
      out |= {f"{prefix}/{name}/{k}": v for k, v in params.items()}
      out |= {f"{prefix}/{name}_norm/{k}": v for k, v in norm.items()}
    return out

  expected = {"embedder/tokens/embedding": (14, 32)}
  expected |= layer("encoder/layer_0", {"self_attention": attention, "feed_forward": feed_forward})
  expected |= layer(
    "decoder/layer_0",
    {"self_attention": attention, "cross_attention": attention, "feed_forward": feed_forward},
  )
  assert len(expected) == 43
  assert shapes == expected


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_gpt2_init_is_nanogpts_and_removes_bias_everywhere():
  """init="gpt2": kernels and the token table normal(0.02), the residual projections normal(0.02 /
  sqrt(2 L)), tokens not scaled by sqrt(D); use_bias=False leaves no bias in any layer or norm."""
  config = ModelConfig(
    vocab_size=500, d_model=128, num_heads=4, d_ff=512, num_decoder_layers=2, init="gpt2",
    use_bias=False, norm="pre", positions="learned", max_length=16,
  )  # fmt: skip
  model = LanguageModel(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"]
  flat = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}
  assert not [name for name in flat if name.endswith("bias")]
  layer = "decoder/layer_0"
  std = lambda name: float(np.std(flat[name]))
  assert std("embedder/tokens/embedding") == pytest.approx(0.02, rel=0.05)
  assert std(f"{layer}/self_attention/query/kernel") == pytest.approx(0.02, rel=0.05)
  assert std(f"{layer}/feed_forward/wi/kernel") == pytest.approx(0.02, rel=0.05)
  for name in (f"{layer}/self_attention/out/kernel", f"{layer}/feed_forward/wo/kernel"):
    assert std(name) == pytest.approx(0.02 / 2.0, rel=0.05)  # 2 layers: sqrt(2 * 2) = 2.
  tokens = jnp.array([[7, 8]])
  x = Embedder(config).apply({"params": params["embedder"]}, tokens)
  expected = (
    params["embedder"]["tokens"]["embedding"][tokens] + params["embedder"]["positions"]["embedding"][:2]
  )
  np.testing.assert_allclose(x, expected, rtol=1e-6)  # No sqrt(D) factor.


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_without_positions_an_encoder_is_permutation_equivariant():
  """The notes: with no positions "order will not have any influence": permuting the tokens permutes
  the tagger's outputs; with absolute positions, RoPE or a relative bias it does not."""
  tokens = jnp.array([[5, 6, 7, 8, 9, 10]])
  perm = jnp.array([3, 0, 5, 1, 4, 2])

  def outputs(positions):
    config = ModelConfig(
      vocab_size=20, num_classes=3, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=2,
      dropout_rate=0.0, positions=positions, max_length=8,
    )  # fmt: skip
    model = EncoderTagger(config)
    params = model.init(jax.random.PRNGKey(0), tokens)
    return model.apply(params, tokens).logits, model.apply(params, tokens[:, perm]).logits

  plain, permuted = outputs("none")
  np.testing.assert_allclose(permuted, plain[:, perm], atol=1e-5)
  for positions in ("sinusoidal", "rope", "t5_bias"):  # Absolute, rotary, a relative bias.
    plain, permuted = outputs(positions)
    assert not np.allclose(permuted, plain[:, perm], atol=1e-3), positions


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_char_encoder_adds_a_vector_per_word_from_its_characters():
  config = make_config(char_buckets=64, char_dim=8)
  model = EncoderTagger(config)
  chars = jnp.zeros((*TAG_TOKENS.shape, 4), jnp.int32).at[:, :3, :2].set(ord("a") + 1)
  params = jax.jit(model.init)(jax.random.PRNGKey(5), TAG_TOKENS, None, chars)["params"]
  assert params["chars"]["table"]["embedding"].shape == (64, 8)
  forward = jax.jit(lambda p, c: model.apply({"params": p}, TAG_TOKENS, None, c).logits)
  logits = np.asarray(forward(params, chars))
  assert np.isfinite(logits).all()
  # A word's characters change the tagger's outputs; no characters at all equals no chars input.
  changed = np.asarray(forward(params, chars.at[0, 1, 0].set(ord("Z") + 1)))
  assert np.max(np.abs(changed[0, 1] - logits[0, 1])) > 1e-4
  none = model.apply({"params": params}, TAG_TOKENS).logits
  np.testing.assert_allclose(forward(params, jnp.zeros_like(chars)), none, atol=1e-6)
  words = CharEncoder(config).apply({"params": params["chars"]}, chars)
  assert not np.asarray(words)[:, 3:].any()  # Words without characters: a zero vector.
  with pytest.raises(ValueError, match="char_buckets: must be 0"):
    make_config(char_buckets=1)


PADDING_VARIANTS = [  # Every position kind and attention variant (combined: each compiles once).
  dict(positions="sinusoidal", attention_kind="ssmax"),
  dict(positions="rope", qk_norm="rms", logit_soft_cap=2.0, attention_kind="ssmax"),
  dict(positions="alibi", attention_sink=True),
  dict(positions="rope", attention_gate="elementwise", value_residual="learned"),
  dict(positions="none", attention_gate="headwise", value_residual="shared"),
  dict(positions="t5_bias", t5_num_buckets=8, t5_max_distance=16, attention_kind="sigmoid"),
  dict(positions="learned", attention_window=2),
  dict(positions="rope", attention_kind="softpick", logit_soft_cap=3.0),
  dict(positions="alibi", attention_kind="stick_breaking"),
  dict(positions="t5_bias", t5_num_buckets=8, t5_max_distance=16, differential=True),
  dict(positions="xpos", rope_interleaved=True),
]


@pytest.mark.parametrize(
  "implementation",
  ["naive", pytest.param("flash", marks=pytest.mark.slow)],  # Flash compiles slowly.
)
@pytest.mark.parametrize(
  "variant", PADDING_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items())
)
def test_a_sentences_outputs_do_not_depend_on_its_batchs_padding(variant, implementation):
  """The same 4-token sentence, padded to 5 and to 9 in its batch: the tagger's logits at its real
  tokens are the same. (SSMax's log n counted padded keys, so tags changed with the padding.)"""
  if implementation == "flash" and variant.get("attention_kind") == "stick_breaking":
    pytest.skip("stick-breaking is naive only: ModelConfig refuses it with 'flash'")
  config = ModelConfig(
    vocab_size=V, d_model=D, num_heads=H, d_ff=32, num_encoder_layers=2, num_decoder_layers=0,
    num_classes=C, dropout_rate=0.0, max_length=16, attention_implementation=implementation,
    **variant,
  )  # fmt: skip
  model = EncoderTagger(config)
  sentence = [11, 12, 13, 14]
  short = jnp.array([[*sentence, 0], [15, 16, 17, 18, 19]], jnp.int32)
  long = jnp.array([[*sentence, 0, 0, 0, 0, 0], [15, 16, 17, 18, 19, 20, 21, 22, 23]], jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), long)
  apply = jax.jit(lambda tokens: model.apply(params, tokens).logits)
  np.testing.assert_allclose(apply(short)[0, :4], apply(long)[0, :4], rtol=1e-5, atol=1e-5)


def test_a_language_model_without_decoder_layers_is_refused_naming_the_field():
  """It used to initialise, then fail in cached decoding with a KeyError."""
  model = LanguageModel(ModelConfig(vocab_size=V, d_model=D, num_heads=H, num_decoder_layers=0))
  with pytest.raises(ValueError, match=r"^num_decoder_layers: a LanguageModel needs at least one"):
    model.init(jax.random.key(0), jnp.ones((1, 3), jnp.int32))


@pytest.mark.parametrize("norm_kind", ["layer", "rms"])
def test_embed_norm_normalises_the_embeddings_with_parameters_under_the_embedder(norm_kind):
  config = make_config(norm_kind=norm_kind)
  plain = Embedder(config)
  normed = Embedder(config.replace(embed_norm=True))
  variables = normed.init(jax.random.key(0), LM_TOKENS)
  want = {"tokens/embedding", "norm/scale"} | ({"norm/bias"} if norm_kind == "layer" else set())
  assert param_paths(variables["params"]) == want
  plain_variables = {"params": {"tokens": variables["params"]["tokens"]}}
  x = np.asarray(plain.apply(plain_variables, LM_TOKENS))
  y = np.asarray(normed.apply(variables, LM_TOKENS))
  assert not np.allclose(x, y, atol=1e-3)
  np.testing.assert_allclose(np.mean(y * y, -1), 1.0, rtol=1e-3)  # Unit RMS (scale 1, bias 0).
  lm = LanguageModel(config.replace(embed_norm=True))
  lm_params = jax.eval_shape(lm.init, jax.random.key(0), LM_TOKENS)["params"]
  assert "norm" in lm_params["embedder"]


@pytest.mark.parametrize("implementation", ["naive", pytest.param("flash", marks=pytest.mark.slow)])
def test_language_model_attention_window_is_a_causal_sliding_window(implementation):
  """One layer, window w = 2: a token changes the logits at its own position and the next two only
  (and a Transformer's decoder is not windowed by the field)."""
  model = LanguageModel(
    make_config(attention_window=2, positions="rope", attention_implementation=implementation)
  )
  params = jax.jit(model.init)(jax.random.key(0), LM_TOKENS)["params"]
  forward = jax.jit(lambda x: model.apply({"params": params}, x))
  logits = np.asarray(forward(LM_TOKENS))
  changed = np.asarray(forward(LM_TOKENS.at[:, 1].set(25)))
  np.testing.assert_allclose(changed[:, 0], logits[:, 0], atol=1e-6)
  assert np.all(np.max(np.abs(changed[:, 1:4] - logits[:, 1:4]), axis=-1) > 1e-4)
  np.testing.assert_allclose(changed[:, 4:], logits[:, 4:], atol=1e-6)
  full = LanguageModel(model.config.replace(attention_window=None)).apply({"params": params}, LM_TOKENS)
  assert not np.allclose(full[:, 4:], logits[:, 4:], atol=1e-4)


GATED_VALUE_RESIDUAL = dict(
  attention_gate="elementwise", value_residual="learned", num_encoder_layers=2, num_decoder_layers=2
)


def test_gate_and_value_residual_parameters_are_where_they_belong():
  """Value residual in the encoder's and the decoder's self-attention from their second layer on
  (a mix of two scalars; "shared": no value projection there); the gate in every attention layer,
  cross-attention too. Without the fields the parameter tree is the old one (no new names)."""
  params = param_shapes(Transformer(make_config(**GATED_VALUE_RESIDUAL)), SRC, TGT)
  for stack in ("encoder", "decoder"):
    assert "value_mix" not in params[stack]["layer_0"]["self_attention"]
    assert params[stack]["layer_1"]["self_attention"]["value_mix"].shape == (2,)
    assert params[stack]["layer_0"]["self_attention"]["output_gate"]["kernel"].shape == (D, H, D // H)
  cross = params["decoder"]["layer_1"]["cross_attention"]
  assert "output_gate" in cross and "value_mix" not in cross
  shared = make_config(attention_gate="headwise", value_residual="shared", num_decoder_layers=2)
  lm_params = param_shapes(LanguageModel(shared), LM_TOKENS)["decoder"]
  assert "value" in lm_params["layer_0"]["self_attention"]
  assert set(lm_params["layer_1"]["self_attention"]) == {"query", "key", "out", "output_gate"}
  assert lm_params["layer_1"]["self_attention"]["output_gate"]["kernel"].shape == (D, H)
  plain = param_paths(param_shapes(Transformer(make_config(num_decoder_layers=2)), SRC, TGT))
  assert not {p for p in plain if "output_gate" in p or "value_mix" in p}


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling two models' gradients per dtype).
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gated_value_residual_models_train_with_finite_gradients(dtype):
  """An encoder-decoder with both fields and a language model with the shared form: finite
  gradients with dropout on padded batches, in float32 and bfloat16; the mix and the gate learn."""
  config = make_config(**GATED_VALUE_RESIDUAL, dtype=dtype, dropout_rate=0.1)
  seq2seq = Transformer(config)
  params = jax.jit(seq2seq.init)(jax.random.key(0), SRC, TGT)["params"]
  lm = LanguageModel(config.replace(attention_gate="headwise", value_residual="shared"))
  lm_tokens = LM_TOKENS.at[1, 4:].set(0)  # Padding.
  lm_params = jax.jit(lm.init)(jax.random.key(0), lm_tokens)["params"]

  def loss(params, model, *inputs):
    out = model.apply(
      {"params": params}, *inputs, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    return jnp.mean(jnp.square(out.astype(jnp.float32)))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  grads = grad(params, seq2seq, SRC, TGT)
  for g in (grads, grad(lm_params, lm, lm_tokens)):
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
  mixed = grads["encoder"]["layer_1"]["self_attention"]
  assert float(jnp.abs(mixed["value_mix"]).sum()) > 0
  assert float(jnp.abs(mixed["output_gate"]["kernel"]).sum()) > 0


def test_shared_values_are_the_first_layers_in_every_layer():
  """Under "shared" every self-attention layer attends the first layer's values (its hook point
  `v`, the values a layer attends)."""
  from attn.nn import hooks

  model = LanguageModel(make_config(value_residual="shared", num_decoder_layers=3))
  params = jax.jit(model.init)(jax.random.key(0), LM_TOKENS)["params"]
  names = [f"blocks.{i}.attn.v" for i in range(3)]
  _, cache = jax.jit(lambda p: hooks.run_with_cache(model, p, LM_TOKENS, names=names))(params)
  for i in (1, 2):
    np.testing.assert_array_equal(cache[f"blocks.{i}.attn.v"], cache["blocks.0.attn.v"])


# Language-model variants (causal only, so the tagger's padding test above cannot take them).
LM_PADDING_VARIANTS = [
  dict(positions="none", forget_gate=True),
  dict(positions="rope", forget_gate=True, attention_kind="softpick", num_kv_heads=1),
  dict(positions="alibi", differential=True, num_heads=4, num_kv_heads=2, attention_sink=True),
  dict(positions="xpos", rope_interleaved=True, rope_fraction=0.5),
]


@pytest.mark.parametrize(
  "implementation",
  ["naive", pytest.param("flash", marks=pytest.mark.slow)],  # Flash compiles slowly.
)
@pytest.mark.parametrize(
  "variant", LM_PADDING_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items())
)
def test_a_language_models_outputs_do_not_depend_on_its_batchs_padding(variant, implementation):
  """The same 4-token sentence, right-padded to 5 and to 9 in its batch (and left-padded by one):
  the language model's logits at its real tokens are the same."""
  model = LanguageModel(
    make_config(num_decoder_layers=2, attention_implementation=implementation, **variant)
  )
  sentence = [1, 12, 13, 14]
  short = jnp.array([[*sentence, 0], [15, 16, 17, 18, 19]], jnp.int32)
  long = jnp.array([[*sentence, 0, 0, 0, 0, 0], [15, 16, 17, 18, 19, 20, 21, 22, 23]], jnp.int32)
  left = jnp.array([[0, *sentence], [15, 16, 17, 18, 19]], jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), long)
  apply = jax.jit(lambda tokens: model.apply(params, tokens))
  want = apply(short)[0, :4]
  np.testing.assert_allclose(apply(long)[0, :4], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(apply(left)[0, 1:], want, rtol=1e-5, atol=1e-5)


def test_forget_gate_parameters_are_in_causal_self_attention_only():
  """Each decoder self-attention layer has "forget_gate" (kernel [D, H], bias [H]); cross-attention
  has none, an encoder refuses the field in one line, and without it the parameters are the old."""
  lm = param_shapes(LanguageModel(make_config(forget_gate=True, num_decoder_layers=2)), LM_TOKENS)
  for i in range(2):
    gate = lm["decoder"][f"layer_{i}"]["self_attention"]["forget_gate"]
    assert (gate["kernel"].shape, gate["bias"].shape) == ((D, H), (H,))
  with pytest.raises(ValueError, match=r"^forget_gate: FoX is causal self-attention"):
    param_shapes(Transformer(make_config(forget_gate=True)), SRC, TGT)
  with pytest.raises(ValueError, match=r"^forget_gate: FoX is causal self-attention"):
    param_shapes(EncoderTagger(make_config(forget_gate=True)), SRC)
  plain = param_paths(param_shapes(LanguageModel(make_config(num_decoder_layers=2)), LM_TOKENS))
  assert not {p for p in plain if "forget_gate" in p}


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling a model's gradients per dtype).
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forget_gate_language_model_trains_with_finite_gradients(dtype):
  """Finite gradients with dropout on a padded batch, in float32 and bfloat16; the gate learns."""
  lm = LanguageModel(make_config(forget_gate=True, positions="none", dtype=dtype, dropout_rate=0.1))
  tokens = LM_TOKENS.at[1, 4:].set(0)  # Padding.
  params = jax.jit(lm.init)(jax.random.key(0), tokens)["params"]

  def loss(params):
    out = lm.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)})
    return jnp.mean(jnp.square(out.astype(jnp.float32)))

  grads = jax.jit(jax.grad(loss))(params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grads))
  gate = grads["decoder"]["layer_0"]["self_attention"]["forget_gate"]
  assert float(jnp.abs(gate["kernel"]).sum()) > 0


def test_differential_parameters_and_each_layers_index():
  """Every attention layer (cross-attention too) has the four lambda vectors [K] and "subln" [2K],
  values of num_kv_heads / 2 heads of 2K and an output kernel [H / 2, 2K, D]; each block passes its
  index in its stack to its layers (lambda_init's depth); without the field the tree is the old."""
  from attn.nn.attention import MultiHeadAttention

  config = make_config(differential=True, num_heads=4, num_encoder_layers=2, num_decoder_layers=3)
  K = D // 4
  model = Transformer(config)
  params = param_shapes(model, SRC, TGT)
  for layer in ("encoder/layer_1/self_attention", "decoder/layer_2/cross_attention"):
    attn = params
    for name in layer.split("/"):
      attn = attn[name]
    assert attn["lambda_q1"].shape == (K,) and attn["subln"]["scale"].shape == (2 * K,)
    assert attn["value"]["kernel"].shape == (D, 2, 2 * K) and attn["out"]["kernel"].shape == (
      2,
      2 * K,
      D,
    )
  seen = {}

  def record(module, _):
    if isinstance(module, MultiHeadAttention):
      seen["/".join(module.path[-3:])] = module.layer_index
    return False

  jax.eval_shape(lambda: model.init(jax.random.key(0), SRC, TGT, capture_intermediates=record))
  assert seen["encoder/layer_1/self_attention"] == 1 and seen["decoder/layer_2/cross_attention"] == 2
  assert seen["decoder/layer_0/self_attention"] == 0
  plain = param_paths(param_shapes(Transformer(make_config(num_heads=4)), SRC, TGT))
  assert not {p for p in plain if "lambda" in p or "subln" in p}


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling two models' gradients per dtype).
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_differential_models_train_with_finite_gradients(dtype):
  """An encoder-decoder and a language model (with FoX too) under differential attention: finite
  gradients with dropout on padded batches, in float32 and bfloat16; the lambdas learn."""
  config = make_config(differential=True, num_heads=4, num_kv_heads=2, dtype=dtype, dropout_rate=0.1)
  lm = LanguageModel(config.replace(forget_gate=True, positions="rope"))
  tokens = LM_TOKENS.at[1, 4:].set(0)

  def loss(params, model, *inputs):
    out = model.apply(
      {"params": params}, *inputs, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    return jnp.mean(jnp.square(out.astype(jnp.float32)))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  for model, inputs in ((Transformer(config), (SRC, TGT)), (lm, (tokens,))):
    params = jax.jit(model.init)(jax.random.key(0), *inputs)["params"]
    grads = grad(params, model, *inputs)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grads))
    attn = grads["decoder"]["layer_0"]["self_attention"]
    assert float(jnp.abs(attn["lambda_q1"]).sum()) > 0
