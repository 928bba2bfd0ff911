"""Incremental decoding with a key/value cache: greedy search, beam search and sampling.

The searches are written against a step function, `step_fn(state, tokens [B, t], offset) ->
(logits [B, V] for the last token, state)`, where `state` is a pytree whose array leaves share the
leading batch axis B (scalars, such as each layer's cache index, are shared by the whole batch). The
first call feeds the whole prompt at once, whatever its length; each later call feeds one token.
`greedy_decode` and `beam_decode` build that step function for a `Transformer` or a `LanguageModel`;
`sample_decode` samples text from a `LanguageModel`, beyond its context length by refilling the cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from attn.nn.models import LanguageModel, Transformer

StepFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def greedy_search(
  step_fn: StepFn,
  state,
  prompt_BP: jax.Array,
  *,
  max_new_tokens: int,
  eos_id: int | None = None,
  pad_id: int = 0,
) -> jax.Array:
  """Appends the most likely token `max_new_tokens` times; after `eos_id`, a sequence gets `pad_id`.

  Returns:
    int [B, max_new_tokens], the generated tokens (the prompt not included).
  """
  _check_lengths(prompt_BP, max_new_tokens)
  B, P = prompt_BP.shape
  logits_BV, state = step_fn(state, prompt_BP, jnp.asarray(0, jnp.int32))

  def pick(logits_BV, finished_B):
    token_B = jnp.argmax(logits_BV, axis=-1).astype(prompt_BP.dtype)
    token_B = jnp.where(finished_B, pad_id, token_B)
    return token_B, finished_B | (token_B == eos_id if eos_id is not None else False)

  def body(carry, i):
    state, logits_BV, finished_B = carry
    token_B, finished_B = pick(logits_BV, finished_B)
    logits_BV, state = step_fn(state, token_B[:, None], P + i)
    return (state, logits_BV, finished_B), token_B

  # The last token needs no forward pass after it, so the loop runs one step short.
  carry = (state, logits_BV, jnp.zeros((B,), bool))
  (_, logits_BV, finished_B), tokens_NB = jax.lax.scan(body, carry, jnp.arange(max_new_tokens - 1))
  last_B, _ = pick(logits_BV, finished_B)
  return jnp.concatenate([tokens_NB.T, last_B[:, None]], axis=1)


def sample_search(
  step_fn: StepFn,
  state,
  prompt_BP: jax.Array,
  *,
  max_new_tokens: int,
  rng: jax.Array,
  temperature: float = 1.0,
  top_k: int | None = None,
) -> jax.Array:
  """Draws `max_new_tokens` tokens, each from softmax(logits / temperature) over the `top_k` most
  likely tokens (all when None); temperature 0 takes the most likely token (greedy search without
  an end token). Token i of the continuation uses the key `fold_in(rng, i)`.

  Returns:
    int [B, max_new_tokens], the generated tokens (the prompt not included).
  """
  _check_lengths(prompt_BP, max_new_tokens)
  check_sampling(temperature, top_k)
  P = prompt_BP.shape[1]
  logits_BV, state = step_fn(state, prompt_BP, jnp.asarray(0, jnp.int32))

  def pick(logits_BV, i):
    if temperature == 0:
      return jnp.argmax(logits_BV, axis=-1).astype(prompt_BP.dtype)
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
      kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
      logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(jax.random.fold_in(rng, i), logits_BV).astype(prompt_BP.dtype)

  def body(carry, i):
    state, logits_BV = carry
    token_B = pick(logits_BV, i)
    logits_BV, state = step_fn(state, token_B[:, None], P + i)
    return (state, logits_BV), token_B

  (_, logits_BV), tokens_NB = jax.lax.scan(
    body, (state, logits_BV), jnp.arange(max_new_tokens - 1)
  )  # As in greedy_search, the last token needs no forward pass after it.
  last_B = pick(logits_BV, max_new_tokens - 1)
  return jnp.concatenate([tokens_NB.T, last_B[:, None]], axis=1)


def check_sampling(temperature: float, top_k: int | None) -> None:
  if not 0.0 <= temperature < float("inf"):
    raise ValueError(f"temperature: must be finite and >= 0 (0 = greedy), got {temperature}")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k: must be None (every token) or at least 1, got {top_k}")


def length_penalty(lengths: jax.Array, alpha: float) -> jax.Array:
  """GNMT's length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016); alpha = 0 turns it off."""
  return ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(
  step_fn: StepFn,
  state,
  prompt_BP: jax.Array,
  *,
  beam_size: int,
  max_new_tokens: int,
  eos_id: int | None = None,
  pad_id: int = 0,
  alpha: float = 0.6,
) -> tuple[jax.Array, jax.Array]:
  """Keeps the `beam_size` best continuations by summed log-probability; a beam that has emitted
  `eos_id` is finished and carries on with `pad_id` at no cost. At the end, beams are ranked by
  score / length_penalty(length, alpha), the length counting tokens up to and including eos.

  Returns:
    (int [B, max_new_tokens] best sequences, float32 [B] their length-normalised log-probabilities).
  """
  _check_lengths(prompt_BP, max_new_tokens)
  if beam_size < 1:
    raise ValueError(f"beam_size: must be at least 1, got {beam_size}")
  B, P = prompt_BP.shape
  W = beam_size
  logits_BV, state = step_fn(state, prompt_BP, jnp.asarray(0, jnp.int32))  # The prompt runs once,
  V = logits_BV.shape[-1]
  state = jax.tree.map(lambda x: jnp.repeat(x, W, axis=0) if x.ndim else x, state)  # then W copies.
  log_probs_BWV = jnp.repeat(jax.nn.log_softmax(logits_BV.astype(jnp.float32))[:, None], W, axis=1)
  # All beams start as the same prompt: only the first is live, or the W copies would fill the beam.
  scores_BW = jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf)[None].repeat(B, axis=0)
  pad_only_V = jnp.where(jnp.arange(V) == pad_id, 0.0, -jnp.inf)

  def gather(x, beam_BW):  # x [B * W, ...] or [B, W, ...] -> the rows of the chosen beams.
    if x.ndim == 0:
      return x
    flat = x.shape[0] == B * W
    x_BW = x.reshape(B, W, *x.shape[1:]) if flat else x
    x_BW = jnp.take_along_axis(x_BW, beam_BW.reshape(B, W, *(1,) * (x_BW.ndim - 2)), axis=1)
    return x_BW.reshape(x.shape) if flat else x_BW

  def select(log_probs_BWV, beams):
    scores_BW, finished_BW, lengths_BW, seqs_BWN, i = beams
    log_probs_BWV = jnp.where(finished_BW[..., None], pad_only_V, log_probs_BWV)
    candidates = (scores_BW[..., None] + log_probs_BWV).reshape(B, W * V)
    scores_BW, flat_BW = jax.lax.top_k(candidates, W)
    beam_BW, token_BW = flat_BW // V, (flat_BW % V).astype(prompt_BP.dtype)
    finished_BW = gather(finished_BW, beam_BW)
    lengths_BW = gather(lengths_BW, beam_BW) + (~finished_BW)
    seqs_BWN = gather(seqs_BWN, beam_BW).at[:, :, i].set(token_BW)
    if eos_id is not None:
      finished_BW = finished_BW | (token_BW == eos_id)
    return (scores_BW, finished_BW, lengths_BW, seqs_BWN, i + 1), beam_BW, token_BW

  def body(carry, _):
    state, log_probs_BWV, beams = carry
    beams, beam_BW, token_BW = select(log_probs_BWV, beams)
    state = jax.tree.map(lambda x: gather(x, beam_BW), state)
    logits, state = step_fn(state, token_BW.reshape(B * W, 1), P + beams[-1] - 1)
    log_probs_BWV = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(B, W, V)
    return (state, log_probs_BWV, beams), None

  beams = (
    scores_BW,
    jnp.zeros((B, W), bool),
    jnp.zeros((B, W), jnp.int32),
    jnp.full((B, W, max_new_tokens), pad_id, prompt_BP.dtype),
    jnp.asarray(0, jnp.int32),
  )
  (_, log_probs_BWV, beams), _ = jax.lax.scan(
    body, (state, log_probs_BWV, beams), None, length=max_new_tokens - 1
  )
  (scores_BW, _, lengths_BW, seqs_BWN, _), _, _ = select(log_probs_BWV, beams)
  normalized_BW = scores_BW / length_penalty(lengths_BW, alpha)
  best_B = jnp.argmax(normalized_BW, axis=-1)
  take = lambda x: jnp.take_along_axis(x, best_B.reshape(B, 1, *(1,) * (x.ndim - 2)), axis=1)[:, 0]
  return take(seqs_BWN), take(normalized_BW)


