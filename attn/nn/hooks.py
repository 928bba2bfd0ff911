"""Every activation a researcher names, read and replaced from outside the model: an activation cache
and hooks (as TransformerLens' `run_with_cache` / `run_with_hooks`), under `jit`, with flax's
`intercept_methods`. The models gain no flags: each named activation passes through a `HookPoint`,
an identity module that exists only while `run_with_cache` or `run_with_hooks` traces the model
(`tracing()`); a plain `apply` builds none and computes exactly what it did.

Names (TransformerLens' where they exist; L a block, in a model of one stack: a language model's
decoder, a tagger's encoder; an encoder-decoder's carry "encoder." or "decoder." in front, its
`embed` and `pos_embed` too: one embedder serves both stacks, and each call has its own names):

| name | shape | what |
|---|---|---|
| `embed` | [B, T, D] | token embeddings (scaled as the model scales them) |
| `pos_embed` | [B, T, D] | the position embeddings added to them (sinusoidal, learned) |
| `blocks.L.resid_pre` | [B, T, D] | the residual stream into block L |
| `blocks.L.attn.q`, `.k`, `.v` | [B, T, H or G, K] | per-head projections (before RoPE) |
| `blocks.L.attn.pattern` | [B, H, T, S] | the attention weights (float32) |
| `blocks.L.attn.z` | [B, T, H, K] | the weighted values, per head, before the output projection |
| `blocks.L.attn_out` | [B, T, D] | the attention sublayer's output (into the residual) |
| `blocks.L.resid_mid` | [B, T, D] | the residual stream after attention |
| `blocks.L.cross_attn.*`, `.cross_attn_out`, `.resid_mid_cross` | | the same for cross-attention |
| `blocks.L.mlp_out` | [B, T, D] | the feed-forward sublayer's output |
| `blocks.L.resid_post` | [B, T, D] | the residual stream out of block L |
| `ln_final` | [B, T, D] | the final norm's output (pre-LN models) |
| `logits` | [B, T, V or C] | the output head's logits |

Each head's result (its contribution to `attn_out`) is `attn.z` through its slice of the output
kernel, `head_results(z, params)`; patching a head's result is patching its `z`.

While hooks trace, attention is computed from its pattern (`z = pattern @ v`, the naive path), so a
hook on `pattern` changes what follows it.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax

_STATE = threading.local()


def tracing() -> bool:
  """Whether `run_with_cache` / `run_with_hooks` is tracing a model now (hook points exist)."""
  return getattr(_STATE, "depth", 0) > 0


@contextlib.contextmanager
def _tracing():
  _STATE.depth = getattr(_STATE, "depth", 0) + 1
  try:
    yield
  finally:
    _STATE.depth -= 1


class HookPoint(nn.Module):
  """The identity, named: where the cache reads and a hook replaces an activation."""

  @nn.compact
  def __call__(self, x):
    return x


def hook(name: str, x):
  """`x` through the hook point `name` of the calling module (inside a compact method) while hooks
  trace; `x` itself otherwise (no module is made)."""
  if not tracing():
    return x
  return HookPoint(name=f"hook_{name}")(x)


_LAYER = re.compile(r"^layer_(\d+)$")
_ATTENTION = {"self_attention": "attn", "cross_attention": "cross_attn"}


def public_name(path: tuple[str, ...], two_stacks: bool) -> str:
  """The table's name of the hook point at flax module `path` (its last part "hook_<name>")."""
  parts = []
  for i, part in enumerate(path):
    if part.startswith("hook_") and i == len(path) - 1:
      parts.append(part.removeprefix("hook_"))
    elif _LAYER.match(part):
      parts += ["blocks", _LAYER.match(part).group(1)]
    elif part in _ATTENTION:
      parts.append(_ATTENTION[part])
    elif part in ("encoder", "decoder") and two_stacks:
      parts.append(part)
    # Other modules (the embedder, the head) add nothing: their hooks are model-level names.
  return ".".join(parts)


