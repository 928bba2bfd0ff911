"""Tests for `attn.nn.tokenwise`: same values and gradients as the layer applied directly, and a
kernel gradient that never copies the output's cotangent into a transposed layout."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn.tokenwise import tokenwise

B, T, D, F, H, K = 4, 12, 24, 40, 2, 5


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(
  "layer, shape, feature_dims",
  [
    (nn.Dense(F, use_bias=False), (B, T, D), 1),
    (nn.Dense(F), (3, B, T, D), 1),  # Two batch axes (e.g. seeds and examples).
    (nn.DenseGeneral((H, K)), (B, T, D), 1),  # A query projection.
    (nn.DenseGeneral(D, axis=(-2, -1)), (B, T, H, K), 2),  # An attention output projection.
    (nn.Dense(F), (T, D), 1),  # No batch axis: applied as it is.
  ],
)
def test_same_values_and_gradients_as_the_layer_itself(layer, shape, feature_dims):
  x = _normal(0, shape)
  params = layer.init(jax.random.key(0), x)

  def loss(params, x, flat):
    apply = lambda x: layer.apply(params, x)
    y = tokenwise(apply, x, feature_dims) if flat else apply(x)
    return jnp.sum(jnp.tanh(y) ** 2), y

  (value, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, True)
  (want_value, want_y), want_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    params, x, False
  )
  assert y.shape == want_y.shape
  np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_forward_mode_and_vmap_go_through():
  layer = nn.Dense(F, use_bias=False)
  x = _normal(1, (B, T, D))
  params = layer.init(jax.random.key(0), x)
  f = lambda x: tokenwise(lambda x: layer.apply(params, x), x)
  _, tangent = jax.jvp(f, (x,), (x,))
  np.testing.assert_allclose(tangent, layer.apply(params, x), rtol=1e-5, atol=1e-5)  # Linear.
  np.testing.assert_allclose(jax.vmap(f)(x[None]), f(x)[None], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_kernel_gradient_reads_the_cotangent_in_place(dtype):
  """The root cause this module exists for: for a bias-free Dense -> GELU -> Dense over [B, T, D],
  XLA's CPU backend copied the first layer's output cotangent [B*T, F] into an [F, B*T] layout (with
  the GELU derivative fused into the copy). Over one flat token axis no array of that shape remains;
  the plain layers are checked to show it (so the test would fail if tokenwise stopped flattening)."""

  def compiled_grad(flat):
    class FeedForward(nn.Module):
      @nn.compact
      def __call__(self, x):
        wi = nn.Dense(F, use_bias=False, dtype=dtype)
        wo = nn.Dense(D, use_bias=False, dtype=dtype)
        if flat:
          return tokenwise(wo, nn.gelu(tokenwise(wi, x)))
        return wo(nn.gelu(wi(x)))

    model, x = FeedForward(), _normal(2, (B, T, D))
    params = model.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x).astype(jnp.float32) ** 2)))
    return grad.lower(params).compile().as_text()

  transposed = rf"\[{F},{B * T}\]|\[{F},{B},{T}\]"
  assert re.search(transposed, compiled_grad(flat=False)) or jax.default_backend() != "cpu"
  assert not re.search(transposed, compiled_grad(flat=True))
