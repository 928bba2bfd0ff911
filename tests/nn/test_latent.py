"""Tests for attn.nn.latent: multi-head latent attention against the formulas written out in jnp,
causality, padding, cached decoding through the latent cache, and the cache's bytes per token."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn import hooks
from attn.nn.config import ModelConfig
from attn.nn.decoding import greedy_decode, init_cache
from attn.nn.latent import LATENT_NORM_EPSILON, MultiHeadLatentAttention, cache_bytes_per_token
from attn.nn.models import LanguageModel, Transformer, attention_weights

D, H, K, C = 16, 2, 8, 6  # Model dim, heads, head dim (D / H), latent width.
V, PAD, BOS = 30, 0, 1
# (mla_q_rank, mla_rope_dim): a plain query projection with the decoupled RoPE key, a query latent
# with it, and a query latent without RoPE (then positions are added to the embeddings).
SHAPES = [(None, 4), (5, 4), (5, 0)]


def layer(q_rank=None, rope_dim=4, implementation="naive", **kwargs) -> MultiHeadLatentAttention:
  return MultiHeadLatentAttention(
    num_heads=H,
    kv_rank=C,
    q_rank=q_rank,
    rope_dim=rope_dim,
    implementation=implementation,
    **{"positions": "rope" if rope_dim else "none", **kwargs},
  )


def inputs(B=2, T=5, seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), (B, T, D), dtype)


def init(module, x):
  return module.init(jax.random.key(1), x)["params"]


def lm_config(**changes) -> ModelConfig:
  fields = dict(
    vocab_size=V,
    d_model=D,
    num_heads=H,
    d_ff=32,
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_length=16,
    pad_id=PAD,
    bos_id=BOS,
    norm="pre",
    positions="rope",
    mla_kv_rank=C,
    mla_rope_dim=4,
  )
  fields.update(changes)
  return ModelConfig(**fields)


# --------------------------------------------------------------------------------------------------
# The formulas, from scratch.
# --------------------------------------------------------------------------------------------------


def _dense(p, x, spec):
  return jnp.einsum(spec, x, p["kernel"]) + p["bias"]


def _rms(p, x):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + LATENT_NORM_EPSILON) * p["scale"]


def _rope(x, pos, base=10_000.0):
  """Rotate-half RoPE over the last axis of x [..., T, (heads,) R]; pos [T]."""
  half = x.shape[-1] // 2
  angle = pos[:, None] * base ** (-2.0 * jnp.arange(half) / x.shape[-1])  # [T, R/2]
  if x.ndim == 4:
    angle = angle[:, None, :]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def reference(p, x, *, rope_dim, causal=True, key_valid=None):
  """DeepSeek-V2's section 2.1, the non-absorbed form: y [B, T, D]."""
  T = x.shape[1]
  if "query" in p:
    q = _dense(p["query"], x, "btd,dhe->bthe")
  else:
    c_q = _rms(p["query_norm"], _dense(p["query_down"], x, "btd,dc->btc"))
    q = _dense(p["query_up"], c_q, "btc,che->bthe")
  c_kv = _rms(p["kv_norm"], _dense(p["kv_down"], x, "btd,dc->btc"))
  k = _dense(p["key_up"], c_kv, "bsc,chk->bshk")
  v = _dense(p["value_up"], c_kv, "bsc,chk->bshk")
  if rope_dim:
    pos = jnp.arange(T, dtype=jnp.float32)
    q = jnp.concatenate([q[..., :K], _rope(q[..., K:], pos)], axis=-1)
    k_r = _rope(_dense(p["key_rope"], x, "bsd,dr->bsr"), pos)
    k = jnp.concatenate([k, jnp.broadcast_to(k_r[:, :, None], (*k.shape[:3], rope_dim))], axis=-1)
  logits = jnp.einsum("bthe,bshe->bhts", q, k) / jnp.sqrt(K + rope_dim)
  allowed = jnp.ones((T, T), bool)
  if causal:
    allowed = jnp.tril(allowed)
  allowed = jnp.broadcast_to(allowed, logits.shape)
  if key_valid is not None:
    allowed = allowed & key_valid[:, None, None, :]
  weights = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
  out = jnp.einsum("bhts,bshk->bthk", weights, v)
  return jnp.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