def _two_stacks(model) -> bool:
  from attn.nn.models import Transformer  # Here: models imports this module.

  return isinstance(model, Transformer)


# An encoder-decoder's methods that embed for one stack (the embedder is shared by both).
_STACK_METHODS = {"encode": "encoder", "decode_logits": "decoder"}


class _Names:
  """Public names of hook points during one apply: `public_name`, and for an encoder-decoder the
  stack whose method (`encode`, `decode_logits`) called the shared embedder."""

  def __init__(self, model):
    self.two, self.stack = _two_stacks(model), None

  def enter(self, context) -> str | None:
    """The stack a top-level method call starts (the previous one, to restore), else no change."""
    previous = self.stack
    if self.two and not context.module.path and context.method_name in _STACK_METHODS:
      self.stack = _STACK_METHODS[context.method_name]
    return previous

  def name(self, path: tuple[str, ...]) -> str:
    name = public_name(path, self.two)
    if self.two and path and path[0] == "embedder" and self.stack:
      name = f"{self.stack}.{name}"
    return name


def _apply(model, params, inputs: tuple, hooks: dict[str, Callable], names, kwargs):
  """(outputs, cache) of one traced apply with `hooks` replacing and `names` read."""
  naming = _Names(model)
  cache, seen = {}, set()

  def intercept(next_fun, args, kw, context):
    if not isinstance(context.module, HookPoint):
      previous = naming.enter(context)
      try:
        return next_fun(*args, **kw)
      finally:
        naming.stack = previous
    name = naming.name(context.module.path)
    seen.add(name)
    x = next_fun(*args, **kw)
    if name in hooks:
      x = hooks[name](x)
    if names is None or name in names:
      cache[name] = x
    return x

  with _tracing(), nn.intercept_methods(intercept):
    outputs = model.apply({"params": params}, *inputs, **kwargs)
  unknown = sorted(set(hooks) - seen) + sorted(set(names or ()) - seen)
  if unknown:
    raise ValueError(
      f"hooks: no hook point named {unknown[0]!r} in this model; it has {', '.join(sorted(seen))}"
    )
  return outputs, cache


def run_with_cache(model, params, *inputs, names: Iterable[str] | None = None, **kwargs):
  """(the model's outputs, {name: activation}) for `model.apply({"params": params}, *inputs,
  **kwargs)`; `names` selects (default: every hook point). Jit it as any function of arrays."""
  return _apply(model, params, inputs, {}, None if names is None else set(names), kwargs)


def run_with_hooks(model, params, *inputs, hooks: dict[str, Callable], **kwargs):
  """The model's outputs with each activation `name` of `hooks` replaced by `hooks[name](value)`."""
  return _apply(model, params, inputs, dict(hooks), set(), kwargs)[0]


def names(model, params, *inputs, **kwargs) -> list[str]:
  """Every hook point's name for these inputs, in the order the model computes them."""
  order, naming = [], _Names(model)

  def intercept(next_fun, args, kw, context):
    if isinstance(context.module, HookPoint):
      order.append(naming.name(context.module.path))
      return next_fun(*args, **kw)
    previous = naming.enter(context)
    try:
      return next_fun(*args, **kw)
    finally:
      naming.stack = previous

  with _tracing(), nn.intercept_methods(intercept):
    jax.eval_shape(lambda p: model.apply({"params": p}, *inputs, **kwargs), params)
  return order


def head_results(z_BTHK, attention_params) -> jax.Array:
  """Each head's result, its contribution to the attention sublayer's output: `z` [B, T, H, K] (the
  cache's `attn.z`) through that head's slice of the layer's output kernel [H, K, D] (from
  `attention_params`, the layer's parameters) -> [B, T, H, D]; summed over H, plus the output bias,
  it is `attn_out`."""
  kernel_HKD = attention_params["out"]["kernel"]
  return jax.numpy.einsum("...thk,hkd->...thd", z_BTHK, kernel_HKD.astype(z_BTHK.dtype))
