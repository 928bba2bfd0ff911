"""Tests for the positional encodings: sinusoidal_positions, RoPE (both layouts), xPos, ALiBi, T5."""

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


# Interleaved RoPE (GPT-J) and xPos.


def _np_rotate_every_two(x):
  """GPT-J's rotate_every_two (transformers' modeling_gptj): (x0, x1, x2, x3, ...) -> (-x1, x0, -x3,
  x2, ...)."""
  return np.stack([-x[..., 1::2], x[..., 0::2]], axis=-1).reshape(x.shape)


def _np_gptj_rope(x_BTHK, positions_BT, rotary_dim):
  """GPT-J's rotary embedding, as modeling_gptj computes it: create_sinusoidal_positions' table of
  [sin | cos], indexed by position, repeat_interleave'd by 2 and applied to the first rotary_dim
  channels as x * cos + rotate_every_two(x) * sin; the rest pass."""
  inv_freq = 1.0 / (10_000 ** (np.arange(0, rotary_dim, 2) / rotary_dim))
  angles = np.asarray(positions_BT, np.float64)[..., None] * inv_freq  # [B, T, R/2]
  sin = np.repeat(np.sin(angles)[:, :, None, :], 2, axis=3)  # [B, T, 1, R]
  cos = np.repeat(np.cos(angles)[:, :, None, :], 2, axis=3)
  rot, rest = x_BTHK[..., :rotary_dim], x_BTHK[..., rotary_dim:]
  return np.concatenate([rot * cos + _np_rotate_every_two(rot) * sin, rest], axis=-1)


