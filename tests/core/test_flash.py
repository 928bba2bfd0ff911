"""Tests for attn/core/flash.py and the `implementation=` choice of attn.dot_product_attention: every
implementation equals the naive one in value and gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn
from attn.core import attention, flash

B, T, S, H, K = 2, 13, 19, 4, 8


def _inputs(G=H, Kv=K, seed=0, dtype=jnp.float32):
  r = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(r[0], (B, T, H, K), dtype)
  k = jax.random.normal(r[1], (B, S, G, K), dtype)
  v = jax.random.normal(r[2], (B, S, G, Kv), dtype)
  return q, k, v


MASK = jax.random.bernoulli(jax.random.PRNGKey(7), 0.6, (B, 1, T, S)).at[:, :, 3, :].set(False)
BIAS = jax.random.normal(jax.random.PRNGKey(8), (H, T, S))


@functools.partial(jax.jit, static_argnames=("implementation", "is_causal", "use_mask", "use_bias"))
def _value_and_grads(q, k, v, *, implementation, is_causal, use_mask, use_bias):
  def loss(q, k, v, bias):
    out = attn.dot_product_attention(
      q, k, v, mask=MASK if use_mask else None, bias=bias, is_causal=is_causal,
      implementation=implementation,
    )  # fmt: skip
    return jnp.sum(jnp.sin(out) * out), out

  bias = BIAS if use_bias else None
  argnums = (0, 1, 2, 3) if use_bias else (0, 1, 2)
  (_, out), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(q, k, v, bias)
  return out, grads


@pytest.mark.parametrize(
  ("implementation", "is_causal", "use_mask", "use_bias"),
  [
    ("flash", False, False, False),
    ("flash", True, True, False),
    ("flash", False, True, True),
    ("flash", True, False, True),
    ("jax", False, True, True),
    ("jax", True, True, False),
  ],
)
def test_implementation_equals_naive_in_value_and_gradient(
  implementation, is_causal, use_mask, use_bias
):
  q, k, v = _inputs(G=2)  # Grouped-query: 4 query heads read 2 key/value heads.
  flags = dict(is_causal=is_causal, use_mask=use_mask, use_bias=use_bias)
  out, grads = _value_and_grads(q, k, v, implementation=implementation, **flags)
  ref_out, ref_grads = _value_and_grads(q, k, v, implementation="naive", **flags)
  np.testing.assert_allclose(out, ref_out, atol=2e-6)
  for g, ref in zip(grads, ref_grads, strict=True):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, ref, atol=2e-5)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_flash_fully_masked_rows_are_zero_with_zero_gradient():
  q, k, v = _inputs()
  out, (dq, _, _) = _value_and_grads(
    q, k, v, implementation="flash", is_causal=False, use_mask=True, use_bias=False
  )
  assert np.all(np.asarray(out)[:, 3] == 0.0)  # Row 3 of MASK has no key.
  assert np.all(np.asarray(dq)[:, 3] == 0.0)


def test_flash_masked_keys_holding_nan_have_no_influence():
  q, k, v = _inputs()
  lengths = jnp.array([11, 19])
  mask = attn.padding_mask(lengths=lengths, max_length=S)
  poison = jnp.arange(S)[None, :, None, None] >= lengths[:, None, None, None]
  k_nan, v_nan = jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.inf, v)
  run = lambda k, v: attn.dot_product_attention(q, k, v, mask=mask, implementation="flash")
  np.testing.assert_allclose(run(k_nan, v_nan), run(k, v), atol=1e-6)
  grads = jax.grad(lambda q, k, v: jnp.sum(run(k, v) * q[..., :1]), argnums=(0, 1, 2))(q, k_nan, v_nan)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize(("block_q", "block_k"), [(4, 8), (8, 4), (16, 32)])
def test_flash_tile_sizes_do_not_change_results(block_q, block_k):
  q, k, v = _inputs(Kv=K + 3)  # The value head dim may differ from K.
  ref = attn.dot_product_attention(q, k, v, is_causal=True, implementation="naive")
  out = flash.flash_attention(
    q, k, v, multiplier=K**-0.5, is_causal=True, block_q=block_q, block_k=block_k
  )
  np.testing.assert_allclose(out, ref, atol=2e-6)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_chunk_follows_the_backend_tile_budget():
  # On the CPU one (batch, head) pair of 512 x 512 tiles per step (1 MiB, within L2: faster against
  # torch's SDPA at (8, 8, 512, 64)); elsewhere 4 MiB, four pairs, as before.
  assert flash.backend_tile_bytes("cpu") == flash.CPU_TILE_BYTES == 2**20
  assert flash.backend_tile_bytes("gpu") == flash.backend_tile_bytes("tpu") == flash.TILE_BYTES
  assert flash.TILE_BYTES == 4 * 2**20
  assert flash.chunk_for(64, 512, 512, flash.backend_tile_bytes("cpu")) == 1
  assert flash.chunk_for(64, 512, 512, flash.backend_tile_bytes("gpu")) == 4
  assert flash.chunk_for(64, 64, 64, flash.backend_tile_bytes("cpu")) == 64  # Small tiles share.
  assert flash.chunk_for(6, 512, 512, 5 * 2**20) == 3  # The largest divisor of N that fits.
  assert flash.chunk_for(64, 512, 512) == flash.chunk_for(
    64, 512, 512, flash.backend_tile_bytes(jax.default_backend())
  )


def test_flash_multi_query_and_batch_axes():
  r = jax.random.split(jax.random.PRNGKey(3), 3)
  q = jax.random.normal(r[0], (3, 2, T, H, K))
  k = jax.random.normal(r[1], (3, 2, S, 1, K))
  v = jax.random.normal(r[2], (3, 2, S, 1, K))
  ref = attn.dot_product_attention(q, k, v, implementation="naive", scale="none")
  np.testing.assert_allclose(
    attn.dot_product_attention(q, k, v, implementation="flash", scale="none"), ref, atol=1e-5
  )


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_flash_bfloat16_is_finite_and_close():
  q, k, v = _inputs(dtype=jnp.bfloat16)
  out = attn.dot_product_attention(q, k, v, is_causal=True, implementation="flash")
  assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))
  ref = attn.dot_product_attention(q, k, v, is_causal=True, implementation="naive")
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=3e-2)


def test_choose_implementation():
  choose = attention.choose_implementation
  assert choose("flash", T=4, S=4) == "flash"
  assert choose(None, T=8, S=8, dropout=True) == "naive"
  assert choose(None, T=8, S=8, return_weights=True) == "naive"
  if attention.DEFAULT_IMPLEMENTATION is None:  # Not forced by pytest --attention-default.
    long = choose(None, T=4096, S=4096)
    assert long == ("jax" if jax.default_backend() == "gpu" else "flash")
    if jax.default_backend() != "gpu":
      assert choose(None, T=8, S=8) == "naive"
      assert choose(None, T=128, S=128) == "flash"
  with pytest.raises(ValueError, match="implementation: unknown choice 'fast'"):
    choose("fast", T=4, S=4)
  with pytest.raises(ValueError, match="does not support return_weights"):
    choose("flash", T=4, S=4, return_weights=True)
  with pytest.raises(ValueError, match="does not support dropout"):
    choose("jax", T=4, S=4, dropout=True)
  with pytest.raises(ValueError, match="value head dim"):
    choose("jax", T=4, S=4, same_head_dims=False)


def test_default_implementation_forces_the_automatic_choice(monkeypatch):
  monkeypatch.setattr(attention, "DEFAULT_IMPLEMENTATION", "flash")
  choose = attention.choose_implementation
  assert choose(None, T=8, S=8) == "flash"
  assert choose(None, T=8, S=8, return_weights=True) == "naive"  # Only naive has the weights.
  monkeypatch.setattr(attention, "DEFAULT_IMPLEMENTATION", "jax")
  with pytest.warns(UserWarning, match="cannot serve a value head dim"):
    assert choose(None, T=8, S=8, same_head_dims=False) == "flash"


def test_is_causal_equals_an_explicit_causal_mask_on_every_path():
  q, k, v = _inputs()
  ref = attn.dot_product_attention(q, k, v, mask=attn.causal_mask(T, S), implementation="naive")
  for implementation in attention.IMPLEMENTATIONS:
    out = attn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    np.testing.assert_allclose(out, ref, atol=2e-6, err_msg=implementation)


def test_flash_single_query_and_single_key():
  """Length 1 is padded to a whole tile like any other length (a single decoding step)."""
  q, k, v = _inputs()
  for q_len, k_len in ((1, S), (T, 1), (1, 1)):
    args = (q[:, :q_len], k[:, :k_len], v[:, :k_len])
    ref = attn.dot_product_attention(*args, implementation="naive")
    np.testing.assert_allclose(attn.dot_product_attention(*args, implementation="flash"), ref, atol=2e-6)


def test_a_key_padding_mask_builds_no_query_by_key_array():
  """Key padding given as [B, 1, 1, S] costs the flash path no [T, S] temporaries (finding the keys
  no query attends reduces over the mask's own axes), forward and backward."""
  T = 8192  # Past the unrolled tiles: the looped path, whose own temporaries are O(T + S).
  q = jnp.ones((1, T, 2, 16))
  padding = attn.padding_mask(lengths=[T - 100], max_length=T)

  def temp_bytes(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:
      pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes

  def forward(q, mask=None):
    return attn.dot_product_attention(q, q, q, mask=mask, implementation="flash")

  def backward(q, mask=None):
    return jax.grad(lambda q: forward(q, mask).sum())(q)

  for fn in (forward, backward):
    without, with_padding = temp_bytes(fn, q), temp_bytes(fn, q, padding)
    assert with_padding <= without + 2**20, (fn.__name__, without, with_padding)
    assert with_padding < T * T // 4, fn.__name__  # Far below a byte per query-key pair.


@pytest.mark.parametrize(("is_causal", "block_q", "block_k"), [(False, None, None), (True, 8, 8)])
def test_flash_soft_cap_equals_naive_in_value_and_gradient(is_causal, block_q, block_k):
  """cap * tanh(logits / cap) in each tile, and its derivative in the backward: with a mask (a fully
  masked row among them), a bias, grouped-query heads, the causal skip and several tiles."""
  q, k, v = _inputs(G=2)
  q = q * 3  # Logits well past the cap, where tanh bends.

  def loss(implementation, q, k, v, bias):
    out = attn.dot_product_attention(
      q, k, v, mask=MASK, bias=bias, is_causal=is_causal, logit_soft_cap=2.0,
      implementation=implementation,
    )  # fmt: skip
    return jnp.sum(jnp.sin(out) * out), out

  def flash_loss(q, k, v, bias):
    out = flash.flash_attention(
      q, k, v, mask=MASK, bias=bias[None], multiplier=K**-0.5,
      is_causal=is_causal, logit_soft_cap=2.0, block_q=block_q, block_k=block_k,
    )  # fmt: skip
    return jnp.sum(jnp.sin(out) * out), out

  grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, BIAS)
  (_, ref_out), ref_grads = grad(functools.partial(loss, "naive"))
  for (_, out), grads in (grad(functools.partial(loss, "flash")), grad(flash_loss)):
    np.testing.assert_allclose(out, ref_out, atol=2e-6)
    np.testing.assert_array_equal(out[:, 3], 0.0)  # Row 3 has no key.
    for g, ref in zip(grads, ref_grads, strict=True):
      assert np.all(np.isfinite(g))
      np.testing.assert_allclose(g, ref, atol=5e-5)


def test_soft_cap_is_refused_by_jax_and_served_by_flash_by_default():
  assert attention.choose_implementation(None, T=256, S=256, soft_cap=True) in ("flash", "naive")
  q, k, v = _inputs()
  with pytest.raises(ValueError, match=r"^implementation='jax' does not support logit_soft_cap"):
    attn.dot_product_attention(q, k, v, logit_soft_cap=1.0, implementation="jax")


# Every variant in the flash path: held to the naive path in value and gradient (the sink logits, the
# ALiBi slopes and T5's table included), with a mask that leaves a row empty, grouped-query heads,
# the causal skip, several tiles and both loop forms (unrolled and looped).
_T5_TABLE = jax.random.normal(jax.random.PRNGKey(9), (8, H))
# FoX's cumulative log forget gates at the queries [B, T, H] and the keys [B, S, H].
_FORGET = jnp.cumsum(jax.nn.log_sigmoid(jax.random.normal(jax.random.PRNGKey(10), (B, S, H)) + 1), 1)
VARIANTS = {
  "softpick": lambda: dict(kind="softpick"),
  "softpick_soft_cap_forget": lambda: dict(
    kind="softpick", logit_soft_cap=2.0, forget_cumsum=(_FORGET[:, :T], _FORGET)
  ),
  "forget": lambda: dict(forget_cumsum=(_FORGET[:, :T] + 0.5, _FORGET)),
  "sink": lambda: dict(sink_logits=jnp.array([0.5, -1.0, 2.0, 0.0])),
  "sigmoid": lambda: dict(kind="sigmoid"),
  "sigmoid_soft_cap": lambda: dict(kind="sigmoid", logit_soft_cap=2.0),
  "alibi": lambda: dict(relative_bias=attn.RelativeBias("alibi", attn.alibi_slopes(H), query_offset=5)),
  "t5_bidirectional": lambda: dict(
    relative_bias=attn.RelativeBias("t5", _T5_TABLE, num_buckets=8, max_distance=12)
  ),
  "t5_causal_soft_cap": lambda: dict(
    relative_bias=attn.RelativeBias(
      "t5", _T5_TABLE, query_offset=3, bidirectional=False, num_buckets=8, max_distance=12
    ),
    logit_soft_cap=2.0,
  ),
}


def _split_variant(variant: dict):
  """(differentiable arrays, static options) of a variant's keyword arguments."""
  static = {name: x for name, x in variant.items() if isinstance(x, str | float)}
  return {name: x for name, x in variant.items() if name not in static}, static


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize(("is_causal", "tiles"), [(False, None), (True, (8, 8)), (True, "looped")])
def test_flash_variants_equal_naive_in_value_and_gradient(name, is_causal, tiles, monkeypatch):
  arrays, static = _split_variant(VARIANTS[name]())
  q, k, v = _inputs(G=2)
  block_q, block_k = (8, 8) if tiles is not None else (None, None)
  if tiles == "looped":
    monkeypatch.setattr(flash, "UNROLL_MAX_TILES", 1)

  def naive(q, k, v, arrays):
    out = attn.dot_product_attention(
      q, k, v, mask=MASK, is_causal=is_causal, implementation="naive", **arrays, **static
    )
    return jnp.sum(jnp.sin(out) * out), out

  def fast(q, k, v, arrays):
    out = flash.flash_attention(
      q, k, v, mask=MASK, multiplier=K**-0.5, is_causal=is_causal, block_q=block_q,
      block_k=block_k, **arrays, **static,
    )  # fmt: skip
    return jnp.sum(jnp.sin(out) * out), out

  grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True, allow_int=True)(
    q, k, v, arrays
  )
  (_, ref_out), ref_grads = grad(naive)
  (_, out), grads = grad(fast)
  np.testing.assert_allclose(out, ref_out, atol=2e-6)
  np.testing.assert_array_equal(out[:, 3], 0.0)  # Row 3 of MASK has no key: zeros in every kind.
  pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True)
  for g, ref in pairs:
    if g.dtype == jax.dtypes.float0:  # The integer query offset.
      continue
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, ref, atol=5e-5, rtol=1e-5)
  if "relative_bias" in arrays:  # The parameters' gradient is there, not silently zero.
    assert float(jnp.abs(grads[3]["relative_bias"].params).max()) > 1e-3
  if "forget_cumsum" in arrays:  # Both vectors' gradients (the queries' is 0 under a softmax).
    assert float(jnp.abs(grads[3]["forget_cumsum"][1]).max()) > 1e-3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", ["softpick", "softpick_soft_cap_forget", "forget"])
