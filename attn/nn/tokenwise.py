"""Position-wise layers applied over one flat token axis.

A layer that acts on each token alone (a `Dense` or `DenseGeneral` projection, the output head) is
applied here to its input reshaped from [batch..., T, *features] to [N, *features] (N = batch x T),
and its output reshaped back. The reshape is free (a bitcast of a row-major array) and the values are
the same; what changes is the kernel's gradient: from a 3-d input it is a contraction over two axes
(B and T) of the input and of the output's cotangent, which XLA's CPU backend lowers by first copying
the cotangent into a transposed [F, B*T] layout and fusing the cotangent's producer (the GELU
derivative, the softmax-cross-entropy gradient) into that strided copy; over one flat axis the dot
reads both operands in place. At nanoGPT's CPU shape that copy (f32[512,768], 34 fused ops, four per
step) was 13 % of a language-model train step, and the reason a bias-free feed-forward was slower than
one with biases (the bias gradient, a second consumer of the cotangent, kept its producer out of the
copy). GPU and TPU backends see the same bitcast.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

Array = jax.Array


def tokenwise(layer: Callable[[Array], Array], x: Array, feature_dims: int = 1) -> Array:
  """`layer(x)` for a layer that acts on each token alone: applied to x [batch..., T, *features]
  (`feature_dims` trailing feature axes) as [N, *features], its output [N, *out] returned as
  [batch..., T, *out]. Same values as `layer(x)`; see the module docstring for why."""
  if x.ndim <= feature_dims + 1:
    return layer(x)
  lead = x.shape[: x.ndim - feature_dims]
  y = layer(x.reshape((-1, *x.shape[x.ndim - feature_dims :])))
  return y.reshape((*lead, *y.shape[1:]))
