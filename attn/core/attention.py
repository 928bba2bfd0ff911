"""Pure attention functions: no Flax, no state; safe under jax.jit, jax.vmap and jax.grad.

Layout: query [batch..., T, H, K], key [batch..., S, G, K], value [batch..., S, G, Kv], where G (the
key/value heads) divides H: G == H is multi-head attention, 1 < G < H grouped-query, G == 1 multi-query.
Query head h reads key/value head h // (H // G), as `jnp.repeat(key, H // G, axis=-2)` would.
Masks are boolean, True = may attend, broadcastable to [batch..., H, T, S]; bias is added to the logits.

Normalisations (`kind`): "softmax"; "sigmoid" (sigmoid(x - log n), Ramapuram et al. 2024); "softpick"
(Zuhri et al. 2025: relu(e^x - 1) / (sum_j |e^x - 1| + eps) over the keys the row may attend, computed
as relu(e^(x-m) - e^-m) / (sum_j |e^(x-m) - e^-m| + eps e^-m) with m = max(row max, 0), which is the
same value for any m and keeps every exponential <= 1; NOT shift-invariant: adding a constant to a
row's logits changes its weights, and a row may sum to less than 1); "stick_breaking" (Tan et al.
2025: w_ij = sigmoid(x_ij) prod_k (1 - sigmoid(x_ik)) over the attendable keys k "between" j and the
query, i.e. the keys after j in the S order (under a causal mask, j < k <= i), computed in log space;
naive path only). Forgetting attention (FoX, Lin et al. 2025): `forget_cumsum=(query_c, key_c)`, the
cumulative log forget gates at the query and key positions, adds query_c[i, h] - key_c[j, h] to the
logits (the flash path per tile, never as [T, S]). `return_lse=True` also returns each row's float32
log-sum-exp (the softmax kind only), for merging partial results over key blocks.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from attn.core import flash, masks
from attn.core.positions import RelativeBias
from attn.core.scaling import Scale, resolve_scale


def _real_array(name: str, x) -> jax.Array:
  """`x` as a floating array. Integer and boolean inputs (Python lists too) are computed in float32:
  attention over integer vectors is well defined, but its weights are not integers, and an integer
  softmax would round every weight to 0 (or truncate on the fast path)."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.floating):
    return x
  if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
    return x.astype(jnp.float32)
  raise ValueError(f"{name} must hold real numbers (floating, integer or bool), got dtype {x.dtype}")


def _as_inputs(query, key, value, mask, bias):
  """The public functions' inputs as arrays: q, k, v and bias floating, the mask as given."""
  query, key = _real_array("query", query), _real_array("key", key)
  value = None if value is None else _real_array("value", value)
  bias = None if bias is None else _real_array("bias", bias)
  mask = None if mask is None else jnp.asarray(mask)
  return query, key, value, mask, bias


def _check_inputs(query, key, value, mask, bias) -> tuple[int, ...]:
  """Validates shapes at trace time; returns the logits shape [batch..., H, T, S]."""
  for name, x in (("query", query), ("key", key), ("value", value)):
    if x is not None and x.ndim < 3:
      raise ValueError(f"{name} must be [batch..., length, heads, head_dim], got shape {x.shape}")
  if query.shape[-1] == 0:
    raise ValueError(f"query and key need a head dim K > 0, got query {query.shape}, key {key.shape}")
  if query.shape[-1] != key.shape[-1]:
    raise ValueError(
      f"query and key head dims differ: query {query.shape} has K={query.shape[-1]}, "
      f"key {key.shape} has K={key.shape[-1]}"
    )
  if value is not None and key.shape[:-1] != value.shape[:-1]:
    raise ValueError(
      f"key and value must agree on [batch..., S, heads]: key {key.shape}, value {value.shape}"
    )
  H, G = query.shape[-2], key.shape[-2]
  if H % G:
    raise ValueError(
      f"query heads must be divisible by key/value heads: query {query.shape} has H={H}, "
      f"key {key.shape} has {G}"
    )
  try:
    batch = np.broadcast_shapes(query.shape[:-3], key.shape[:-3])
  except ValueError:
    raise ValueError(
      f"query and key batch dims do not broadcast: query {query.shape}, key {key.shape}"
    ) from None
  logits_shape = (*batch, H, query.shape[-3], key.shape[-3])
  for name, x in (("mask", mask), ("bias", bias)):
    if x is None:
      continue
    try:
      ok = np.broadcast_shapes(x.shape, logits_shape) == logits_shape
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(
        f"{name} of shape {x.shape} does not broadcast to [batch..., H, T, S] = {logits_shape} "
        f"(query {query.shape}, key {key.shape})"
      )
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
  return logits_shape