def _check_lengths(prompt_BP, max_new_tokens):
  if prompt_BP.ndim != 2 or prompt_BP.shape[1] < 1:
    raise ValueError(f"prompt must be [B, P] with P >= 1, got shape {prompt_BP.shape}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens: must be at least 1, got {max_new_tokens}")


def init_cache(
  model: Transformer | LanguageModel, batch_size: int, max_length: int, src_length: int = 1
):
  """Zeroed key/value caches for `max_length` target positions (computed from shapes only)."""
  decoder = model.clone(decode=True)
  tokens = jnp.zeros((batch_size, max_length), jnp.int32)
  if isinstance(model, Transformer):
    args = (jnp.ones((batch_size, src_length), jnp.int32), tokens)
  else:
    args = (tokens,)
  shapes = jax.eval_shape(decoder.init, jax.random.PRNGKey(0), *args)["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _filler(config) -> int:
  """What a finished sequence carries on with: the padding token, or the end token when the model
  has no padding token (GPT-2, Llama)."""
  return config.eos_id if config.pad_id is None else config.pad_id


def _model_step(model, params, inputs_BS, prompt_BP, max_new_tokens):
  """The step function and initial state for a model; also returns the prompt to feed."""
  if not isinstance(model, Transformer | LanguageModel):
    raise ValueError(f"model: expected a Transformer or LanguageModel, got {type(model).__name__}")
  inputs_name = "inputs (the source)" if isinstance(model, Transformer) else "inputs (the prompt)"
  for name, x in ((inputs_name, inputs_BS), ("prompt", prompt_BP)):
    if x is not None and jnp.ndim(x) != 2:
      raise ValueError(f"{name} must be [B, length], got shape {jnp.shape(x)}")
  cfg = model.config
  B = inputs_BS.shape[0]
  if isinstance(model, Transformer):
    if prompt_BP is None:
      prompt_BP = jnp.full((B, 1), cfg.bos_id, jnp.int32)
    max_length = prompt_BP.shape[1] + max_new_tokens
    decoder = model.clone(decode=True)
    encoded = model.apply({"params": params}, inputs_BS, method=Transformer.encode)
    state = {
      "cache": init_cache(model, B, max_length, inputs_BS.shape[1]),
      "encoded": encoded,
      "src": inputs_BS,
    }

    def step_fn(state, tokens_Bt, offset):
      positions = offset + jnp.arange(tokens_Bt.shape[1])
      logits, mutated = decoder.apply(
        {"params": params, "cache": state["cache"]},
        tokens_Bt,
        state["encoded"],
        state["src"],
        positions_BT=positions,
        method=Transformer.decode_logits,
        mutable=["cache"],
      )
      return logits[:, -1], {**state, "cache": mutated["cache"]}

  else:
    prompt_BP = inputs_BS if prompt_BP is None else prompt_BP
    max_length = prompt_BP.shape[1] + max_new_tokens
    decoder = model.clone(decode=True)
    state = {"cache": init_cache(model, B, max_length)}

    def step_fn(state, tokens_Bt, offset):
      positions = offset + jnp.arange(tokens_Bt.shape[1])
      logits, mutated = decoder.apply(
        {"params": params, "cache": state["cache"]},
        tokens_Bt,
        positions_BT=positions,
        mutable=["cache"],
      )
      return logits[:, -1], {"cache": mutated["cache"]}

  if cfg.positions == "learned" and max_length > cfg.max_length:
    raise ValueError(
      f"max_new_tokens: prompt ({prompt_BP.shape[1]}) + {max_new_tokens} new tokens exceed "
      f"config.max_length={cfg.max_length} of the learned positions"
    )
  return step_fn, state, prompt_BP


def greedy_decode(
  model: Transformer | LanguageModel,
  params,
  inputs: jax.Array,
  *,
  max_new_tokens: int,
  prompt: jax.Array | None = None,
  eos_id: int | None = None,
) -> jax.Array:
  """Greedy decoding with a key/value cache.

  Args:
    model: a Transformer (then `inputs` is the source [B, S], and the decoder prompt defaults to
      bos_id) or a LanguageModel (then `inputs` is the prompt [B, P], all of the same length).
    params: the model's parameters.
    max_new_tokens: tokens to generate.
    prompt: a decoder prompt [B, P] for a Transformer (a forced target prefix).
    eos_id: end token; defaults to `model.config.eos_id`.

  Returns:
    int [B, max_new_tokens]; positions after eos hold pad_id.
  """
  step_fn, state, prompt = _model_step(model, params, inputs, prompt, max_new_tokens)
  eos_id = model.config.eos_id if eos_id is None else eos_id
  return greedy_search(
    step_fn, state, prompt, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=_filler(model.config)
  )


def beam_decode(
  model: Transformer | LanguageModel,
  params,
  inputs: jax.Array,
  *,
  beam_size: int,
  max_new_tokens: int,
  alpha: float = 0.6,
  prompt: jax.Array | None = None,
  eos_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Beam search with GNMT's length penalty; arguments as in `greedy_decode`.

  Returns:
    (int [B, max_new_tokens] best sequences, float32 [B] their length-normalised scores).
  """
  step_fn, state, prompt = _model_step(model, params, inputs, prompt, max_new_tokens)
  eos_id = model.config.eos_id if eos_id is None else eos_id
  return beam_search(
    step_fn,
    state,
    prompt,
    beam_size=beam_size,
    max_new_tokens=max_new_tokens,
    eos_id=eos_id,
    pad_id=_filler(model.config),
    alpha=alpha,
  )


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))
def _sample_chunk(params, prompt_BP, rng, *, model, max_new_tokens, temperature, top_k):
  step_fn, state, prompt_BP = _model_step(model, params, prompt_BP, None, max_new_tokens)
  return sample_search(
    step_fn,
    state,
    prompt_BP,
    max_new_tokens=max_new_tokens,
    rng=rng,
    temperature=temperature,
    top_k=top_k,
  )


def sample_decode(
  model: LanguageModel,
  params,
  prompt: jax.Array,
  *,
  max_new_tokens: int,
  rng: jax.Array,
  temperature: float = 1.0,
  top_k: int | None = None,
  context: int | None = None,
) -> jax.Array:
  """Samples a continuation of `prompt` [B, P] from a language model with a key/value cache.

  The model attends to at most `context` tokens (default: `config.max_length` under learned
  positions, else unlimited). While prompt and continuation fit, one cache holds them all. Beyond it,
  the cache is refilled: once it is full, the last `context // 2` tokens are fed again as a new
  prompt (at positions 0 onwards) and sampling goes on from there, so each token sees between
  `context // 2` and `context - 1` tokens before it. (nanoGPT's `generate` instead recomputes the
  last `context` tokens at every step, without a cache.) A prompt longer than `context - 1` is cut to
  its last `context - 1` tokens. Chunk c samples with the key `fold_in(rng, c)`.

  Not itself jitted: each chunk is one compiled program (two shapes in all: the first chunk, and
  the refills).

  Returns:
    int [B, max_new_tokens].
  """
  if not isinstance(model, LanguageModel):
    raise ValueError(f"model: sample_decode needs a LanguageModel, got {type(model).__name__}")
  prompt = jnp.asarray(prompt)
  _check_lengths(prompt, max_new_tokens)
  check_sampling(temperature, top_k)
  cfg = model.config
  if context is None and cfg.positions == "learned":
    context = cfg.max_length
  settings = dict(model=model, temperature=float(temperature), top_k=top_k)
  P = prompt.shape[1]
  if context is None or P + max_new_tokens <= context:
    return _sample_chunk(params, prompt, rng, max_new_tokens=max_new_tokens, **settings)
  if context < 2:
    raise ValueError(f"context: must be at least 2 to sample beyond it, got {context}")
  tokens, window, produced, chunk = prompt, min(P, context - 1), 0, 0
  while produced < max_new_tokens:
    n = context - window
    new = _sample_chunk(
      params, tokens[:, -window:], jax.random.fold_in(rng, chunk), max_new_tokens=n, **settings
    )
    tokens = jnp.concatenate([tokens, new], axis=1)
    produced, chunk, window = produced + n, chunk + 1, context // 2
  return tokens[:, P : P + max_new_tokens]
