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