def _group(query: jax.Array, G: int) -> jax.Array:
  """[..., T, H, K] -> [..., T, G, H // G, K]: query heads grouped by the key/value head they read."""
  *lead, T, H, K = query.shape
  return query.reshape(*lead, T, G, H // G, K)


def _shifted_exp(logits: jax.Array, mask: jax.Array | None, sink: jax.Array | None):
  """exp(logits - row max) with masked logits at exactly 0, the row max (0 on a row with no key and
  no sink; held constant under autodiff) and the row sum (with exp(sink - row max) added): the
  shared start of `_softmax` and `_log_sum_exp`."""
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  if sink is not None:
    row_max = jnp.maximum(row_max, sink)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isneginf(row_max), 0.0, row_max))
  unnormalized = jnp.exp(logits - row_max)
  total = jnp.sum(unnormalized, axis=-1, keepdims=True)
  if sink is not None:
    total = total + jnp.exp(sink - row_max)
  return unnormalized, row_max, total


def _softmax(logits: jax.Array, mask: jax.Array | None, sink: jax.Array | None = None) -> jax.Array:
  """Softmax over the last axis that gives exact zeros on rows with no key to attend.

  Masked logits become -inf rather than a large negative number: exp(-inf) is exactly 0, so a masked
  key gets weight 0 however large the other logits are, and a fully masked row sums to 0. Dividing by
  1 instead of 0 there leaves that row at 0 with zero (finite) gradients, where a plain softmax would
  spread the row uniformly over keys the caller said it may not see. A `sink` logit [..., 1] adds
  exp(sink) to the denominator only (an always-attendable key whose value is zero).
  """
  unnormalized, _, denom = _shifted_exp(logits, mask, sink)
  return unnormalized / jnp.where(denom == 0.0, 1.0, denom)


def _log_sum_exp(logits: jax.Array, mask: jax.Array | None, sink: jax.Array | None = None):
  """The log-sum-exp of each row's attendable logits [..., T, S] -> [..., T] (with the sink logit
  [..., T, 1] as one more term); -inf for a row with no key (and no sink), with zero gradients."""
  _, row_max, total = _shifted_exp(logits, mask, sink)
  empty = total == 0.0
  return jnp.where(empty, -jnp.inf, row_max + jnp.log(jnp.where(empty, 1.0, total)))[..., 0]


# Softpick's eps (Zuhri et al. 2025): the denominator is sum_j |e^x_j - 1| + SOFTPICK_EPS.
SOFTPICK_EPS = 1e-6


