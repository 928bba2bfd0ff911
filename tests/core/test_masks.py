"""Tests for the attention masks: causal_mask, local_window_mask (symmetric and (left, right)),
padding_mask, combine_masks (True = may attend)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy import testing as npt

import attn


def _rule(T, S, offset):
  """Query i may attend key j iff j <= i + offset, spelled out element by element."""
  return np.array([[j <= i + offset for j in range(S)] for i in range(T)], dtype=bool)


# causal_mask


def test_causal_mask_square_exact_values():
  mask = attn.causal_mask(3)
  assert mask.shape == (3, 3)
  assert mask.dtype == jnp.bool_
  npt.assert_array_equal(mask, [[True, False, False], [True, True, False], [True, True, True]])


def test_causal_mask_rectangular_exact_values():
  mask = attn.causal_mask(2, 4)
  assert mask.shape == (2, 4)
  npt.assert_array_equal(mask, [[True, False, False, False], [True, True, False, False]])


def test_causal_mask_with_offset_exact_values():
  mask = attn.causal_mask(2, 4, offset=2)
  assert mask.shape == (2, 4)
  npt.assert_array_equal(mask, [[True, True, True, False], [True, True, True, True]])


@pytest.mark.parametrize(("T", "S", "offset"), [(4, 4, 0), (3, 6, 0), (6, 3, 0), (4, 5, -1)])
def test_causal_mask_follows_the_rule(T, S, offset):
  mask = attn.causal_mask(T, S, offset=offset)
  npt.assert_array_equal(mask, _rule(T, S, offset))
  npt.assert_array_equal(mask, np.tril(np.ones((T, S), bool), k=offset))


def test_causal_mask_with_traced_offset_under_jit():
  mask_fn = jax.jit(lambda offset: attn.causal_mask(2, 4, offset=offset))
  for offset in (-1, 0, 2, 5):
    npt.assert_array_equal(mask_fn(jnp.asarray(offset)), _rule(2, 4, offset), err_msg=str(offset))


def test_causal_mask_vmap_over_offsets():
  offsets = jnp.array([0, 1, 3])
  masks = jax.vmap(lambda offset: attn.causal_mask(3, 5, offset=offset))(offsets)
  assert masks.shape == (3, 3, 5)
  for i, offset in enumerate((0, 1, 3)):
    npt.assert_array_equal(masks[i], _rule(3, 5, offset))


def test_causal_mask_negative_length_raises():
  with pytest.raises(ValueError, match="non-negative"):
    attn.causal_mask(-1)
  with pytest.raises(ValueError, match="non-negative"):
    attn.causal_mask(3, -2)


# padding_mask


def test_padding_mask_from_lengths_exact_values():
  mask = attn.padding_mask(lengths=jnp.array([1, 3, 0, 4]), max_length=4)
  assert mask.shape == (4, 1, 1, 4)
  assert mask.dtype == jnp.bool_
  expected = [
    [True, False, False, False],
    [True, True, True, False],
    [False, False, False, False],
    [True, True, True, True],
  ]
  npt.assert_array_equal(mask[:, 0, 0], expected)


def test_padding_mask_from_lengths_keeps_extra_batch_dims():
  mask = attn.padding_mask(np.array([[1, 2], [3, 0]]), max_length=3)
  assert mask.shape == (2, 2, 1, 1, 3)
  npt.assert_array_equal(
    mask[..., 0, 0, :],
    [[[True, False, False], [True, True, False]], [[True, True, True], [False, False, False]]],
  )


def test_padding_mask_from_tokens_exact_values():
  tokens = jnp.array([[5, 6, 0, 0], [7, 0, 8, 0]])
  mask = attn.padding_mask(tokens=tokens)
  assert mask.shape == (2, 1, 1, 4)
  assert mask.dtype == jnp.bool_
  npt.assert_array_equal(mask[:, 0, 0], [[True, True, False, False], [True, False, True, False]])


def test_padding_mask_from_tokens_with_pad_id():
  tokens = jnp.array([[5, 0, -1, -1]])
  mask = attn.padding_mask(tokens=tokens, pad_id=-1)
  npt.assert_array_equal(mask[:, 0, 0], [[True, True, False, False]])


def test_padding_mask_from_lengths_and_from_tokens_agree_on_right_padding():
  lengths = np.array([2, 5, 3])
  tokens = np.where(np.arange(5) < lengths[:, None], 7, 0)
  npt.assert_array_equal(
    attn.padding_mask(lengths, max_length=5), attn.padding_mask(tokens=tokens, pad_id=0)
  )


def test_padding_mask_broadcasts_against_attention_logits():
  mask = attn.padding_mask(lengths=np.array([2, 4]), max_length=4)  # [B, 1, 1, S]
  B, H, T, S = 2, 3, 5, 4
  assert np.broadcast_shapes(mask.shape, (B, H, T, S)) == (B, H, T, S)


def test_padding_mask_traced_lengths_under_jit():
  mask_fn = jax.jit(lambda lengths: attn.padding_mask(lengths, max_length=4))
  npt.assert_array_equal(
    mask_fn(jnp.array([3, 1]))[:, 0, 0], [[True, True, True, False], [True, False, False, False]]
  )
  tokens_fn = jax.jit(lambda tokens: attn.padding_mask(tokens=tokens, pad_id=9))
  npt.assert_array_equal(tokens_fn(jnp.array([[9, 1, 9]]))[:, 0, 0], [[False, True, False]])


def test_padding_mask_vmap_over_batch_matches_batched_call():
  lengths = jnp.array([3, 1, 4])
  per_example = jax.vmap(lambda length: attn.padding_mask(length, max_length=4))(lengths)
  npt.assert_array_equal(per_example, attn.padding_mask(lengths, max_length=4))
  tokens = jnp.array([[1, 0, 2], [0, 0, 3]])
  per_example = jax.vmap(lambda row: attn.padding_mask(tokens=row))(tokens)
  npt.assert_array_equal(per_example, attn.padding_mask(tokens=tokens))


def test_padding_mask_needs_exactly_one_of_lengths_and_tokens():
  with pytest.raises(ValueError, match="exactly one"):
    attn.padding_mask(jnp.array([1]), max_length=2, tokens=jnp.array([[1, 0]]))
  with pytest.raises(ValueError, match="exactly one"):
    attn.padding_mask()
  with pytest.raises(ValueError, match="exactly one"):
    attn.padding_mask(max_length=3)


def test_padding_mask_lengths_need_max_length():
  with pytest.raises(ValueError, match="max_length"):
    attn.padding_mask(jnp.array([1, 2]))


# combine_masks


def test_combine_masks_skips_none():
  causal = attn.causal_mask(3)
  npt.assert_array_equal(attn.combine_masks(None, causal, None), causal)
  npt.assert_array_equal(attn.combine_masks(causal), causal)


def test_combine_masks_all_none_is_none():
  assert attn.combine_masks(None, None) is None
  assert attn.combine_masks(None) is None
  assert attn.combine_masks() is None


def test_combine_masks_is_a_broadcasting_logical_and():
  causal_TS = attn.causal_mask(3, 4)
  padding_B11S = attn.padding_mask(lengths=jnp.array([2, 4]), max_length=4)
  combined = attn.combine_masks(causal_TS, None, padding_B11S)
  assert combined.shape == (2, 1, 3, 4)
  assert combined.dtype == jnp.bool_
  expected = np.asarray(causal_TS)[None, None] & np.asarray(padding_B11S)
  npt.assert_array_equal(combined, expected)
  npt.assert_array_equal(
    combined[0, 0],
    [[True, False, False, False], [True, True, False, False], [True, True, False, False]],
  )
  # Order does not matter, and three masks combine as well as two.
  npt.assert_array_equal(attn.combine_masks(padding_B11S, causal_TS), combined)
  heads_H11 = jnp.array([True, False])[:, None, None]
  npt.assert_array_equal(
    attn.combine_masks(causal_TS, padding_B11S, heads_H11),
    expected & np.array([True, False])[:, None, None],
  )


def test_combine_masks_under_jit():
  combine = jax.jit(lambda a, b: attn.combine_masks(a, None, b))
  a, b = attn.causal_mask(3), attn.padding_mask(lengths=jnp.array([2]), max_length=3)
  npt.assert_array_equal(combine(a, b), np.asarray(a) & np.asarray(b))


def test_combine_masks_under_vmap():
  padding_B11S = attn.padding_mask(lengths=jnp.array([1, 3]), max_length=3)
  causal = attn.causal_mask(3)
  combined = jax.vmap(lambda padding: attn.combine_masks(causal, padding))(padding_B11S)
  npt.assert_array_equal(combined, attn.combine_masks(causal, padding_B11S))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.float32])
def test_combine_masks_rejects_non_boolean(dtype):
  with pytest.raises(ValueError, match="boolean"):
    attn.combine_masks(attn.causal_mask(3), jnp.ones((3, 3), dtype))
  with pytest.raises(ValueError, match="boolean"):
    attn.combine_masks(None, jnp.ones((3, 3), dtype))


def test_combine_masks_rejects_masks_that_do_not_broadcast():
  with pytest.raises(ValueError, match=r"do not broadcast.*\(3, 4\).*\(2, 4\)"):
    attn.combine_masks(attn.causal_mask(3, 4), jnp.ones((2, 4), bool))


# local_window_mask


def test_local_window_mask_exact_values():
  expected = np.array(
    [
      [1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0],
      [0, 1, 1, 1, 0],
      [0, 0, 1, 1, 1],
    ],
    dtype=bool,
  )
  npt.assert_array_equal(attn.local_window_mask(4, 5, window=1), expected)


@pytest.mark.parametrize("T,S,window", [(1, 1, 0), (5, 5, 0), (6, 4, 2), (3, 7, 3), (5, 5, 10)])
def test_local_window_mask_follows_the_rule(T, S, window):
  rule = np.array([[abs(i - j) <= window for j in range(S)] for i in range(T)], dtype=bool)
  mask = attn.local_window_mask(T, S, window=window)
  assert mask.dtype == jnp.bool_ and mask.shape == (T, S)
  npt.assert_array_equal(mask, rule)


def test_local_window_mask_wide_window_is_full_attention_and_zero_is_the_diagonal():
  npt.assert_array_equal(attn.local_window_mask(6, window=5), np.ones((6, 6), bool))
  npt.assert_array_equal(attn.local_window_mask(6, window=0), np.eye(6, dtype=bool))


def test_local_window_mask_combines_with_causal_and_padding():
  padding_B11S = attn.padding_mask(lengths=jnp.array([4, 2]), max_length=4)
  combined = attn.combine_masks(attn.causal_mask(4), attn.local_window_mask(4, window=1), padding_B11S)
  assert combined.shape == (2, 1, 4, 4)
  npt.assert_array_equal(combined[1, 0, 3], [False, False, False, False])  # Only padding in reach.
  npt.assert_array_equal(combined[0, 0, 3], [False, False, True, True])


def test_local_window_mask_limits_attention_to_the_band():
  # Attention with the band: the output at query i does not change when a key outside the band does.
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 4))
  mask = attn.local_window_mask(7, window=2)
  out = attn.self_attention(x, mask=mask)
  changed = attn.self_attention(x.at[6].set(100.0), mask=mask)
  npt.assert_allclose(changed[:4], out[:4], atol=1e-6)
  assert np.max(np.abs(changed[4:] - out[4:])) > 1e-3


@pytest.mark.parametrize("window", [-1, 1.5, True, None])
def test_local_window_mask_rejects_bad_windows(window):
  with pytest.raises(ValueError, match="window"):
    attn.local_window_mask(3, window=window)


def test_local_window_mask_negative_length_raises():
  with pytest.raises(ValueError, match="non-negative"):
    attn.local_window_mask(-1, 3, window=1)


@pytest.mark.parametrize(
  "call, pattern",
  [
    (lambda: attn.causal_mask(2.5), r"causal_mask: T must be a non-negative int, got 2.5"),
    (lambda: attn.causal_mask(3, -1), r"causal_mask: S must be a non-negative int, got -1"),
    (lambda: attn.causal_mask(True), r"causal_mask: T must be a non-negative int, got True"),
    (lambda: attn.local_window_mask("4", window=1), r"local_window_mask: T must be a non-negative int"),
    (
      lambda: attn.padding_mask(lengths=[2, 3], max_length=-2),
      r"padding_mask: max_length must be a non-negative int, got -2",
    ),
    (
      lambda: attn.padding_mask(lengths=[2.5], max_length=4),
      r"padding_mask: lengths must be integers \[batch\.\.\.\], got dtype float(32|64)",
    ),
  ],
)
def test_sizes_that_are_not_non_negative_ints_are_refused(call, pattern):
  with pytest.raises(ValueError, match=pattern):
    call()


def test_zero_lengths_give_empty_masks():
  assert attn.causal_mask(0).shape == (0, 0)
  assert attn.causal_mask(2, 0).shape == (2, 0)
  assert attn.padding_mask(lengths=[0], max_length=0).shape == (1, 1, 1, 0)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 6), (2, 3, 5, 6), (1, 3, 1, 6)])
def test_attendable_keys_counts_what_the_mask_and_the_causal_rule_allow(mask_shape, is_causal):
  T, S, offset = 5, 6, 1
  q_pos = jnp.arange(T) + offset
  mask = None
  if mask_shape is not None:
    mask = jax.random.bernoulli(jax.random.key(sum(mask_shape)), 0.6, mask_shape)
  n = attn.attendable_keys(mask, q_pos, num_keys=S, is_causal=is_causal)
  full = (
    jnp.ones((1, 1, T, S), bool) if mask is None else jnp.broadcast_to(mask, (*mask.shape[:2], T, S))
  )
  if is_causal:
    full = full & (jnp.arange(S) <= q_pos[:, None])
  expected = full.sum(-1)  # The brute-force count over a [T, S] array.
  np.testing.assert_array_equal(jnp.broadcast_to(n, expected.shape), expected)
  assert n.dtype == jnp.int32


# local_window_mask with a pair (left, right): flash-attention's window_size.


def _flash_window_rule(T, S, window_size):
  """flash-attention's documented rule (flash_attn_func's docstring): with window_size != (-1, -1),
  query i attends only the keys in [i + seqlen_k - seqlen_q - window_size[0],
  i + seqlen_k - seqlen_q + window_size[1]] inclusive, -1 meaning no limit on that side."""
  left, right = window_size
  allowed = np.zeros((T, S), bool)
  for i in range(T):
    for j in range(S):
      low_ok = left == -1 or j >= i + S - T - left
      high_ok = right == -1 or j <= i + S - T + right
      allowed[i, j] = low_ok and high_ok
  return allowed


@pytest.mark.parametrize(
  "T, S, window_size",
  [
    (5, 5, (2, 0)),
    (5, 5, (0, 2)),
    (4, 7, (1, 2)),
    (6, 3, (2, 1)),
    (3, 8, (-1, 0)),
    (4, 6, (1, -1)),
    (4, 4, (-1, -1)),
    (1, 5, (3, 0)),
  ],
)
def test_local_window_mask_pair_is_flash_attentions_window_with_bottom_right_offset(T, S, window_size):
  window = tuple(None if side == -1 else side for side in window_size)
  mask = attn.local_window_mask(T, S, window=window, offset=S - T)
  assert mask.dtype == jnp.bool_ and mask.shape == (T, S)
  npt.assert_array_equal(mask, _flash_window_rule(T, S, window_size))


@pytest.mark.parametrize("T, S, offset", [(4, 4, 0), (3, 6, 0), (3, 6, 2), (5, 3, -1)])
def test_local_window_mask_pair_follows_the_rule_at_any_offset(T, S, offset):
  for left, right in [(0, 0), (1, 2), (3, 0), (None, 1), (2, None), (None, None)]:
    rule = np.array(
      [
        [
          (left is None or j >= i + offset - left) and (right is None or j <= i + offset + right)
          for j in range(S)
        ]
        for i in range(T)
      ],
      dtype=bool,
    )
    mask = attn.local_window_mask(T, S, window=(left, right), offset=offset)
    npt.assert_array_equal(mask, rule, err_msg=f"window ({left}, {right})")


def test_local_window_mask_int_is_the_symmetric_pair_and_the_default_is_unchanged():
  for w in (0, 1, 3):
    npt.assert_array_equal(
      attn.local_window_mask(4, 6, window=(w, w)), attn.local_window_mask(4, 6, window=w)
    )
    npt.assert_array_equal(
      attn.local_window_mask(4, 6, window=w, offset=0), attn.local_window_mask(4, 6, window=w)
    )
  npt.assert_array_equal(
    attn.local_window_mask(3, 4, window=[1, None]), attn.local_window_mask(3, 4, window=(1, None))
  )


@pytest.mark.parametrize("T, S, offset", [(4, 4, 0), (3, 6, 3), (2, 5, 1)])
def test_local_window_mask_left_only_is_the_causal_mask_and_a_sliding_window_of_it(T, S, offset):
  causal = attn.causal_mask(T, S, offset=offset)
  npt.assert_array_equal(attn.local_window_mask(T, S, window=(None, 0), offset=offset), causal)
  npt.assert_array_equal(
    attn.local_window_mask(T, S, window=(1, 0), offset=offset),
    causal & attn.local_window_mask(T, S, window=1, offset=offset),
  )
  npt.assert_array_equal(
    attn.local_window_mask(T, S, window=(None, None), offset=offset), np.ones((T, S), bool)
  )


def test_local_window_mask_traced_offset_under_jit_and_vmap():
  mask_fn = jax.jit(lambda offset: attn.local_window_mask(2, 5, window=(1, 0), offset=offset))
  for offset in (0, 2, 3):
    npt.assert_array_equal(
      mask_fn(jnp.asarray(offset)), attn.local_window_mask(2, 5, window=(1, 0), offset=offset)
    )
  masks = jax.vmap(lambda offset: attn.local_window_mask(2, 5, window=2, offset=offset))(
    jnp.array([0, 3])
  )
  assert masks.shape == (2, 2, 5)
  npt.assert_array_equal(masks[1], attn.local_window_mask(2, 5, window=2, offset=3))


@pytest.mark.parametrize(
  "window",
  [(-1, 2), (2, -1), (1,), (1, 2, 3), (1.5, 0), (True, 1), (0, False), "3", (None, "1"), {1, 2}],
)
def test_local_window_mask_rejects_bad_pairs_in_one_line(window):
  with pytest.raises(
    ValueError, match=r"^local_window_mask: window must be a non-negative int or a pair"
  ) as info:
    attn.local_window_mask(3, window=window)
  assert "\n" not in str(info.value)
