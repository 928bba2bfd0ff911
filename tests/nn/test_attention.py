"""Tests for the Flax attention modules in `attn.modules`: SelfAttention and MultiHeadAttention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn
from attn.nn.attention import MultiHeadAttention, SelfAttention
from attn.nn.models import attention_weights

B, T, S, D = 2, 5, 7, 16
ATOL = 1e-5


def _normal(seed, shape):
  """Standard normal inputs from NumPy, which needs no XLA compilation per shape."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _init(module, *args, seed=0, **kwargs):
  return module.init(jax.random.key(seed), *args, **kwargs)


def _project(params, name, x):
  """x [B, T, D] through the DenseGeneral `name` of a MultiHeadAttention -> [B, T, heads, K]."""
  out = jnp.einsum("btd,dhk->bthk", x, params[name]["kernel"])
  if "bias" in params[name]:
    out = out + params[name]["bias"]
  return out


def _out_project(params, y_BTHK):
  out = jnp.einsum("bthk,hkd->btd", y_BTHK, params["out"]["kernel"])
  if "bias" in params["out"]:
    out = out + params["out"]["bias"]
  return out


def _shapes(tree):
  return jax.tree_util.tree_map(lambda a: a.shape, tree)


def _param_shapes(module, *args, **kwargs):
  """Parameter shapes from tracing `init` alone: shape checks and errors need no compilation."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  return _shapes(variables["params"])


# SelfAttention.


def test_self_attention_module_has_no_parameters():
  x = _normal(0, (B, T, D))
  variables = _init(SelfAttention(), x)
  assert "params" not in variables
  assert jax.tree_util.tree_leaves(variables) == []


@pytest.mark.parametrize("scale", ["sqrt_d", "none", 0.3])
def test_self_attention_module_equals_pure_function(scale):
  x = _normal(1, (B, T, D))
  mask = attn.causal_mask(T)
  module = SelfAttention(scale=scale)
  variables = _init(module, x)
  out = module.apply(variables, x, mask=mask)
  np.testing.assert_allclose(out, attn.self_attention(x, mask=mask, scale=scale), atol=ATOL)
  out, weights = attention_weights(module, variables, x)
  want_out, want_weights = attn.self_attention(x, scale=scale, return_weights=True)
  np.testing.assert_allclose(out, want_out, atol=ATOL)
  np.testing.assert_allclose(weights, want_weights, atol=ATOL)
  assert weights.shape == (B, T, T)
  np.testing.assert_array_equal(out, module.apply(variables, x))  # Recording changes nothing.


def test_self_attention_module_is_permutation_equivariant():
  x = _normal(2, (B, T, D))
  module = SelfAttention()
  variables = _init(module, x)
  perm = np.array([3, 0, 4, 1, 2])
  out = module.apply(variables, x)
  out_permuted = module.apply(variables, x[:, perm])
  np.testing.assert_allclose(out_permuted, out[:, perm], atol=ATOL)
  # Not trivially equal to its input, so the check above means something.
  assert not np.allclose(out, x, atol=1e-3)


def test_self_attention_module_works_for_any_length_with_the_same_variables():
  module = SelfAttention()
  variables = _init(module, _normal(3, (B, T, D)))
  for length in (2, 8):
    x = _normal(length, (B, length, D))
    out = module.apply(variables, x)
    assert out.shape == (B, length, D)
    np.testing.assert_allclose(out, attn.self_attention(x), atol=ATOL)


# MultiHeadAttention against flax.linen.MultiHeadDotProductAttention.


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_multi_head_attention_equals_flax_with_copied_params(use_bias, cross, masked):
  H = 4
  K = D // H
  x = _normal(10, (B, T, D))
  kv = _normal(11, (B, S, D)) if cross else None
  S_ = S if cross else T
  mask = None
  if masked:
    # A random mask that keeps the first key, so that no query row is fully masked.
    mask = np.random.default_rng(12).random((B, 1, T, S_)) < 0.6
    mask[..., 0] = True
    mask = jnp.asarray(mask)
  ours = MultiHeadAttention(num_heads=H, use_bias=use_bias)
  theirs = nn.MultiHeadDotProductAttention(num_heads=H, use_bias=use_bias)
  params = _init(ours, x, kv)["params"]
  assert _shapes(params) == _param_shapes(theirs, x, kv, kv)
  for name in ("query", "key", "value"):
    assert params[name]["kernel"].shape == (D, H, K)
  assert params["out"]["kernel"].shape == (H, K, D)
  assert ("bias" in params["query"]) == use_bias

  out = ours.apply({"params": params}, x, kv, mask=mask)
  want = theirs.apply({"params": params}, x, kv, kv, mask=mask, deterministic=True)
  assert out.shape == (B, T, D)
  np.testing.assert_allclose(out, want, atol=ATOL)
  if masked:  # The mask must matter, or the masked case would not test anything.
    assert not np.allclose(out, ours.apply({"params": params}, x, kv), atol=1e-4)


@pytest.mark.parametrize("values", ["own", "default"])
def test_separate_key_and_value_inputs_equal_flax_with_copied_params(values):
  """`inputs_k` and `inputs_v` as flax's MultiHeadDotProductAttention takes them (inputs of other
  widths than the query's; `inputs_v` defaults to `inputs_k`), against flax with our parameters."""
  H = 4
  x, k_in = _normal(10, (B, T, D)), _normal(11, (B, S, 12))
  v_in = _normal(12, (B, S, 8)) if values == "own" else None
  mask = jnp.asarray(np.random.default_rng(13).random((B, 1, T, S)) < 0.6).at[..., 0].set(True)
  ours = MultiHeadAttention(num_heads=H)
  theirs = nn.MultiHeadDotProductAttention(num_heads=H)
  params = _init(ours, x, inputs_k=k_in, inputs_v=v_in)["params"]
  assert _shapes(params) == _param_shapes(theirs, x, k_in, v_in)
  assert params["value"]["kernel"].shape == (8 if values == "own" else 12, H, D // H)
  out = ours.apply({"params": params}, x, inputs_k=k_in, inputs_v=v_in, mask=mask)
  want = theirs.apply({"params": params}, x, k_in, v_in, mask=mask, deterministic=True)
  np.testing.assert_allclose(out, want, atol=ATOL)
  if values == "default":  # The same as inputs_kv.
    np.testing.assert_allclose(out, ours.apply({"params": params}, x, k_in, mask=mask), atol=ATOL)
  with pytest.raises(ValueError, match=r"^inputs_k: give inputs_kv or inputs_k and inputs_v"):
    ours.apply({"params": params}, x, k_in, inputs_k=k_in)
  with pytest.raises(ValueError, match=r"^inputs_v: must be \[batch..., S, D_v\]"):
    ours.apply({"params": params}, x, inputs_k=k_in, inputs_v=_normal(1, (B, S + 1, 12)))


# Head-dim policy.


@pytest.mark.parametrize("H", [1, 2, 4, 8])
def test_fixed_model_dim_gives_k_equal_d_over_h(H):
  x = jnp.zeros((B, T, D))
  params = _param_shapes(MultiHeadAttention(num_heads=H), x)
  for name in ("query", "key", "value"):
    assert params[name]["kernel"] == (D, H, D // H)
    assert params[name]["bias"] == (H, D // H)
  assert params["out"]["kernel"] == (H, D // H, D)


def test_fixed_model_dim_splits_qkv_features():
  x = jnp.zeros((B, T, D))
  params = _param_shapes(MultiHeadAttention(num_heads=4, qkv_features=32, out_features=8), x)
  assert params["query"]["kernel"] == (D, 4, 8)
  assert params["out"]["kernel"] == (4, 8, 8)


@pytest.mark.parametrize("H", [3, 5, 32])
def test_fixed_model_dim_raises_when_heads_do_not_divide(H):
  x = jnp.zeros((B, T, D))
  with pytest.raises(ValueError, match="num_heads"):
    _param_shapes(MultiHeadAttention(num_heads=H), x)


@pytest.mark.parametrize("H", [1, 2, 3, 4])
def test_fixed_head_dim_keeps_k_whatever_h(H):
  x = jnp.zeros((B, T, D))
  module = MultiHeadAttention(num_heads=H, head_dim_policy="fixed_head_dim", head_dim=8)
  params = _param_shapes(module, x)
  for name in ("query", "key", "value"):
    assert params[name]["kernel"] == (D, H, 8)
  assert params["out"]["kernel"] == (H, 8, D)


def test_fixed_head_dim_runs():
  x = _normal(22, (B, T, D))
  module = MultiHeadAttention(num_heads=4, head_dim_policy="fixed_head_dim", head_dim=8)
  variables = _init(module, x)
  assert variables["params"]["query"]["kernel"].shape == (D, 4, 8)
  out = module.apply(variables, x)
  assert out.shape == (B, T, D)
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize("head_dim", [None, 0])
def test_fixed_head_dim_raises_without_head_dim(head_dim):
  x = jnp.zeros((B, T, D))
  with pytest.raises(ValueError, match="head_dim"):
    _param_shapes(
      MultiHeadAttention(num_heads=2, head_dim_policy="fixed_head_dim", head_dim=head_dim), x
    )


def test_unknown_head_dim_policy_raises():
  x = jnp.zeros((B, T, D))
  with pytest.raises(ValueError, match="head_dim_policy"):
    _param_shapes(MultiHeadAttention(num_heads=2, head_dim_policy="fixed_everything"), x)


# Grouped-query attention.


@pytest.mark.parametrize("G,cross", [(1, True), (2, True), (2, False)])
def test_num_kv_heads_matches_repeated_kv_heads_by_hand(G, cross):
  H = 4
  K = D // H
  x = _normal(30, (B, T, D))
  kv = _normal(31, (B, S, D)) if cross else x
  module = MultiHeadAttention(num_heads=H, num_kv_heads=G)
  params = _init(module, x, kv)["params"]
  assert params["query"]["kernel"].shape == (D, H, K)
  assert params["key"]["kernel"].shape == (D, G, K)
  assert params["value"]["kernel"].shape == (D, G, K)
  assert params["key"]["bias"].shape == (G, K)

  q = _project(params, "query", x)
  k = jnp.repeat(_project(params, "key", kv), H // G, axis=-2)
  v = jnp.repeat(_project(params, "value", kv), H // G, axis=-2)
  want = _out_project(params, attn.dot_product_attention(q, k, v))
  np.testing.assert_allclose(module.apply({"params": params}, x, kv), want, atol=ATOL)

  # The same params in a full multi-head module, with each key/value head copied H // G times.
  repeat = lambda a: jnp.repeat(a, H // G, axis=-2)
  full_params = dict(params)
  for name in ("key", "value"):
    full_params[name] = jax.tree_util.tree_map(repeat, params[name])
  full = MultiHeadAttention(num_heads=H).apply({"params": full_params}, x, kv)
  np.testing.assert_allclose(module.apply({"params": params}, x, kv), full, atol=ATOL)


@pytest.mark.parametrize("G", [3, 8, -2])
def test_num_kv_heads_not_dividing_heads_raises(G):
  x = jnp.zeros((B, T, D))
  with pytest.raises(ValueError, match="num_kv_heads"):
    _param_shapes(MultiHeadAttention(num_heads=4, num_kv_heads=G), x)


def test_num_kv_heads_zero_raises():
  """G = 0 is no valid head count (ModelConfig rejects it); it must not silently mean G = H."""
  x = jnp.zeros((B, T, D))
  with pytest.raises(ValueError, match="num_kv_heads"):
    _param_shapes(MultiHeadAttention(num_heads=4, num_kv_heads=0), x)


# Scale choices.


def _by_hand(params, x, kv, multiplier):
  """softmax(multiplier * q.k) v through the out projection, all written out."""
  q = _project(params, "query", x)
  k = _project(params, "key", kv)
  v = _project(params, "value", kv)
  logits = jnp.einsum("bthk,bshk->bhts", q, k) * multiplier
  weights = jax.nn.softmax(logits, axis=-1)
  return _out_project(params, jnp.einsum("bhts,bshk->bthk", weights, v))


@pytest.mark.parametrize(
  "scale,multiplier", [("sqrt_d", 0.5), ("none", 1.0), ("d", 0.25), (0.37, 0.37), (2.0, 2.0)]
)
def test_scale_choices_match_hand_computation(scale, multiplier):
  H, K = 4, 4
  x = _normal(40, (B, T, D))
  kv = _normal(41, (B, S, D))
  module = MultiHeadAttention(num_heads=H, scale=scale)
  params = _init(module, x, kv)["params"]
  assert params["query"]["kernel"].shape == (D, H, K)
  assert set(params) == {"query", "key", "value", "out"}
  out = module.apply({"params": params}, x, kv)
  np.testing.assert_allclose(out, _by_hand(params, x, kv, multiplier), atol=ATOL)


def test_scale_choices_differ_from_each_other():
  x = _normal(42, (B, T, D))
  params = _init(MultiHeadAttention(num_heads=4), x)["params"]
  outs = [
    MultiHeadAttention(num_heads=4, scale=s).apply({"params": params}, x)
    for s in ("sqrt_d", "none", "d")
  ]
  assert not np.allclose(outs[0], outs[1], atol=1e-4)
  assert not np.allclose(outs[0], outs[2], atol=1e-4)


@pytest.mark.parametrize("H", [1, 4])
def test_learned_scale_adds_log_scale_and_starts_at_sqrt_d(H):
  K = D // H
  x = _normal(43, (B, T, D))
  kv = _normal(44, (B, S, D))
  learned = MultiHeadAttention(num_heads=H, scale="learned")
  params = _init(learned, x, kv)["params"]
  assert set(params) == {"query", "key", "value", "out", "log_scale"}
  assert params["log_scale"].shape == (H,)
  np.testing.assert_allclose(params["log_scale"], np.full((H,), np.log(1 / np.sqrt(K))), atol=1e-6)

  others = {k: v for k, v in params.items() if k != "log_scale"}
  want = MultiHeadAttention(num_heads=H, scale="sqrt_d").apply({"params": others}, x, kv)
  out = learned.apply({"params": params}, x, kv)
  np.testing.assert_allclose(out, want, atol=ATOL)

  # The parameter is used: per head, exp(log_scale) multiplies the logits.
  new_log_scale = jnp.log(jnp.linspace(0.5, 2.0, H))
  moved = learned.apply({"params": {**params, "log_scale": new_log_scale}}, x, kv)
  q = _project(params, "query", x) * jnp.exp(new_log_scale)[:, None]
  k = _project(params, "key", kv)
  v = _project(params, "value", kv)
  by_hand = _out_project(params, attn.dot_product_attention(q, k, v, scale="none"))
  np.testing.assert_allclose(moved, by_hand, atol=ATOL)
  assert not np.allclose(moved, out, atol=1e-4)


@pytest.mark.parametrize("H", [1, 4])
def test_init_folded_scales_query_kernel_and_starts_at_sqrt_d(H):
  K = D // H
  x = _normal(46, (B, T, D))
  kv = _normal(47, (B, S, D))
  folded = MultiHeadAttention(num_heads=H, scale="init_folded")
  plain = MultiHeadAttention(num_heads=H, scale="sqrt_d")
  folded_params = _init(folded, x, kv, seed=7)["params"]
  plain_params = _init(plain, x, kv, seed=7)["params"]
  assert set(folded_params) == set(plain_params)
  np.testing.assert_allclose(
    folded_params["query"]["kernel"], plain_params["query"]["kernel"] / np.sqrt(K), atol=1e-6
  )
  for name in ("key", "value", "out"):
    np.testing.assert_allclose(folded_params[name]["kernel"], plain_params[name]["kernel"])
  out = folded.apply({"params": folded_params}, x, kv)
  want = plain.apply({"params": plain_params}, x, kv)
  np.testing.assert_allclose(out, want, atol=ATOL)
  # No multiplier at run time: with the plain kernel it attends with scale "none".
  unscaled = folded.apply({"params": plain_params}, x, kv)
  np.testing.assert_allclose(unscaled, _by_hand(plain_params, x, kv, 1.0), atol=ATOL)


@pytest.mark.parametrize("scale", ["sqrt", "learn", 0.0, -1.0, float("inf"), True])
def test_invalid_scale_raises(scale):
  x = jnp.zeros((B, T, D))
  with pytest.raises(ValueError, match="scale"):
    _param_shapes(MultiHeadAttention(num_heads=2, scale=scale), x)


# Weights and dropout.


def test_recorded_weights_give_rows_summing_to_one():
  H = 4
  x = _normal(50, (B, T, D))
  kv = _normal(51, (B, S, D))
  module = MultiHeadAttention(num_heads=H)
  variables = _init(module, x, kv)
  out, weights = attention_weights(module, variables, x, kv)
  assert weights.shape == (B, H, T, S)
  np.testing.assert_allclose(weights.sum(-1), np.ones((B, H, T)), atol=1e-5)
  assert np.all(weights >= 0)
  np.testing.assert_allclose(out, module.apply(variables, x, kv), atol=ATOL)
  # Sown once, under a stable name, into "intermediates" when it is mutable ...
  _, state = module.apply(variables, x, kv, mutable=["intermediates"])
  assert jax.tree.map(jnp.shape, state) == {"intermediates": {"attention_weights": ((B, H, T, S),)}}
  np.testing.assert_array_equal(state["intermediates"]["attention_weights"][0], weights)
  # ... and nowhere otherwise: not in another mutable collection, not at init.
  _, state = module.apply(variables, x, kv, mutable=["diagnostics"])
  assert set(state) == {"diagnostics"}
  assert "intermediates" not in variables


def test_recorded_weights_respect_mask():
  H = 4
  x = _normal(52, (B, T, D))
  module = MultiHeadAttention(num_heads=H)
  variables = _init(module, x)
  _, weights = attention_weights(module, variables, x, mask=attn.causal_mask(T))
  upper = np.triu(np.ones((T, T), bool), k=1)
  assert np.all(np.asarray(weights)[..., upper] == 0)
  np.testing.assert_allclose(weights.sum(-1), np.ones((B, H, T)), atol=1e-5)


def test_attention_dropout_only_when_not_deterministic():
  x = _normal(53, (B, T, D))
  module = MultiHeadAttention(num_heads=4, dropout_rate=0.5)
  variables = _init(module, x)
  clean = module.apply(variables, x)
  rngs = {"dropout": jax.random.key(9)}
  same = module.apply(variables, x, deterministic=True, rngs=rngs)
  np.testing.assert_allclose(same, clean, atol=ATOL)
  dropped = module.apply(variables, x, deterministic=False, rngs=rngs)
  assert dropped.shape == clean.shape
  assert not np.allclose(dropped, clean, atol=1e-4)
  # Same rng, same mask; another rng, another mask.
  again = module.apply(variables, x, deterministic=False, rngs=rngs)
  np.testing.assert_allclose(again, dropped, atol=ATOL)
  other = module.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(10)})
  assert not np.allclose(other, dropped, atol=1e-4)


def test_attention_dropout_rate_zero_is_a_no_op():
  x = _normal(54, (B, T, D))
  module = MultiHeadAttention(num_heads=4, dropout_rate=0.0)
  variables = _init(module, x)
  out = module.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_allclose(out, module.apply(variables, x), atol=ATOL)


# Decode cache.


def _decode_setup(G=None):
  """A decode-mode module sized by a length-T init, and the causal full-sequence output to match."""
  x = _normal(60, (B, T, D))
  decoder = MultiHeadAttention(num_heads=4, num_kv_heads=G, decode=True)
  variables = _init(decoder, x)
  full = MultiHeadAttention(num_heads=4, num_kv_heads=G)
  want = full.apply({"params": variables["params"]}, x, mask=attn.causal_mask(T))
  return decoder, variables, x, want


def _decode_in_steps(step, cache, x):
  """Feeds a 3-token prompt, then one token at a time; returns the outputs and the final cache."""
  outs = []
  for start, stop in [(0, 3)] + [(t, t + 1) for t in range(3, x.shape[1])]:
    out, state = step(cache, x[:, start:stop])
    assert out.shape == (B, stop - start, D)
    cache = state["cache"]
    assert int(cache["cache_index"]) == stop
    outs.append(out)
  return jnp.concatenate(outs, axis=1), cache


def _jitted_step(decoder, params):
  @jax.jit
  def step(cache, x_t):
    return decoder.apply({"params": params, "cache": cache}, x_t, mutable=["cache"])

  return step


@pytest.mark.parametrize("G", [None, 2])
def test_decode_cache_matches_causal_full_sequence(G):
  decoder, variables, x, want = _decode_setup(G)
  cache = variables["cache"]
  assert cache["cached_key"].shape == (B, T, G or 4, D // 4)
  assert cache["cached_value"].shape == (B, T, G or 4, D // 4)
  assert int(cache["cache_index"]) == 0
  # Under jit, so that the cache index is traced as it is in `attn.decoding`.
  out, _ = _decode_in_steps(_jitted_step(decoder, variables["params"]), cache, x)
  np.testing.assert_allclose(out, want, atol=ATOL)


def test_decode_records_weights_over_the_cache_only_when_asked():
  """Decoding makes only "cache" mutable: nothing is recorded. With "intermediates" mutable too, a
  step records its weights over the whole cache [B, H, T, S_cache], none on unwritten positions,
  and the output is the same."""
  decoder, variables, x, _ = _decode_setup()
  params, cache = variables["params"], variables["cache"]
  out, state = decoder.apply({"params": params, "cache": cache}, x[:, :3], mutable=["cache"])
  assert set(state) == {"cache"}
  recorded, state = decoder.apply(
    {"params": params, "cache": cache}, x[:, :3], mutable=["cache", "intermediates"]
  )
  np.testing.assert_array_equal(recorded, out)
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (B, 4, 3, T)
  allowed = np.tril(np.ones((3, T), bool))  # Query t at position t sees cache positions 0..t.
  np.testing.assert_array_equal(np.asarray(weights)[..., ~allowed], 0)
  np.testing.assert_allclose(weights.sum(-1), np.ones((B, 4, 3)), atol=1e-5)


def test_decode_prompt_longer_than_cache_raises():
  decoder, variables, x, _ = _decode_setup()
  too_long = jnp.concatenate([x, x[:, :1]], axis=1)
  with pytest.raises(ValueError, match="cache"):
    decoder.apply(
      {"params": variables["params"], "cache": variables["cache"]}, too_long, mutable=["cache"]
    )


def test_decode_more_tokens_than_cache_holds_raises():
  """Tokens fed across calls add up: one token past a full cache must not silently overwrite it."""
  decoder, variables, x, want = _decode_setup()
  params = variables["params"]
  # Eagerly, the whole sequence in one call fills the cache and attends causally.
  out, state = decoder.apply({"params": params, "cache": variables["cache"]}, x, mutable=["cache"])
  np.testing.assert_allclose(out, want, atol=ATOL)
  assert int(state["cache"]["cache_index"]) == x.shape[1]
  with pytest.raises(ValueError, match="cache"):
    decoder.apply({"params": params, "cache": state["cache"]}, x[:, :1], mutable=["cache"])


def test_decode_overfull_cache_under_jit_gives_nan():
  """Under jit the cache index is traced and cannot raise; the output must say so with NaN."""
  decoder, variables, x, want = _decode_setup()
  step = _jitted_step(decoder, variables["params"])
  out, state = step(variables["cache"], x)
  np.testing.assert_allclose(out, want, atol=ATOL)
  overfull, _ = step(state["cache"], x[:, :2])
  assert overfull.shape == (B, 2, D)
  assert np.all(np.isnan(overfull))


# Transformations.


def test_apply_under_jit_matches_eager():
  x = _normal(70, (B, T, D))
  kv = _normal(71, (B, S, D))
  module = MultiHeadAttention(num_heads=4, num_kv_heads=2)
  variables = _init(module, x, kv)
  eager = module.apply(variables, x, kv)
  jitted = jax.jit(lambda v, a, b: module.apply(v, a, b))(variables, x, kv)
  np.testing.assert_allclose(jitted, eager, atol=ATOL)


def test_apply_under_vmap_matches_batched():
  x = _normal(72, (B, T, D))
  module = MultiHeadAttention(num_heads=4)
  variables = _init(module, x)
  batched = module.apply(variables, x, mask=attn.causal_mask(T))
  mapped = jax.jit(jax.vmap(lambda a: module.apply(variables, a, mask=attn.causal_mask(T))))(x)
  np.testing.assert_allclose(mapped, batched, atol=ATOL)


@pytest.mark.parametrize("scale", ["sqrt_d", "learned"])
def test_grad_wrt_params_is_finite_and_nonzero(scale):
  x = _normal(73, (B, T, D))
  module = MultiHeadAttention(num_heads=4, scale=scale)
  params = _init(module, x)["params"]
  mask = attn.causal_mask(T)

  @jax.jit
  def loss(p):
    return jnp.mean(module.apply({"params": p}, x, mask=mask) ** 2)

  grads = jax.grad(loss)(params)
  assert _shapes(grads) == _shapes(params)
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(leaf))
  for name in ("query", "key", "value", "out"):
    assert np.any(grads[name]["kernel"] != 0), name
  if scale == "learned":
    assert np.any(grads["log_scale"] != 0)


@pytest.mark.parametrize(  # flash: over ~3 s on 2 cores (compiling).
  "implementation", [pytest.param("flash", marks=pytest.mark.slow), "jax"]
)
def test_explicit_fast_path_initialises_and_matches_naive(implementation):
  """init (where every collection, the diagnostics too, is mutable) works with a fast path chosen, and
  the output equals the naive one's (recording the weights keeps the path: see below)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  make = lambda impl: MultiHeadAttention(num_heads=2, implementation=impl)
  variables = make(implementation).init(jax.random.PRNGKey(1), x)
  out = make(implementation).apply(variables, x, is_causal=True)
  ref = make("naive").apply(variables, x, is_causal=True)
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("implementation", ["naive", "flash", "jax", None])
@pytest.mark.parametrize("positions", ["none", "alibi"])
def test_recorded_weights_are_the_core_weights_and_keep_the_output(implementation, positions):
  """Recorded weights equal `attn.attention_weights` of the layer's own queries and keys, whatever
  the implementation (a fused path gets them from a naive pass of their own), and recording leaves
  the output bit for bit as a plain forward pass gives it, eagerly and under jit."""
  from attn.core import attention

  H = 2
  x = _normal(56, (B, T, D))
  module = MultiHeadAttention(num_heads=H, implementation=implementation, positions=positions)
  variables = _init(module, x)
  params = variables["params"]
  q = _project(params, "query", x)
  k = _project(params, "key", x)
  bias = attn.RelativeBias("alibi", attn.alibi_slopes(H)) if positions == "alibi" else None
  want = attn.attention_weights(q, k, mask=attn.causal_mask(T), relative_bias=bias)
  calls = []
  real = attention.dot_product_attention

  def spy(*args, **kwargs):
    calls.append((kwargs.get("implementation"), kwargs.get("return_weights")))
    return real(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(attention, "dot_product_attention", spy)
    out, weights = attention_weights(module, variables, x, is_causal=True)
  # The layer's own path, asked for its weights only where it is naive anyway.
  assert calls == [(implementation, implementation == "naive")]
  np.testing.assert_allclose(weights, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out, module.apply(variables, x, is_causal=True))
  jitted = jax.jit(lambda v, a: attention_weights(module, v, a, is_causal=True))(variables, x)
  plain = jax.jit(lambda v, a: module.apply(v, a, is_causal=True))(variables, x)
  np.testing.assert_array_equal(jitted[0], plain)
  np.testing.assert_allclose(jitted[1], want, rtol=1e-6, atol=1e-6)


def test_recorded_weights_under_dropout_are_the_weights_before_dropout():
  x = _normal(57, (B, T, D))
  module = MultiHeadAttention(num_heads=4, dropout_rate=0.5)
  variables = _init(module, x)
  rngs = {"dropout": jax.random.key(9)}
  out, weights = attention_weights(module, variables, x, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(out, module.apply(variables, x, deterministic=False, rngs=rngs))
  _, clean = attention_weights(module, variables, x)
  np.testing.assert_allclose(weights, clean, atol=1e-6)


@pytest.mark.parametrize(  # flash: over ~3 s on 2 cores (compiling).
  "implementation", [pytest.param("flash", marks=pytest.mark.slow), "jax"]
)
def test_diagnostics_keep_the_kernel_asked_for(implementation, monkeypatch):
  """With the diagnostics collection mutable, the output still comes from the implementation asked for
  (the statistics come from a separate naive weights pass), and the statistics equal the naive path's."""
  from attn.core import attention

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 16))
  make = lambda impl: MultiHeadAttention(num_heads=2, implementation=impl)
  variables = make("naive").init(jax.random.PRNGKey(1), x)
  calls = []
  real = attention.dot_product_attention

  def spy(*args, **kwargs):
    calls.append(kwargs.get("implementation"))
    return real(*args, **kwargs)

  monkeypatch.setattr(attention, "dot_product_attention", spy)
  out, state = make(implementation).apply(variables, x, is_causal=True, mutable=["diagnostics"])
  assert calls == [implementation]
  ref, ref_state = make("naive").apply(variables, x, is_causal=True, mutable=["diagnostics"])
  np.testing.assert_allclose(out, ref, atol=1e-5)
  for name in ("logit_std", "entropy", "max_weight"):
    np.testing.assert_allclose(
      state["diagnostics"][name][0], ref_state["diagnostics"][name][0], rtol=1e-6, err_msg=name
    )


# Projection biases and the causal sliding window.


@pytest.mark.parametrize(
  "use_bias,qkv_bias,out_bias,want",
  [
    (True, None, None, (True, True)),
    (False, None, None, (False, False)),
    (False, True, False, (True, False)),  # Qwen2.
    (True, False, True, (False, True)),
  ],
)
def test_qkv_and_out_biases_follow_use_bias_unless_set(use_bias, qkv_bias, out_bias, want):
  x = _normal(70, (B, T, D))
  module = MultiHeadAttention(num_heads=4, use_bias=use_bias, qkv_bias=qkv_bias, out_bias=out_bias)
  params = jax.eval_shape(lambda: _init(module, x))["params"]
  assert tuple("bias" in params[n] for n in ("query", "key", "value")) == (want[0],) * 3
  assert ("bias" in params["out"]) == want[1]


def _band(T, w):
  """The causal sliding window by hand: query i sees key j iff 0 <= i - j <= w."""
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  return jnp.asarray((j <= i) & (i - j <= w))


@pytest.mark.parametrize("implementation", ["naive", "flash"])
@pytest.mark.parametrize("w", [0, 2])
def test_causal_window_is_the_band_mask(implementation, w):
  x = _normal(71, (B, 7, D))
  module = MultiHeadAttention(num_heads=4, implementation=implementation)
  variables = _init(module, x)
  out = module.apply(variables, x, is_causal=True, window=w)
  want = MultiHeadAttention(num_heads=4, implementation="naive").apply(variables, x, mask=_band(7, w))
  np.testing.assert_allclose(out, want, atol=ATOL)
  full = module.apply(variables, x, is_causal=True)
  assert not np.allclose(out, full, atol=1e-3)


@pytest.mark.parametrize("G", [None, 1])
def test_decode_with_a_window_masks_the_cache_by_absolute_position(G):
  x = _normal(72, (B, 9, D))
  decoder = MultiHeadAttention(num_heads=4, num_kv_heads=G, decode=True, positions="rope")
  variables = _init(decoder, x)
  full = MultiHeadAttention(num_heads=4, num_kv_heads=G, positions="rope")
  want = full.apply({"params": variables["params"]}, x, mask=_band(9, 2))

  @jax.jit
  def step(cache, x_t):
    return decoder.apply(
      {"params": variables["params"], "cache": cache}, x_t, window=2, mutable=["cache"]
    )

  cache, outs = variables["cache"], []
  for start, stop in [(0, 3)] + [(t, t + 1) for t in range(3, 9)]:
    out, state = step(cache, x[:, start:stop])
    cache = state["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=ATOL)


def test_window_must_be_a_non_negative_int():
  x = _normal(73, (B, T, D))
  module = MultiHeadAttention(num_heads=4)
  variables = _init(module, x)
  with pytest.raises(ValueError, match=r"^window: must be None or an int >= 0, got -1"):
    module.apply(variables, x, is_causal=True, window=-1)


# Gated attention, value residual learning and the sink / sparsity diagnostics (issue 27).


def _manual_attention(params, x, v_BSGK, gate=None, **kwargs):
  """The layer's output from its parameters by the formulas: softmax(q k / sqrt(K)) v, each head's
  output times `gate` ([B, T, H] or [B, T, H, K]), then the output projection."""
  q, k = _project(params, "query", x), _project(params, "key", x)
  out = attn.dot_product_attention(q, k, v_BSGK, implementation="naive", **kwargs)
  if gate is not None:
    out = out * (gate[..., None] if gate.ndim == 3 else gate)
  return _out_project(params, out)


@pytest.mark.parametrize("kind", ["headwise", "elementwise"])
def test_attention_gate_is_sigmoid_of_the_query_input_times_each_heads_output(kind):
  """Qiu et al.'s G1 gate: out_h * sigmoid(x W_g + b) before the output projection, one scalar per
  head (broadcast over K) or one per head-dim entry; parameter "output_gate" [D, H] or [D, H, K]."""
  x = _normal(0, (B, T, D))
  module = MultiHeadAttention(num_heads=4, attention_gate=kind, implementation="naive")
  params = _init(module, x)["params"]
  shape = (D, 4) if kind == "headwise" else (D, 4, 4)
  assert params["output_gate"]["kernel"].shape == shape
  assert params["output_gate"]["bias"].shape == shape[1:]
  gate_logits = jnp.einsum("btd,d...->bt...", x, params["output_gate"]["kernel"])
  gate = jax.nn.sigmoid(gate_logits + params["output_gate"]["bias"])
  want = _manual_attention(params, x, _project(params, "value", x), gate, is_causal=True)
  got = module.apply({"params": params}, x, is_causal=True)
  np.testing.assert_allclose(got, want, atol=ATOL)
  plain = MultiHeadAttention(num_heads=4, implementation="naive")
  ungated = {k: v for k, v in params.items() if k != "output_gate"}
  assert not np.allclose(plain.apply({"params": ungated}, x, is_causal=True), got, atol=1e-3)


def test_attention_gate_in_cross_attention_and_decode_mode_is_per_token():
  """Cross-attention gates from the query input (not the keys'); in decode mode each new token's
  gate needs no cache: token by token equals the whole sequence at once."""
  x, kv = _normal(0, (B, T, D)), _normal(1, (B, S, D))
  module = MultiHeadAttention(num_heads=2, attention_gate="headwise", implementation="naive")
  params = _init(module, x, kv)["params"]
  gate = jax.nn.sigmoid(
    jnp.einsum("btd,dh->bth", x, params["output_gate"]["kernel"]) + params["output_gate"]["bias"]
  )
  q, k, v = _project(params, "query", x), _project(params, "key", kv), _project(params, "value", kv)
  out = attn.dot_product_attention(q, k, v, implementation="naive")
  want = _out_project(params, out * gate[..., None])
  np.testing.assert_allclose(module.apply({"params": params}, x, kv), want, atol=ATOL)
  decoder = module.clone(decode=True)
  cache = decoder.init(jax.random.key(0), x)["cache"]
  full = module.apply({"params": params}, x, is_causal=True)
  step = jax.jit(lambda c, x_t: decoder.apply({"params": params, "cache": c}, x_t, mutable=["cache"]))
  for t in range(T):
    out, mutated = step(cache, x[:, t : t + 1])
    cache = mutated["cache"]
    np.testing.assert_allclose(out[:, 0], full[:, t], atol=ATOL, err_msg=f"token {t}")


def test_value_residual_mixes_the_first_layers_values_by_its_formula():
  """ "learned" (ResFormer): the layer attends to l1 * V_n + l2 * V_1 with "value_mix" = [l1, l2]
  (0.5 each at init) and returns those values; "shared" (SVFormer): to V_1 itself, with no value
  projection of its own."""
  x, v1 = _normal(0, (B, T, D)), _normal(1, (B, T, 4, 4))
  learned = MultiHeadAttention(num_heads=4, value_residual="learned", implementation="naive")
  params = _init(learned, x, first_values=v1)["params"]
  np.testing.assert_array_equal(params["value_mix"], [0.5, 0.5])
  params = {**params, "value_mix": jnp.array([0.3, 1.7])}
  mixed = 0.3 * _project(params, "value", x) + 1.7 * v1
  out, values = learned.apply({"params": params}, x, first_values=v1, return_values=True)
  np.testing.assert_allclose(values, mixed, atol=ATOL)
  np.testing.assert_allclose(out, _manual_attention(params, x, mixed), atol=ATOL)
  # Without first values the layer is a first layer: its own values, returned for the next ones.
  out, values = learned.apply({"params": params}, x, return_values=True)
  np.testing.assert_allclose(values, _project(params, "value", x), atol=ATOL)

  shared = MultiHeadAttention(num_heads=4, value_residual="shared", implementation="naive")
  shared_params = _init(shared, x, first_values=v1)["params"]
  assert set(shared_params) == {"query", "key", "out"}
  got = shared.apply({"params": shared_params}, x, first_values=v1)
  np.testing.assert_allclose(got, _manual_attention(shared_params, x, v1), atol=ATOL)


def test_value_residual_refuses_first_values_it_cannot_use():
  x = _normal(0, (B, T, D))
  with pytest.raises(ValueError, match=r"^value_residual: first_values given to a layer with"):
    _param_shapes(MultiHeadAttention(num_heads=4), x, first_values=jnp.zeros((B, T, 4, 4)))
  with pytest.raises(ValueError, match=r"^value_residual: first_values must be \[batch..., S, G, K\]"):
    _param_shapes(
      MultiHeadAttention(num_heads=4, value_residual="learned"), x, first_values=jnp.zeros((B, T, 4))
    )


def test_sink_rate_and_sparsity_of_a_hand_made_pattern():
  """One head, causal, T = 4. Example 0 has all-zero inputs: every row is uniform over the keys it
  sees, so the weight on key 0 is 1, 1/2, 1/3, 1/4 and no weight is below 1e-3. Example 1's key 0 is
  huge along the query bias: every row puts all its weight there, and the 6 other allowed weights
  of the 10 are below 1e-3. Sink rate: the mean over the 8 rows; sparsity: 6 / 20."""
  module = MultiHeadAttention(num_heads=1, implementation="naive")
  x = jnp.zeros((2, 4, 2)).at[1, 0, 0].set(100.0)
  params = jax.tree.map(jnp.zeros_like, _init(module, x)["params"])
  params["query"]["bias"] = jnp.array([[1.0, 0.0]])
  params["key"]["kernel"] = jnp.eye(2)[:, None, :]
  _, state = module.apply({"params": params}, x, is_causal=True, mutable=["diagnostics"])
  stats = {name: float(value[0]) for name, value in state["diagnostics"].items()}
  want_sink = ((1 + 1 / 2 + 1 / 3 + 1 / 4) + 4) / 8
  np.testing.assert_allclose(stats["sink_rate"], want_sink, rtol=1e-5)
  np.testing.assert_allclose(stats["sparsity"], 6 / 20, rtol=1e-6)
  # A fully masked row (a padding query of example 1 that sees no key) counts in neither.
  valid = jnp.array([[True] * 4, [False] * 4])
  _, state = module.apply({"params": params}, x, key_valid=valid, mutable=["diagnostics"])
  stats = {name: float(value[0]) for name, value in state["diagnostics"].items()}
  np.testing.assert_allclose(stats["sink_rate"], 1 / 4, rtol=1e-5)  # Example 0: uniform over 4.
  np.testing.assert_allclose(stats["sparsity"], 0.0)


def _numpy_logits(params, x):
  """[B, H, T, T] scaled logits q.k / sqrt(K) of a MultiHeadAttention's parameters, in NumPy."""
  q, k = np.asarray(_project(params, "query", x)), np.asarray(_project(params, "key", x))
  return np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])


@pytest.mark.parametrize("kind", ["softpick", "stick_breaking"])
def test_attention_kind_softpick_and_stick_breaking_follow_their_formulas(kind):
  """Causal, by the papers' formulas in NumPy: softpick relu(e^x - 1) / (sum_j<=i |e^x_j - 1| +
  1e-6); stick-breaking sigmoid(x_ij) prod_{j<k<=i} (1 - sigmoid(x_ik))."""
  x = _normal(0, (B, T, D))
  module = MultiHeadAttention(num_heads=4, attention_kind=kind, implementation="naive")
  params = _init(module, x)["params"]
  logits = _numpy_logits(params, x).astype(np.float64)
  weights = np.zeros_like(logits)
  sig = 1 / (1 + np.exp(-logits))
  for i in range(T):
    row = logits[..., i, : i + 1]
    if kind == "softpick":
      e = np.exp(row) - 1
      weights[..., i, : i + 1] = np.maximum(e, 0) / (np.abs(e).sum(-1, keepdims=True) + 1e-6)
    else:
      for j in range(i + 1):
        keep = np.prod(1 - sig[..., i, j + 1 : i + 1], axis=-1)
        weights[..., i, j] = sig[..., i, j] * keep
  v = np.asarray(_project(params, "value", x))
  want = _out_project(params, jnp.asarray(np.einsum("bhts,bshk->bthk", weights, v), jnp.float32))
  got = module.apply({"params": params}, x, is_causal=True)
  np.testing.assert_allclose(got, want, atol=ATOL)
  if kind == "stick_breaking":  # Naive only: flash is refused in one line naming the option.
    flash = MultiHeadAttention(num_heads=4, attention_kind=kind, implementation="flash")
    with pytest.raises(ValueError, match=r"implementation='flash' does not support kind="):
      flash.apply({"params": params}, x, is_causal=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["softpick", "stick_breaking"])
def test_attention_kinds_have_finite_gradients_with_padding(kind, dtype):
  x = _normal(0, (B, T, D)).astype(dtype)
  valid = jnp.arange(T)[None, :] < jnp.array([[T], [2]])
  module = MultiHeadAttention(num_heads=4, attention_kind=kind, dtype=dtype)
  params = _init(module, x, is_causal=True)["params"]

  def loss(params):
    out = module.apply({"params": params}, x, key_valid=valid, is_causal=True)
    return jnp.sum(jnp.square(out.astype(jnp.float32)))

  grads = jax.grad(loss)(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["query"]["kernel"]).sum()) > 0


def test_forget_gate_adds_the_cumulative_log_forget_gates_between_key_and_query():
  """FoX: f = sigmoid(x W_f + b_f) per token and head (parameter "forget_gate", kernel [D, H], bias
  [H] at 0), logit (i, j) plus sum_{j < k <= i} log f_k, causal softmax; a padding token (key_valid
  False) forgets nothing, so the real tokens' outputs are those of the sequence without it."""
  x = _normal(0, (B, T, D))
  module = MultiHeadAttention(num_heads=4, forget_gate=True, implementation="naive")
  params = _init(module, x, is_causal=True)["params"]
  assert _shapes(params["forget_gate"]) == {"kernel": (D, 4), "bias": (4,)}
  np.testing.assert_array_equal(params["forget_gate"]["bias"], np.zeros(4))
  params["forget_gate"]["bias"] = jnp.array([0.5, -1.0, 2.0, 0.0])
  gate = {k: np.asarray(v) for k, v in params["forget_gate"].items()}
  f = np.asarray(x) @ gate["kernel"] + gate["bias"]
  log_f = np.log(1 / (1 + np.exp(-f)))  # [B, T, H]
  logits = _numpy_logits(params, x)
  for i in range(T):
    for j in range(i + 1):
      logits[:, :, i, j] += log_f[:, j + 1 : i + 1].sum(1)
  logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  v = np.asarray(_project(params, "value", x))
  want = _out_project(params, jnp.asarray(np.einsum("bhts,bshk->bthk", weights, v), jnp.float32))
  np.testing.assert_allclose(module.apply({"params": params}, x, is_causal=True), want, atol=ATOL)
  # A padding token inserted at position 2: the other tokens' outputs do not move.
  padded = jnp.concatenate([x[:, :2], _normal(1, (B, 1, D)), x[:, 2:]], axis=1)
  valid = jnp.ones((B, T + 1), bool).at[:, 2].set(False)
  got = module.apply({"params": params}, padded, key_valid=valid, is_causal=True)
  np.testing.assert_allclose(np.delete(np.asarray(got), 2, axis=1), want, atol=ATOL)


def test_forget_gate_is_refused_where_attention_is_not_causal_self_attention():
  x = _normal(0, (B, T, D))
  module = MultiHeadAttention(num_heads=4, forget_gate=True)
  with pytest.raises(ValueError, match=r"^forget_gate: FoX is causal self-attention; call with"):
    _param_shapes(module, x)
  with pytest.raises(ValueError, match=r"^forget_gate: FoX is causal self-attention"):
    _param_shapes(module, x, _normal(1, (B, S, D)), is_causal=True)


@pytest.mark.parametrize("implementation", ["naive", "flash"])
def test_forget_gate_decode_mode_continues_the_cumulative_sum_from_the_cache(implementation):
  """A prompt of 3 (one example left-padded) then single tokens through the cache ("cached_forget"
  [B, S, H] beside the keys): the outputs of the full causal pass at every real token."""
  x = _normal(0, (B, T, D))
  valid = jnp.ones((B, T), bool).at[1, 0].set(False)
  kwargs = dict(num_heads=4, forget_gate=True, implementation=implementation)
  params = _init(MultiHeadAttention(**kwargs), x, is_causal=True)["params"]
  params["forget_gate"]["bias"] = jnp.array([0.5, -1.0, 2.0, 0.0])
  full = MultiHeadAttention(**kwargs).apply({"params": params}, x, key_valid=valid, is_causal=True)
  decoder = MultiHeadAttention(**kwargs, decode=True)
  cache = _init(decoder, x)["cache"]
  assert cache["cached_forget"].shape == (B, T, 4)
  out, mutated = decoder.apply(
    {"params": params, "cache": cache}, x[:, :3], key_valid=valid[:, :3], mutable=["cache"]
  )
  np.testing.assert_allclose(out[0], full[0, :3], atol=ATOL)
  np.testing.assert_allclose(out[1, 1:], full[1, 1:3], atol=ATOL)
  for t in range(3, T):
    out, mutated = decoder.apply(
      {"params": params, "cache": mutated["cache"]}, x[:, t : t + 1], mutable=["cache"]
    )
    np.testing.assert_allclose(out[:, 0], full[:, t], atol=ATOL, err_msg=f"token {t}")


def _causal_softmax(logits):
  T_, S_ = logits.shape[-2:]
  logits = np.where(np.tril(np.ones((T_, S_), bool)), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return weights / weights.sum(-1, keepdims=True)


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_differential_attention_follows_the_reference_forward(num_kv_heads):
  """microsoft/unilm Diff-Transformer's multihead_flashdiff_2 forward, in NumPy: q, k as 2H' heads of
  K paired (2h, 2h + 1), v as G' heads of 2K (H' = num_heads / 2, G' = num_kv_heads / 2), causal
  softmax maps A1, A2 with scale 1/sqrt(K), kv head h // (H' / G'), lambda = exp(lq1 . lk1) -
  exp(lq2 . lk2) + lambda_init, lambda_init = 0.8 - 0.6 exp(-0.3 * 3) for layer 3, then RMSNorm over
  2K (eps 1e-5, scale "subln") times (1 - lambda_init) and the output projection [H', 2K, D]."""
  x = _normal(0, (B, T, D))
  kwargs = dict(num_heads=4, num_kv_heads=num_kv_heads, differential=True, layer_index=3)
  module = MultiHeadAttention(**kwargs, implementation="naive")
  params = _init(module, x, is_causal=True)["params"]
  G = num_kv_heads or 4
  K = D // 4
  assert params["query"]["kernel"].shape == (D, 4, K) and params["key"]["kernel"].shape == (D, G, K)
  assert params["value"]["kernel"].shape == (D, G // 2, 2 * K)
  assert params["out"]["kernel"].shape == (2, 2 * K, D) and params["subln"]["scale"].shape == (2 * K,)
  rng = np.random.default_rng(3)
  for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
    assert params[name].shape == (K,)
    params[name] = jnp.asarray(rng.normal(0, 0.5, K), jnp.float32)
  params["subln"]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, 2 * K), jnp.float32)
  p = jax.tree.map(np.asarray, params)
  q = np.asarray(_project(params, "query", x)).reshape(B, T, 2, 2, K)  # [B, T, H', 2, K]
  k = np.asarray(_project(params, "key", x)).reshape(B, T, G // 2, 2, K)
  v = np.asarray(_project(params, "value", x))  # [B, T, G', 2K]
  rep = 2 // (G // 2)
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  maps = [
    _causal_softmax(np.einsum("thk,shk->hts", q[b, :, :, i], k[b, :, :, i]) / np.sqrt(K))
    for b in range(B)
    for i in (0, 1)
  ]
  a = np.stack(maps).reshape(B, 2, 2, T, T)  # [B, map, H', T, S]
  attn1 = np.einsum("bhts,bshk->bthk", a[:, 0], v)
  attn2 = np.einsum("bhts,bshk->bthk", a[:, 1], v)
  lambda_init = 0.8 - 0.6 * np.exp(-0.3 * 3)
  lam = np.exp(np.sum(p["lambda_q1"] * p["lambda_k1"])) - np.exp(np.sum(p["lambda_q2"] * p["lambda_k2"]))
  out = attn1 - (lam + lambda_init) * attn2
  out = out / np.sqrt(np.mean(out**2, -1, keepdims=True) + 1e-5) * p["subln"]["scale"]
  want = _out_project(params, jnp.asarray(out * (1 - lambda_init), jnp.float32))
  np.testing.assert_allclose(module.apply({"params": params}, x, is_causal=True), want, atol=ATOL)
  flash = MultiHeadAttention(**kwargs, implementation="flash")
  np.testing.assert_allclose(flash.apply({"params": params}, x, is_causal=True), want, atol=ATOL)
  # The recorded weights are the maps, head 2h + i = differential head h's map i.
  _, state = module.apply({"params": params}, x, is_causal=True, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  np.testing.assert_allclose(weights, a.transpose(0, 2, 1, 3, 4).reshape(B, 4, T, T), atol=ATOL)


def test_differential_attention_refuses_odd_heads_and_works_in_decode_mode():
  x = _normal(0, (B, T, D))
  with pytest.raises(ValueError, match=r"^differential: needs an even num_heads and num_kv_heads"):
    _param_shapes(MultiHeadAttention(num_heads=2, num_kv_heads=1, differential=True), x)
  kwargs = dict(num_heads=4, num_kv_heads=2, differential=True, implementation="naive")
  params = _init(MultiHeadAttention(**kwargs), x, is_causal=True)["params"]
  full = MultiHeadAttention(**kwargs).apply({"params": params}, x, is_causal=True)
  decoder = MultiHeadAttention(**kwargs, decode=True)
  cache = _init(decoder, x)["cache"]
  assert cache["cached_key"].shape == (B, T, 2, 4) and cache["cached_value"].shape == (B, T, 1, 8)
  out, mutated = decoder.apply({"params": params, "cache": cache}, x[:, :3], mutable=["cache"])
  np.testing.assert_allclose(out, full[:, :3], atol=ATOL)
  for t in range(3, T):
    out, mutated = decoder.apply(
      {"params": params, "cache": mutated["cache"]}, x[:, t : t + 1], mutable=["cache"]
    )
    np.testing.assert_allclose(out[:, 0], full[:, t], atol=ATOL, err_msg=f"token {t}")


def _gptj_rotate(x, positions, scale=None):
  """GPT-J's RoPE in NumPy: pair i = channels (2i, 2i + 1) rotated by pos * 10000^(-2i / K), each
  pair also multiplied by scale[pos, i] when given (xPos)."""
  K = x.shape[-1]
  theta = positions[:, None] * 10000.0 ** (-np.arange(0, K, 2) / K)  # [T, K / 2]
  cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]  # [T, 1, K / 2]
  even, odd = x[..., 0::2], x[..., 1::2]
  out = np.empty_like(x)
  out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, odd * cos + even * sin
  if scale is not None:
    out = out * np.repeat(scale, 2, axis=-1)[:, None]
  return out


@pytest.mark.parametrize("positions", ["rope", "xpos"])
def test_interleaved_rope_and_xpos_follow_their_formulas(positions):
  """rope_interleaved: GPT-J's adjacent pairs; xpos: the same rotation with pair i of a query at n
  times zeta_i^(n / 512) and of a key at m times zeta_i^(-m / 512), zeta_i = (2i / K + 0.4) / 1.4."""
  x = _normal(0, (B, T, D))
  kwargs = dict(num_heads=2, positions=positions, rope_interleaved=True, implementation="naive")
  module = MultiHeadAttention(**kwargs)
  params = _init(module, x, is_causal=True)["params"]
  K = D // 2
  n = np.arange(T, dtype=np.float64)
  zeta = (np.arange(0, K, 2) / K + 0.4) / 1.4
  q_scale = zeta ** (n[:, None] / 512) if positions == "xpos" else None
  k_scale = zeta ** (-n[:, None] / 512) if positions == "xpos" else None
  q = _gptj_rotate(np.asarray(_project(params, "query", x), np.float64), n, q_scale)
  k = _gptj_rotate(np.asarray(_project(params, "key", x), np.float64), n, k_scale)
  v = _project(params, "value", x)
  out = attn.dot_product_attention(
    jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), v, is_causal=True, implementation="naive"
  )
  want = _out_project(params, out)
  np.testing.assert_allclose(module.apply({"params": params}, x, is_causal=True), want, atol=ATOL)
  half = MultiHeadAttention(**{**kwargs, "rope_interleaved": False})  # The layouts differ.
  assert not np.allclose(half.apply({"params": params}, x, is_causal=True), want, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xpos_and_interleaved_rope_have_finite_gradients(dtype):
  x = _normal(0, (B, T, D)).astype(dtype)
  module = MultiHeadAttention(num_heads=2, positions="xpos", rope_interleaved=True, dtype=dtype)
  params = _init(module, x, is_causal=True)["params"]
  valid = jnp.arange(T)[None, :] < jnp.array([[T], [2]])

  def loss(params):
    out = module.apply({"params": params}, x, key_valid=valid, is_causal=True)
    return jnp.sum(jnp.square(out.astype(jnp.float32)))

  grads = jax.grad(loss)(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