def _softpick(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Softpick over the last axis: relu(e^x - 1) / (sum_j |e^x - 1| + eps), masked keys contributing 0
  to both, in the stable form with m = max(row max, 0) (see the module docstring). A fully masked
  row is 0 / (eps e^-m) = 0, with zero gradients."""
  if mask is not None:
    mask = jnp.broadcast_to(mask, logits.shape)
    row_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
  else:
    row_max = jnp.max(logits, axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.maximum(row_max, 0.0))  # >= 0: e^-m <= 1 and e^(x - m) <= 1.
  x = logits if mask is None else jnp.where(mask, logits, m)  # A finite stand-in where masked.
  floor = jnp.exp(-m)
  shifted = jnp.exp(x - m) - floor  # e^-m (e^x - 1)
  numerator, magnitude = jax.nn.relu(shifted), jnp.abs(shifted)
  if mask is not None:
    numerator, magnitude = jnp.where(mask, numerator, 0.0), jnp.where(mask, magnitude, 0.0)
  return numerator / (jnp.sum(magnitude, axis=-1, keepdims=True) + SOFTPICK_EPS * floor)


def _stick_breaking(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Stick-breaking weights over the last axis: log w_j = log_sigmoid(x_j) + sum over attendable keys
  k > j of log_sigmoid(-x_k) (an exclusive reverse cumulative sum); masked entries exactly 0."""
  if mask is not None:
    mask = jnp.broadcast_to(mask, logits.shape)
    logits = jnp.where(mask, logits, 0.0)
  log_keep = jax.nn.log_sigmoid(-logits)
  if mask is not None:
    log_keep = jnp.where(mask, log_keep, 0.0)
  after = jnp.flip(jnp.cumsum(jnp.flip(log_keep, -1), axis=-1), -1)  # sum over k >= j
  after = jnp.concatenate([after[..., 1:], jnp.zeros_like(after[..., :1])], axis=-1)  # k > j
  weights = jnp.exp(jax.nn.log_sigmoid(logits) + after)
  return weights if mask is None else jnp.where(mask, weights, 0.0)


KINDS = ("softmax", "sigmoid", "softpick", "stick_breaking")


def _check_variant(kind: str, logit_soft_cap, sink_logits) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind: unknown choice {kind!r}; expected one of {', '.join(map(repr, KINDS))}")
  if logit_soft_cap is not None and not 0.0 < float(logit_soft_cap) < float("inf"):
    raise ValueError(f"logit_soft_cap: must be None or a positive float, got {logit_soft_cap}")
  if sink_logits is not None and kind != "softmax":
    raise ValueError(f"sink_logits: a sink adds to the softmax's denominator; kind={kind!r} has none")


def _check_return_lse(kind: str, return_lse: bool) -> None:
  if return_lse and kind != "softmax":
    raise ValueError(f"return_lse: the log-sum-exp is the softmax's normaliser; kind={kind!r} has none")


def _check_forget(forget_cumsum, logits_shape) -> tuple[jax.Array, jax.Array] | None:
  """(query_c, key_c) as float arrays, checked against [batch..., H, T, S], or None."""
  if forget_cumsum is None:
    return None
  if not isinstance(forget_cumsum, tuple | list) or len(forget_cumsum) != 2:
    raise ValueError("forget_cumsum: expected a pair (query_c [batch..., T, H], key_c [batch..., S, H])")
  query_c = _real_array("forget_cumsum", forget_cumsum[0])
  key_c = _real_array("forget_cumsum", forget_cumsum[1])
  *batch, H, T, S = logits_shape
  for x, L, name in ((query_c, T, "query_c [batch..., T, H]"), (key_c, S, "key_c [batch..., S, H]")):
    try:
      ok = x.ndim >= 2 and x.shape[-2:] == (L, H)
      ok = ok and np.broadcast_shapes(x.shape[:-2], tuple(batch)) == tuple(batch)
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(
        f"forget_cumsum: {name} must be {(*batch, L, H)} (batch broadcastable), got {x.shape}"
      )
  return query_c, key_c


def _forget_bias(forget):
  """query_c[..., i, h] - key_c[..., j, h] as [batch..., H, T, S] (the naive and jax paths' form)."""
  query_c, key_c = forget
  return jnp.swapaxes(query_c, -1, -2)[..., :, None] - jnp.swapaxes(key_c, -1, -2)[..., None, :]


def _with_forget(bias, forget):
  if forget is None:
    return bias
  dense = _forget_bias(forget)
  return dense if bias is None else bias + dense


def _normalize(
  logits, mask, *, kind: str = "softmax", logit_soft_cap=None, sink_logits=None, return_lse=False
):
  """Logits [batch..., H, T, S] -> weights: the softmax (`_softmax`), optionally with the logits
  soft-capped (cap * tanh(logits / cap), Gemma 2) and a per-head sink logit in the denominator only
  (the "+1" softmax; gpt-oss, Xiao et al. 2023), or the elementwise sigmoid(logits - log n)
  (Ramapuram et al. 2024), n the number of keys the row may attend (S without a mask), or softpick
  (`_softpick`) or stick-breaking (`_stick_breaking`). Masked entries are exactly 0 in every kind,
  and so is a fully masked row (whose gradients are 0 too). With `return_lse` (softmax only):
  (weights, the rows' log-sum-exp [batch..., H, T], the sink included)."""
  if logit_soft_cap is not None:
    logits = logit_soft_cap * jnp.tanh(logits / logit_soft_cap)
  if kind == "softpick":
    return _softpick(logits, mask)
  if kind == "stick_breaking":
    return _stick_breaking(logits, mask)
  if kind == "sigmoid":  # The bias -log n, n = the keys the row may attend (cache-independent).
    if mask is None:
      return jax.nn.sigmoid(logits - jnp.log(float(logits.shape[-1])))
    mask = jnp.broadcast_to(mask, logits.shape)
    n = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1).astype(logits.dtype)
    return jnp.where(mask, jax.nn.sigmoid(logits - jnp.log(n)), 0.0)
  sink = None
  if sink_logits is not None:
    sink = jnp.asarray(sink_logits, logits.dtype)[..., :, None, None]  # [..., H, 1, 1]
    sink = jnp.broadcast_to(sink, (*logits.shape[:-1], 1))
  if return_lse:
    return _softmax(logits, mask, sink), _log_sum_exp(logits, mask, sink)
  return _softmax(logits, mask, sink)


def _zero_unattended_keys(key, value, mask, logits_shape):
  """Zeros keys and values that no query may attend, so that NaN or inf stored there (padding often
  holds garbage) cannot leak through 0 * NaN in the products or their gradients."""
  # Reduce over the mask's own head and query axes (size 1 for key padding [batch..., 1, 1, S]), so
  # that no [batch..., H, T, S] array is built for a mask that does not have one.
  mask = mask.reshape((1,) * (len(logits_shape) - mask.ndim) + mask.shape)
  attended = jnp.any(mask, axis=(-3, -2))  # [batch... or 1, S or 1]
  attended = jnp.broadcast_to(attended, (*logits_shape[:-3], logits_shape[-1]))  # [batch..., S]
  attended = attended[..., :, None, None]  # [batch..., S, 1, 1]
  key = jnp.where(attended, key, jnp.zeros((), key.dtype))
  if value is not None:
    value = jnp.where(attended, value, jnp.zeros((), value.dtype))
  return key, value


