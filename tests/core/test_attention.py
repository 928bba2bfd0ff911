"""Tests for the pure attention functions: self_attention, dot_product_attention, attention_weights.

References are hand computations in float64 numpy (or plain jnp where gradients are needed), and the
attention functions of `jax.nn` and `flax.linen`. Layout: query [batch..., T, H, K], key/value
[batch..., S, G, K(v)], masks and biases broadcastable to [batch..., H, T, S].
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy import testing as npt

import attn

# Jitted entry points: one XLA compilation per shape, not one per primitive, keeps the suite fast on
# CPU. The eager path runs the same Python, and is exercised by the error tests.
_DPA_STATIC_ARGS = ("scale", "dropout_rate", "return_weights")
_dpa = jax.jit(attn.dot_product_attention, static_argnames=_DPA_STATIC_ARGS)
_weights = jax.jit(attn.attention_weights, static_argnames=("scale",))
_self_attention = jax.jit(attn.self_attention, static_argnames=("scale", "return_weights"))


def _normal(seed, shape, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _np_softmax(logits, mask=None):
  """Softmax over the last axis in float64; a row with no allowed key is all zeros."""
  logits = np.asarray(logits, np.float64)
  if mask is not None:
    logits = np.where(mask, logits, -np.inf)
  row_max = logits.max(axis=-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  unnormalized = np.exp(logits - row_max)
  denom = unnormalized.sum(axis=-1, keepdims=True)
  return unnormalized / np.where(denom == 0.0, 1.0, denom)


def _np_attention(q_TGK, k_SGK, v_SGK, *, multiplier, mask=None, bias=None):
  """Multi-head attention by hand in float64; key/value heads are repeated when fewer than H."""
  q, k, v = (np.asarray(a, np.float64) for a in (q_TGK, k_SGK, v_SGK))
  reps = q.shape[-2] // k.shape[-2]
  k, v = np.repeat(k, reps, axis=-2), np.repeat(v, reps, axis=-2)
  logits_HTS = np.einsum("...thk,...shk->...hts", q, k) * multiplier
  if bias is not None:
    logits_HTS = logits_HTS + np.asarray(bias, np.float64)
  weights_HTS = _np_softmax(logits_HTS, mask)
  return np.einsum("...hts,...shk->...thk", weights_HTS, v), weights_HTS


def _np_self_attention(x_TD):
  """The notes' formula by hand: softmax(x x^T / sqrt(D)) x, in float64."""
  x = np.asarray(x_TD, np.float64)
  weights_TT = _np_softmax(x @ np.swapaxes(x, -1, -2) / np.sqrt(x.shape[-1]))
  return weights_TT @ x, weights_TT


def _jnp_attention(q, k, v, *, mask=None, bias=None, multiplier):
  """Textbook attention in plain jnp (differentiable reference): repeat heads, mask with -1e9."""
  reps = q.shape[-2] // k.shape[-2]
  k, v = jnp.repeat(k, reps, axis=-2), jnp.repeat(v, reps, axis=-2)
  logits = jnp.einsum("...thk,...shk->...hts", q, k) * multiplier
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, -1e9)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("...hts,...shk->...thk", weights, v), weights


def _random_mask_without_empty_rows(seed, shape, p=0.6):
  """Random boolean mask in which every row (last axis) has at least one True."""
  rng = np.random.default_rng(seed)
  mask = rng.random(shape) < p
  cols = rng.integers(0, shape[-1], size=(*shape[:-1], 1))
  np.put_along_axis(mask, cols, True, axis=-1)
  assert not mask.all()
  return mask


def _example_inputs(lead=(), seed=0):
  """Grouped-query example (H=4, G=2, Kv=3) with a causal+padding mask and a shared bias."""
  B, T, S, H, G, K, Kv = 2, 5, 6, 4, 2, 8, 3
  q = _normal(seed, (*lead, B, T, H, K))
  k = _normal(seed + 1, (*lead, B, S, G, K))
  v = _normal(seed + 2, (*lead, B, S, G, Kv))
  lengths = np.random.default_rng(seed + 3).integers(1, S + 1, size=(*lead, B))
  mask = attn.combine_masks(attn.causal_mask(T, S), attn.padding_mask(lengths, max_length=S))
  bias = _normal(seed + 4, (H, T, S))
  return q, k, v, np.asarray(mask), bias


# 1. The notes' weightless self-attention.


@pytest.mark.parametrize("shape", [(3, 4), (11, 4), (2, 3, 4), (2, 3, 11, 4)])
def test_self_attention_equals_hand_computation_for_any_length_and_batch(shape):
  # One function, no parameters, no length fixed in advance: any T and any batch dims.
  x = _normal(0, shape)
  out, weights = _self_attention(jnp.asarray(x), return_weights=True)
  expected, expected_weights = _np_self_attention(x)
  assert out.shape == shape
  assert weights.shape == (*shape[:-1], shape[-2])
  npt.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  npt.assert_allclose(weights, expected_weights, atol=1e-6)


def test_self_attention_is_permutation_equivariant():
  x_BTD = _normal(1, (2, 7, 5))
  perm = np.random.default_rng(2).permutation(7)
  assert (perm != np.arange(7)).any()
  out_BTD = _self_attention(jnp.asarray(x_BTD))
  out_of_permuted_BTD = _self_attention(jnp.asarray(x_BTD[:, perm]))
  npt.assert_allclose(out_of_permuted_BTD, np.asarray(out_BTD)[:, perm], atol=1e-6)


def test_self_attention_gives_bank_a_different_vector_in_each_context():
  river, money = np.array([2.0, 0, 0, 0]), np.array([0, 2.0, 0, 0])
  bank, the = np.array([1.0, 1, 0, 0]), np.array([0, 0, 1.0, 0])
  x_BTD = np.stack([[the, river, bank], [the, money, bank]]).astype(np.float32)
  npt.assert_array_equal(x_BTD[0, 2], x_BTD[1, 2])  # the same "bank" going in
  out_BTD = np.asarray(_self_attention(jnp.asarray(x_BTD)))
  bank_by_river, bank_by_money = out_BTD[0, 2], out_BTD[1, 2]
  assert np.linalg.norm(bank_by_river - bank_by_money) > 0.5
  # Each context pulls "bank" towards its own neighbour.
  assert bank_by_river @ river > bank_by_money @ river
  assert bank_by_money @ money > bank_by_river @ money
  npt.assert_allclose(out_BTD, _np_self_attention(x_BTD)[0], atol=1e-6)


def test_attention_weights_rows_sum_to_one():
  q = _normal(0, (2, 5, 4, 8))
  k = _normal(1, (2, 7, 2, 8))
  bias = _normal(2, (4, 5, 7))
  mask = attn.padding_mask(lengths=np.array([7, 3]), max_length=7)
  weights = np.asarray(_weights(q, k, mask=mask, bias=bias))
  assert weights.shape == (2, 4, 5, 7)
  assert weights.dtype == np.float32
  npt.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  assert (weights >= 0).all()
  assert (weights[1, ..., 3:] == 0).all()  # padded keys get nothing
  _, self_weights = _self_attention(jnp.asarray(_normal(3, (3, 6, 4))), return_weights=True)
  npt.assert_allclose(np.asarray(self_weights).sum(-1), 1.0, atol=1e-6)