def test_flash_new_variants_give_fully_masked_rows_zeros_and_finite_gradients(name, dtype):
  arrays, static = _split_variant(VARIANTS[name]())
  q, k, v = _inputs(G=2, dtype=dtype)

  def loss(q, k, v, arrays):
    out = attn.dot_product_attention(
      q, k, v, mask=MASK, is_causal=True, implementation="flash", **arrays, **static
    )
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
    q, k, v, arrays
  )
  assert out.dtype == dtype
  np.testing.assert_array_equal(np.asarray(out[:, 3], np.float32), 0.0)  # MASK's row 3: no key.
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
  np.testing.assert_array_equal(np.asarray(grads[0][:, 3], np.float32), 0.0)


@pytest.mark.parametrize("looped", [False, True])
def test_flash_lse_equals_naive_in_value_and_gradient(looped, monkeypatch):
  """return_lse on tiles of 8 (unrolled and looped), a sink and a fully masked row: the lse and the
  gradients of a loss of out and lse (its cotangent enters the backward as delta - d_lse)."""
  if looped:
    monkeypatch.setattr(flash, "UNROLL_MAX_TILES", 1)
  q, k, v = _inputs(G=2)
  sink = jnp.array([0.5, -1.0, 2.0, 0.0])

  def run(q, k, v, sink, fast):
    if fast:
      out, lse = flash.flash_attention(
        q, k, v, mask=MASK, multiplier=K**-0.5, is_causal=True, sink_logits=sink, block_q=8,
        block_k=8, return_lse=True,
      )  # fmt: skip
    else:
      out, lse = attn.dot_product_attention(
        q, k, v, mask=MASK, is_causal=True, sink_logits=sink, return_lse=True, implementation="naive"
      )
    return jnp.sum(jnp.sin(out) * out) + jnp.sum(jnp.cos(lse)), lse

  value_and_grad = jax.value_and_grad(run, argnums=(0, 1, 2, 3), has_aux=True)
  grad = lambda fast: jax.jit(value_and_grad, static_argnums=4)(q, k, v, sink, fast)
  (_, ref_lse), ref_grads = grad(False)
  (_, lse), grads = grad(True)
  np.testing.assert_allclose(lse, ref_lse, atol=1e-5)
  np.testing.assert_allclose(lse[:, :, 3], jnp.broadcast_to(sink, (B, H)), atol=1e-6)  # No key.
  for g, ref in zip(grads, ref_grads, strict=True):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, ref, atol=5e-5, rtol=1e-5)
  assert flash.SOFTPICK_EPS == attention.SOFTPICK_EPS  # The two paths' softpick agree.