def _logits(query, key, bias, multiplier, logits_shape):
  # Logits and softmax in float32 (at least) whatever the input dtype: bfloat16 has 8 bits of mantissa
  # and float16 overflows at 65504, which unscaled logits at large K reach easily.
  compute_dtype = jnp.promote_types(query.dtype, jnp.float32)
  logits = jnp.einsum(
    "...TGRK,...SGK->...GRTS", _group(query, key.shape[-2]), key, preferred_element_type=compute_dtype
  )
  logits = logits.reshape(logits_shape) * multiplier
  if bias is not None:
    logits = logits + bias.astype(compute_dtype)
  return logits


def _weights(query, key, value, mask, bias, scale, **variant):
  """Shared core: returns (weights f32 [batch..., H, T, S], key, value with unattended keys zeroed).
  `variant`: the keyword options of `_normalize` (with `return_lse`, weights is (weights, lse))."""
  logits_shape = _check_inputs(query, key, value, mask, bias)
  multiplier = resolve_scale(scale, query.shape[-1])
  if mask is not None:
    key, value = _zero_unattended_keys(key, value, mask, logits_shape)
  logits = _logits(query, key, bias, multiplier, logits_shape)
  return _normalize(logits, mask, **variant), key, value


def attention_logits(
  query: jax.Array,
  key: jax.Array,
  *,
  bias: jax.Array | None = None,
  scale: Scale = "sqrt_d",
  relative_bias: RelativeBias | None = None,
) -> jax.Array:
  """The scaled logits scale * q.k + bias (+ the relative bias), before masking and softmax.

  Args:
    query: [batch..., T, H, K].
    key: [batch..., S, G, K], G dividing H.
    bias: broadcastable to [batch..., H, T, S].
    scale: "sqrt_d", "none", "d" or a positive float multiplier (see `attn.resolve_scale`).
    relative_bias: ALiBi's or T5's bias (`attn.RelativeBias`), added with `bias`.

  Returns:
    float32 (or wider) [batch..., H, T, S].
  """
  query, key, _, _, bias = _as_inputs(query, key, None, None, bias)
  logits_shape = _check_inputs(query, key, None, None, bias)
  if relative_bias is not None:
    relative_bias.check(query.shape[-2])
  bias = _with_relative(bias, relative_bias, logits_shape)
  return _logits(query, key, bias, resolve_scale(scale, query.shape[-1]), logits_shape)