# 2. Equivalence with jax.nn and flax.linen, and the scale choices (see also test_scaling.py).


def test_dot_product_attention_matches_jax_nn_and_flax():
  q = _normal(0, (2, 5, 4, 8))
  k = _normal(1, (2, 7, 4, 8))
  v = _normal(2, (2, 7, 4, 8))
  mask = _random_mask_without_empty_rows(3, (2, 4, 5, 7))  # jax.nn spreads empty rows uniformly
  bias = _normal(4, (2, 4, 5, 7))
  out = _dpa(q, k, v, mask=mask, bias=bias)
  weights = _weights(q, k, mask=mask, bias=bias)
  jax_nn, flax_nn = jax.jit(jax.nn.dot_product_attention), jax.jit(nn.dot_product_attention)
  npt.assert_allclose(out, jax_nn(q, k, v, bias=bias, mask=mask), atol=1e-5)
  npt.assert_allclose(out, flax_nn(q, k, v, bias=bias, mask=mask), atol=1e-5)
  flax_weights = jax.jit(nn.dot_product_attention_weights)(q, k, bias=bias, mask=mask)
  npt.assert_allclose(weights, flax_weights, atol=1e-6)


def test_causal_mask_matches_jax_nn_is_causal_for_rectangular_attention():
  q = _normal(0, (2, 4, 2, 8))
  k = _normal(1, (2, 6, 2, 8))
  v = _normal(2, (2, 6, 2, 8))
  out = _dpa(q, k, v, mask=attn.causal_mask(4, 6))
  npt.assert_allclose(out, jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


_HAND_MULTIPLIERS = {"sqrt_d": 1.0 / np.sqrt(16.0), "none": 1.0, "d": 1.0 / 16.0, 0.37: 0.37}


@pytest.mark.parametrize("scale", list(_HAND_MULTIPLIERS))
def test_each_scale_choice_matches_hand_computation(scale):
  q = _normal(0, (2, 5, 2, 16))
  k = _normal(1, (2, 6, 2, 16))
  v = _normal(2, (2, 6, 2, 3))
  expected, expected_weights = _np_attention(q, k, v, multiplier=_HAND_MULTIPLIERS[scale])
  out, weights = _dpa(q, k, v, scale=scale, return_weights=True)
  npt.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  npt.assert_allclose(weights, expected_weights, atol=1e-6)


def test_default_scale_is_sqrt_d():
  q = _normal(0, (5, 2, 16))
  k = _normal(1, (6, 2, 16))
  v = _normal(2, (6, 2, 16))
  expected, _ = _np_attention(q, k, v, multiplier=0.25)
  npt.assert_allclose(_dpa(q, k, v), expected, atol=1e-5, rtol=1e-5)


# 3. Grouped-query and multi-query attention.


@pytest.mark.parametrize("G", [1, 2])
def test_grouped_query_equals_multi_head_with_repeated_key_value(G):
  H = 4
  q = _normal(0, (2, 5, H, 8))
  k = _normal(1, (2, 6, G, 8))
  v = _normal(2, (2, 6, G, 3))
  padding = attn.padding_mask(np.array([6, 4]), max_length=6)
  mask = attn.combine_masks(attn.causal_mask(5, 6), padding)
  bias = _normal(3, (H, 5, 6))
  out, weights = _dpa(q, k, v, mask=mask, bias=bias, return_weights=True)
  k_rep, v_rep = jnp.repeat(k, H // G, axis=-2), jnp.repeat(v, H // G, axis=-2)
  out_rep, weights_rep = _dpa(q, k_rep, v_rep, mask=mask, bias=bias, return_weights=True)
  assert out.shape == (2, 5, H, 3)
  assert weights.shape == (2, H, 5, 6)
  npt.assert_allclose(out, out_rep, atol=1e-6)
  npt.assert_allclose(weights, weights_rep, atol=1e-6)
  expected, _ = _np_attention(q, k, v, multiplier=8**-0.5, mask=np.asarray(mask), bias=bias)
  npt.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [(), (3, 2)])
def test_return_weights_shapes(batch):
  q = _normal(0, (*batch, 5, 4, 8))
  k = _normal(1, (*batch, 6, 2, 8))
  v = _normal(2, (*batch, 6, 2, 3))
  out, weights = _dpa(q, k, v, return_weights=True)
  assert out.shape == (*batch, 5, 4, 3)
  assert weights.shape == (*batch, 4, 5, 6)
  assert weights.dtype == jnp.float32
  out_self, weights_self = _self_attention(jnp.asarray(q[..., 0, :]), return_weights=True)
  assert out_self.shape == (*batch, 5, 8)
  assert weights_self.shape == (*batch, 5, 5)


# 4. Causality, checked by gradients.


def test_causal_mask_blocks_every_gradient_from_the_future():
  T, H, K = 5, 2, 3
  q, k, v = _normal(0, (T, H, K)), _normal(1, (T, H, K)), _normal(2, (T, H, K))
  f = lambda q, k, v: _dpa(q, k, v, mask=attn.causal_mask(T))
  jacobians = jax.jit(jax.jacrev(f, argnums=(0, 1, 2)))(q, k, v)  # each [T, H, K, S, H, K]
  future_TS = np.triu(np.ones((T, T), bool), k=1)
  for name, jacobian in zip(("query", "key", "value"), jacobians, strict=True):
    jacobian_TS = np.moveaxis(np.asarray(jacobian), 3, 1)  # [T, S, H, K, H, K]
    assert np.all(jacobian_TS[future_TS] == 0.0), f"output depends on future {name}"
  # The past does flow: every output reads every value at or before it.
  jacobian_v_TS = np.moveaxis(np.asarray(jacobians[2]), 3, 1)
  assert np.all(np.abs(jacobian_v_TS[~future_TS]).reshape(-1, H * K * H * K).max(-1) > 0)


def test_causal_self_attention_blocks_every_gradient_from_the_future():
  T, D = 5, 4
  x_TD = _normal(0, (T, D))
  jacobian = jax.jit(jax.jacrev(lambda x: _self_attention(x, mask=attn.causal_mask(T))))(x_TD)
  jacobian_TS = np.moveaxis(np.asarray(jacobian), 2, 1)  # [T, S, D, D]
  future_TS = np.triu(np.ones((T, T), bool), k=1)
  assert np.all(jacobian_TS[future_TS] == 0.0)
  assert np.all(np.abs(jacobian_TS[~future_TS]).reshape(-1, D * D).max(-1) > 0)


# 5. Padded keys holding NaN or inf.


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_padded_keys_holding_nan_or_inf_have_no_effect(poison):
  B, T, S, H, K = 2, 4, 6, 2, 4
  mask = attn.padding_mask(lengths=np.array([4, 6]), max_length=S)  # sequence 0: keys 4, 5 padded
  q, k, v = _normal(0, (B, T, H, K)), _normal(1, (B, S, H, K)), _normal(2, (B, S, H, K))
  k_bad, v_bad, k_finite, v_finite = k.copy(), v.copy(), k.copy(), v.copy()
  k_bad[0, 4:], v_bad[0, 4:] = poison, -poison
  k_finite[0, 4:], v_finite[0, 4:] = 123.0, -45.0
  f = lambda q, k, v: _dpa(q, k, v, mask=mask)

  out_bad, out_finite = np.asarray(f(q, k_bad, v_bad)), np.asarray(f(q, k_finite, v_finite))
  assert np.isfinite(out_bad).all()
  npt.assert_allclose(out_bad, out_finite, atol=1e-6)
  npt.assert_allclose(out_bad[0], _dpa(q[0], k[0, :4], v[0, :4]), atol=1e-6)
  weights_bad = np.asarray(_weights(q, k_bad, mask=mask))
  assert np.isfinite(weights_bad).all()
  assert (weights_bad[0, ..., 4:] == 0).all()

  cotangent = _normal(3, (B, T, H, K))
  loss = lambda q, k, v: jnp.sum(f(q, k, v) * cotangent)
  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  grads_bad, grads_finite = grad_fn(q, k_bad, v_bad), grad_fn(q, k_finite, v_finite)
  for name, g_bad, g_finite in zip(("query", "key", "value"), grads_bad, grads_finite, strict=True):
    assert np.isfinite(np.asarray(g_bad)).all(), f"non-finite gradient for {name}"
    npt.assert_allclose(g_bad, g_finite, atol=1e-6, err_msg=name)
  npt.assert_array_equal(np.asarray(grads_bad[1])[0, 4:], 0.0)
  npt.assert_array_equal(np.asarray(grads_bad[2])[0, 4:], 0.0)


# 6. Fully masked query rows.


def test_fully_masked_query_rows_give_zeros_and_zero_gradients():
  T, S, H, K = 4, 5, 2, 4
  mask_TS = _random_mask_without_empty_rows(0, (T, S))
  mask_TS[2] = False
  q, k, v = _normal(1, (1, T, H, K)), _normal(2, (1, S, H, K)), _normal(3, (1, S, H, K))
  f = lambda q, k, v: _dpa(q, k, v, mask=mask_TS, return_weights=True)

  out, weights = (np.asarray(a) for a in f(q, k, v))
  npt.assert_array_equal(out[:, 2], 0.0)
  npt.assert_array_equal(weights[..., 2, :], 0.0)
  npt.assert_array_equal(np.asarray(_weights(q, k, mask=mask_TS))[..., 2, :], 0.0)
  npt.assert_allclose(np.delete(weights.sum(-1), 2, axis=-1), 1.0, atol=1e-6)
  expected, _ = _np_attention(q, k, v, multiplier=K**-0.5, mask=mask_TS)
  npt.assert_allclose(out, expected, atol=1e-6)

  cotangent = _normal(4, (1, T, H, K))
  row_loss = lambda q, k, v: jnp.sum(f(q, k, v)[0][:, 2] * cotangent[:, 2])
  for g in jax.jit(jax.grad(row_loss, argnums=(0, 1, 2)))(q, k, v):
    npt.assert_array_equal(g, 0.0)
  full_loss = lambda q, k, v: jnp.sum(f(q, k, v)[0] * cotangent)
  grads = jax.jit(jax.grad(full_loss, argnums=(0, 1, 2)))(q, k, v)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  npt.assert_array_equal(np.asarray(grads[0])[:, 2], 0.0)
  assert np.abs(np.asarray(grads[0])).max() > 0


def test_zero_length_sequence_gives_zeros():
  q, k, v = _normal(0, (2, 3, 2, 4)), _normal(1, (2, 5, 2, 4)), _normal(2, (2, 5, 2, 4))
  mask = attn.padding_mask(lengths=np.array([0, 3]), max_length=5)
  out = np.asarray(_dpa(q, k, v, mask=mask))
  npt.assert_array_equal(out[0], 0.0)
  npt.assert_allclose(out[1], _dpa(q[1], k[1, :3], v[1, :3]), atol=1e-6)


# 7. Low precision and large logits.


@pytest.mark.parametrize(("dtype", "atol"), [(jnp.bfloat16, 6e-2), (jnp.float16, 1e-2)])
def test_low_precision_inputs_stay_in_dtype_and_close_to_float32(dtype, atol):
  q, k, v = _normal(0, (2, 5, 4, 16)), _normal(1, (2, 6, 4, 16)), _normal(2, (2, 6, 4, 16))
  mask = _random_mask_without_empty_rows(3, (2, 4, 5, 6))
  q_lp, k_lp, v_lp = (jnp.asarray(a, dtype) for a in (q, k, v))
  out, weights = _dpa(q_lp, k_lp, v_lp, mask=mask, return_weights=True)
  assert out.dtype == dtype
  assert weights.dtype == jnp.float32
  out_f32 = np.asarray(out, np.float32)
  assert np.isfinite(out_f32).all()
  # Against float32 on the same (rounded) inputs, and against the original float32 inputs.
  reference = _dpa(*(a.astype(jnp.float32) for a in (q_lp, k_lp, v_lp)), mask=mask)
  npt.assert_allclose(out_f32, reference, atol=atol)
  npt.assert_allclose(out_f32, _dpa(q, k, v, mask=mask), atol=2 * atol)
  out_self = _self_attention(q_lp[:, :, 0])
  assert out_self.dtype == dtype
  npt.assert_allclose(np.asarray(out_self, np.float32), _self_attention(q[:, :, 0]), atol=3 * atol)


@pytest.mark.parametrize(
  ("dtype", "low", "high"), [(jnp.float16, 25.0, 30.0), (jnp.float32, 900.0, 1e3)]
)
def test_unscaled_logits_at_large_head_dim_do_not_overflow(dtype, low, high):
  K = 1024
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.uniform(low, high, (1, 3, 2, K)), dtype)
  k = jnp.asarray(rng.uniform(low, high, (1, 4, 2, K)), dtype)
  v = jnp.asarray(rng.uniform(-high, high, (1, 4, 2, 8)), dtype)
  q64, k64, v64 = (np.asarray(a, np.float64) for a in (q, k, v))
  assert q64[0, 0, 0] @ k64[0, 0, 0] > 10 * float(np.finfo(np.float16).max)  # the logits are huge
  out = _dpa(q, k, v, scale="none")
  assert out.dtype == dtype
  out64 = np.asarray(out, np.float64)
  assert np.isfinite(out64).all()
  expected, _ = _np_attention(q64, k64, v64, multiplier=1.0)
  npt.assert_allclose(out64, expected, rtol=2e-3, atol=2e-3 * high)
  out_self = np.asarray(_self_attention(q[0, :, 0], scale="none"), np.float64)
  assert np.isfinite(out_self).all()
  npt.assert_allclose(out_self, _np_attention(q64, q64, q64, multiplier=1.0)[0][0, :, 0], rtol=2e-3)


