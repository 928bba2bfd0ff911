"""Activation patching and attribution patching over `attn.nn.hooks`' named activations.

Given clean and corrupted inputs and a `metric(outputs) -> scalar` (e.g. a logit difference):
- `activation_patching(...)`: for each slice of one activation (a position of `blocks.L.resid_pre`,
  a head of `blocks.L.attn.z`, a (position, head) of it, ...), the metric of the corrupted run with
  that slice taken from the clean run. The slices are vmapped: one traced program per activation,
  not a forward pass per slice in Python.
- `attribution_patching(...)`: the same grid by the gradient approximation (Nanda 2023): the
  metric's gradient at the corrupted run times (clean - corrupted), summed over each slice; one
  forward and one backward pass for every activation at once. Exact where the metric is linear in
  the activation.

Patching a head's `attn.z` is patching its result (its contribution to the residual): the result is
`z` through the head's slice of the output kernel, the same in both runs.

`over` names the slices of an activation of shape [B, T, ...]: "position" (T slices: every
batch row at that position), "head" (the H of [B, T, H, K]) or "position_head" (T x H).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from attn.nn import hooks

OVER = ("position", "head", "position_head")


def _slices(shape: tuple[int, ...], over: str) -> jax.Array:
  """[N, ...] boolean masks broadcastable to an activation of `shape` ([B, T, ...]), one per slice."""
  if over not in OVER:
    raise ValueError(f"patching: over must be one of {OVER}, got {over!r}")
  T = shape[1]
  if over == "position":
    return jnp.eye(T, dtype=bool).reshape(T, 1, T, *(1,) * (len(shape) - 2))
  if len(shape) != 4:
    raise ValueError(f"patching: over={over!r} needs a per-head activation [B, T, H, K], got {shape}")
  H = shape[2]
  if over == "head":
    return jnp.eye(H, dtype=bool).reshape(H, 1, 1, H, 1)
  return jnp.eye(T * H, dtype=bool).reshape(T * H, 1, T, H, 1)


def activation_patching(
  model,
  params,
  clean: Sequence,
  corrupt: Sequence,
  metric: Callable,
  names: Sequence[str],
  over: str,
) -> dict[str, jax.Array]:
  """{name: [N] metrics of the corrupted run with each slice of `name` patched in from the clean
  run} (N: T, H or T * H by `over`, position-major); `clean` and `corrupt` are the inputs (tuples)."""
  _, cache = hooks.run_with_cache(model, params, *clean, names=names)
  out = {}
  for name in names:
    value = cache[name]
    masks = _slices(value.shape, over)

    def patched(mask, value=value, name=name):
      replace = {name: lambda x: jnp.where(mask, value, x)}
      return metric(hooks.run_with_hooks(model, params, *corrupt, hooks=replace))

    out[name] = jax.jit(jax.vmap(patched))(masks)
  return out


def attribution_patching(
  model,
  params,
  clean: Sequence,
  corrupt: Sequence,
  metric: Callable,
  names: Sequence[str],
  over: str,
) -> dict[str, jax.Array]:
  """{name: [N] the first-order estimate of `activation_patching`'s metrics}: metric(corrupted) +
  sum over the slice of grad . (clean - corrupted), the gradient taken at the corrupted run."""
  _, clean_cache = hooks.run_with_cache(model, params, *clean, names=names)
  _, corrupt_cache = hooks.run_with_cache(model, params, *corrupt, names=names)

  def metric_of(deltas):
    shifted = {name: (lambda x, d=d: x + d) for name, d in deltas.items()}
    return metric(hooks.run_with_hooks(model, params, *corrupt, hooks=shifted))

  zeros = {name: jnp.zeros_like(corrupt_cache[name]) for name in names}
  base, grads = jax.jit(jax.value_and_grad(metric_of))(zeros)
  out = {}
  for name in names:
    change = (clean_cache[name] - corrupt_cache[name]) * grads[name]
    masks = _slices(change.shape, over)
    out[name] = base + jax.vmap(lambda m, change=change: jnp.sum(jnp.where(m, change, 0.0)))(masks)
  return out
