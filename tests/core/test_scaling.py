"""Tests for the logit scale choices: attn.resolve_scale and attn.SCALE_CHOICES.

That each choice gives the hand-computed attention output is checked in test_attention.py.
"""

import jax
import numpy as np
import pytest

import attn


def test_scale_choices_are_the_documented_names():
  assert tuple(attn.SCALE_CHOICES) == ("sqrt_d", "none", "d")


@pytest.mark.parametrize(
  ("scale", "expected"),
  [
    ("sqrt_d", 0.25),
    ("none", 1.0),
    ("d", 1.0 / 16),
    (0.37, 0.37),
    (2, 2.0),
    (np.float32(0.5), 0.5),
  ],
)
def test_resolve_scale_values(scale, expected):
  multiplier = attn.resolve_scale(scale, 16)
  assert isinstance(multiplier, float)
  assert multiplier == pytest.approx(expected)


@pytest.mark.parametrize("head_dim", [1, 4, 9, 1024])
def test_named_choices_follow_the_head_dim(head_dim):
  assert attn.resolve_scale("sqrt_d", head_dim) == pytest.approx(1.0 / np.sqrt(head_dim))
  assert attn.resolve_scale("d", head_dim) == pytest.approx(1.0 / head_dim)
  assert attn.resolve_scale("none", head_dim) == 1.0
  assert attn.resolve_scale(0.37, head_dim) == pytest.approx(0.37)  # a number is used as is


def test_sqrt_d_keeps_unit_variance_logits_whatever_the_head_dim():
  """The paper's reason for sqrt_d: unit-variance q and k give unit-variance scaled logits."""
  rng = np.random.default_rng(0)
  for head_dim in (16, 256):
    q, k = rng.normal(size=(2, 20_000, head_dim))
    dots = np.einsum("bk,bk->b", q, k)
    std = {name: np.std(dots * attn.resolve_scale(name, head_dim)) for name in attn.SCALE_CHOICES}
    assert std["sqrt_d"] == pytest.approx(1.0, rel=0.05)
    assert std["none"] == pytest.approx(np.sqrt(head_dim), rel=0.05)
    assert std["d"] == pytest.approx(1.0 / np.sqrt(head_dim), rel=0.05)


@pytest.mark.parametrize("scale", ["sqrtd", "SQRT_D", "", "sqrt"])
def test_unknown_scale_name_raises_listing_the_choices(scale):
  with pytest.raises(ValueError, match="scale: unknown choice") as excinfo:
    attn.resolve_scale(scale, 8)
  message = str(excinfo.value)
  assert repr(scale) in message
  for choice in attn.SCALE_CHOICES:
    assert repr(choice) in message


@pytest.mark.parametrize("scale", [0.0, -0.5, -2, float("inf"), float("nan")])
def test_non_positive_or_non_finite_number_raises(scale):
  with pytest.raises(ValueError, match=r"scale: .*positive") as excinfo:
    attn.resolve_scale(scale, 8)
  assert repr(scale) in str(excinfo.value)


@pytest.mark.parametrize("scale", [True, False, None, b"sqrt_d", [0.5]])
def test_non_numbers_and_bools_raise(scale):
  with pytest.raises(ValueError, match=r"scale: expected one of 'sqrt_d', 'none', 'd'") as excinfo:
    attn.resolve_scale(scale, 8)
  assert type(scale).__name__ in str(excinfo.value)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("scale", ["sqrtd", 0.0, -1.0, True])
def test_public_functions_reject_bad_scales_at_trace_time(scale, use_jit):
  q_T1K = np.zeros((3, 1, 8), np.float32)
  calls = [
    lambda q: attn.dot_product_attention(q, q, q, scale=scale),
    lambda q: attn.attention_weights(q, q, scale=scale),
    lambda q: attn.self_attention(q[:, 0], scale=scale),
  ]
  for call in calls:
    with pytest.raises(ValueError, match="scale"):
      (jax.jit(call) if use_jit else call)(q_T1K)
