"""Tests for attn/core/detectors.py: hand-built heads of each kind score 1, the detection patterns
and scores against TransformerLens' own functions on random patterns (when it is installed: the
test extra), and the induction score."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.core import detectors

BOS = 0


def _repeated(L: int, seed: int = 0) -> np.ndarray:
  """[BOS, L distinct random tokens, the same L again]: 2L + 1 tokens."""
  segment = np.random.default_rng(seed).permutation(np.arange(1, 50))[:L]
  return np.concatenate([[BOS], segment, segment]).astype(np.int32)


def _previous_token_head(T: int) -> jnp.ndarray:
  """Query i attends key i - 1 (query 0, which has none, itself)."""
  return jnp.eye(T, k=-1).at[0, 0].set(1.0)


def _induction_head(tokens: np.ndarray) -> jnp.ndarray:
  """A query of the second copy attends the token after its earlier occurrence; the others BOS."""
  T, L = len(tokens), (len(tokens) - 1) // 2
  pattern = np.zeros((T, T), np.float32)
  pattern[:, 0] = 1.0
  for i in range(L + 1, T):
    pattern[i] = 0.0
    pattern[i, i - L + 1] = 1.0
  return jnp.asarray(pattern)


def test_patterns_by_hand():
  tokens = np.array([5, 7, 5, 9, 7, 5], np.int32)
  np.testing.assert_array_equal(detectors.previous_token_pattern(3), [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
  duplicate = np.zeros((6, 6))
  duplicate[2, 0] = duplicate[4, 1] = duplicate[5, 0] = duplicate[5, 2] = 1
  np.testing.assert_array_equal(detectors.duplicate_token_pattern(tokens), duplicate)
  induction = np.zeros((6, 6))  # The key after each earlier occurrence.
  induction[2, 1] = induction[4, 2] = induction[5, 1] = induction[5, 3] = 1
  np.testing.assert_array_equal(detectors.induction_pattern(tokens), induction)


def test_a_previous_token_head_scores_one():
  T = 7
  head = _previous_token_head(T)
  detection = detectors.previous_token_pattern(T)
  # Query 0's attention to itself is off the pattern: (T - 1) / T, unless the diagonal is left out.
  for measure in detectors.ERROR_MEASURES:
    plain = detectors.pattern_score(head, detection, error_measure=measure)
    assert float(plain) == pytest.approx((T - 1) / T)
    score = detectors.pattern_score(head, detection, exclude_current_token=True, error_measure=measure)
    assert float(score) == pytest.approx(1.0)
  uniform = jnp.tril(jnp.ones((T, T))) / jnp.arange(1, T + 1)[:, None]
  assert float(detectors.pattern_score(uniform, detection)) < 0.5


def test_an_induction_head_scores_one_and_its_induction_score_is_one():
  L = 6
  tokens = _repeated(L)
  head = _induction_head(tokens)
  detection = detectors.induction_pattern(tokens)
  score = detectors.pattern_score(head, detection, exclude_bos=True)
  assert float(score) == pytest.approx(1.0)
  # The first copy's attention to BOS counts against it without exclude_bos.
  assert float(detectors.pattern_score(head, detection)) == pytest.approx(L / (2 * L + 1))
  assert float(detectors.induction_score(head, L, start=1)) == pytest.approx(1.0)
  previous = _previous_token_head(len(tokens))
  assert float(detectors.induction_score(previous, L, start=1)) == pytest.approx(0.0)


def test_detect_heads_averages_each_sequences_score_over_the_batch():
  L, H = 5, 3
  tokens = np.stack([_repeated(L, seed) for seed in range(2)])  # [B, T]
  T = tokens.shape[1]
  heads = [
    jnp.stack([_induction_head(t) for t in tokens]),
    jnp.broadcast_to(_previous_token_head(T), (2, T, T)),
    jnp.broadcast_to(jnp.tril(jnp.ones((T, T))) / jnp.arange(1, T + 1)[:, None], (2, T, T)),
  ]
  patterns = jnp.stack(heads, axis=1)[:, None]  # [B, 1 layer, H, T, T]
  scores = detectors.detect_heads(patterns, tokens, "induction_head", exclude_bos=True)
  assert scores.shape == (1, H)
  assert float(scores[0, 0]) == pytest.approx(1.0) and float(scores[0, 1]) == pytest.approx(0.0)
  each = [
    detectors.pattern_score(heads[2][b], detectors.induction_pattern(tokens[b]), exclude_bos=True)
    for b in range(2)
  ]
  assert float(scores[0, 2]) == pytest.approx(float(np.mean(each)), rel=1e-6)


def test_nothing_left_to_score_is_zero_not_nan():
  pattern = jnp.zeros((4, 4)).at[:, 0].set(1.0)  # Every query on BOS, which is excluded.
  score = detectors.pattern_score(pattern, detectors.previous_token_pattern(4), exclude_bos=True)
  assert float(score) == 0.0


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: detectors.pattern_score(jnp.ones((3, 4)), jnp.ones((3, 4))), r"must be \[\.\.\., T, T\]"),
    (
      lambda: detectors.pattern_score(jnp.ones((3, 3)), jnp.ones((3, 3)), error_measure="l2"),
      "error_measure",
    ),
    (lambda: detectors.detection_pattern("copy_head", [1, 2]), "unknown kind 'copy_head'"),
    (lambda: detectors.duplicate_token_pattern(jnp.ones(3)), "tokens must be integers"),
    (lambda: detectors.induction_score(jnp.ones((5, 5)), 3), "does not fit T = 5"),
    (
      lambda: detectors.detect_heads(
        jnp.ones((2, 3, 4, 4)), np.ones((3, 4), np.int32), "induction_head"
      ),
      "detect_heads",
    ),
  ],
)
def test_bad_arguments_are_one_line(call, message):
  with pytest.raises(ValueError, match=message):
    call()


# ----------------------------------------------------------------------------------------------------
# Against TransformerLens itself (the reference implementation, not our reading of it).


def _random_causal_patterns(T: int, n: int, seed: int) -> np.ndarray:
  logits = jax.random.normal(jax.random.key(seed), (n, T, T)) * 2.0
  logits = jnp.where(jnp.tri(T, dtype=bool), logits, -jnp.inf)
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def test_patterns_and_scores_equal_transformer_lens():
  torch = pytest.importorskip("torch")
  tl = pytest.importorskip("transformer_lens.head_detector")
  rng = np.random.default_rng(0)
  for trial in range(4):
    T = 12
    tokens = rng.integers(0, 4, (T,)).astype(np.int32)  # Few token ids: many duplicates.
    theirs_tokens = torch.as_tensor(tokens[None].astype(np.int64))
    ours = {kind: np.asarray(detectors.detection_pattern(kind, tokens)) for kind in detectors.HEAD_KINDS}
    for kind in detectors.HEAD_KINDS:
      theirs = getattr(tl, f"get_{kind}_detection_pattern")(theirs_tokens).numpy()
      np.testing.assert_array_equal(ours[kind], theirs, err_msg=kind)
    for pattern in _random_causal_patterns(T, 3, trial):
      for kind, bos, current, measure in itertools.product(
        detectors.HEAD_KINDS, (False, True), (False, True), detectors.ERROR_MEASURES
      ):
        expected = tl.compute_head_attention_similarity_score(
          torch.as_tensor(pattern.copy()), torch.as_tensor(ours[kind].copy()),
          exclude_bos=bos, exclude_current_token=current, error_measure=measure,
        )  # fmt: skip
        got = float(
          detectors.pattern_score(
            pattern, ours[kind], exclude_bos=bos, exclude_current_token=current, error_measure=measure
          )
        )
        # TransformerLens rounds "abs" to 3 decimals; "mul" is a ratio of float32 sums.
        tolerance = 5e-4 + 1e-6 if measure == "abs" else 1e-5
        assert got == pytest.approx(expected, abs=tolerance), (kind, bos, current, measure)
