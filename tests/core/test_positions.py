"""Tests for sinusoidal_positions, the paper's fixed positional encodings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy import testing as npt

import attn


def _np_positions(positions, dim, max_timescale=10_000.0):
  """The paper's formula entry by entry: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos."""
  pe = np.zeros((len(positions), dim))
  for row, p in enumerate(positions):
    for i in range(dim // 2):
      angle = p / max_timescale ** (2 * i / dim)
      pe[row, 2 * i] = np.sin(angle)
      pe[row, 2 * i + 1] = np.cos(angle)
  return pe


@pytest.mark.parametrize(("T", "D"), [(6, 8), (50, 16)])
def test_matches_the_papers_formula(T, D):
  pe = attn.sinusoidal_positions(T, D)
  assert pe.shape == (T, D)
  assert pe.dtype == jnp.float32
  npt.assert_allclose(pe, _np_positions(range(T), D), atol=2e-5)


def test_max_timescale_is_the_base_of_the_formula():
  pe = attn.sinusoidal_positions(7, 6, max_timescale=100.0)
  npt.assert_allclose(pe, _np_positions(range(7), 6, max_timescale=100.0), atol=1e-5)
  assert not np.allclose(pe, attn.sinusoidal_positions(7, 6))


def test_int_length_and_explicit_positions_agree():
  by_length = attn.sinusoidal_positions(9, 8)
  npt.assert_array_equal(attn.sinusoidal_positions(jnp.arange(9), 8), by_length)
  npt.assert_array_equal(attn.sinusoidal_positions(np.arange(9), 8), by_length)
  # Any integer positions, in any order and with batch dims: rows of the same table.
  positions_BT = np.array([[3, 0, 8], [5, 5, 1]])
  pe_BTD = attn.sinusoidal_positions(positions_BT, 8)
  assert pe_BTD.shape == (2, 3, 8)
  npt.assert_allclose(pe_BTD, np.asarray(by_length)[positions_BT], atol=1e-6)


def test_traced_positions_under_jit():
  positions_fn = jax.jit(lambda offset: attn.sinusoidal_positions(offset + jnp.arange(3), 8))
  table = np.asarray(attn.sinusoidal_positions(20, 8))
  for offset in (0, 4, 17):
    npt.assert_allclose(positions_fn(jnp.asarray(offset)), table[offset : offset + 3], atol=1e-5)


def test_vmap_over_offsets():
  offsets = jnp.array([0, 2, 5])
  positions_from = lambda offset: attn.sinusoidal_positions(offset + jnp.arange(4), 6)
  pe = jax.jit(jax.vmap(positions_from))(offsets)
  assert pe.shape == (3, 4, 6)
  table = np.asarray(attn.sinusoidal_positions(10, 6))
  for i, offset in enumerate((0, 2, 5)):
    npt.assert_allclose(pe[i], table[offset : offset + 4], atol=1e-6)


def test_grad_with_respect_to_position_is_the_formulas_derivative():
  D = 8
  inv_freq = 10_000.0 ** (-np.arange(0, D, 2) / D)
  encoding_at = lambda p: attn.sinusoidal_positions(p[None], D)[0]
  jacobian = jax.jit(jax.jacfwd(encoding_at))(jnp.float32(2.5))
  expected = np.stack([inv_freq * np.cos(2.5 * inv_freq), -inv_freq * np.sin(2.5 * inv_freq)], -1)
  npt.assert_allclose(jacobian, expected.reshape(D), atol=1e-5)
  grad = jax.jit(jax.grad(lambda p: attn.sinusoidal_positions(p[None], D)[0, 0]))(jnp.float32(2.5))
  npt.assert_allclose(grad, np.cos(2.5), atol=1e-6)


@pytest.mark.parametrize("dim", [7, 1, 0, -2])
def test_dim_must_be_positive_and_even(dim):
  with pytest.raises(ValueError, match=rf"dim must be positive and even, got {dim}"):
    attn.sinusoidal_positions(4, dim)


def test_dot_product_depends_only_on_the_offset():
  T, D = 64, 16
  pe = np.asarray(attn.sinusoidal_positions(T, D), np.float64)
  inv_freq = 10_000.0 ** (-np.arange(0, D, 2) / D)
  dots_by_offset = []
  for k in (0, 1, 3, 10):
    dots = np.einsum("td,td->t", pe[: T - k], pe[k:])  # PE[t] . PE[t + k] for every t
    # sin(a)sin(b) + cos(a)cos(b) = cos(a - b): the sum over frequencies of cos(k w_i), whatever p.
    npt.assert_allclose(dots, np.sum(np.cos(k * inv_freq)), atol=2e-4, err_msg=f"offset {k}")
    dots_by_offset.append(dots[0])
  npt.assert_allclose(dots_by_offset[0], D / 2, atol=1e-5)  # each position has norm sqrt(D / 2)
  assert np.all(np.diff(dots_by_offset) < 0)  # and the offsets are told apart


@pytest.mark.parametrize(
  "positions, dim, pattern",
  [
    (4, 7, r"dim must be positive and even, got 7"),
    (4, 8.0, r"dim must be positive and even, got 8.0"),
    (4, True, r"dim must be positive and even, got True"),
    (-1, 8, r"the length must be non-negative, got -1"),
    (4.0, 8, r"positions must be a length \(int\) or an array, got 4.0"),
    (np.array(["a"]), 8, r"positions must be numbers"),
  ],
)
def test_bad_sizes_are_refused(positions, dim, pattern):
  with pytest.raises(ValueError, match=pattern):
    attn.sinusoidal_positions(positions, dim)


def test_zero_length_gives_an_empty_table():
  assert attn.sinusoidal_positions(0, 8).shape == (0, 8)


# RoPE, ALiBi and T5 buckets.

from attn.core import positions as relative  # noqa: E402


def test_rope_logits_depend_only_on_the_distance():
  """q_i . k_j after rotation is a function of i - j: shifting both positions changes nothing, and
  the rotation keeps each vector's norm."""
  q = jax.random.normal(jax.random.PRNGKey(0), (5, 2, 8))
  k = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 8))
  pos = jnp.arange(5)
  logits = jnp.einsum("thk,shk->hts", relative.rope(q, pos), relative.rope(k, pos))
  shifted = jnp.einsum("thk,shk->hts", relative.rope(q, pos + 37), relative.rope(k, pos + 37))
  npt.assert_allclose(shifted, logits, atol=1e-4)
  npt.assert_allclose(
    jnp.linalg.norm(relative.rope(q, pos), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5
  )
  plain = jnp.einsum("thk,shk->hts", q, k)
  assert not np.allclose(logits, plain, atol=1e-3)  # It does rotate.


def test_rope_rotates_the_first_fraction_of_channels_by_the_formula():
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 1, 8))
  out = relative.rope(x, jnp.arange(3), fraction=0.5)  # R = 4: pairs (0, 2) and (1, 3).
  npt.assert_array_equal(out[..., 4:], x[..., 4:])
  for p in range(3):
    for i in range(2):
      angle = p / 10_000.0 ** (2 * i / 4)
      a, b = x[p, 0, i], x[p, 0, i + 2]
      npt.assert_allclose(out[p, 0, i], a * np.cos(angle) - b * np.sin(angle), atol=1e-5)
      npt.assert_allclose(out[p, 0, i + 2], b * np.cos(angle) + a * np.sin(angle), atol=1e-5)
  with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
    relative.rope(x, jnp.arange(3), fraction=0.0)