def _half_to_interleaved(K, R):
  """The permutation P of the head dim with (x[P])[2i] = x[i], (x[P])[2i + 1] = x[i + R/2] on the first
  R channels (the rest in place): the rotate-half pair i becomes the adjacent pair i."""
  return np.concatenate(
    [np.stack([np.arange(R // 2), np.arange(R // 2) + R // 2], -1).ravel(), np.arange(R, K)]
  )


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_interleaved_rope_is_gptjs_formula(fraction):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, 5, 3, 8)), np.float64)
  positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
  got = relative.rope(jnp.asarray(x, jnp.float32), positions, fraction=fraction, interleaved=True)
  npt.assert_allclose(got, _np_gptj_rope(x, positions, int(8 * fraction)), atol=2e-5)


def test_interleaved_rope_matches_transformers_gptj():
  torch = pytest.importorskip("torch")
  gptj = pytest.importorskip("transformers.models.gptj.modeling_gptj")
  B, T, H, K, R = 2, 6, 2, 8, 4  # GPT-J's rotary_dim R of a head dim K.
  x = np.array(jax.random.normal(jax.random.PRNGKey(4), (B, T, H, K)), np.float32)
  position_ids = torch.tensor([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]])
  sincos = gptj.create_sinusoidal_positions(16, R)[position_ids]  # GPTJRotaryEmbedding's lookup.
  sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
  x_t = torch.from_numpy(x)
  expected = torch.cat([gptj.apply_rotary_pos_emb(x_t[..., :R], sin, cos), x_t[..., R:]], dim=-1)
  got = relative.rope(x, position_ids.numpy(), fraction=R / K, interleaved=True)
  npt.assert_allclose(got, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("fraction", [1.0, 0.75])
def test_the_two_rope_layouts_are_one_rotation_up_to_a_permutation(fraction):
  K = 8
  R = int(K * fraction) // 2 * 2
  P = _half_to_interleaved(K, R)
  q = jax.random.normal(jax.random.PRNGKey(5), (5, 2, K))
  k = jax.random.normal(jax.random.PRNGKey(6), (5, 2, K))
  pos = jnp.arange(5) + 3
  half = relative.rope(q, pos, fraction=fraction)
  npt.assert_allclose(
    relative.rope(q[..., P], pos, fraction=fraction, interleaved=True), half[..., P], atol=1e-6
  )
  # So logits agree when queries and keys are permuted alike (q . k is permutation-invariant) ...
  logits = jnp.einsum("thk,shk->hts", half, relative.rope(k, pos, fraction=fraction))
  inter = lambda v: relative.rope(v[..., P], pos, fraction=fraction, interleaved=True)
  npt.assert_allclose(jnp.einsum("thk,shk->hts", inter(q), inter(k)), logits, atol=1e-5)
  # ... and differ when a tensor in one layout is read in the other.
  assert not np.allclose(relative.rope(q, pos, fraction=fraction, interleaved=True), half, atol=1e-3)


def test_interleaved_rope_logits_depend_only_on_the_distance_and_keep_norms():
  q = jax.random.normal(jax.random.PRNGKey(7), (5, 2, 8))
  k = jax.random.normal(jax.random.PRNGKey(8), (5, 2, 8))
  rot = lambda v, p: relative.rope(v, p, interleaved=True)
  pos = jnp.arange(5)
  logits = jnp.einsum("thk,shk->hts", rot(q, pos), rot(k, pos))
  npt.assert_allclose(jnp.einsum("thk,shk->hts", rot(q, pos + 37), rot(k, pos + 37)), logits, atol=1e-4)
  npt.assert_allclose(jnp.linalg.norm(rot(q, pos), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)


def _np_torchscale_xpos(x_HTK, *, offset=0, downscale=False, scale_base=512, centre=True):
  """microsoft/torchscale's XPOS.forward (component/xpos_relative_position.py) in numpy, on its
  [batch * heads, T, K] layout. `centre=False` starts the scale's positions at 0 instead of at
  -(T + offset) // 2, so that they are the rotation's positions 0.. T + offset - 1."""
  length, head_dim = x_HTK.shape[1], x_HTK.shape[2]
  zeta = (np.arange(0, head_dim, 2) + 0.4 * head_dim) / (1.4 * head_dim)  # XPOS's `scale` buffer.
  min_pos = -(length + offset) // 2 if centre else 0
  max_pos = length + offset + min_pos
  scale = zeta ** (np.arange(min_pos, max_pos)[:, None] / scale_base)  # [T + offset, K/2]
  # fixed_pos_embedding(scale): angles n / 10000^(j / (K/2)) for n = 0 .. T + offset - 1.
  seq_len, dim = scale.shape
  angles = np.arange(seq_len)[:, None] * (1.0 / 10_000 ** (np.arange(dim) / dim))
  sin, cos = np.sin(angles), np.cos(angles)
  if scale.shape[0] > length:
    scale, sin, cos = scale[-length:], sin[-length:], cos[-length:]
  if downscale:
    scale = 1 / scale
  sin, cos = (np.repeat(t * scale, 2, axis=-1) for t in (sin, cos))  # duplicate_interleave
  return x_HTK * cos + _np_rotate_every_two(x_HTK) * sin


def test_xpos_is_torchscales_formula():
  T, H, K = 6, 2, 8
  q = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (T, H, K)), np.float64)
  k = np.asarray(jax.random.normal(jax.random.PRNGKey(10), (T, H, K)), np.float64)
  to_HTK = lambda v: np.swapaxes(v, 0, 1)
  ours = lambda v, pos, is_key, **kw: relative.xpos(
    jnp.asarray(v, jnp.float32), pos, is_key=is_key, interleaved=True, **kw
  )
  # Element by element, with the scale's positions not centred (the same positions as the rotation).
  for is_key in (False, True):
    ref = _np_torchscale_xpos(to_HTK(q), downscale=is_key, centre=False)
    npt.assert_allclose(to_HTK(np.asarray(ours(q, jnp.arange(T), is_key))), ref, atol=1e-5)
    ref = _np_torchscale_xpos(to_HTK(q), downscale=is_key, centre=False, scale_base=4)
    npt.assert_allclose(to_HTK(np.asarray(ours(q, jnp.arange(T), is_key, scale_base=4))), ref, rtol=1e-5)
  # torchscale's centred scales (queries upscaled, keys downscaled, as its MultiheadAttention does)
  # give the same logits: a shift common to queries and keys cancels.
  ref_logits = np.einsum(
    "htk,hsk->hts", _np_torchscale_xpos(to_HTK(q)), _np_torchscale_xpos(to_HTK(k), downscale=True)
  )
  for shift in (0, -(T // 2)):
    pos = jnp.arange(T) + shift
    logits = jnp.einsum("thk,shk->hts", ours(q, pos, False), ours(k, pos, True))
    npt.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  # Its incremental decoding step (one query at offset T - 1 against the T keys) is our last row.
  step = _np_torchscale_xpos(to_HTK(q[-1:]), offset=T - 1)
  step_logits = np.einsum("htk,hsk->hts", step, _np_torchscale_xpos(to_HTK(k), downscale=True))
  npt.assert_allclose(step_logits[:, 0], ref_logits[:, -1], rtol=1e-5, atol=1e-5)


def test_xpos_logits_depend_only_on_the_distance():
  q = jax.random.normal(jax.random.PRNGKey(11), (6, 2, 8))
  k = jax.random.normal(jax.random.PRNGKey(12), (6, 2, 8))
  for interleaved in (False, True):
    logits_at = lambda pos, il=interleaved: jnp.einsum(
      "thk,shk->hts",
      relative.xpos(q, pos, is_key=False, scale_base=8.0, interleaved=il),
      relative.xpos(k, pos, is_key=True, scale_base=8.0, interleaved=il),
    )
    pos = jnp.arange(6)
    npt.assert_allclose(logits_at(pos + 37), logits_at(pos), rtol=1e-4, atol=1e-4)
    rope_logits = jnp.einsum(
      "thk,shk->hts",
      relative.rope(q, pos, interleaved=interleaved),
      relative.rope(k, pos, interleaved=interleaved),
    )
    npt.assert_allclose(
      jnp.diagonal(logits_at(pos), axis1=-2, axis2=-1),
      jnp.diagonal(rope_logits, axis1=-2, axis2=-1),
      rtol=1e-5,
    )


@pytest.mark.parametrize("interleaved", [False, True])
def test_xpos_decays_each_pair_by_zeta_to_the_distance(interleaved):
  """With one pair i of channels nonzero, the xPos logit is RoPE's times zeta_i^((n - m) / scale_base),
  zeta_i = (2i / K + 0.4) / 1.4 < 1: it decays with the distance n - m of a key before the query, and
  faster for lower pairs."""
  T, K, scale_base = 7, 8, 4.0
  pos = jnp.arange(T)
  distance = np.arange(T)[:, None] - np.arange(T)[None, :]  # n - m
  previous = None
  for i in range(K // 2):
    channels = [2 * i, 2 * i + 1] if interleaved else [i, i + K // 2]
    only = np.zeros(K, np.float32)
    only[channels] = 1.0
    q = jnp.broadcast_to(jnp.asarray(only), (T, 1, K))  # The same vector at every position.
    xq = relative.xpos(q, pos, is_key=False, scale_base=scale_base, interleaved=interleaved)
    xk = relative.xpos(q, pos, is_key=True, scale_base=scale_base, interleaved=interleaved)
    rq = relative.rope(q, pos, interleaved=interleaved)
    logits = np.asarray(jnp.einsum("thk,shk->ts", xq, xk))
    ratio = logits / np.asarray(jnp.einsum("thk,shk->ts", rq, rq))
    zeta = (2 * i / K + 0.4) / 1.4
    npt.assert_allclose(ratio, zeta ** (distance / scale_base), rtol=1e-4)
    factor = ratio[-1, ::-1]  # The last query against keys farther and farther back.
    assert np.all(np.diff(factor) < 0) and np.all(factor <= 1.0 + 1e-6)
    if previous is not None:
      assert np.all(factor[1:] > previous[1:])  # Higher pairs decay more slowly.
    previous = factor


def test_xpos_under_jit_with_traced_positions_and_its_errors():
  x = jax.random.normal(jax.random.PRNGKey(13), (2, 3, 1, 4))
  fn = jax.jit(lambda offset: relative.xpos(x, offset + jnp.arange(3), is_key=True))
  npt.assert_allclose(fn(jnp.asarray(5)), relative.xpos(x, np.arange(5, 8), is_key=True), rtol=1e-6)
  with pytest.raises(ValueError, match=r"^xpos: gamma must be positive, got 0.0"):
    relative.xpos(x, jnp.arange(3), is_key=False, gamma=0.0)
  with pytest.raises(ValueError, match=r"^xpos: scale_base must be positive, got -1"):
    relative.xpos(x, jnp.arange(3), is_key=False, scale_base=-1)
  with pytest.raises(ValueError, match=r"^xpos: positions of shape \(4,\) do not fit x"):
    relative.xpos(x, jnp.arange(4), is_key=False)
  with pytest.raises(ValueError, match=r"^xpos: fraction must be in \(0, 1\]"):
    relative.xpos(x, jnp.arange(3), is_key=False, fraction=2.0)
