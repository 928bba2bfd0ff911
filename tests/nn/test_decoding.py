"""Tests for attn.decoding: cached decoding against the full forward pass, greedy and beam search.

The models are small and random. Their parameters are multiplied by a constant ("sharpened") so that
greedy decoding does not just repeat one token: the comparisons with the uncached model then see a
different token at almost every step. Every search is jitted once per test, so that each decode
compiles one program.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn.config import ModelConfig
from attn.nn.decoding import (
  beam_decode,
  beam_search,
  greedy_decode,
  greedy_search,
  init_cache,
  length_penalty,
  sample_decode,
  sample_search,
)
from attn.nn.models import EncoderTagger, LanguageModel, Transformer

V = 30
PAD, BOS = 0, 1
N = 4  # New tokens per decode.
PROMPT = jnp.array([[1, 5, 6], [1, 7, 8], [1, 9, 10]], jnp.int32)  # LanguageModel prompts [B, P].
SRC = jnp.array([[11, 12, 13, 14, 15], [16, 17, 18, 0, 0], [19, 20, 21, 22, 0]], jnp.int32)
B, P = PROMPT.shape
BOS_PROMPT = jnp.full((B, 1), BOS, jnp.int32)  # The Transformer's default decoder prompt.


def make_config(**changes) -> ModelConfig:
  fields = dict(
    vocab_size=V,
    d_model=16,
    num_heads=2,
    d_ff=32,
    num_encoder_layers=1,
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_length=16,
    pad_id=PAD,
    bos_id=BOS,
  )
  fields.update(changes)
  return ModelConfig(**fields)


class Setup(NamedTuple):
  model: Any
  params: Any
  inputs: jax.Array  # What greedy_decode takes: the LanguageModel prompt or the Transformer source.
  logits_fn: Any  # Jitted (params, decoder tokens [B, L]) -> logits [B, L, V], without a cache.


def _setup(model, seed: int, sharpen: float, inputs) -> Setup:
  if isinstance(model, Transformer):
    init_args = (inputs, BOS_PROMPT)
    logits_fn = jax.jit(lambda p, tgt: model.apply({"params": p}, inputs, tgt))
  else:
    init_args = (inputs,)
    logits_fn = jax.jit(lambda p, tokens: model.apply({"params": p}, tokens))
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), *init_args)["params"]
  params = jax.tree.map(lambda x: x * sharpen, params)
  return Setup(model, params, inputs, logits_fn)


@pytest.fixture(scope="module")
def lm():
  """A pre-LN LanguageModel with sinusoidal positions."""
  return _setup(LanguageModel(make_config(norm="pre")), seed=1, sharpen=3.0, inputs=PROMPT)


@pytest.fixture(scope="module")
def transformer():
  """A post-LN Transformer with sinusoidal positions; source rows 1 and 2 end in padding."""
  return _setup(Transformer(make_config()), seed=3, sharpen=2.0, inputs=SRC)


@pytest.fixture(scope="module")
def learned_lm():
  """A post-LN LanguageModel with learned positions for exactly P + N tokens."""
  config = make_config(positions="learned", max_length=P + N)
  return _setup(LanguageModel(config), seed=3, sharpen=3.0, inputs=PROMPT)


def reference_greedy(setup: Setup, prefix, n: int):
  """Greedy decoding without a cache or an end token: each step runs the plain model over the whole
  sequence so far and takes the argmax at its last position.

  The sequence lives in a fixed-length buffer filled on the right with pad_id, so that one
  compilation serves every step; those slots come after the position read, and are padding too.

  Returns:
    int [B, n] tokens and float [B, n, V] the log-probabilities each token was chosen from.
  """
  prefix = np.asarray(prefix)
  batch, length = prefix.shape
  seq = np.concatenate([prefix, np.full((batch, n), PAD, prefix.dtype)], axis=1)
  log_probs = []
  for i in range(n):
    logits = setup.logits_fn(setup.params, jnp.asarray(seq))[:, length + i - 1]
    seq[:, length + i] = np.asarray(jnp.argmax(logits, axis=-1))
    log_probs.append(np.asarray(jax.nn.log_softmax(logits)))
  return seq[:, length:], np.stack(log_probs, axis=1)


def truncate_at_eos(tokens, eos_id: int, pad_id: int = PAD):
  """pad_id after the first eos_id of each row."""
  tokens = np.array(tokens)
  after_eos = np.cumsum(tokens == eos_id, axis=1) - (tokens == eos_id) > 0
  tokens[after_eos] = pad_id
  return tokens


def pick_eos(tokens) -> int:
  """A token the model emits: row 0's token at step 2 if it is new there, else row 0's first new
  token after step 0. Sequences then finish part way through, and some (those that never emit it)
  run to the end."""
  row = [int(t) for t in np.asarray(tokens)[0]]
  for step in (2, 1, 3):
    if row[step] not in row[:step]:
      return row[step]
  return row[0]


@pytest.fixture(scope="module")
def lm_reference(lm):
  return reference_greedy(lm, PROMPT, N)


@pytest.fixture(scope="module")
def transformer_reference(transformer):
  return reference_greedy(transformer, BOS_PROMPT, N)


def check_reference(tokens, eos_id):
  """Guards the tests' own construction: a nontrivial eos case, and no pad_id among the model's
  choices (pad is masked as a key in the plain model, so the comparison would not be like for like).
  """
  assert not np.any(np.asarray(tokens) == PAD), "setup: the random model emits pad_id"
  expected = truncate_at_eos(tokens, eos_id)
  assert np.any(expected != tokens), "setup: no row is cut by eos"
  assert np.any(np.all(expected == tokens, axis=1)), "setup: every row is cut by eos"
  return expected


# --------------------------------------------------------------------------------------------------
# Cached forward passes against the full forward pass.
# --------------------------------------------------------------------------------------------------


def cached_step(model: LanguageModel, params):
  """Jitted (cache, tokens [B, t], positions [t]) -> (logits [B, t, V], variables with the cache)."""
  decoder = model.clone(decode=True)

  @jax.jit
  def step(cache, tokens, positions):
    return decoder.apply(
      {"params": params, "cache": cache}, tokens, positions_BT=positions, mutable=["cache"]
    )

  return step


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_language_model_cache_matches_full_forward(lm):
  """A 3-token prompt through the cache, then 4 single tokens: every step's logits are the full
  (uncached) forward pass's logits at the same positions."""
  model, params = lm.model, lm.params
  seq = jnp.concatenate([PROMPT, jnp.array([[20, 21, 22, 23], [24, 3, 4, 25], [3, 3, 26, 27]])], 1)
  length = seq.shape[1]
  full = np.asarray(lm.logits_fn(params, seq))
  step = cached_step(model, params)
  cache = init_cache(model, B, length)
  logits, variables = step(cache, seq[:, :P], jnp.arange(P))
  assert logits.shape == (B, P, V)
  np.testing.assert_allclose(logits, full[:, :P], rtol=0, atol=1e-4)
  for t in range(P, length):
    logits, variables = step(variables["cache"], seq[:, t : t + 1], jnp.array([t]))
    assert logits.shape == (B, 1, V)
    np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=0, atol=1e-4, err_msg=f"step {t}")
  indices = [
    int(x)
    for path, x in jax.tree_util.tree_leaves_with_path(variables["cache"])
    if str(path[-1].key) == "cache_index"
  ]
  assert indices == [length] * make_config().num_decoder_layers


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_transformer_cache_matches_full_forward(transformer):
  """A 2-token decoder prompt through the cache via decode_logits, then 3 single tokens."""
  model, params = transformer.model, transformer.params
  tgt = jnp.array([[1, 5, 20, 21, 22], [1, 7, 3, 4, 25], [1, 9, 26, 3, 27]], jnp.int32)
  length, prompt_length = tgt.shape[1], 2
  full = np.asarray(transformer.logits_fn(params, tgt))
  encoded = jax.jit(lambda p: model.apply({"params": p}, SRC, method=Transformer.encode))(params)
  decoder = model.clone(decode=True)

  @jax.jit
  def step(cache, tokens, positions):
    return decoder.apply(
      {"params": params, "cache": cache},
      tokens,
      encoded,
      SRC,
      positions_BT=positions,
      method=Transformer.decode_logits,
      mutable=["cache"],
    )

  cache = init_cache(model, B, length, src_length=SRC.shape[1])
  logits, variables = step(cache, tgt[:, :prompt_length], jnp.arange(prompt_length))
  np.testing.assert_allclose(logits, full[:, :prompt_length], rtol=0, atol=1e-4)
  for t in range(prompt_length, length):
    logits, variables = step(variables["cache"], tgt[:, t : t + 1], jnp.array([t]))
    np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=0, atol=1e-4, err_msg=f"step {t}")


