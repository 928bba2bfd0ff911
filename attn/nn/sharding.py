"""The logical axis names parameters and activations carry, for sharding them over a device mesh.

A module's parameter says what its axes are ("embed", "heads", ...), not where they go: the table of
rules that maps logical names to mesh axes lives with the training code (`attn.train.sharding.RULES`),
as in maxtext and big_vision. The names ride on the parameters as flax's partitioning metadata
(`nn.LogicallyPartitioned`, read by `nn.get_partition_spec`), but only inside
`with logical_axis_names():`; elsewhere `model.init` returns plain arrays, so a researcher reusing a
module never meets the boxes. A parameter without names (a norm's scale, a per-head scalar, the
small character encoder) stays replicated.

Outside a mesh and rules context (`jax.set_mesh`, `nn.logical_axis_rules`) the activation
constraints are no-ops, so a model runs the same on one device with no setup.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import flax.linen as nn
import jax

# The logical names. Parameters:
EMBED = "embed"  # D, the residual width.
HEADS = "heads"  # H, the query heads.
KV_HEADS = "kv_heads"  # G, the key/value heads.
HEAD_DIM = "head_dim"  # K.
MLP = "mlp"  # The feed-forward hidden width.
VOCAB = "vocab"  # V.
# Activations (kept apart from the parameters' names so that FSDP's "embed" rule does not split the
# residual stream's D):
BATCH = "batch"  # B.
LENGTH = "length"  # T or S.
ACTIVATION_EMBED = "activation_embed"  # The residual stream's D.

PARAMETER_AXES = (EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB)
ACTIVATION_AXES = (BATCH, LENGTH, ACTIVATION_EMBED)


_BOXING = threading.local()


@contextlib.contextmanager
def logical_axis_names() -> Iterator[None]:
  """Inside: the parameters of `named` initialisers come boxed with their logical names."""
  previous = getattr(_BOXING, "on", False)
  _BOXING.on = True
  try:
    yield
  finally:
    _BOXING.on = previous


def named(init: Callable, names: Sequence[str | None]) -> Callable:
  """`init` whose parameter carries the logical axis `names` (one per axis; None = unnamed) inside
  `logical_axis_names()`, and is a plain array elsewhere."""
  boxed = nn.with_logical_partitioning(init, tuple(names))

  def named_init(*args, **kwargs):
    return (boxed if getattr(_BOXING, "on", False) else init)(*args, **kwargs)

  return named_init


def constrain_residual(x_BTD: jax.Array) -> jax.Array:
  """The residual stream at a block boundary: batch over the data axes, D whole (a no-op outside a
  mesh and rules context)."""
  names = (None,) * (x_BTD.ndim - 2) + (BATCH, LENGTH, ACTIVATION_EMBED)
  return nn.with_logical_constraint(x_BTD, names[-x_BTD.ndim :])
