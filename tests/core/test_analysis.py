"""Tests for attn/core/analysis.py: rollout rows sum to one and compose layer by layer, flow agrees
with one layer's mixing, and each head-role detector scores a hand-built head of that role near 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.core import analysis


def _random_weights(key, shape):
  return jax.nn.softmax(jax.random.normal(key, shape) * 2, axis=-1)


def test_rollout_rows_sum_to_one_and_compose_the_residual_mixings():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  layers = [_random_weights(k, (2, 4, 6, 6)) for k in keys]  # [B, H, T, T] each.
  rollout = analysis.attention_rollout(layers)
  assert rollout.shape == (2, 6, 6)
  np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-6)
  mix = [0.5 * w.mean(1) + 0.5 * jnp.eye(6) for w in layers]  # Rows already sum to 1.
  np.testing.assert_allclose(rollout, mix[2] @ mix[1] @ mix[0], atol=1e-6)
  # Heads that attend only to themselves leave every token its own: the identity.
  eye = jnp.broadcast_to(jnp.eye(5), (3, 5, 5))
  np.testing.assert_allclose(analysis.attention_rollout([eye, eye]), jnp.eye(5), atol=1e-7)


def test_cross_rollout_rows_sum_to_one_and_follow_the_cross_attention():
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  self_w = [_random_weights(k, (2, 5, 5)) for k in keys[:2]]
  cross_w = [_random_weights(k, (2, 5, 7)) for k in keys[2:]]
  out = analysis.cross_rollout(self_w, cross_w)
  assert out.shape == (5, 7)
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)
  # Every head of every layer reading source token 3 only: all the target's share goes there.
  one_hot = jnp.zeros((2, 5, 7)).at[..., 3].set(1.0)
  np.testing.assert_allclose(analysis.cross_rollout(self_w, [one_hot, one_hot])[:, 3], 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="one cross-attention per decoder layer"):
    analysis.cross_rollout(self_w, cross_w[:1])


def test_flow_through_one_layer_is_that_layers_mixing():
  w = _random_weights(jax.random.PRNGKey(2), (3, 4, 4))
  flow = analysis.attention_flow([w])
  np.testing.assert_allclose(flow, analysis.residual_mixing(w), atol=1e-6)
  two = analysis.attention_flow([w, w])
  assert two.shape == (4, 4) and np.all(two >= 0) and np.all(two <= 1.0 + 1e-9)


def _shifted(T, offset):
  """Weights [1, 1, T, T] that put each row's mass on key t - offset (key 0 where t < offset)."""
  t = np.arange(T)
  w = np.zeros((T, T))
  w[t, np.maximum(t - offset, 0)] = 1.0
  return jnp.asarray(w)[None, None]


def test_each_detector_scores_a_hand_built_head_of_its_role_near_one():
  T = 12
  previous, diagonal = _shifted(T, 1), _shifted(T, 0)
  first = jnp.zeros((1, 1, T, T)).at[..., 0].set(1.0)
  uniform = jnp.full((1, 1, T, T), 1.0 / T)
  heads = jnp.concatenate([previous, diagonal, first, uniform], axis=1)  # [1, 4, T, T]
  scores = analysis.head_role_scores(heads)
  np.testing.assert_allclose(scores["previous_token"], [1.0, 0.0, 1.0 / (T - 1), 1.0 / T], atol=1e-6)
  # Row 0 of the previous-token head has no previous key and sits on key 0, its own.
  np.testing.assert_allclose(scores["self"], [1.0 / T, 1.0, 1.0 / T, 1.0 / T], atol=1e-6)
  np.testing.assert_allclose(scores["first_token"], [2.0 / T, 1.0 / T, 1.0, 1.0 / T], atol=1e-6)
  assert float(scores["local"][0]) == pytest.approx(1.0) and float(scores["local"][3]) < 0.5
  # Padding rows are not scored: a head that is a previous-token head on the real rows scores 1.
  valid = jnp.arange(T)[None, :] < 6
  noisy = previous.at[..., 6:, :].set(1.0 / T)
  assert float(analysis.head_role_scores(noisy, valid)["previous_token"][0]) == pytest.approx(1.0)


def test_class_attention_is_the_share_a_class_gives_its_own_class():
  # Tokens: classes [0, 0, 1, -1]; head 0 attends within the class, head 1 uniformly.
  classes = jnp.array([[0, 0, 1, -1]])
  within = jnp.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0.25, 0.25, 0.25, 0.25]])
  weights = jnp.stack([within, jnp.full((4, 4), 0.25)])[None]  # [1, 2, 4, 4]
  scores = analysis.class_attention(weights, classes, classes, num_classes=2)
  np.testing.assert_allclose(scores, [[1.0, 1.0], [0.5, 0.25]], atol=1e-6)


def test_spearman_ranks_with_ties_and_refuses_mismatched_shapes():
  assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert analysis.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  # Ties get their average rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3).
  expected = np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1]
  assert analysis.spearman([1, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(expected)
  assert np.isnan(analysis.spearman([1, 1, 1], [1, 2, 3]))
  with pytest.raises(ValueError, match="spearman: needs two 1-D arrays"):
    analysis.spearman([1, 2], [1, 2, 3])