def test_cache_masks_pad_in_prompt_like_full_forward(lm):
  """`pad_id` is masked as a key everywhere (attn/nn/models.py, WORKSPACE.md), so a prompt holding pad
  tokens must give, through the cache, the full forward pass's logits at its real tokens."""
  model, params = lm.model, lm.params
  seq = jnp.array([[0, 1, 5, 6], [1, 7, 8, 9], [0, 0, 1, 10]], jnp.int32)
  full = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, seq))
  cached, _ = jax.jit(
    lambda p, c, x: model.clone(decode=True).apply(
      {"params": p, "cache": c}, x, positions_BT=jnp.arange(x.shape[1]), mutable=["cache"]
    )
  )(params, init_cache(model, B, seq.shape[1]), seq)
  real = np.asarray(seq) != PAD
  np.testing.assert_allclose(np.asarray(cached)[real], full[real], rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# greedy_decode and beam_decode against greedy decoding without a cache.
# --------------------------------------------------------------------------------------------------


def test_language_model_greedy_decode_matches_uncached_greedy(lm, lm_reference):
  tokens, _ = lm_reference
  eos_id = pick_eos(tokens)
  expected = check_reference(tokens, eos_id)
  decode = jax.jit(functools.partial(greedy_decode, lm.model, max_new_tokens=N, eos_id=eos_id))
  np.testing.assert_array_equal(decode(lm.params, PROMPT), expected)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_transformer_greedy_decode_matches_uncached_greedy(transformer, transformer_reference):
  tokens, _ = transformer_reference
  eos_id = pick_eos(tokens)
  expected = check_reference(tokens, eos_id)
  model = transformer.model
  decode = jax.jit(functools.partial(greedy_decode, model, max_new_tokens=N, eos_id=eos_id))
  np.testing.assert_array_equal(decode(transformer.params, SRC), expected)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_learned_positions_greedy_decode_matches_uncached_greedy(learned_lm):
  tokens, _ = reference_greedy(learned_lm, PROMPT, N)
  eos_id = pick_eos(tokens)
  expected = check_reference(tokens, eos_id)
  # eos_id left out: greedy_decode then takes the config's.
  model = learned_lm.model.clone(config=learned_lm.model.config.replace(eos_id=eos_id))
  decode = jax.jit(functools.partial(greedy_decode, model, max_new_tokens=N))
  np.testing.assert_array_equal(decode(learned_lm.params, PROMPT), expected)


def greedy_score(tokens, log_probs, eos_id, alpha):
  """Length-normalised summed log-probability of each row of `tokens` up to and including eos."""
  tokens = np.asarray(tokens)
  chosen = np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  is_eos = tokens == eos_id
  lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, tokens.shape[1])
  sums = np.array([chosen[b, : lengths[b]].sum() for b in range(tokens.shape[0])])
  return sums / ((5.0 + lengths) / 6.0) ** alpha