# --------------------------------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q_rank,rope_dim", SHAPES)
def test_parameter_and_output_shapes(q_rank, rope_dim):
  module = layer(q_rank, rope_dim)
  x = inputs()
  params = init(module, x)
  shapes = jax.tree.map(lambda a: a.shape, params)
  E = K + rope_dim
  assert shapes["kv_down"]["kernel"] == (D, C)
  assert shapes["kv_norm"]["scale"] == (C,)
  assert shapes["key_up"]["kernel"] == shapes["value_up"]["kernel"] == (C, H, K)
  assert shapes["out"]["kernel"] == (H, K, D)
  if q_rank is None:
    assert shapes["query"]["kernel"] == (D, H, E)
  else:
    assert shapes["query_down"]["kernel"] == (D, q_rank)
    assert shapes["query_up"]["kernel"] == (q_rank, H, E)
  assert ("key_rope" in shapes) == bool(rope_dim)
  if rope_dim:
    assert shapes["key_rope"]["kernel"] == (D, rope_dim)
  assert module.apply({"params": params}, x, is_causal=True).shape == x.shape


@pytest.mark.parametrize("implementation", ["naive", "flash"])
@pytest.mark.parametrize("q_rank,rope_dim", SHAPES)
def test_layer_equals_the_formulas(q_rank, rope_dim, implementation):
  module = layer(q_rank, rope_dim, implementation)
  x = inputs(T=6)
  params = jax.tree.map(lambda a: a + 0.1, init(module, x))  # Biases away from zero too.
  got = module.apply({"params": params}, x, is_causal=True)
  np.testing.assert_allclose(got, reference(params, x, rope_dim=rope_dim), rtol=1e-5, atol=1e-5)
  valid = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
  got = module.apply({"params": params}, x, key_valid=valid)
  want = reference(params, x, rope_dim=rope_dim, causal=False, key_valid=valid)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_output_never_depends_on_later_inputs():
  """d y[t] / d x[t'] is exactly zero for every t' > t."""
  module = layer(5, 4)
  x = inputs(B=1, T=5)
  params = init(module, x)
  jac = jax.jit(jax.jacobian(lambda x: module.apply({"params": params}, x, is_causal=True)))(x)
  jac = np.asarray(jac)[0, :, :, 0]  # [T, D, T', D]
  for t in range(5):
    assert np.all(jac[t, :, t + 1 :] == 0.0), t
    assert np.any(jac[t, :, t] != 0.0)


def test_outputs_do_not_depend_on_padding():
  """A sequence's outputs are the same alone and padded with junk keys marked invalid, causal and
  not."""
  module = layer(None, 4)
  x = inputs(B=1, T=4)
  params = init(module, x)
  junk = 100.0 * inputs(B=1, T=3, seed=5)
  padded = jnp.concatenate([x, junk], axis=1)
  valid = jnp.array([[True] * 4 + [False] * 3])
  apply = jax.jit(module.apply, static_argnames="is_causal")
  for causal in (True, False):
    alone = apply({"params": params}, x, is_causal=causal)
    got = apply({"params": params}, padded, key_valid=valid, is_causal=causal)
    np.testing.assert_allclose(got[:, :4], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["naive", "flash"])
