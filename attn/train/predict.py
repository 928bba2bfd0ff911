"""A trained model as the tasks' metrics use it: `Predictor(run's model, objective, one seed's params)`
applies the model, reads a CRF's scores, decodes and samples, so a task (`Task.score`,
`Task.samples`) computes entity F1, BLEU or samples from outputs without ever applying a model or
importing one (the `attn.tasks.base.Predictor` protocol says what it may ask).

The jitted functions are built once per (model, objective) and shared by every seed and evaluation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attn.nn import decoding, hooks
from attn.train.objectives import CRFTagging, Objective


@functools.lru_cache(maxsize=16)
def _compiled(model, objective: Objective):
  """The jitted applications of `model` under `objective` (both hashable, static)."""

  @jax.jit
  def logits(params, inputs):
    return objective.logits(model.apply({"params": params}, *inputs))

  @jax.jit
  def crf_scores(params, tokens):
    return model.apply({"params": params}, tokens).crf

  @functools.partial(jax.jit, static_argnames=("max_new_tokens", "beam_size", "alpha"))
  def translate(params, src_BS, *, max_new_tokens: int, beam_size: int, alpha: float):
    if beam_size == 1:
      return decoding.greedy_decode(model, params, src_BS, max_new_tokens=max_new_tokens)
    tokens, _ = decoding.beam_decode(
      model, params, src_BS, beam_size=beam_size, max_new_tokens=max_new_tokens, alpha=alpha
    )
    return tokens

  @jax.jit
  def patterns(params, inputs):
    _, cache = hooks.run_with_cache(model, params, *inputs)  # What is not returned is compiled away.
    return jnp.stack([x for n, x in cache.items() if n.endswith(".attn.pattern")])

  return logits, crf_scores, translate, patterns


class Predictor:
  """One seed's parameters of a run's model, applied for a task's metrics."""

  def __init__(self, model, objective: Objective, params):
    self.model, self.objective, self.params = model, objective, params
    self._logits, self._crf_scores, self._translate, self._patterns = _compiled(model, objective)

  def logits(self, batch: dict) -> np.ndarray:
    """The model's per-token scores on a batch's inputs ([B, T, C] tags, a CRF's emissions, or
    [B, T, V] next tokens), float32 on the host."""
    inputs = tuple(jnp.asarray(x) if x is not None else None for x in self.objective.inputs(batch))
    return np.asarray(self._logits(self.params, inputs), np.float32)

  def self_attention_patterns(self, batch: dict) -> np.ndarray:
    """A language model's or a tagger's self-attention patterns on a batch's inputs, [L, B, H, T, T]
    float32 (`attn.nn.hooks`' `blocks.L.attn.pattern`, in layer order)."""
    inputs = tuple(jnp.asarray(x) if x is not None else None for x in self.objective.inputs(batch))
    return np.asarray(self._patterns(self.params, inputs), np.float32)

  def crf_scores(self) -> tuple[np.ndarray, ...] | None:
    """A CRF tagger's (transitions [C, C], start [C], end [C]) with its constraints applied, or None
    for a per-token tagger."""
    if not isinstance(self.objective, CRFTagging):
      return None
    tokens = jnp.ones((1, 1), jnp.int32)
    return tuple(np.asarray(x) for x in self._crf_scores(self.params, tokens))

  def translate(
    self, src_BS: np.ndarray, *, max_new_tokens: int, beam_size: int = 1, alpha: float = 0.6
  ) -> np.ndarray:
    """An encoder-decoder's output ids [B, max_new_tokens]: greedy when `beam_size` is 1, else beam
    search with GNMT's length penalty `alpha`."""
    return np.asarray(
      self._translate(
        self.params, jnp.asarray(src_BS), max_new_tokens=max_new_tokens, beam_size=beam_size, alpha=alpha
      )
    )

  def sample(
    self,
    prompt_BP: np.ndarray,
    *,
    max_new_tokens: int,
    rng: jax.Array,
    context: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
  ) -> np.ndarray:
    """A language model's sampled continuation ids [B, max_new_tokens] (`attn.nn.decoding`)."""
    return np.asarray(
      decoding.sample_decode(
        self.model,
        self.params,
        jnp.asarray(prompt_BP),
        max_new_tokens=max_new_tokens,
        rng=rng,
        temperature=temperature,
        top_k=top_k,
        context=context,
      )
    )
