"""Tests for attn/core/crf.py: the forward algorithm and Viterbi against brute-force enumeration of
every tag sequence of tiny sentences, masks that leave tokens out (and a row with none), IOB2
constraints, and finite gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.core import crf

C, T = 3, 4


def _inputs(seed=0, batch=3):
  rng = np.random.default_rng(seed)
  emissions = rng.normal(size=(batch, T, C)).astype(np.float32)
  transitions = rng.normal(size=(C, C)).astype(np.float32)
  start, end = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)
  return emissions, transitions, start, end


def _brute_scores(emissions_TC, transitions, start, end, valid_T):
  """{tag tuple over the valid positions: score} by enumeration."""
  positions = np.flatnonzero(valid_T)
  scores = {}
  for tags in itertools.product(range(C), repeat=len(positions)):
    score = 0.0
    for n, (t, tag) in enumerate(zip(positions, tags, strict=True)):
      score += emissions_TC[t, tag] + (start[tag] if n == 0 else transitions[tags[n - 1], tag])
    if tags:
      score += end[tags[-1]]
    scores[tags] = score
  return positions, scores


MASKS = np.array(
  [[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]],  # Full, right-padded, gaps anywhere.
  bool,
)


def test_log_partition_and_likelihood_match_enumeration():
  emissions, transitions, start, end = _inputs()
  log_z = crf.log_partition(emissions, transitions, start, end, MASKS)
  rng = np.random.default_rng(1)
  tags = rng.integers(0, C, size=(3, T))
  log_p = crf.log_likelihood(emissions, tags, transitions, start, end, MASKS)
  for b in range(3):
    positions, scores = _brute_scores(emissions[b], transitions, start, end, MASKS[b])
    expected_z = np.log(np.sum(np.exp(list(scores.values()))))
    np.testing.assert_allclose(log_z[b], expected_z, rtol=1e-5)
    gold = scores[tuple(int(tags[b, t]) for t in positions)]
    np.testing.assert_allclose(log_p[b], gold - expected_z, rtol=1e-5, atol=1e-5)
  # The probabilities of all sequences sum to one (for the full row).
  all_tags = np.array(list(itertools.product(range(C), repeat=T)))
  rows = np.broadcast_to(emissions[:1], (len(all_tags), T, C))
  log_ps = crf.log_likelihood(rows, all_tags, transitions, start, end)
  np.testing.assert_allclose(np.exp(log_ps).sum(), 1.0, rtol=1e-5)


def test_viterbi_matches_enumeration_and_zeroes_masked_positions():
  for seed in range(4):
    emissions, transitions, start, end = _inputs(seed)
    tags, score = jax.jit(crf.viterbi)(emissions, transitions, start, end, MASKS)
    for b in range(3):
      positions, scores = _brute_scores(emissions[b], transitions, start, end, MASKS[b])
      best = max(scores, key=scores.get)
      assert tuple(int(tags[b, t]) for t in positions) == best
      np.testing.assert_allclose(score[b], scores[best], rtol=1e-5)
      assert not np.asarray(tags[b])[~MASKS[b]].any()


def test_a_row_with_no_tokens_scores_zero_with_finite_gradients():
  emissions, transitions, start, end = _inputs()
  mask = MASKS.copy()
  mask[1] = False
  tags = np.zeros((3, T), int)

  def loss(emissions, transitions):
    return -crf.log_likelihood(emissions, tags, transitions, start, end, mask).sum()

  log_p = crf.log_likelihood(emissions, tags, transitions, start, end, mask)
  assert log_p[1] == 0.0 and np.all(np.asarray(log_p) <= 0.0)
  grads = jax.grad(loss, argnums=(0, 1))(jnp.asarray(emissions), jnp.asarray(transitions))
  assert all(np.isfinite(g).all() for g in grads)
  assert not np.asarray(grads[0][1]).any()  # No tokens: no gradient to their emissions.
  decoded, score = crf.viterbi(emissions, transitions, start, end, mask)
  assert not np.asarray(decoded[1]).any() and score[1] == 0.0


def test_bfloat16_emissions_give_finite_float32_results():
  emissions, transitions, start, end = _inputs()
  log_p = crf.log_likelihood(
    jnp.asarray(emissions, jnp.bfloat16), np.zeros((3, T), int), transitions, start, end, MASKS
  )
  assert log_p.dtype == jnp.float32 and np.isfinite(log_p).all()


def test_iob2_constraints_forbid_inside_without_its_begin():
  names = ("O", "B-person", "I-person", "B-location", "I-location")
  allowed, start = crf.iob2_constraints(names)
  assert start.tolist() == [True, True, False, True, False]
  assert allowed[1, 2] and allowed[2, 2] and not allowed[0, 2] and not allowed[3, 2]
  assert allowed[:, [0, 1, 3]].all()
  # With the constraints added, Viterbi never decodes a forbidden move even when emissions want it.
  emissions = np.zeros((1, 3, 5), np.float32)
  emissions[0, :, 2] = 5.0  # I-person everywhere.
  penalty = np.where(allowed, 0.0, crf.FORBIDDEN).astype(np.float32)
  tags, _ = crf.viterbi(emissions, penalty, np.where(start, 0.0, crf.FORBIDDEN), np.zeros(5))
  assert tags[0].tolist() == [1, 2, 2]


def test_wrong_shapes_are_one_error_naming_them():
  emissions, transitions, start, end = _inputs()
  with pytest.raises(ValueError, match=r"transitions must be \(3, 3\)"):
    crf.log_partition(emissions, transitions[:2], start, end)
  with pytest.raises(ValueError, match="emissions must be"):
    crf.viterbi(emissions[0], transitions, start, end)
  with pytest.raises(ValueError, match="mask must be bool"):
    crf.log_partition(emissions, transitions, start, end, MASKS.astype(int))
  with pytest.raises(ValueError, match="tags must be"):
    crf.log_likelihood(emissions, np.zeros((3, 2), int), transitions, start, end)