def test_fully_masked_rows_are_finite_with_finite_gradients(implementation):
  module = layer(None, 4, implementation)
  x = inputs(B=1, T=4)
  params = init(module, x)
  mask = jnp.ones((1, 1, 4, 4), bool).at[:, :, 2, :].set(False)  # Query 2 sees nothing.

  def loss(params, x):
    return jnp.sum(module.apply({"params": params}, x, mask=mask) ** 2)

  y = module.apply({"params": params}, x, mask=mask)
  assert bool(jnp.all(jnp.isfinite(y)))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_records_weights_and_windows_like_multi_head_attention():
  """The "attention_weights" record [B, H, T, T] (rows sum to 1, causal), and a window of 1 keeps
  two keys per row."""
  module = layer(None, 4)
  x = inputs(B=1, T=5)
  params = init(module, x)
  _, state = module.apply({"params": params}, x, is_causal=True, window=1, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (1, H, 5, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  allowed = np.tril(np.ones((5, 5))) * np.triu(np.ones((5, 5)), -1)
  assert np.all(np.asarray(weights)[..., allowed == 0] == 0.0)


# --------------------------------------------------------------------------------------------------
# In a LanguageModel: gradients, flash against naive, cached decoding.
# --------------------------------------------------------------------------------------------------

TOKENS = jnp.array([[1, 5, 6, 7, 0, 0], [1, 8, 9, 3, 4, 5]], jnp.int32)  # Row 0 right-padded.


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_language_model_gradients_are_finite(dtype):
  model = LanguageModel(lm_config(dtype=dtype, mla_q_rank=5, num_decoder_layers=1))
  params = model.init(jax.random.key(0), TOKENS)["params"]
  names = params["decoder"]["layer_0"]["self_attention"]
  assert {"query_down", "kv_down", "key_up", "value_up", "key_rope"} <= set(names)

  def loss(params):
    return jnp.mean(jnp.square(model.apply({"params": params}, TOKENS).astype(jnp.float32)))

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(value))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_flash_and_naive_agree_in_a_language_model():
  """The config's attention_implementation reaches the pure function: same logits and gradients."""
  naive = LanguageModel(lm_config(attention_implementation="naive", num_decoder_layers=1))
  flash = LanguageModel(lm_config(attention_implementation="flash", num_decoder_layers=1))
  params = naive.init(jax.random.key(0), TOKENS)["params"]

  def loss(model, params):
    return jnp.sum(jnp.square(model.apply({"params": params}, TOKENS)))

  np.testing.assert_allclose(
    flash.apply({"params": params}, TOKENS), naive.apply({"params": params}, TOKENS), atol=1e-5
  )
  g_flash = jax.jit(jax.grad(functools.partial(loss, flash)))(params)
  g_naive = jax.jit(jax.grad(functools.partial(loss, naive)))(params)
  for a, b in zip(jax.tree.leaves(g_flash), jax.tree.leaves(g_naive), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _sharpened(model, seed=1, factor=3.0):
  params = jax.jit(model.init)(jax.random.key(seed), TOKENS[:, :3])["params"]
  return jax.tree.map(lambda a: a * factor, params)


def _cached_step(model, params):
  decoder = model.clone(decode=True)

  @jax.jit
  def step(cache, tokens, positions):
    return decoder.apply(
      {"params": params, "cache": cache}, tokens, positions_BT=positions, mutable=["cache"]
    )

  return step


@pytest.mark.parametrize(
  "changes",
  [
    pytest.param(dict(), id="rope"),
    pytest.param(dict(mla_q_rank=5, attention_window=2), id="q_rank,window", marks=pytest.mark.slow),
    pytest.param(dict(positions="sinusoidal", mla_rope_dim=0), id="sinusoidal", marks=pytest.mark.slow),
    pytest.param(dict(rope_interleaved=True), id="interleaved", marks=pytest.mark.slow),
  ],
)
def test_cached_decoding_equals_recomputation_with_a_right_padded_prompt(changes):
  """A right-padded prompt through the latent cache, then single tokens at the cache offset: the
  logits at every real token equal the full forward pass's (padding is masked as a key there)."""
  model = LanguageModel(lm_config(num_decoder_layers=1, **changes))  # One layer: compiles fast.
  params = _sharpened(model, seed=2, factor=2.0)
  seq = jnp.array([[1, 5, 6, 0, 20, 21, 22], [1, 7, 8, 9, 3, 4, 25], [1, 10, 0, 0, 26, 3, 27]])
  full = np.asarray(jax.jit(model.apply)({"params": params}, seq))
  step = _cached_step(model, params)
  prompt = 4
  cache = init_cache(model, seq.shape[0], seq.shape[1])
  logits, variables = step(cache, seq[:, :prompt], jnp.arange(prompt))
  real = np.asarray(seq[:, :prompt]) != PAD
  np.testing.assert_allclose(np.asarray(logits)[real], full[:, :prompt][real], rtol=0, atol=1e-4)
  for t in range(prompt, seq.shape[1]):
    logits, variables = step(variables["cache"], seq[:, t : t + 1], jnp.array([t]))
    np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=0, atol=1e-4, err_msg=f"step {t}")


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_greedy_decode_equals_uncached_greedy():
  """attn.nn.decoding's greedy decoding through the latent cache gives the tokens of recomputing
  the whole (right-padded) sequence at each step."""
  model = LanguageModel(lm_config(mla_q_rank=5))
  params = _sharpened(model)
  prompt = jnp.array([[1, 5, 6], [1, 7, 8], [1, 9, 10]], jnp.int32)
  n = 4
  logits_fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
  seq = np.concatenate([np.asarray(prompt), np.full((3, n), PAD, np.int32)], axis=1)
  for i in range(n):
    seq[:, 3 + i] = np.asarray(jnp.argmax(logits_fn(params, jnp.asarray(seq))[:, 2 + i], -1))
  decoded = greedy_decode(model, params, prompt, max_new_tokens=n, eos_id=None)
  np.testing.assert_array_equal(decoded, seq[:, 3:])
  assert len(np.unique(seq[:, 3:])) > 1  # A model that repeats one token would test little.


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_transformer_greedy_decode_equals_uncached_greedy():
  """The encoder-decoder: MLA in the encoder's and the decoder's self-attention (cross-attention
  stays MultiHeadAttention); greedy decoding through the latent cache equals recomputation."""
  model = Transformer(lm_config(num_encoder_layers=1, mla_q_rank=5))
  src = jnp.array([[11, 12, 13, 14, 15], [16, 17, 18, 0, 0]], jnp.int32)
  bos = jnp.full((2, 1), BOS, jnp.int32)
  params = jax.tree.map(lambda a: 2.0 * a, jax.jit(model.init)(jax.random.key(3), src, bos)["params"])
  assert "kv_down" in params["decoder"]["layer_0"]["self_attention"]
  assert "key" in params["decoder"]["layer_0"]["cross_attention"]
  logits_fn = jax.jit(lambda p, tgt: model.apply({"params": p}, src, tgt))
  n = 4
  seq = np.concatenate([np.asarray(bos), np.full((2, n), PAD, np.int32)], axis=1)
  for i in range(n):
    seq[:, 1 + i] = np.asarray(jnp.argmax(logits_fn(params, jnp.asarray(seq))[:, i], -1))
  decoded = greedy_decode(model, params, src, max_new_tokens=n, eos_id=-1)  # No end token.
  np.testing.assert_array_equal(decoded, seq[:, 1:])


def test_records_weights_in_a_language_model():
  model = LanguageModel(lm_config())
  params = model.init(jax.random.key(0), TOKENS)["params"]
  _, weights = attention_weights(model, {"params": params}, TOKENS)
  assert weights[0]["self"].shape == (2, H, 6, 6)


@pytest.mark.slow  # Over ~3 s on 2 cores (several forward passes).
def test_hook_points_head_gates_and_diagnostics():
  """The hook points q, k, v, pattern and z (a hook on the pattern changes the output), a head gate
  of zero removes that head as zero rows of the output projection would, and the diagnostics."""
  model = LanguageModel(lm_config(num_decoder_layers=1))
  params = model.init(jax.random.key(0), TOKENS)["params"]
  out, cache = hooks.run_with_cache(model, params, TOKENS)
  shapes = {n.rsplit(".", 1)[-1]: a.shape for n, a in cache.items() if n.startswith("blocks.0.attn.")}
  E = K + 4
  assert shapes == {
    "q": (2, 6, H, E), "k": (2, 6, H, E), "v": (2, 6, H, K), "pattern": (2, H, 6, 6), "z": (2, 6, H, K)
  }  # fmt: skip
  flat = hooks.run_with_hooks(model, params, TOKENS, hooks={"blocks.0.attn.pattern": jnp.zeros_like})
  assert not np.allclose(flat, out)
  layer = ("decoder", "layer_0", "self_attention")
  gates = {"decoder": {"layer_0": {"self_attention": {"gate": jnp.array([1.0, 0.0])}}}}
  gated = model.apply({"params": params, "head_gates": gates}, TOKENS)
  pruned = jax.tree.map(lambda a: a, params)
  kernel = pruned[layer[0]][layer[1]][layer[2]]["out"]["kernel"]
  pruned[layer[0]][layer[1]][layer[2]]["out"]["kernel"] = kernel.at[1].set(0.0)
  np.testing.assert_allclose(gated, model.apply({"params": pruned}, TOKENS), atol=1e-5)
  _, state = model.apply({"params": params}, TOKENS, mutable=["diagnostics"])
  diagnostics = state["diagnostics"][layer[0]][layer[1]][layer[2]]
  assert {"entropy", "logit_std", "max_weight", "sink_rate"} <= set(diagnostics)
  assert all(np.isfinite(float(v[0])) for v in diagnostics.values())


# --------------------------------------------------------------------------------------------------
# The cache's size: analytic, and measured.
# --------------------------------------------------------------------------------------------------

KINDS = {  # name: (config changes, the analytic entries per token per layer).
  "MHA": (dict(positions="sinusoidal", mla_kv_rank=None, mla_rope_dim=0), 2 * H * K),
  "GQA": (dict(positions="sinusoidal", mla_kv_rank=None, mla_rope_dim=0, num_kv_heads=1), 2 * 1 * K),
  "MLA": (dict(), C + 4),
  "MLA, no RoPE key": (dict(positions="sinusoidal", mla_rope_dim=0), C),
}


@pytest.mark.parametrize("dtype,itemsize", [("float32", 4), ("bfloat16", 2)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_cache_bytes_per_token_is_analytic_and_measured(kind, dtype, itemsize):
  changes, entries = KINDS[kind]
  config = lm_config(dtype=dtype, num_heads=H, **changes)
  assert cache_bytes_per_token(config) == entries * itemsize
  B, S = 3, 7
  cache = init_cache(LanguageModel(config), B, S)
  layers = cache["decoder"]
  assert len(layers) == config.num_decoder_layers
  for name, block in layers.items():
    arrays = block["self_attention"]
    # Keys and values (or the latent and the RoPE key); the one-byte valid flag and the index aside.
    held = [a for n, a in arrays.items() if n not in ("cached_key_valid", "cache_index")]
    assert all(a.shape[:2] == (B, S) for a in held), name
    assert sum(a.nbytes for a in held) == cache_bytes_per_token(config) * B * S, name
    if config.mla_kv_rank is not None:
      assert arrays["cached_latent"].shape == (B, S, C)


def test_latent_cache_is_smaller_in_a_small_example():
  """D = 16, H = 2, K = 8, C = 6, R = 4 in float32: MHA 128 bytes per token per layer, GQA (one
  key/value head) 64, MLA 40."""
  base = lm_config(positions="sinusoidal", mla_kv_rank=None, mla_rope_dim=0)
  assert cache_bytes_per_token(base) == 128
  assert cache_bytes_per_token(base.replace(num_kv_heads=1)) == 64
  assert cache_bytes_per_token(lm_config()) == 40


# --------------------------------------------------------------------------------------------------
# Refusals: one line naming the field.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "changes,field",
  [
    (dict(mla_kv_rank=0), "mla_kv_rank"),
    (dict(mla_kv_rank=2.5), "mla_kv_rank"),
    (dict(mla_q_rank=-1), "mla_q_rank"),
    (dict(mla_rope_dim=3), "mla_rope_dim"),
    (dict(mla_rope_dim=-2), "mla_rope_dim"),
    (dict(mla_kv_rank=None, mla_rope_dim=0, mla_q_rank=4), "mla_q_rank"),
    (dict(mla_kv_rank=None, positions="sinusoidal"), "mla_rope_dim"),
    (dict(mla_rope_dim=0), "mla_rope_dim"),  # positions="rope" needs the decoupled key.
    (dict(positions="sinusoidal"), "mla_rope_dim"),  # ... and the decoupled key needs "rope".
    (dict(positions="alibi", mla_rope_dim=0), "positions"),
    (dict(positions="t5_bias", mla_rope_dim=0), "positions"),
    (dict(num_kv_heads=1), "num_kv_heads"),
    (dict(value_residual="learned"), "value_residual"),
    (dict(attention_gate="headwise"), "attention_gate"),
    (dict(qk_norm="rms"), "qk_norm"),
    (dict(logit_soft_cap=5.0), "logit_soft_cap"),
    (dict(attention_sink=True), "attention_sink"),
    (dict(attention_kind="sigmoid"), "attention_kind"),
    (dict(scale="init_folded"), "scale"),
    (dict(rope_fraction=0.5), "rope_fraction"),
    (dict(attention_implementation="jax"), "attention_implementation"),
  ],
)
def test_unsupported_combinations_are_refused_in_one_line_naming_the_field(changes, field):
  with pytest.raises(ValueError) as info:
    lm_config(**changes)
  message = str(info.value)
  assert message.startswith(f"{field}:") and "\n" not in message, message


def test_the_layer_refuses_what_it_does_not_do():
  x = inputs()
  with pytest.raises(ValueError, match=r"^attention_sink:"):
    init(layer(attention_sink=True), x)
  with pytest.raises(ValueError, match=r"^positions:"):
    init(layer(rope_dim=0, positions="rope"), x)
  with pytest.raises(ValueError, match=r"^value_residual:"):
    init(layer(value_residual="learned"), x)
  with pytest.raises(ValueError, match=r"^num_kv_heads:"):
    init(layer(num_kv_heads=1), x)
  with pytest.raises(ValueError, match="self-attention only"):
    layer().init(jax.random.key(0), x, inputs(seed=3))
  with pytest.raises(ValueError, match="self-attention only"):
    layer().init(jax.random.key(0), x, inputs_v=inputs(seed=3))


def test_jax_implementation_serves_mla_without_the_rope_key():
  """Without the decoupled key, queries, keys and values share K, so jax.nn's kernel serves it."""
  config = lm_config(positions="sinusoidal", mla_rope_dim=0, attention_implementation="jax")
  model = LanguageModel(config)
  params = model.init(jax.random.key(0), TOKENS)["params"]
  naive = LanguageModel(config.replace(attention_implementation="naive"))
  np.testing.assert_allclose(
    model.apply({"params": params}, TOKENS), naive.apply({"params": params}, TOKENS), atol=1e-5
  )