@pytest.mark.parametrize(  # transformer: over ~3 s on 2 cores (compiling).
  "which", ["lm", pytest.param("transformer", marks=pytest.mark.slow)]
)
def test_beam_size_one_equals_greedy(which, request):
  setup = request.getfixturevalue(which)
  tokens, log_probs = request.getfixturevalue(f"{which}_reference")
  eos_id = pick_eos(tokens)
  expected = check_reference(tokens, eos_id)
  decode = jax.jit(
    functools.partial(
      beam_decode,
      setup.model,
      beam_size=1,
      max_new_tokens=N,
      alpha=0.6,
      eos_id=eos_id,
    )
  )
  seqs, scores = decode(setup.params, setup.inputs)
  np.testing.assert_array_equal(seqs, expected)
  np.testing.assert_allclose(scores, greedy_score(expected, log_probs, eos_id, 0.6), atol=1e-4)


def reference_beam(setup: Setup, prefix, n: int, beam_size: int, eos_id: int, alpha: float):
  """Beam search without a cache, by the rules beam_search documents: each beam's next-token
  log-probabilities come from the plain model over its whole sequence; finished beams carry on with
  pad at no cost; the best `beam_size` continuations survive; the winner has the best score /
  length_penalty(length including eos, alpha).

  Returns:
    int [B, n] sequences and float [B] their length-normalised scores.
  """
  prefix = np.asarray(prefix)
  batch, length = prefix.shape
  # Per row, beams of (score, tokens, finished). Every beam is scored each step, in one fixed-shape
  # [batch * beam_size, length + n] forward pass (missing beams are filled with copies).
  beams = [[(0.0, [], False)] for _ in range(batch)]
  for i in range(n):
    seq = np.full((batch, beam_size, length + n), PAD, prefix.dtype)
    for b in range(batch):
      for w in range(beam_size):
        _, tokens, _ = beams[b][min(w, len(beams[b]) - 1)]
        seq[b, w, :length] = prefix[b]
        seq[b, w, length : length + i] = tokens
    logits = setup.logits_fn(setup.params, jnp.asarray(seq.reshape(batch * beam_size, -1)))
    log_probs = np.asarray(jax.nn.log_softmax(logits[:, length + i - 1]), np.float64)
    log_probs = log_probs.reshape(batch, beam_size, -1)
    for b in range(batch):
      candidates = []
      for w, (score, tokens, finished) in enumerate(beams[b]):
        if finished:
          candidates.append((score, [*tokens, PAD], True))
          continue
        for v, lp in enumerate(log_probs[b, w]):
          candidates.append((score + lp, [*tokens, v], v == eos_id))
      beams[b] = sorted(candidates, key=lambda c: -c[0])[:beam_size]
  best_seqs, best_scores = [], []
  for b in range(batch):
    normalized = []
    for score, tokens, _ in beams[b]:
      ends = [t for t, token in enumerate(tokens) if token == eos_id]
      beam_length = ends[0] + 1 if ends else n
      normalized.append(score / ((5.0 + beam_length) / 6.0) ** alpha)
    best = int(np.argmax(normalized))
    best_seqs.append(beams[b][best][1])
    best_scores.append(normalized[best])
  return np.array(best_seqs), np.array(best_scores)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_wider_beam_equals_uncached_beam_search(lm, lm_reference):
  """Beam 3 reorders the cache between steps; its sequences and scores must be those of the same
  search run on the plain model. Here it also beats greedy on some row, so reordering matters."""
  tokens, log_probs = lm_reference
  eos_id, alpha, beam_size = pick_eos(tokens), 0.6, 3
  expected_seqs, expected_scores = reference_beam(lm, PROMPT, N, beam_size, eos_id, alpha)
  greedy = truncate_at_eos(tokens, eos_id)
  assert np.any(expected_seqs != greedy), "setup: beam search finds nothing greedy misses"
  decode = jax.jit(
    functools.partial(
      beam_decode, lm.model, beam_size=beam_size, max_new_tokens=N, alpha=alpha, eos_id=eos_id
    )
  )
  seqs, scores = decode(lm.params, PROMPT)
  np.testing.assert_array_equal(seqs, expected_seqs)
  np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
  # Float32 sums of the same log-probs taken in other batch shapes may differ in the last bits.
  assert np.all(expected_scores >= greedy_score(greedy, log_probs, eos_id, alpha) - 1e-4)