# 8. jax.jit, jax.vmap and jax.grad.


def _calls(lead=()):
  """Each public attention function as a function of arrays, its arguments, its vmap in_axes, and a
  plain-jnp reference with the same signature."""
  q, k, v, mask, bias = _example_inputs(lead)
  x_BTD, causal_TT = q[..., 0, :], np.asarray(attn.causal_mask(5))
  r = 8**-0.5
  return {
    "dot_product_attention": (
      lambda q, k, v, m, b: attn.dot_product_attention(q, k, v, mask=m, bias=b),
      (q, k, v, mask, bias),
      (0, 0, 0, 0, None),
      lambda q, k, v, m, b: _jnp_attention(q, k, v, mask=m, bias=b, multiplier=r)[0],
    ),
    "attention_weights": (
      lambda q, k, m, b: attn.attention_weights(q, k, mask=m, bias=b),
      (q, k, mask, bias),
      (0, 0, 0, None),
      lambda q, k, m, b: _jnp_attention(q, k, k, mask=m, bias=b, multiplier=r)[1],
    ),
    "self_attention": (
      lambda x, m: attn.self_attention(x, mask=m),
      (x_BTD, causal_TT),
      (0, None),
      lambda x, m: _jnp_attention(
        x[..., None, :], x[..., None, :], x[..., None, :], mask=m, multiplier=r
      )[0][..., 0, :],
    ),
  }