def attention_weights(
  query: jax.Array,
  key: jax.Array,
  *,
  mask: jax.Array | None = None,
  bias: jax.Array | None = None,
  scale: Scale = "sqrt_d",
  kind: str = "softmax",
  logit_soft_cap: float | None = None,
  sink_logits: jax.Array | None = None,
  relative_bias: RelativeBias | None = None,
  forget_cumsum: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """Normalised attention weights.

  Args:
    query: [batch..., T, H, K].
    key: [batch..., S, G, K], G dividing H.
    mask: bool, broadcastable to [batch..., H, T, S]; True = may attend.
    bias: broadcastable to [batch..., H, T, S], added to the scaled logits.
    scale: "sqrt_d", "none", "d" or a positive float multiplier (see `attn.resolve_scale`).
    kind: "softmax", "sigmoid" (each weight sigmoid(logit - log n), n the keys the row may
      attend; no normalisation over keys), "softpick" (relu(e^x - 1) / (sum_j |e^x - 1| + eps),
      eps = SOFTPICK_EPS, over the attendable keys; not shift-invariant, rows sum to at most 1) or
      "stick_breaking" (sigmoid(x_ij) times prod (1 - sigmoid(x_ik)) over the attendable keys k
      after j in the S order; with a causal mask, those between j and the query).
    logit_soft_cap: logits become cap * tanh(logits / cap) before normalising (None: off).
    sink_logits: [H] (or broadcastable to [batch..., H]) sink logits of a softmax: each adds
      exp(sink) to its head's denominator only, so a head may attend to (almost) nothing.
    relative_bias: ALiBi's or T5's bias (`attn.RelativeBias`), added with `bias`.
    forget_cumsum: (query_c [batch..., T, H], key_c [batch..., S, H]), the cumulative sums of log
      forget gates (FoX); adds query_c[..., i, h] - key_c[..., j, h] to the logits, with `bias`.

  Returns:
    float32 (or wider) [batch..., H, T, S]; each softmax row sums to 1 (less with a sink; softpick
    and stick-breaking rows sum to at most 1), or is all zeros when the mask leaves the query no key.
  """
  _check_variant(kind, logit_soft_cap, sink_logits)
  query, key, _, mask, bias = _as_inputs(query, key, None, mask, bias)
  logits_shape = _check_inputs(query, key, None, mask, bias)
  forget = _check_forget(forget_cumsum, logits_shape)
  if 0 in logits_shape[-2:]:  # No queries, or no keys: every row is empty (all zeros).
    return jnp.zeros(logits_shape, jnp.promote_types(query.dtype, jnp.float32))
  if relative_bias is not None:
    relative_bias.check(query.shape[-2])
  bias = _with_forget(_with_relative(bias, relative_bias, logits_shape), forget)
  weights, _, _ = _weights(
    query, key, None, mask, bias, scale, kind=kind, logit_soft_cap=logit_soft_cap,
    sink_logits=sink_logits,
  )  # fmt: skip
  return weights


IMPLEMENTATIONS = ("naive", "flash", "jax")
# What each implementation cannot serve of attention's options (it serves the rest): the one table
# behind `choose_implementation`'s refusals and `attn.nn.ModelConfig`'s. "dropout" and "weights" need
# the [T, S] weights, which only "naive" forms; stick-breaking's reverse cumulative sum over keys is
# naive only; jax.nn.dot_product_attention has no soft-cap, sink, sigmoid, softpick or log-sum-exp
# and needs the value head dim to equal the key's.
_VARIANTS_JAX_LACKS = frozenset({"soft_cap", "sink", "sigmoid", "softpick", "stick_breaking", "lse"})
CANNOT_SERVE = {
  "naive": frozenset(),
  "flash": frozenset({"dropout", "weights", "stick_breaking"}),
  "jax": frozenset({"dropout", "weights", "value_head_dim"}) | _VARIANTS_JAX_LACKS,
}

# Below this many logits per (batch, head) the naive path is as fast or faster (on the 2-core CPU,
# forward+backward: equal at 64 x 64, naive 1.4x faster at 11 x 11, flash faster from 128 x 128 on).
FLASH_MIN_LOGITS = 128 * 128

# What `implementation=None` resolves to where the weights and dropout are not needed: None decides
# by backend and size (see choose_implementation); a name forces that path everywhere it applies.
# Set from the environment variable ATTN_DEFAULT_IMPLEMENTATION at import, so child processes follow
# too; the test suite runs whole with the fast path as the default by `pytest --attention-default=flash`.
DEFAULT_IMPLEMENTATION: str | None = os.environ.get("ATTN_DEFAULT_IMPLEMENTATION") or None


def check_default_implementation() -> None:
  """Raises ValueError naming ATTN_DEFAULT_IMPLEMENTATION when it holds an unknown choice (checked
  when attention is first chosen, and by every entry point before it starts)."""
  if DEFAULT_IMPLEMENTATION not in (None, *IMPLEMENTATIONS):
    raise ValueError(
      f"ATTN_DEFAULT_IMPLEMENTATION: unknown choice {DEFAULT_IMPLEMENTATION!r}; expected one of "
      f"{', '.join(IMPLEMENTATIONS)} or unset"
    )


def choose_implementation(
  implementation: str | None,
  *,
  T: int,
  S: int,
  dropout: bool = False,
  return_weights: bool = False,
  same_head_dims: bool = True,
  variant: str | None = None,
  soft_cap: bool = False,
  kind: str = "softmax",
  return_lse: bool = False,
) -> str:
  """Resolves `implementation=None` and checks an explicit choice.

  None picks "naive" when dropout or the weights are asked for (only it has them). Otherwise it picks
  "jax" on a GPU (cuDNN's fused kernel) when query, key and value share one head dim and no option
  jax.nn lacks is asked (`soft_cap`, or a `variant` of the normalisation such as a sink or the
  sigmoid: named there); elsewhere "flash" for long sequences (T * S >= FLASH_MIN_LOGITS, where
  memory and the skipped causal tiles pay off) and "naive" for short ones. `kind="stick_breaking"`
  is served by "naive" only (None picks it; another choice is one ValueError); `return_lse` by
  "naive" and "flash".
  """
  lacks = [
    *(["logit_soft_cap"] if soft_cap else []), *([variant] if variant else []),
    *(["return_lse=True"] if return_lse else []),
  ]  # fmt: skip
  if kind == "stick_breaking":
    if implementation not in (None, "naive"):
      raise ValueError(
        f"implementation={implementation!r} does not support kind='stick_breaking' (naive only); "
        "use 'naive' or None"
      )
    return "naive"
  jax_cannot = None
  if not same_head_dims:
    jax_cannot = "a value head dim that differs from the key's"
  elif lacks:
    jax_cannot = " and ".join(lacks)
  if implementation is None:
    if dropout or return_weights:
      return "naive"
    check_default_implementation()
    if DEFAULT_IMPLEMENTATION is not None:
      if DEFAULT_IMPLEMENTATION == "jax" and jax_cannot:
        warnings.warn(
          f"attention: the default implementation 'jax' cannot serve {jax_cannot}; using 'flash' "
          "for this call",
          stacklevel=3,
        )
        return "flash"
      return DEFAULT_IMPLEMENTATION
    if jax.default_backend() == "gpu" and not jax_cannot:
      return "jax"
    return "flash" if T * S >= FLASH_MIN_LOGITS else "naive"
  if implementation not in IMPLEMENTATIONS:
    choices = ", ".join(map(repr, IMPLEMENTATIONS))
    raise ValueError(
      f"implementation: unknown choice {implementation!r}; expected one of {choices} or None"
    )
  cannot = CANNOT_SERVE[implementation]
  if (dropout and "dropout" in cannot) or (return_weights and "weights" in cannot):
    what = "dropout_rate > 0" if dropout else "return_weights=True"
    raise ValueError(f"implementation={implementation!r} does not support {what}; use 'naive' or None")
  if not same_head_dims and "value_head_dim" in cannot:
    raise ValueError(
      "implementation='jax' needs the value head dim to equal the key head dim (jax.nn's kernel); "
      "use 'flash', 'naive' or None"
    )
  if lacks and {"soft_cap", "sink", "sigmoid"} <= cannot:
    raise ValueError(
      f"implementation='jax' does not support {' and '.join(lacks)} (jax.nn has none); use "
      "'flash', 'naive' or None"
    )
  return implementation


def _fused(
  query, key, value, mask, bias, scale, is_causal, implementation, logits_shape, logit_soft_cap=None,
  kind="softmax", sink_logits=None, relative_bias=None, forget=None, return_lse=False,
):  # fmt: skip
  """The "flash" and "jax" paths: batch axes flattened to one, masks and bias made 4-D. The "jax"
  path gets a relative bias and the forget gates' bias as arrays (jax.nn takes no positions);
  "flash" computes them per tile. With `return_lse` (flash): (out, lse [batch..., H, T])."""
  multiplier = resolve_scale(scale, query.shape[-1])
  if mask is not None:
    key, value = _zero_unattended_keys(key, value, mask, logits_shape)
  batch = logits_shape[:-3]
  B = int(np.prod(batch, dtype=np.int64))

  def flat(x):  # [batch..., L, heads, K] -> [B, L, heads, K]
    return jnp.broadcast_to(x, (*batch, *x.shape[-3:])).reshape(B, *x.shape[-3:])

  def four_d(x):  # broadcastable to [batch..., H, T, S] -> [B or 1, H or 1, T or 1, S or 1]
    if x is None:
      return None
    x = x.reshape((1,) * (len(logits_shape) - x.ndim) + x.shape)
    if all(d == 1 for d in x.shape[:-3]):
      return x.reshape(1, *x.shape[-3:])
    return jnp.broadcast_to(x, (*batch, *x.shape[-3:])).reshape(B, *x.shape[-3:])

  q, k, v = flat(query), flat(key), flat(value)
  if implementation == "jax" and relative_bias is not None:
    dense = relative_bias.dense(logits_shape[-2], logits_shape[-1])
    bias, relative_bias = dense if bias is None else bias + dense, None
  if implementation == "jax" and forget is not None:
    bias, forget = _with_forget(bias, forget), None
  mask4, bias4 = four_d(mask), four_d(bias)
  if implementation == "flash":
    sink = None
    if sink_logits is not None:
      sink = jnp.asarray(sink_logits, jnp.float32)
      if sink.ndim > 1:  # [batch..., H] -> [B, H]
        sink = jnp.broadcast_to(sink, (*batch, sink.shape[-1])).reshape(B, sink.shape[-1])
    if forget is not None:  # [batch..., L, H] -> [B, L, H]
      forget = tuple(
        jnp.broadcast_to(c, (*batch, *c.shape[-2:])).reshape(B, *c.shape[-2:]) for c in forget
      )
    out = flash.flash_attention(
      q, k, v, mask=mask4, bias=bias4, multiplier=multiplier, is_causal=is_causal,
      logit_soft_cap=logit_soft_cap, kind=kind, sink_logits=sink, relative_bias=relative_bias,
      forget_cumsum=forget, return_lse=return_lse,
    )  # fmt: skip
    if return_lse:
      out, lse = out
      return out.reshape(*batch, *out.shape[1:]), lse.reshape(*batch, *lse.shape[1:])
  else:
    out = _jax_nn(q, k, v, mask4, bias4, multiplier, is_causal)
  return out.reshape(*batch, *out.shape[1:])


def _jax_nn(q, k, v, mask, bias, multiplier, is_causal):
  """jax.nn.dot_product_attention, with a fully masked row set to 0 (jax.nn averages its values)."""
  if mask is not None and mask.shape[1] not in (1, q.shape[2]):
    mask = jnp.broadcast_to(mask, (mask.shape[0], q.shape[2], *mask.shape[2:]))
  out = jax.nn.dot_product_attention(
    q, k, v, bias=bias, mask=mask, scale=multiplier, is_causal=is_causal, implementation=None
  )
  if mask is None:
    return out
  if is_causal:
    mask = mask & masks.causal_mask(q.shape[1], k.shape[1])
  live_BHT = jnp.any(mask, axis=-1)  # [B or 1, H or 1, T]
  return jnp.where(jnp.swapaxes(live_BHT, -1, -2)[..., None], out, jnp.zeros((), out.dtype))


def dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  *,
  mask: jax.Array | None = None,
  bias: jax.Array | None = None,
  scale: Scale = "sqrt_d",
  is_causal: bool = False,
  dropout_rate: float = 0.0,
  dropout_rng: jax.Array | None = None,
  return_weights: bool = False,
  implementation: str | None = None,
  kind: str = "softmax",
  logit_soft_cap: float | None = None,
  sink_logits: jax.Array | None = None,
  relative_bias: RelativeBias | None = None,
  forget_cumsum: tuple[jax.Array, jax.Array] | None = None,
  return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
  """Scaled dot-product attention: softmax(scale * q.k + bias, masked) @ v, per head.

  Args:
    query: [batch..., T, H, K].
    key: [batch..., S, G, K], G dividing H (grouped-query and multi-query attention when G < H).
    value: [batch..., S, G, Kv].
    mask: bool, broadcastable to [batch..., H, T, S]; True = may attend. A query with no key to
      attend gets exactly zeros (and zero gradients). Keys that no query may attend have no influence,
      even when they hold NaN or inf.
    bias: broadcastable to [batch..., H, T, S], added to the scaled logits.
    scale: "sqrt_d", "none", "d" or a positive float multiplier (see `attn.resolve_scale`).
    is_causal: also apply `attn.causal_mask(T, S)` (query i sees key j iff j <= i), without
      materialising it on the "flash" path, which then skips the tiles above the diagonal.
    dropout_rate: probability of dropping an attention weight (training only).
    dropout_rng: PRNG key, required when dropout_rate > 0.
    return_weights: also return the attention weights (before dropout).
    implementation: "naive" (materialises the [T, S] weights), "flash" (blocked online softmax,
      O(T + S) memory, custom backward), "jax" (`jax.nn.dot_product_attention`: cuDNN on a GPU) or
      None to choose: see `choose_implementation`. All give the same results, fully masked rows
      included; dropout and return_weights need "naive"; "jax" has no `logit_soft_cap`,
      `sink_logits`, `kind="sigmoid"` or `"softpick"`, or `return_lse` (and takes a `relative_bias`
      and `forget_cumsum` as [batch..., H, T, S] arrays); `kind="stick_breaking"` is "naive" only.
    kind, logit_soft_cap, sink_logits: the normalisation's variants (see `attention_weights`).
    relative_bias: ALiBi's or T5's bias described by its parameters (`attn.RelativeBias`), added to
      the logits (with `bias`, before a soft-cap); "flash" computes it per tile, never as [T, S].
    forget_cumsum: (query_c [batch..., T, H], key_c [batch..., S, H]) float, the cumulative sums of
      log forget gates at the query and key positions (Forgetting Transformer, Lin et al. 2025):
      query_c[..., i, h] - key_c[..., j, h] is added to the logits like `bias` (before a soft-cap);
      "flash" computes it per tile from the two vectors and returns both their gradients.
    return_lse: also return the float32 log-sum-exp of each query row's masked, scaled, biased (and
      soft-capped) logits, [batch..., H, T] (on "naive" as wide as the logits: float64 for float64
      inputs under 64-bit mode): -inf for a row with no key to attend; with
      `sink_logits` the sink is one more term (so such a row gets the sink logit). The softmax kind
      only; "naive" and "flash". Two results over disjoint key sets merge exactly by it:
      out = (e^lse1 out1 + e^lse2 out2) / (e^lse1 + e^lse2) (split-KV, ring attention).

  Returns:
    [batch..., T, H, Kv] in the query's dtype (float32 for integer or boolean inputs, which are
    computed in float32), then the float32 weights [batch..., H, T, S] when `return_weights`, then
    the lse [batch..., H, T] when `return_lse`: out, (out, weights), (out, lse) or
    (out, weights, lse). T = 0 gives an empty result; S = 0 gives zeros (no key to attend).
  """
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError("dropout_rng is required when dropout_rate > 0")
  _check_variant(kind, logit_soft_cap, sink_logits)
  _check_return_lse(kind, return_lse)
  query, key, value, mask, bias = _as_inputs(query, key, value, mask, bias)
  logits_shape = _check_inputs(query, key, value, mask, bias)
  forget = _check_forget(forget_cumsum, logits_shape)
  if relative_bias is not None:
    relative_bias.check(query.shape[-2])
  variant = _variant_name(kind, sink_logits)
  implementation = choose_implementation(
    implementation, T=query.shape[-3], S=key.shape[-3], dropout=dropout_rate > 0.0,
    return_weights=return_weights, same_head_dims=value.shape[-1] == query.shape[-1],
    variant=variant, soft_cap=logit_soft_cap is not None, kind=kind, return_lse=return_lse,
  )  # fmt: skip

  def results(out, weights, lse):
    return (out, *((weights,) if return_weights else ()), *((lse,) if return_lse else ()))

  if 0 in logits_shape[-2:]:  # T = 0: no queries; S = 0: no keys, so every query gets zeros.
    out = jnp.zeros((*logits_shape[:-3], query.shape[-3], query.shape[-2], value.shape[-1]), query.dtype)
    weights = jnp.zeros(logits_shape, jnp.promote_types(query.dtype, jnp.float32))
    lse = jnp.full(logits_shape[:-1], -jnp.inf, jnp.float32)
    if sink_logits is not None:  # The sink is the row's only term.
      lse = jnp.broadcast_to(jnp.asarray(sink_logits, jnp.float32)[..., None], logits_shape[:-1])
    return results(out, weights, lse) if return_weights or return_lse else out
  if implementation != "naive":
    return _fused(
      query, key, value, mask, bias, scale, is_causal, implementation, logits_shape, logit_soft_cap,
      kind, sink_logits, relative_bias, forget, return_lse,
    )  # fmt: skip
  bias = _with_forget(_with_relative(bias, relative_bias, logits_shape), forget)
  if is_causal:
    mask = masks.combine_masks(mask, masks.causal_mask(query.shape[-3], key.shape[-3]))
  weights, key, value = _weights(
    query, key, value, mask, bias, scale, kind=kind, logit_soft_cap=logit_soft_cap,
    sink_logits=sink_logits, return_lse=return_lse,
  )  # fmt: skip
  lse = None
  if return_lse:
    weights, lse = weights
  probs = weights
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  G = key.shape[-2]
  *lead, H, T, S = probs.shape
  probs_GRTS = probs.reshape(*lead, G, H // G, T, S).astype(value.dtype)
  out = jnp.einsum(
    "...GRTS,...SGK->...TGRK",
    probs_GRTS,
    value,
    preferred_element_type=jnp.promote_types(value.dtype, jnp.float32),
  )
  out = out.reshape(*out.shape[:-3], H, value.shape[-1]).astype(query.dtype)
  return results(out, weights, lse) if return_weights or return_lse else out


def _with_relative(bias, relative_bias, logits_shape):
  """`bias` plus the relative bias as an [H, T, S] array (the naive path's form)."""
  if relative_bias is None:
    return bias
  dense = relative_bias.dense(logits_shape[-2], logits_shape[-1])
  return dense if bias is None else bias + dense


def _variant_name(kind: str, sink_logits) -> str | None:
  """The normalisation options jax.nn lacks, named for an error, or None."""
  names = [
    *([f"kind={kind!r}"] if kind in ("sigmoid", "softpick", "stick_breaking") else []),
    *(["sink_logits"] if sink_logits is not None else []),
  ]
  return " and ".join(names) or None


def self_attention(
  x: jax.Array,
  *,
  mask: jax.Array | None = None,
  scale: Scale = "sqrt_d",
  return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """The notes' weightless self-attention: every vector re-weighed by its softmax similarity to all.

  out[t] = sum_s softmax_s(scale * x[t].x[s]) x[s]. There are no parameters; order and distance play
  no part (permuting the tokens permutes the output), and any length works.

  Args:
    x: [batch..., T, D].
    mask: bool, broadcastable to [batch..., T, T]; True = may attend.
    scale: "sqrt_d" (divide by sqrt(D)), "none", "d" or a positive float multiplier.
    return_weights: also return the weights [batch..., T, T].

  Returns:
    [batch..., T, D], and the weights when asked.
  """
  x = _real_array("x", x)
  if x.ndim < 2:
    raise ValueError(f"x must be [batch..., T, D], got shape {x.shape}")
  if x.shape[-1] == 0:
    raise ValueError(f"x must be [batch..., T, D] with D > 0, got shape {x.shape}")
  qkv = x[..., None, :]  # one head: [batch..., T, 1, D]
  if mask is not None:
    mask = jnp.asarray(mask)
    target = (*x.shape[:-2], x.shape[-2], x.shape[-2])  # [batch..., T, T]
    try:
      ok = mask.ndim >= 2 and np.broadcast_shapes(mask.shape, target) == target
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(
        f"mask of shape {mask.shape} does not broadcast to [batch..., T, T] for x {x.shape}"
      )
    mask = mask[..., None, :, :]  # add the head axis
  result = dot_product_attention(qkv, qkv, qkv, mask=mask, scale=scale, return_weights=return_weights)
  if return_weights:
    out, weights = result
    return out[..., 0, :], weights[..., 0, :, :]
  return result[..., 0, :]