# --------------------------------------------------------------------------------------------------
# Searches over a hand-made table of next-token probabilities.
# --------------------------------------------------------------------------------------------------

EOS, A, B_TOK = 2, 3, 4


def table_step_fn(probs):
  """A step function whose next-token distribution depends only on the last token fed:
  log probs[last token]. The state records that token (batch-leading, as the searches require)."""
  log_table = jnp.log(jnp.asarray(probs, jnp.float32))
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-6)

  def step_fn(state, tokens_Bt, offset):
    del state, offset
    last_B = tokens_Bt[:, -1]
    return log_table[last_B], {"last": last_B}

  return step_fn


# Rows: the last token (pad, bos, eos, A, B); columns: the next token.
MARKOV = [
  [0.2, 0.2, 0.2, 0.2, 0.2],
  [0.01, 0.01, 0.02, 0.56, 0.40],  # bos: A is likelier than B,
  [0.2, 0.2, 0.2, 0.2, 0.2],
  [0.01, 0.01, 0.30, 0.38, 0.30],  # but nothing after A is likely,
  [0.01, 0.01, 0.03, 0.05, 0.90],  # while B is followed by B.
]


def test_beam_search_finds_the_sequence_greedy_misses():
  step_fn = table_step_fn(MARKOV)
  prompt = jnp.array([[BOS], [B_TOK]], jnp.int32)
  state = {"last": jnp.zeros((2,), jnp.int32)}
  kwargs = dict(max_new_tokens=2, eos_id=EOS, pad_id=PAD)
  greedy = jax.jit(functools.partial(greedy_search, step_fn, **kwargs))(state, prompt)
  np.testing.assert_array_equal(greedy, [[A, A], [B_TOK, B_TOK]])  # 0.56 * 0.38 = 0.213.
  alpha = 0.6
  beam = jax.jit(
    functools.partial(beam_search, step_fn, alpha=alpha, **kwargs), static_argnames="beam_size"
  )
  one, _ = beam(state, prompt, beam_size=1)
  np.testing.assert_array_equal(one, greedy)
  seqs, scores = beam(state, prompt, beam_size=2)
  np.testing.assert_array_equal(seqs, [[B_TOK, B_TOK], [B_TOK, B_TOK]])  # 0.40 * 0.90 = 0.36.
  expected = np.log([0.40 * 0.90, 0.90 * 0.90]) / ((5 + 2) / 6) ** alpha
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