_CALL_NAMES = ["dot_product_attention", "attention_weights", "self_attention"]


@pytest.mark.parametrize("name", _CALL_NAMES)
def test_under_jit_matches_reference(name):
  fn, args, _, reference = _calls()[name]
  npt.assert_allclose(jax.jit(fn)(*args), jax.jit(reference)(*args), atol=1e-5)


@pytest.mark.parametrize("name", _CALL_NAMES)
def test_vmap_over_extra_batch_axis_matches_batched_call(name):
  fn, args, in_axes, _ = _calls(lead=(3,))[name]
  out = jax.jit(jax.vmap(fn, in_axes=in_axes))(*args)
  batched = jax.jit(fn)(*args)
  assert out.shape == batched.shape
  assert out.shape[0] == 3
  npt.assert_allclose(out, batched, atol=1e-6)


@pytest.mark.parametrize("name", _CALL_NAMES)
def test_grad_is_finite_and_matches_reference(name):
  fn, args, _, reference = _calls()[name]
  float_args = [i for i, a in enumerate(args) if a.dtype == np.float32]
  cotangent = _normal(9, jax.eval_shape(fn, *args).shape)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * cotangent)
  grads = jax.jit(jax.grad(loss(fn), argnums=float_args))(*args)
  expected = jax.jit(jax.grad(loss(reference), argnums=float_args))(*args)
  for g, e in zip(grads, expected, strict=True):
    assert np.isfinite(np.asarray(g)).all()
    assert np.abs(np.asarray(g)).max() > 0
    npt.assert_allclose(g, e, atol=1e-5)


# 9. Bad input raises ValueError naming the argument and the shapes, eagerly and under jit.


def _z(*shape, dtype=np.float32):
  return np.zeros(shape, dtype)


# name -> (array arguments, static arguments, message pattern).
_ERROR_CASES = {
  "head_dims_differ": (
    dict(query=_z(2, 5, 4, 8), key=_z(2, 6, 4, 7), value=_z(2, 6, 4, 7)),
    {},
    r"query and key head dims differ: query \(2, 5, 4, 8\).*key \(2, 6, 4, 7\)",
  ),
  "key_value_lengths_differ": (
    dict(query=_z(2, 5, 4, 8), key=_z(2, 6, 4, 8), value=_z(2, 7, 4, 8)),
    {},
    r"key and value must agree.*key \(2, 6, 4, 8\), value \(2, 7, 4, 8\)",
  ),
  "key_value_heads_differ": (
    dict(query=_z(2, 5, 4, 8), key=_z(2, 6, 4, 8), value=_z(2, 6, 2, 8)),
    {},
    r"key and value must agree.*key \(2, 6, 4, 8\), value \(2, 6, 2, 8\)",
  ),
  "heads_not_divisible": (
    dict(query=_z(2, 5, 3, 8), key=_z(2, 6, 2, 8), value=_z(2, 6, 2, 8)),
    {},
    r"query heads must be divisible by key/value heads: query \(2, 5, 3, 8\).*key \(2, 6, 2, 8\)",
  ),
  "batch_dims_do_not_broadcast": (
    dict(query=_z(2, 5, 4, 8), key=_z(3, 6, 4, 8), value=_z(3, 6, 4, 8)),
    {},
    r"batch dims do not broadcast: query \(2, 5, 4, 8\), key \(3, 6, 4, 8\)",
  ),
  "mask_wrong_heads": (
    dict(
      query=_z(2, 5, 4, 8),
      key=_z(2, 6, 4, 8),
      value=_z(2, 6, 4, 8),
      mask=_z(2, 3, 5, 6, dtype=bool),
    ),
    {},
    r"mask of shape \(2, 3, 5, 6\) does not broadcast to .*\(2, 4, 5, 6\)",
  ),
  "mask_transposed": (
    dict(query=_z(2, 5, 4, 8), key=_z(2, 6, 4, 8), value=_z(2, 6, 4, 8), mask=_z(6, 5, dtype=bool)),
    {},
    r"mask of shape \(6, 5\) does not broadcast to .*\(2, 4, 5, 6\)",
  ),
  "mask_too_many_dims": (
    dict(
      query=_z(2, 5, 4, 8),
      key=_z(2, 6, 4, 8),
      value=_z(2, 6, 4, 8),
      mask=_z(3, 2, 4, 5, 6, dtype=bool),
    ),
    {},
    r"mask of shape \(3, 2, 4, 5, 6\) does not broadcast to .*\(2, 4, 5, 6\)",
  ),
  "mask_not_boolean": (
    dict(query=_z(2, 5, 4, 8), key=_z(2, 6, 4, 8), value=_z(2, 6, 4, 8), mask=_z(2, 4, 5, 6)),
    {},
    r"mask must be boolean.*float32",
  ),
  "bias_does_not_broadcast": (
    dict(query=_z(2, 5, 4, 8), key=_z(2, 6, 4, 8), value=_z(2, 6, 4, 8), bias=_z(5, 7)),
    {},
    r"bias of shape \(5, 7\) does not broadcast to .*\(2, 4, 5, 6\)",
  ),
  "query_too_few_dims": (
    dict(query=_z(5, 8), key=_z(6, 1, 8), value=_z(6, 1, 8)),
    {},
    r"query must be \[batch\.\.\., length, heads, head_dim\], got shape \(5, 8\)",
  ),
  "key_too_few_dims": (
    dict(query=_z(5, 1, 8), key=_z(6, 8), value=_z(6, 8)),
    {},
    r"key must be \[batch\.\.\., length, heads, head_dim\], got shape \(6, 8\)",
  ),
  "dropout_without_rng": (
    dict(query=_z(5, 2, 8), key=_z(6, 2, 8), value=_z(6, 2, 8)),
    dict(dropout_rate=0.1),
    r"dropout_rng is required",
  ),
  "dropout_rate_one": (
    dict(query=_z(5, 2, 8), key=_z(6, 2, 8), value=_z(6, 2, 8), dropout_rng=jax.random.key(0)),
    dict(dropout_rate=1.0),
    r"dropout_rate must be in \[0, 1\), got 1\.0",
  ),
  "dropout_rate_negative": (
    dict(query=_z(5, 2, 8), key=_z(6, 2, 8), value=_z(6, 2, 8), dropout_rng=jax.random.key(0)),
    dict(dropout_rate=-0.1),
    r"dropout_rate must be in \[0, 1\), got -0\.1",
  ),
}