def test_alibi_slopes_are_the_papers():
  npt.assert_allclose(relative.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)], rtol=1e-6)
  # 6 heads: the 4 of 2^(-8/4 h), then every other of the 8-head sequence (the reference code).
  expected = [2.0 ** (-2 * (i + 1)) for i in range(4)] + [2.0**-1, 2.0**-3]
  npt.assert_allclose(relative.alibi_slopes(6), expected, rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance_and_shift_invariant():
  slopes = relative.alibi_slopes(2)
  bias = relative.alibi_bias(jnp.arange(3), jnp.arange(4), slopes)
  assert bias.shape == (2, 3, 4)
  npt.assert_allclose(bias[1, 2, 0], -(2.0**-8) * 2)  # 2 heads: slopes 2^-4, 2^-8.
  npt.assert_allclose(bias[0, 0, 3], -(2.0**-4) * 3)  # Symmetric |i - j| for a key after the query.
  npt.assert_array_equal(relative.alibi_bias(jnp.arange(3) + 9, jnp.arange(4) + 9, slopes), bias)


def test_t5_buckets_match_the_reference_values():
  """mesh_tensorflow's `_relative_position_bucket` with 32 buckets, max_distance 128, worked by hand:
  bidirectional, keys before the query use buckets 0-15 and keys after 16-31; 8 exact distances,
  then logarithmic ones."""
  relative_positions = jnp.array([0, -1, -7, -8, -20, -127, -500, 1, 7, 300])
  got = relative.t5_buckets(relative_positions, bidirectional=True)
  # Distances 8..127 map to 8 + floor(log(n / 8) / log(16) * 8): n = 20 -> 10, 127 -> 15; beyond: 15.
  npt.assert_array_equal(got, [0, 1, 7, 8, 10, 15, 15, 17, 23, 31])
  causal = relative.t5_buckets(jnp.array([0, -1, -15, -16, -40, 3]), bidirectional=False)
  # 32 buckets one way: 16 exact, then 16 + floor(log(n / 16) / log(8) * 16): n = 40 -> 23; keys
  # after the query (masked in a causal layer) share bucket 0.
  npt.assert_array_equal(causal, [0, 1, 15, 16, 23, 0])
  shifted = relative.t5_buckets(
    jnp.arange(4)[None, :] + 5 - (jnp.arange(3)[:, None] + 5), bidirectional=True
  )
  npt.assert_array_equal(
    shifted, relative.t5_buckets(jnp.arange(4)[None, :] - jnp.arange(3)[:, None], bidirectional=True)
  )


@pytest.mark.parametrize(
  "bidirectional, num_buckets, max_distance",
  [(True, 3, 8), (True, 8, 2), (False, 1, 8), (False, 4, 2)],
)
def test_t5_buckets_refuse_too_few_buckets_or_too_short_a_distance(
  bidirectional, num_buckets, max_distance
):
  """Fewer than two exact buckets per direction, or max_distance not beyond them: the logarithmic
  buckets divide by zero (a ZeroDivisionError or NaN buckets); one line instead."""
  with pytest.raises(ValueError, match=rf"^t5_buckets: {num_buckets} buckets \((bi|causal)"):
    relative.t5_buckets(
      jnp.arange(-4, 5), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )


@pytest.mark.parametrize("shape", [(5,), (3, 8), (), (2, 2, 8)])
def test_rope_positions_that_do_not_fit_name_both_shapes(shape):
  # It was numpy's "Incompatible shapes for broadcasting" from inside the rotation, or no error at all.
  x = jnp.ones((2, 8, 4, 16))
  with pytest.raises(
    ValueError, match=r"^rope: positions of shape .* do not fit x of shape \(2, 8, 4, 16\)"
  ):
    relative.rope(x, jnp.zeros(shape, jnp.int32))