# After bos, ending at once (0.55) beats every longer sequence, of which A A A A (0.43 * 0.9 ** 3 =
# 0.31) is the best; the length penalty can turn that round.
SHORT_OR_LONG = [
  [0.25, 0.25, 0.25, 0.25],
  [0.01, 0.01, 0.55, 0.43],  # bos
  [0.25, 0.25, 0.25, 0.25],
  [0.01, 0.01, 0.08, 0.90],  # A
]


@pytest.mark.parametrize(
  "alpha, expected_seq, expected_prob, expected_length",
  [
    (0.0, [EOS, PAD, PAD, PAD], 0.55, 1),
    (2.0, [A, A, A, A], 0.43 * 0.9**3, 4),
  ],
)
def test_length_penalty_decides_between_short_and_long(
  alpha, expected_seq, expected_prob, expected_length
):
  step_fn = table_step_fn(SHORT_OR_LONG)
  prompt = jnp.array([[BOS]], jnp.int32)
  state = {"last": jnp.zeros((1,), jnp.int32)}
  seqs, scores = jax.jit(
    functools.partial(
      beam_search, step_fn, beam_size=2, max_new_tokens=4, eos_id=EOS, pad_id=PAD, alpha=alpha
    )
  )(state, prompt)
  np.testing.assert_array_equal(seqs, [expected_seq])
  expected = math.log(expected_prob) / ((5 + expected_length) / 6) ** alpha
  np.testing.assert_allclose(scores, [expected], rtol=1e-5)
  # Greedy ends at once whatever alpha is.
  search = functools.partial(greedy_search, step_fn, max_new_tokens=4, eos_id=EOS, pad_id=PAD)
  greedy = jax.jit(search)(state, prompt)
  np.testing.assert_array_equal(greedy, [[EOS, PAD, PAD, PAD]])


# --------------------------------------------------------------------------------------------------
# length_penalty and argument checks.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
def test_length_penalty_values(alpha):
  lengths = jnp.array([0, 1, 2, 7, 20])
  expected = ((5.0 + np.array([0, 1, 2, 7, 20])) / 6.0) ** alpha
  np.testing.assert_allclose(length_penalty(lengths, alpha), expected, rtol=1e-6)
  assert float(length_penalty(jnp.array(1), alpha)) == pytest.approx(1.0)