def _maybe_jit(fn, use_jit):
  return jax.jit(fn) if use_jit else fn


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", list(_ERROR_CASES))
def test_dot_product_attention_bad_input_raises(case, use_jit):
  arrays, static, pattern = _ERROR_CASES[case]
  fn = _maybe_jit(lambda arrays: attn.dot_product_attention(**arrays, **static), use_jit)
  with pytest.raises(ValueError, match=pattern):
    fn(arrays)


_WEIGHTS_ERROR_CASES = [
  "head_dims_differ",
  "heads_not_divisible",
  "mask_wrong_heads",
  "mask_not_boolean",
  "bias_does_not_broadcast",
  "query_too_few_dims",
]


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", _WEIGHTS_ERROR_CASES)
def test_attention_weights_bad_input_raises(case, use_jit):
  arrays, _, pattern = _ERROR_CASES[case]
  arrays = {name: a for name, a in arrays.items() if name != "value"}
  fn = _maybe_jit(lambda arrays: attn.attention_weights(**arrays), use_jit)
  with pytest.raises(ValueError, match=pattern):
    fn(arrays)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
  ("x_shape", "mask_shape", "pattern"),
  [
    ((5,), None, r"x must be \[batch\.\.\., T, D\], got shape \(5,\)"),
    ((5, 4), (5,), r"mask of shape \(5,\) does not broadcast to \[batch\.\.\., T, T\]"),
    ((2, 5, 4), (4, 4), r"mask of shape \(.*4, 4\) does not broadcast"),
  ],
  ids=["x_1d", "mask_1d", "mask_wrong_length"],
)
def test_self_attention_bad_input_raises(x_shape, mask_shape, pattern, use_jit):
  mask = None if mask_shape is None else _z(*mask_shape, dtype=bool)
  fn = _maybe_jit(lambda x, mask: attn.self_attention(x, mask=mask), use_jit)
  with pytest.raises(ValueError, match=pattern):
    fn(_z(*x_shape), mask)


# 10. Attention dropout.


def test_dropout_is_random_deterministic_per_rng_and_rescales_kept_weights():
  T, S = 4, 8
  q, k = _normal(0, (T, 1, 6)), _normal(1, (S, 1, 6))
  v_S1S = np.eye(S, dtype=np.float32)[:, None, :]  # value s is the one-hot e_s: out[t] = probs[t]
  f = jax.jit(
    lambda rng, rate: attn.dot_product_attention(
      q, k, v_S1S, dropout_rate=rate, dropout_rng=rng, return_weights=True
    ),
    static_argnums=1,
  )
  rng, other_rng = jax.random.key(0), jax.random.key(1)
  out, weights = (np.asarray(a) for a in f(rng, 0.5))
  out_again, _ = f(rng, 0.5)
  out_other, _ = f(other_rng, 0.5)
  out_no_dropout, weights_no_dropout = _dpa(q, k, v_S1S, return_weights=True)

  npt.assert_array_equal(out, out_again)
  assert not np.allclose(out, out_other)
  assert not np.allclose(out, out_no_dropout)
  npt.assert_allclose(weights, weights_no_dropout, atol=1e-7)  # weights are returned before dropout
  # Each weight is either dropped or kept and scaled by 1 / (1 - rate).
  probs_TS, weights_TS = out[:, 0, :], weights[0]
  dropped = probs_TS == 0.0
  assert dropped.any() and (~dropped).any()
  npt.assert_allclose(probs_TS[~dropped], 2.0 * weights_TS[~dropped], rtol=1e-5)


def test_dropout_is_unbiased_on_average():
  # Equal logits give each of S keys weight 1/S; with dropout each output is 2/S times the sum of
  # about half the values: an estimate of the plain average with standard deviation ~ 1/sqrt(S).
  S = 4096
  q, k = jnp.zeros((4, 1, 2)), jnp.zeros((S, 1, 2))
  v = 1.0 + _normal(0, (S, 1, 4))  # a mean away from 0, so that a missing 1 / (1 - rate) shows
  out = np.asarray(_dpa(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0)))
  no_dropout = np.asarray(_dpa(q, k, v))
  npt.assert_allclose(no_dropout, np.broadcast_to(v.mean(0), no_dropout.shape), atol=1e-5)
  assert np.abs(out - no_dropout).max() > 1e-3  # each query drew its own keep pattern...
  npt.assert_allclose(out, no_dropout, atol=0.08)  # ...and is right on average


# The edges: integer inputs, Python lists, zero lengths, a zero head dim.


@pytest.mark.parametrize("implementation", ["naive", "flash", "jax"])
def test_integer_inputs_are_computed_in_float32(implementation):
  rng = np.random.default_rng(0)
  q, k, v = (rng.integers(-3, 4, size=(2, 5, 2, 4)).astype(np.int32) for _ in range(3))
  out = attn.dot_product_attention(q, k, v, implementation=implementation)
  ref = attn.dot_product_attention(*(x.astype(np.float32) for x in (q, k, v)), implementation="naive")
  assert out.dtype == jnp.float32
  npt.assert_allclose(out, ref, atol=1e-5)
  assert np.abs(np.asarray(out)).sum() > 0


def test_self_attention_of_an_integer_identity_is_not_zero():
  out, weights = attn.self_attention(np.eye(3, dtype=np.int32), return_weights=True)
  e = np.exp(1 / np.sqrt(3))
  npt.assert_allclose(np.diag(weights), e / (e + 2), rtol=1e-6)  # Each vector prefers itself.
  npt.assert_allclose(out, weights, rtol=1e-6)  # Re-weighing the identity gives the weights.


def test_python_lists_are_accepted():
  q = [[[[1.0, 0.0]]], [[[0.0, 1.0]]]]  # [2, 1, 1, 2]
  out = attn.dot_product_attention(q, q, q, mask=[[[[True]]]])
  npt.assert_allclose(out, np.asarray(q, np.float32))
  npt.assert_allclose(attn.self_attention([[1.0, 2.0]]), [[1.0, 2.0]])


@pytest.mark.parametrize("implementation", ["naive", "flash", "jax", None])
def test_no_queries_give_an_empty_result_and_no_keys_give_zeros(implementation):
  q = jnp.ones((2, 3, 4, 8))
  empty = jnp.ones((2, 0, 4, 8))
  out = attn.dot_product_attention(empty, q, q, implementation=implementation)
  assert out.shape == (2, 0, 4, 8)
  out = attn.dot_product_attention(q, empty, empty, implementation=implementation, is_causal=True)
  assert out.shape == (2, 3, 4, 8) and not np.any(np.asarray(out))
  grads = jax.grad(lambda q: attn.dot_product_attention(q, empty, empty).sum())(q)
  assert not np.any(np.asarray(grads))
  assert attn.attention_weights(q, empty).shape == (2, 4, 3, 0)
  assert attn.self_attention(jnp.ones((0, 5))).shape == (0, 5)


def test_a_zero_head_dim_is_one_clear_error():
  x = jnp.ones((2, 3, 4, 0))
  with pytest.raises(ValueError, match=r"need a head dim K > 0"):
    attn.dot_product_attention(x, x, x)
  with pytest.raises(ValueError, match=r"with D > 0"):
    attn.self_attention(jnp.ones((3, 0)))


