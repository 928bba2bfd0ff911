"""Tests for corrupt_tokens, the denoising "masking" of input tokens (not an attention mask)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy import testing as npt

import attn

MASK_ID = 99

# Jitted once per rate: random bits drawn op by op are slow to compile on CPU. The error tests call
# attn.corrupt_tokens eagerly.
_corrupt = jax.jit(attn.corrupt_tokens, static_argnames=("rate",))


def _tokens(shape, seed=0):
  """Integer ids in [1, 50), so that none equals the pad id 0 or MASK_ID."""
  return jnp.asarray(np.random.default_rng(seed).integers(1, 50, size=shape), jnp.int32)


def test_returns_corrupted_tokens_and_replaced_positions():
  tokens = _tokens((4, 16))
  corrupted, replaced = _corrupt(jax.random.key(0), tokens, 0.5, MASK_ID)
  assert corrupted.shape == tokens.shape
  assert replaced.shape == tokens.shape
  assert corrupted.dtype == tokens.dtype
  assert replaced.dtype == jnp.bool_
  npt.assert_array_equal(corrupted, np.where(replaced, MASK_ID, tokens))
  assert np.asarray(replaced).any() and not np.asarray(replaced).all()


def test_rate_zero_changes_nothing():
  tokens = _tokens((4, 16))
  corrupted, replaced = _corrupt(jax.random.key(0), tokens, 0.0, MASK_ID)
  npt.assert_array_equal(corrupted, tokens)
  assert not np.asarray(replaced).any()


def test_rate_one_replaces_every_eligible_token():
  tokens = _tokens((4, 16))
  corrupted, replaced = _corrupt(jax.random.key(0), tokens, 1.0, MASK_ID)
  assert np.asarray(replaced).all()
  npt.assert_array_equal(corrupted, np.full(tokens.shape, MASK_ID))
  eligible = np.arange(16) % 3 == 0
  corrupted, replaced = _corrupt(jax.random.key(0), tokens, 1.0, MASK_ID, eligible=eligible)
  npt.assert_array_equal(replaced, np.broadcast_to(eligible, tokens.shape))
  npt.assert_array_equal(corrupted, np.where(eligible, MASK_ID, tokens))


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_eligible_tokens_not_pad_leave_padding_untouched(rate):
  pad_id = 0
  lengths = np.array([3, 16, 6, 1])
  tokens = jnp.where(np.arange(16) < lengths[:, None], _tokens((4, 16)), pad_id)
  not_pad = tokens != pad_id
  corrupted, replaced = _corrupt(jax.random.key(1), tokens, rate, MASK_ID, eligible=not_pad)
  is_pad = np.asarray(tokens) == pad_id
  assert is_pad.any()
  npt.assert_array_equal(np.asarray(corrupted)[is_pad], pad_id)
  assert not np.asarray(replaced)[is_pad].any()
  assert np.asarray(replaced)[~is_pad].any()


def test_empirical_rate_is_near_the_requested_rate():
  rate = 0.15
  tokens = _tokens((200, 500))
  eligible = np.random.default_rng(1).random((200, 500)) < 0.5
  _, replaced = _corrupt(jax.random.key(2), tokens, rate, MASK_ID)
  assert abs(float(np.mean(replaced)) - rate) < 0.01  # the standard error is below 0.0025
  _, replaced = _corrupt(jax.random.key(3), tokens, rate, MASK_ID, eligible=eligible)
  replaced = np.asarray(replaced)
  assert not replaced[~eligible].any()
  assert abs(replaced[eligible].mean() - rate) < 0.015


def test_deterministic_for_a_given_rng():
  tokens = _tokens((4, 16))
  first = _corrupt(jax.random.key(7), tokens, 0.5, MASK_ID)
  again = _corrupt(jax.random.key(7), tokens, 0.5, MASK_ID)
  other = _corrupt(jax.random.key(8), tokens, 0.5, MASK_ID)
  npt.assert_array_equal(first[0], again[0])
  npt.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[1], other[1])


def test_under_jit_and_vmap_over_rngs():
  tokens = _tokens((3, 20))
  corrupt = lambda rng, tokens: attn.corrupt_tokens(rng, tokens, 0.4, MASK_ID)
  jitted_corrupt = jax.jit(corrupt)
  corrupted, replaced = jitted_corrupt(jax.random.key(4), tokens)
  npt.assert_array_equal(corrupted, np.where(replaced, MASK_ID, tokens))
  rngs = jax.random.split(jax.random.key(5), 4)
  batched, batched_replaced = jax.jit(jax.vmap(corrupt, in_axes=(0, None)))(rngs, tokens)
  assert batched.shape == (4, 3, 20)
  for i in range(4):
    npt.assert_array_equal(batched[i], jitted_corrupt(rngs[i], tokens)[0])
  assert not np.array_equal(batched_replaced[0], batched_replaced[1])


@pytest.mark.parametrize("rate", [-0.1, 1.1, float("nan")])
def test_rate_outside_unit_interval_raises(rate):
  with pytest.raises(ValueError, match="rate"):
    attn.corrupt_tokens(jax.random.key(0), _tokens((2, 4)), rate, MASK_ID)


def test_float_tokens_raise():
  with pytest.raises(ValueError, match="integer"):
    attn.corrupt_tokens(jax.random.key(0), jnp.ones((2, 4), jnp.float32), 0.5, MASK_ID)


@pytest.mark.parametrize(
  "kwargs, pattern",
  [
    ({"rate": "0.5"}, r"rate must be a number in \[0, 1\], got '0.5'"),
    ({"rate": 1.5}, r"rate must be a number in \[0, 1\], got 1.5"),
    ({"mask_id": 1.5}, r"mask_id must be an int, got 1.5"),
    ({"eligible": np.ones((2, 3), np.int32)}, r"eligible must be boolean, got int32"),
    ({"eligible": np.ones((3, 2), bool)}, r"eligible of shape \(3, 2\) does not broadcast to tokens"),
  ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, pattern):
  args = {"rate": 0.5, "mask_id": 3, **kwargs}
  with pytest.raises(ValueError, match=pattern):
    attn.corrupt_tokens(jax.random.PRNGKey(0), np.ones((2, 3), np.int32), **args)


def test_mask_random_keep_mix_has_the_asked_shares():
  tokens = jnp.full((200, 100), 7, jnp.int32)
  fn = jax.jit(
    lambda key: attn.corrupt_tokens(
      key, tokens, 0.5, MASK_ID, random_fraction=0.1, keep_fraction=0.1, random_range=(10, 20)
    )
  )
  corrupted, chosen = fn(jax.random.key(3))
  corrupted, chosen = np.asarray(corrupted), np.asarray(chosen)
  assert abs(chosen.mean() - 0.5) < 0.02
  masked, kept = corrupted[chosen] == MASK_ID, corrupted[chosen] == 7
  random = (corrupted[chosen] >= 10) & (corrupted[chosen] < 20)
  assert (masked | kept | random).all() and (corrupted[~chosen] == 7).all()
  npt.assert_allclose([masked.mean(), random.mean(), kept.mean()], [0.8, 0.1, 0.1], atol=0.02)
  with pytest.raises(ValueError, match="random_fraction > 0 needs random_range"):
    attn.corrupt_tokens(jax.random.key(0), tokens, 0.5, MASK_ID, random_fraction=0.1)
  with pytest.raises(ValueError, match="must be at most 1"):
    attn.corrupt_tokens(
      jax.random.key(0),
      tokens,
      0.5,
      MASK_ID,
      random_fraction=0.6,
      keep_fraction=0.6,
      random_range=(1, 2),
    )