def test_dot_product_attention_serves_every_variant_by_flash():
  """The public function's flash path, batch axes and a [B, H] sink included."""
  q, k, v = _inputs(G=2)
  for variant in [*(f() for f in VARIANTS.values()), dict(sink_logits=jnp.ones((B, H)))]:
    arrays, static = _split_variant(variant)
    run = lambda impl, arrays=arrays, static=static: attn.dot_product_attention(
      q, k, v, mask=MASK, is_causal=True, implementation=impl, **arrays, **static
    )
    np.testing.assert_allclose(run("flash"), run("naive"), atol=2e-6)


def test_relative_bias_builds_no_query_by_key_array_in_flash():
  """ALiBi and T5 per tile at the issue's (1, 8, 16384, 64), compiled only: the forward + backward's
  temporaries are those of plain flash attention (the dense bias alone would be 8.6 GB), and
  arguments plus temporaries stay under 2 GB."""
  T, H = 16384, 8
  x = jax.ShapeDtypeStruct((1, T, H, 64), jnp.float32)

  def temp_and_args(bias):
    def loss(x):
      return attn.dot_product_attention(
        x, x, x, is_causal=True, relative_bias=bias, implementation="flash"
      ).sum()

    analysis = jax.jit(jax.grad(loss)).lower(x).compile().memory_analysis()
    return analysis.temp_size_in_bytes, analysis.argument_size_in_bytes

  plain, _ = temp_and_args(None)
  for bias in (
    attn.RelativeBias("alibi", attn.alibi_slopes(H)),
    attn.RelativeBias("t5", jnp.zeros((32, H)), bidirectional=False),
  ):
    temp, args = temp_and_args(bias)
    assert temp <= plain + 16 * 2**20, (bias.kind, temp, plain)
    assert temp + args < 2 * 2**30, (bias.kind, temp + args)


def test_relative_bias_refuses_a_wrong_shape_by_name():
  q, k, v = _inputs()
  with pytest.raises(ValueError, match=r"^relative_bias: alibi needs slopes \[H\] = \(4,\)"):
    attn.dot_product_attention(q, k, v, relative_bias=attn.RelativeBias("alibi", jnp.ones(3)))
  with pytest.raises(ValueError, match=r"^relative_bias: t5 needs table \[num_buckets, H\]"):
    attn.dot_product_attention(q, k, v, relative_bias=attn.RelativeBias("t5", jnp.ones((4, 4))))
  with pytest.raises(ValueError, match=r"^RelativeBias.kind: unknown choice 'rope'"):
    attn.RelativeBias("rope", jnp.ones(4))