def test_searches_reject_bad_arguments():
  step_fn = table_step_fn(MARKOV)
  state = {"last": jnp.zeros((1,), jnp.int32)}
  prompt = jnp.array([[BOS]], jnp.int32)
  with pytest.raises(ValueError, match="beam_size"):
    beam_search(step_fn, state, prompt, beam_size=0, max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens"):
    beam_search(step_fn, state, prompt, beam_size=2, max_new_tokens=0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    greedy_search(step_fn, state, prompt, max_new_tokens=0)
  for bad_prompt in (jnp.array([BOS], jnp.int32), jnp.ones((1, 1, 1), jnp.int32)):
    with pytest.raises(ValueError, match="prompt"):
      greedy_search(step_fn, state, bad_prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt"):
      beam_search(step_fn, state, bad_prompt, beam_size=2, max_new_tokens=2)


def test_decode_rejects_bad_arguments(lm):
  with pytest.raises(ValueError, match="beam_size"):
    beam_decode(lm.model, lm.params, PROMPT, beam_size=0, max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens"):
    greedy_decode(lm.model, lm.params, PROMPT, max_new_tokens=0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    beam_decode(lm.model, lm.params, PROMPT, beam_size=2, max_new_tokens=0)


def test_decode_rejects_a_prompt_of_the_wrong_rank(lm, transformer):
  with pytest.raises(ValueError, match="prompt"):
    greedy_decode(lm.model, lm.params, PROMPT[0], max_new_tokens=2)
  with pytest.raises(ValueError, match="prompt"):
    beam_decode(lm.model, lm.params, PROMPT[0], beam_size=2, max_new_tokens=2)
  with pytest.raises(ValueError, match="prompt"):
    greedy_decode(
      transformer.model,
      transformer.params,
      SRC,
      prompt=BOS_PROMPT[:, 0],
      max_new_tokens=2,
    )


def test_learned_positions_reject_decoding_past_max_length(learned_lm):
  model, params = learned_lm.model, learned_lm.params
  too_many = model.config.max_length - P + 1
  with pytest.raises(ValueError, match="max_length"):
    greedy_decode(model, params, PROMPT, max_new_tokens=too_many)
  with pytest.raises(ValueError, match="max_length"):
    beam_decode(model, params, PROMPT, beam_size=2, max_new_tokens=too_many)


def test_decode_rejects_models_it_cannot_drive(lm):
  tagger = EncoderTagger(make_config(num_classes=3))
  with pytest.raises(ValueError, match="model"):
    greedy_decode(tagger, lm.params, PROMPT, max_new_tokens=2)
  with pytest.raises(ValueError, match="model"):
    beam_decode(tagger, lm.params, PROMPT, beam_size=2, max_new_tokens=2)
  with pytest.raises(ValueError, match="model"):
    greedy_decode(lambda x: x, lm.params, PROMPT, max_new_tokens=2)


# --------------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------------


def reference_windowed_greedy(setup: Setup, prompt, n: int, context: int):
  """Greedy decoding by recomputation under `sample_decode`'s window schedule: the first window is
  the prompt (its last context - 1 tokens), and each refill starts from the last context // 2 tokens,
  every token predicted by the plain model over its window so far."""
  seq = np.asarray(prompt)
  window_start = max(seq.shape[1] - (context - 1), 0)
  out = []
  while len(out) < n:
    window = seq[:, window_start:]
    logits = setup.logits_fn(setup.params, jnp.asarray(window))[:, -1]
    seq = np.concatenate([seq, np.asarray(jnp.argmax(logits, -1))[:, None]], axis=1)
    out.append(seq[:, -1])
    if seq.shape[1] - window_start == context:  # Full: refill from the last half.
      window_start = seq.shape[1] - context // 2
  return np.stack(out, axis=1)


def test_sampling_at_temperature_zero_with_the_cache_equals_recomputation(lm, lm_reference):
  tokens = sample_decode(
    lm.model, lm.params, PROMPT, max_new_tokens=N, rng=jax.random.PRNGKey(0), temperature=0.0
  )
  np.testing.assert_array_equal(tokens, lm_reference[0])


def test_top_k_one_is_greedy(lm, lm_reference):
  tokens = sample_decode(
    lm.model, lm.params, PROMPT, max_new_tokens=N, rng=jax.random.PRNGKey(5), top_k=1
  )
  np.testing.assert_array_equal(tokens, lm_reference[0])


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_sampling_past_the_context_refills_the_cache_like_recomputation():
  """Learned positions: the refilled cache must restart the positions at 0, as recomputation does."""
  context = 6
  config = make_config(positions="learned", max_length=context, norm="pre")
  setup = _setup(LanguageModel(config), seed=4, sharpen=3.0, inputs=PROMPT)
  n = 8  # The first window (3 + 3), then a refill of 3 from the last 3: three chunks.
  tokens = sample_decode(
    setup.model,
    setup.params,
    PROMPT,
    max_new_tokens=n,
    rng=jax.random.PRNGKey(0),
    temperature=0.0,
    context=context,
  )
  np.testing.assert_array_equal(tokens, reference_windowed_greedy(setup, PROMPT, n, context))
  long_prompt = jnp.concatenate([PROMPT, PROMPT + 3], axis=1)  # 6 tokens: cut to the last 5.
  tokens = sample_decode(
    setup.model, setup.params, long_prompt, max_new_tokens=4, rng=jax.random.PRNGKey(0),
    temperature=0.0, context=context,
  )  # fmt: skip
  np.testing.assert_array_equal(tokens, reference_windowed_greedy(setup, long_prompt, 4, context))


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_sampling_draws_from_the_tempered_top_k_distribution():
  """On a fixed table of next-token probabilities: the same key gives the same tokens, top_k keeps
  only the k most likely, and the frequencies follow softmax(logits / temperature)."""
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  logits_V = jnp.log(jnp.asarray(probs, jnp.float32))

  def step_fn(state, tokens_Bt, offset):
    del offset
    return jnp.broadcast_to(logits_V, (tokens_Bt.shape[0], 4)), state

  prompt = jnp.zeros((4000, 1), jnp.int32)
  draw = functools.partial(sample_search, step_fn, None, prompt, max_new_tokens=2)
  a = draw(rng=jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, draw(rng=jax.random.PRNGKey(1)))
  assert not np.array_equal(a, draw(rng=jax.random.PRNGKey(2)))
  frequencies = np.bincount(np.asarray(a).reshape(-1), minlength=4) / a.size
  np.testing.assert_allclose(frequencies, probs, atol=0.02)
  top2 = np.asarray(draw(rng=jax.random.PRNGKey(1), top_k=2))
  assert set(np.unique(top2)) == {0, 1}
  np.testing.assert_allclose(np.mean(top2 == 0), 0.5 / 0.8, atol=0.02)
  hot = np.asarray(draw(rng=jax.random.PRNGKey(1), temperature=0.5))  # probs squared, renormalised.
  np.testing.assert_allclose(np.mean(hot == 0), 0.25 / np.sum(probs**2), atol=0.02)


def test_sampling_rejects_bad_arguments(lm, transformer):
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r"^temperature: must be finite and >= 0"):
    sample_decode(lm.model, lm.params, PROMPT, max_new_tokens=2, rng=rng, temperature=-1.0)
  with pytest.raises(ValueError, match=r"^top_k: must be None"):
    sample_decode(lm.model, lm.params, PROMPT, max_new_tokens=2, rng=rng, top_k=0)
  with pytest.raises(ValueError, match=r"^max_new_tokens: must be at least 1"):
    sample_decode(lm.model, lm.params, PROMPT, max_new_tokens=0, rng=rng)
  with pytest.raises(ValueError, match=r"^model: sample_decode needs a LanguageModel"):
    sample_decode(transformer.model, transformer.params, SRC, max_new_tokens=2, rng=rng)


# --------------------------------------------------------------------------------------------------
# Every position kind and attention variant, cached against the full forward pass.
# --------------------------------------------------------------------------------------------------

VARIANTS = [  # Combined, so that each compiles once; together they cover every option.
  dict(positions="rope", qk_norm="rms", logit_soft_cap=2.0),
  dict(positions="alibi", attention_sink=True),
  dict(positions="t5_bias", t5_num_buckets=8, t5_max_distance=16, attention_kind="ssmax"),
  dict(positions="rope", rope_fraction=0.5, attention_kind="sigmoid", norm_kind="rms"),
  dict(positions="none"),
  dict(positions="rope", attention_kind="softpick", num_kv_heads=1),
  dict(positions="alibi", attention_kind="stick_breaking"),
  dict(positions="none", forget_gate=True),
  dict(positions="rope", forget_gate=True, attention_kind="sigmoid", num_kv_heads=1),
  dict(positions="rope", differential=True, rope_interleaved=True),
  dict(positions="xpos", rope_fraction=0.5, qk_norm="rms"),
  dict(positions="xpos", rope_interleaved=True, num_kv_heads=1),
  dict(
    positions="t5_bias",
    differential=True,
    num_heads=4,
    num_kv_heads=2,
    attention_sink=True,
    forget_gate=True,
    t5_num_buckets=8,
    t5_max_distance=16,
  ),
  dict(  # Llama's, Qwen2's and Mistral's options (a sliding window shorter than the sequence).
    positions="rope",
    attention_window=2,
    ff_glu=True,
    activation="silu",
    norm_kind="rms",
    use_bias=False,
    qkv_bias=True,
    out_bias=False,
    num_kv_heads=1,
    rope_theta=500.0,
    embed_norm=True,
  ),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_every_variant_caches_like_the_full_forward(variant):
  """A prompt with padding through the cache, then single tokens at the cache offset: the logits at
  every real token equal the full forward pass's. RoPE and the biases must take the cache offset
  (where flax#5591 and x-transformers#187 went wrong); the sigmoid's -log n and SSMax's log n must
  not depend on the cache's size."""
  model = LanguageModel(
    make_config(norm="pre", num_decoder_layers=1, **variant)
  )  # One layer: compiles fast.
  setup = _setup(model, seed=2, sharpen=2.0, inputs=PROMPT)
  params = setup.params
  if variant.get("attention_sink"):  # Sinks start at 0; make them matter.
    params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 1.5 if "sink_logit" in str(p[-1]) else x, params
    )
  seq = jnp.array(
    [[0, 1, 5, 6, 20, 21, 22], [1, 7, 8, 9, 3, 4, 25], [0, 0, 1, 10, 26, 3, 27]], jnp.int32
  )
  full = np.asarray(setup.logits_fn(params, seq))
  step = cached_step(model, params)
  prompt = 4
  logits, variables = step(init_cache(model, B, seq.shape[1]), seq[:, :prompt], jnp.arange(prompt))
  real = np.asarray(seq[:, :prompt]) != PAD
  np.testing.assert_allclose(np.asarray(logits)[real], full[:, :prompt][real], rtol=0, atol=1e-4)
  for t in range(prompt, seq.shape[1]):
    logits, variables = step(variables["cache"], seq[:, t : t + 1], jnp.array([t]))
    np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=0, atol=1e-4, err_msg=f"step {t}")


def test_sliding_window_greedy_decode_matches_uncached_greedy():
  """A causal window of 1 over a prompt and generation of 7 tokens: the cache's window mask, by
  absolute position, gives what recomputation over the whole sequence gives."""
  config = make_config(norm="pre", positions="rope", attention_window=1)
  setup = _setup(LanguageModel(config), seed=1, sharpen=3.0, inputs=PROMPT)
  tokens, _ = reference_greedy(setup, PROMPT, N)
  decoded = greedy_decode(setup.model, setup.params, PROMPT, max_new_tokens=N, eos_id=None)
  np.testing.assert_array_equal(decoded, tokens)
  unwindowed = _setup(LanguageModel(config.replace(attention_window=None)), 1, 3.0, PROMPT)
  assert not np.array_equal(reference_greedy(unwindowed, PROMPT, N)[0], tokens)


def test_cached_decoding_works_in_64_bit_mode():
  """With jax_enable_x64 on (common in scientific code), greedy decoding with the cache equals the
  uncached reference, as in 32-bit mode (the cache index is int32 and every other index beside it
  in `dynamic_update_slice` must be too)."""
  with jax.enable_x64(True):
    setup = _setup(LanguageModel(make_config(norm="pre")), seed=1, sharpen=3.0, inputs=PROMPT)
    tokens, _ = reference_greedy(setup, PROMPT, N)
    decode = jax.jit(functools.partial(greedy_decode, setup.model, max_new_tokens=N, eos_id=None))
    np.testing.assert_array_equal(decode(setup.params, PROMPT), tokens)


@pytest.mark.parametrize(
  "variant",
  [
    dict(value_residual="learned", attention_gate="elementwise", positions="rope"),
    dict(value_residual="shared", attention_gate="headwise", positions="alibi", num_kv_heads=1),
  ],
  ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_value_residual_and_gate_cache_like_the_full_forward(variant):
  """Three layers: each caches its own mixed values, and the first layer's values of the new tokens
  pass to the later ones, so a padded prompt through the cache and then single tokens give the full
  forward pass's logits at every real token (the gates are per token and need no cache)."""
  model = LanguageModel(make_config(norm="pre", num_decoder_layers=3, **variant))
  setup = _setup(model, seed=2, sharpen=2.0, inputs=PROMPT)
  params = jax.tree_util.tree_map_with_path(  # Away from the 0.5 / 0.5 start.
    lambda p, x: x * jnp.array([0.3, 1.4]) if "value_mix" in str(p[-1]) else x, setup.params
  )
  seq = jnp.array(
    [[0, 1, 5, 6, 20, 21, 22], [1, 7, 8, 9, 3, 4, 25], [0, 0, 1, 10, 26, 3, 27]], jnp.int32
  )
  full = np.asarray(setup.logits_fn(params, seq))
  step = cached_step(model, params)
  prompt = 4
  logits, variables = step(init_cache(model, B, seq.shape[1]), seq[:, :prompt], jnp.arange(prompt))
  real = np.asarray(seq[:, :prompt]) != PAD
  np.testing.assert_allclose(np.asarray(logits)[real], full[:, :prompt][real], rtol=0, atol=1e-4)
  for t in range(prompt, seq.shape[1]):
    logits, variables = step(variables["cache"], seq[:, t : t + 1], jnp.array([t]))
    np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=0, atol=1e-4, err_msg=f"step {t}")
  # The mix matters: the same parameters without it give other logits.
  plain = LanguageModel(model.config.replace(value_residual="none"))
  if variant["value_residual"] == "learned":
    assert not np.allclose(plain.apply({"params": params}, seq), full, atol=1e-3)


def test_greedy_decode_with_value_residual_and_gate_matches_uncached_greedy():
  """The fast tier's check of the same: greedy decoding with the cache (two layers, the learned
  mix, the elementwise gate) gives the tokens of recomputing the whole sequence each step."""
  config = make_config(norm="pre", value_residual="learned", attention_gate="elementwise")
  setup = _setup(LanguageModel(config), seed=1, sharpen=3.0, inputs=PROMPT)
  tokens, _ = reference_greedy(setup, PROMPT, N)
  decoded = greedy_decode(setup.model, setup.params, PROMPT, max_new_tokens=N, eos_id=None)
  np.testing.assert_array_equal(decoded, tokens)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_transformer_greedy_decode_with_value_residual_and_gate_matches_uncached_greedy():
  """The encoder-decoder: value residual in the encoder and in the decoder's cached self-attention,
  the gate in cross-attention too; greedy decoding with the cache equals recomputation."""
  config = make_config(value_residual="learned", attention_gate="elementwise", num_decoder_layers=3)
  setup = _setup(Transformer(config), seed=3, sharpen=2.0, inputs=SRC)
  tokens, _ = reference_greedy(setup, BOS_PROMPT, N)
  decoded = greedy_decode(setup.model, setup.params, SRC, max_new_tokens=N, eos_id=-1)  # No end.
  np.testing.assert_array_equal(decoded, tokens)