def test_complex_inputs_are_refused_naming_the_argument():
  q = jnp.ones((1, 2, 1, 4), jnp.complex64)
  with pytest.raises(ValueError, match=r"^query must hold real numbers"):
    attn.dot_product_attention(q, q.real, q.real)


def test_jax_with_a_different_value_head_dim_is_one_error_and_the_default_falls_back(monkeypatch):
  from attn.core import attention

  q = jnp.ones((1, 4, 2, 8))
  v = jnp.ones((1, 4, 2, 16))
  with pytest.raises(ValueError, match=r"implementation='jax' needs the value head dim"):
    attn.dot_product_attention(q, q, v, implementation="jax")
  monkeypatch.setattr(attention, "DEFAULT_IMPLEMENTATION", "jax")
  with pytest.warns(UserWarning, match="using 'flash' for this call"):
    out = attn.dot_product_attention(q, q, v)
  npt.assert_allclose(out, attn.dot_product_attention(q, q, v, implementation="naive"), atol=1e-6)


# The normalisation's variants: soft-cap, sink, sigmoid.


def _variant_inputs():
  q = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 2, 8)) * 3
  k = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 2, 8)) * 3
  v = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 2, 8))
  mask = jnp.ones((2, 1, 4, 5), bool).at[0, :, 1, :].set(False).at[1, :, :, 3:].set(False)
  return q, k, v, mask


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_soft_cap_bounds_the_logits_before_the_softmax():
  q, k, _, mask = _variant_inputs()
  cap = 1.5
  got = attn.attention_weights(q, k, mask=mask, logit_soft_cap=cap)
  logits = attn.attention_logits(q, k)
  expected = attn.attention_weights(q, k, mask=mask, bias=cap * jnp.tanh(logits / cap) - logits)
  npt.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_a_sink_is_an_extra_key_of_zero_value_in_the_denominator():
  q, k, v, mask = _variant_inputs()
  sink = jnp.array([0.5, 3.0])
  got = attn.dot_product_attention(q, k, v, mask=mask, sink_logits=sink)
  # The same as one more key whose logit is the sink and whose value is zero, always attendable.
  extra_k = jnp.zeros((2, 1, 2, 8))
  bias = jnp.concatenate([jnp.zeros((1, 2, 1, 5)), sink[None, :, None, None]], axis=-1)
  expected = attn.dot_product_attention(
    q, jnp.concatenate([k, extra_k], 1), jnp.concatenate([v, jnp.zeros((2, 1, 2, 8))], 1),
    mask=jnp.concatenate([jnp.broadcast_to(mask, (2, 2, 4, 5)), jnp.ones((2, 2, 4, 1), bool)], -1),
    bias=jnp.broadcast_to(bias, (1, 2, 4, 6)),
  )  # fmt: skip
  rows_live = mask.any(-1)[:, 0, :, None, None]  # A fully masked row stays exactly 0.
  npt.assert_allclose(got, jnp.where(rows_live, expected, 0.0), atol=1e-5)
  weights = attn.attention_weights(q, k, mask=mask, sink_logits=sink)
  sums = weights.sum(-1)
  assert float(sums.max()) <= 1.0 + 1e-6 and float(sums.min()) < 0.99  # Mass goes to the sink.


def test_sigmoid_weights_are_elementwise_with_bias_minus_log_n():
  q, k, _, mask = _variant_inputs()
  got = attn.attention_weights(q, k, mask=mask, kind="sigmoid")
  logits = attn.attention_logits(q, k)
  n = jnp.broadcast_to(mask, logits.shape).sum(-1, keepdims=True)
  expected = jnp.where(mask, jax.nn.sigmoid(logits - jnp.log(jnp.maximum(n, 1))), 0.0)
  npt.assert_allclose(got, expected, atol=1e-6)


def _forget_inputs(B=2, T=4, S=5, H=2, seed=3):
  """Cumulative sums of log forget gates (FoX): query_c [B, T, H], key_c [B, S, H], non-increasing."""
  gates = jax.random.normal(jax.random.PRNGKey(seed), (B, max(T, S), H)) + 1.0
  c = jnp.cumsum(jax.nn.log_sigmoid(gates), axis=1)
  return c[:, :T], c[:, :S]


@pytest.mark.parametrize(
  "variant",
  [
    dict(logit_soft_cap=2.0),
    dict(sink_logits=jnp.array([1.0, -1.0])),
    dict(kind="sigmoid"),
    dict(kind="softpick"),
    dict(kind="softpick", logit_soft_cap=2.0),
    dict(kind="stick_breaking"),
    dict(forget_cumsum=_forget_inputs()),
  ],
)
def test_variants_give_fully_masked_rows_exact_zeros_and_finite_gradients(variant):
  q, k, v, mask = _variant_inputs()
  out = attn.dot_product_attention(q, k, v, mask=mask, **variant)
  npt.assert_array_equal(out[0, 1], 0.0)  # Row 1 of batch 0 has no key.
  grads = jax.grad(
    lambda q, k, v: attn.dot_product_attention(q, k, v, mask=mask, **variant).sum(), (0, 1, 2)
  )(q, k, v)
  assert all(bool(jnp.isfinite(g).all()) for g in grads)
  npt.assert_array_equal(grads[0][0, 1], 0.0)
  bf16 = attn.dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask=mask, **variant)
  assert bool(jnp.isfinite(bf16.astype(jnp.float32)).all())


def test_variants_jax_nn_lacks_are_refused_by_jax_by_name():
  q, k, v, _ = _variant_inputs()
  choose = attn.core.attention.choose_implementation
  assert choose(None, T=512, S=512, variant="sink_logits") in ("flash", "naive")  # Never "jax".
  with pytest.raises(ValueError, match=r"^implementation='jax' does not support sink_logits"):
    attn.dot_product_attention(q, k, v, sink_logits=jnp.zeros(2), implementation="jax")
  with pytest.raises(ValueError, match=r"^implementation='jax' does not support kind='sigmoid'"):
    attn.dot_product_attention(q, k, v, kind="sigmoid", implementation="jax")
  with pytest.raises(ValueError, match=r"^kind: unknown choice 'relu'"):
    attn.dot_product_attention(q, k, v, kind="relu")
  with pytest.raises(ValueError, match=r"^logit_soft_cap: must be None or a positive float"):
    attn.dot_product_attention(q, k, v, logit_soft_cap=0.0)
  with pytest.raises(ValueError, match=r"^sink_logits: a sink adds to the softmax's denominator"):
    attn.dot_product_attention(q, k, v, kind="sigmoid", sink_logits=jnp.zeros(2))


def _np_logits(q, k, mask=None, bias=None):
  """float64 logits [B, H, T, S] (H query heads reading G = H key heads) and the mask broadcast."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  allowed = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(mask, logits.shape)
  return logits, allowed


def test_softpick_weights_equal_the_papers_formula():
  """relu(e^x - 1) / (sum_j |e^x - 1| + eps) over the attendable keys, straight from the definition
  (float64, logits small enough that e^x is exact), against the stable shifted form."""
  q, k, _, mask = _variant_inputs()
  got = attn.attention_weights(q, k, mask=mask, kind="softpick")
  logits, allowed = _np_logits(q, k, mask)
  e = np.where(allowed, np.exp(logits) - 1.0, 0.0)
  expected = np.maximum(e, 0.0) / (np.abs(e).sum(-1, keepdims=True) + 1e-6)
  npt.assert_allclose(got, expected, atol=1e-6, rtol=1e-5)
  assert float(got.sum(-1).max()) <= 1.0 + 1e-6
  npt.assert_array_equal(got[0, :, 1], 0.0)  # The fully masked row.
  # Very large and very negative logits stay finite (the shift m = max(row max, 0)).
  for sign in (1.0, -1.0):
    w = attn.attention_weights(sign * q, k, kind="softpick", scale=100.0)
    assert bool(jnp.isfinite(w).all())


def test_softpick_is_not_shift_invariant():
  q, k, _, mask = _variant_inputs()
  shift = jnp.full((1, 1, 1, 1), 2.0)
  for kind, invariant in (("softmax", True), ("softpick", False)):
    a = attn.attention_weights(q, k, mask=mask, kind=kind)
    b = attn.attention_weights(q, k, mask=mask, kind=kind, bias=shift)
    assert bool(jnp.allclose(a, b, atol=1e-5)) == invariant, kind


def test_stick_breaking_weights_equal_the_product_formula():
  """w_ij = sigmoid(x_ij) prod over attendable k > j of (1 - sigmoid(x_ik)), by loops in float64."""
  q, k, _, mask = _variant_inputs()
  mask = mask & attn.causal_mask(4, 5)
  got = attn.attention_weights(q, k, mask=mask, kind="stick_breaking")
  logits, allowed = _np_logits(q, k, mask)
  beta = 1.0 / (1.0 + np.exp(-logits))
  expected = np.zeros_like(logits)
  for idx in np.ndindex(*logits.shape[:-1]):
    for j in range(logits.shape[-1]):
      if allowed[(*idx, j)]:
        later = [kk for kk in range(j + 1, logits.shape[-1]) if allowed[(*idx, kk)]]
        expected[(*idx, j)] = beta[(*idx, j)] * np.prod([1.0 - beta[(*idx, kk)] for kk in later])
  npt.assert_allclose(got, expected, atol=1e-6, rtol=1e-5)
  npt.assert_array_equal(got[0, :, 1], 0.0)  # The fully masked row.
  assert float(got.sum(-1).max()) <= 1.0 + 1e-6  # The sticks' pieces never exceed the stick.
  # is_causal means the same as the causal mask; a large logit keeps the weights finite.
  _, _, v, _ = _variant_inputs()
  by_flag = attn.dot_product_attention(q, k, v, mask=mask, is_causal=True, kind="stick_breaking")
  by_mask = attn.dot_product_attention(q, k, v, mask=mask, kind="stick_breaking")
  npt.assert_allclose(by_flag, by_mask, atol=1e-6)
  assert bool(jnp.isfinite(attn.attention_weights(q, k, kind="stick_breaking", scale=100.0)).all())


def test_forget_cumsum_adds_the_difference_of_the_cumulative_sums():
  q, k, v, mask = _variant_inputs()
  query_c, key_c = _forget_inputs()
  got = attn.attention_weights(q, k, mask=mask, forget_cumsum=(query_c, key_c))
  bias = (
    np.asarray(query_c).transpose(0, 2, 1)[..., :, None]
    - np.asarray(key_c).transpose(0, 2, 1)[..., None, :]
  )
  logits, allowed = _np_logits(q, k, mask, bias)
  npt.assert_allclose(got, _np_softmax(np.where(allowed, logits, -np.inf)), atol=1e-6)
  out = attn.dot_product_attention(q, k, v, mask=mask, forget_cumsum=(query_c, key_c))
  ref = attn.dot_product_attention(q, k, v, mask=mask, bias=jnp.asarray(bias, jnp.float32))
  npt.assert_allclose(out, ref, atol=1e-6)
  # Batch axes of query_c and key_c may broadcast ([T, H] for every batch row).
  shared = attn.dot_product_attention(q, k, v, mask=mask, forget_cumsum=(query_c[0], key_c[0]))
  ref = attn.dot_product_attention(
    q, k, v, mask=mask, forget_cumsum=(jnp.broadcast_to(query_c[0], (2, 4, 2)), key_c[:1])
  )
  npt.assert_allclose(shared, ref, atol=1e-6)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_return_lse_is_the_rows_logsumexp_and_merges_split_keys():
  """lse [B, H, T] is logsumexp of the masked logits (-inf for a fully masked row; the sink one more
  term), on naive and flash; two halves of the keys merged by their lse equal attention over all."""
  q, k, v, mask = _variant_inputs()
  logits, allowed = _np_logits(q, k, mask)
  with np.errstate(divide="ignore"):
    expected = np.log(np.where(allowed, np.exp(logits), 0.0).sum(-1))
  sink = jnp.array([0.5, -1.0])
  dpa = jax.jit(attn.dot_product_attention, static_argnames=("return_lse", "implementation"))
  for implementation in ("naive", "flash"):
    out, lse = dpa(q, k, v, mask=mask, return_lse=True, implementation=implementation)
    wide = jnp.promote_types(q.dtype, jnp.float32) if implementation == "naive" else jnp.float32
    assert lse.shape == (2, 2, 4) and lse.dtype == wide  # float32 (naive: as wide as the logits)
    npt.assert_allclose(lse, expected, atol=1e-5)
    assert bool(jnp.isneginf(lse[0, :, 1]).all())
    _, lse_sink = dpa(
      q, k, v, mask=mask, sink_logits=sink, return_lse=True, implementation=implementation
    )
    npt.assert_allclose(lse_sink, np.logaddexp(expected, np.asarray(sink)[None, :, None]), atol=1e-5)
    halves = [
      dpa(
        q, k[:, keys], v[:, keys], mask=mask[..., keys], return_lse=True, implementation=implementation
      )
      for keys in (slice(0, 2), slice(2, 5))
    ]
    (o1, l1), (o2, l2) = halves
    top = jnp.maximum(jnp.maximum(l1, l2), -1e30)  # The split-KV merge; an empty row stays 0.
    w1, w2 = jnp.exp(l1 - top), jnp.exp(l2 - top)
    total = jnp.where(w1 + w2 == 0.0, 1.0, w1 + w2)
    to_out = lambda w: jnp.swapaxes(w, -1, -2)[..., None]  # [B, H, T] -> [B, T, H, 1]
    merged = (to_out(w1) * o1 + to_out(w2) * o2) / to_out(total)
    npt.assert_allclose(merged, out, atol=1e-5)
    npt.assert_allclose(top + jnp.log(total), jnp.where(jnp.isneginf(lse), top, lse), atol=1e-5)
  # With the weights too: (out, weights, lse).
  out, weights, lse = attn.dot_product_attention(
    q, k, v, mask=mask, return_weights=True, return_lse=True
  )
  assert weights.shape == (2, 2, 4, 5) and lse.shape == (2, 2, 4)


def test_return_lse_gradient_matches_between_naive_and_flash():
  q, k, v, mask = _variant_inputs()
  sink = jnp.array([0.5, -1.0])

  def loss(implementation, q, k, v, sink):
    out, lse = attn.dot_product_attention(
      q, k, v, mask=mask, is_causal=True, sink_logits=sink, return_lse=True,
      implementation=implementation,
    )  # fmt: skip
    return jnp.sum(out * out) + jnp.sum(jnp.where(jnp.isfinite(lse), jnp.sin(lse), 0.0))

  grads = [
    jax.jit(jax.grad(functools.partial(loss, impl), argnums=(0, 1, 2, 3)))(q, k, v, sink)
    for impl in ("naive", "flash")
  ]
  for a, b in zip(*grads, strict=True):
    assert bool(jnp.isfinite(a).all())
    npt.assert_allclose(a, b, atol=5e-5, rtol=1e-5)


def test_new_variants_are_refused_in_one_line_by_name():
  q, k, v, _ = _variant_inputs()
  choose = attn.core.attention.choose_implementation
  assert choose(None, T=512, S=512, kind="stick_breaking") == "naive"
  assert choose(None, T=512, S=512, variant="kind='softpick'") in ("flash", "naive")
  assert choose(None, T=512, S=512, return_lse=True) in ("flash", "naive")
  for implementation in ("flash", "jax"):
    with pytest.raises(
      ValueError, match=rf"^implementation='{implementation}' does not support kind='stick_breaking'"
    ):
      attn.dot_product_attention(q, k, v, kind="stick_breaking", implementation=implementation)
  with pytest.raises(ValueError, match=r"^implementation='jax' does not support kind='softpick'"):
    attn.dot_product_attention(q, k, v, kind="softpick", implementation="jax")
  with pytest.raises(ValueError, match=r"^implementation='jax' does not support return_lse=True"):
    attn.dot_product_attention(q, k, v, return_lse=True, implementation="jax")
  for kind in ("sigmoid", "softpick", "stick_breaking"):
    with pytest.raises(ValueError, match=rf"^return_lse: .* kind='{kind}' has none"):
      attn.dot_product_attention(q, k, v, kind=kind, return_lse=True)
    if kind != "sigmoid":
      with pytest.raises(ValueError, match=rf"^sink_logits: .* kind='{kind}' has none"):
        attn.dot_product_attention(q, k, v, kind=kind, sink_logits=jnp.zeros(2))
  query_c, key_c = _forget_inputs()
  for bad in [query_c, (query_c,), (query_c, query_c), (key_c, key_c), (query_c[..., :1], key_c)]:
    with pytest.raises(ValueError, match=r"^forget_cumsum: "):
      attn.dot_product_attention(q, k, v, forget_cumsum=bad)
  with pytest.raises(ValueError, match=r"^forget_cumsum: "):
    attn.attention_weights(q, k, forget_cumsum=(jnp.zeros((3, 4, 2)), key_c))
  # The jax path takes the forget gates as a dense bias.
  out = attn.dot_product_attention(q, k, v, forget_cumsum=(query_c, key_c), implementation="jax")
  ref = attn.dot_product_attention(q, k, v, forget_cumsum=(query_c, key_c), implementation="naive")
  npt.assert_allclose(out, ref, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# A property over shapes, dtypes, masks and variants (hypothesis).
# --------------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def _attention_inputs(draw):
  B, T, S = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
  G = draw(st.sampled_from([1, 2]))
  H = G * draw(st.sampled_from([1, 2]))
  K = draw(st.sampled_from([1, 4, 8]))
  dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  mask_kind = draw(st.sampled_from(["none", "random", "padding", "empty_row"]))
  if mask_kind == "none":
    mask = None
  elif mask_kind == "padding":  # [B, 1, 1, S]; a row may have no valid key at all.
    mask = jnp.asarray(np.arange(S)[None, None, None, :] < rng.integers(0, S + 1, (B, 1, 1, 1)))
  else:
    mask = rng.random((B, H, T, S)) < 0.6
    if mask_kind == "empty_row":
      mask[:, :, 0] = False
    mask = jnp.asarray(mask)
  variant = draw(
    st.sampled_from(
      [
        {},
        {"logit_soft_cap": 2.0},
        {"kind": "sigmoid"},
        {"sink_logits": True},
        {"kind": "sigmoid", "logit_soft_cap": 5.0},
        {"kind": "softpick"},
        {"kind": "softpick", "logit_soft_cap": 5.0, "forget_cumsum": True},
        {"forget_cumsum": True},
        {"kind": "stick_breaking"},  # Naive only: finiteness and empty rows, no flash to compare.
      ]
    )
  )
  if variant.get("sink_logits"):
    variant = {"sink_logits": jnp.asarray(rng.standard_normal(H), jnp.float32)}
  if variant.get("forget_cumsum"):  # Cumulative log forget gates at the queries and the keys.
    gates = np.cumsum(-np.log1p(np.exp(-rng.standard_normal((B, max(T, S), H)) - 1.0)), axis=1)
    forget = (jnp.asarray(gates[:, :T], jnp.float32), jnp.asarray(gates[:, :S], jnp.float32))
    variant = {**variant, "forget_cumsum": forget}
  arrays = [rng.standard_normal(shape) * 2 for shape in ((B, T, H, K), (B, S, G, K), (B, S, G, K))]
  q, k, v = (jnp.asarray(a, dtype) for a in arrays)
  return q, k, v, mask, draw(st.booleans()), variant


@hypothesis.given(inputs=_attention_inputs())
def test_every_shape_dtype_mask_and_variant_is_finite_and_flash_equals_naive(inputs):
  """Drawn shapes (T != S, grouped heads, head dim 1), float32 and bfloat16, masks with fully masked
  rows, causal or not, each normalisation variant: the output and its gradients are finite, fully
  masked query rows are exactly zero, and the flash path equals the naive one in value and gradient
  (stick-breaking, naive only, is held to the first two)."""
  q, k, v, mask, is_causal, variant = inputs
  tol = 1e-4 if q.dtype == jnp.float32 else 5e-2

  def run(implementation):
    def f(q, k, v):
      out = attn.dot_product_attention(
        q, k, v, mask=mask, is_causal=is_causal, implementation=implementation, **variant
      )
      return jnp.sum(out.astype(jnp.float32) ** 2), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads

  naive, naive_grads = run("naive")
  flash, flash_grads = run("flash" if variant.get("kind") != "stick_breaking" else "naive")
  for x in (naive, flash, *naive_grads, *flash_grads):
    assert bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
  allowed = jnp.ones((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), bool)
  if mask is not None:
    allowed = allowed & mask
  if is_causal:
    allowed = allowed & attn.causal_mask(q.shape[1], k.shape[1])
  empty = ~jnp.any(allowed, axis=-1)  # [B, H, T]
  out_empty = jnp.swapaxes(empty, 1, 2)[..., None]  # [B, T, H, 1]
  assert bool(jnp.all(jnp.where(out_empty, naive == 0, True)))
  assert bool(jnp.all(jnp.where(out_empty, flash == 0, True)))
  as32 = functools.partial(np.asarray, dtype=np.float32)
  np.testing.assert_allclose(as32(flash), as32(naive), atol=tol, rtol=tol)
  for a, b in zip(flash_grads, naive_grads, strict=True):
    np.testing.assert_allclose(as32(a), as32(b), atol=10 * tol, rtol=10 * tol)
