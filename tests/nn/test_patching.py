"""Tests for attn/nn/patching.py: vmapped activation patching equals a loop of hooked runs, patching
every position restores the clean metric, and attribution patching equals activation patching where
the metric is linear in the patched activation (the test TransformerLens' maintainers ask for)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn import hooks, models, patching
from attn.nn.config import ModelConfig

CLEAN = jnp.array([[1, 5, 6, 7, 5, 6]], jnp.int32)
CORRUPT = jnp.array([[1, 8, 6, 7, 9, 6]], jnp.int32)


@pytest.fixture(scope="module")
def lm():
  config = ModelConfig(
    vocab_size=11, d_model=16, num_heads=2, d_ff=0, num_decoder_layers=2, max_length=16, norm="pre",
    positions="learned", dropout_rate=0.0,
  )  # fmt: skip
  model = models.LanguageModel(config)
  return model, model.init(jax.random.key(0), CLEAN)["params"]


def _metric(logits):
  """A logit difference at the last position: linear in the logits."""
  return logits[:, -1, 3].sum() - logits[:, -1, 4].sum()


def test_vmapped_patching_equals_a_loop_of_hooked_runs(lm):
  model, params = lm
  _, clean = hooks.run_with_cache(model, params, CLEAN)
  grid = patching.activation_patching(
    model, params, (CLEAN,), (CORRUPT,), _metric, ["blocks.0.resid_pre"], "position"
  )
  for t in range(CLEAN.shape[1]):
    value = clean["blocks.0.resid_pre"]
    hook = {"blocks.0.resid_pre": lambda x, t=t, v=value: x.at[:, t].set(v[:, t])}
    expected = _metric(hooks.run_with_hooks(model, params, CORRUPT, hooks=hook))
    np.testing.assert_allclose(grid["blocks.0.resid_pre"][t], expected, rtol=1e-5, atol=1e-6)
  heads = patching.activation_patching(
    model, params, (CLEAN,), (CORRUPT,), _metric, ["blocks.1.attn.z"], "head"
  )
  for h in range(2):
    hook = {"blocks.1.attn.z": lambda x, h=h: x.at[:, :, h].set(clean["blocks.1.attn.z"][:, :, h])}
    expected = _metric(hooks.run_with_hooks(model, params, CORRUPT, hooks=hook))
    np.testing.assert_allclose(heads["blocks.1.attn.z"][h], expected, rtol=1e-5, atol=1e-6)
  both = patching.activation_patching(
    model, params, (CLEAN,), (CORRUPT,), _metric, ["blocks.1.attn.z"], "position_head"
  )
  assert both["blocks.1.attn.z"].shape == (CLEAN.shape[1] * 2,)


def test_patching_every_position_restores_the_clean_run(lm):
  model, params = lm
  clean_logits, clean = hooks.run_with_cache(model, params, CLEAN)
  everything = {"blocks.0.resid_pre": lambda x: clean["blocks.0.resid_pre"]}
  np.testing.assert_allclose(
    _metric(hooks.run_with_hooks(model, params, CORRUPT, hooks=everything)),
    _metric(clean_logits),
    rtol=1e-5,
  )


def test_attribution_equals_activation_patching_where_the_metric_is_linear(lm):
  model, params = lm
  # The logits are linear in ln_final (the unembedding), and the metric in the logits.
  names = ["ln_final"]
  exact = patching.activation_patching(model, params, (CLEAN,), (CORRUPT,), _metric, names, "position")
  approx = patching.attribution_patching(model, params, (CLEAN,), (CORRUPT,), _metric, names, "position")
  np.testing.assert_allclose(approx["ln_final"], exact["ln_final"], rtol=1e-5, atol=1e-5)
  # Where it is not linear (a residual under two attention layers), only an approximation.
  names = ["blocks.0.resid_pre"]
  approx = patching.attribution_patching(model, params, (CLEAN,), (CORRUPT,), _metric, names, "position")
  assert approx["blocks.0.resid_pre"].shape == (CLEAN.shape[1],)
  assert bool(jnp.all(jnp.isfinite(approx["blocks.0.resid_pre"])))


def test_slices_that_do_not_fit_are_one_line(lm):
  model, params = lm
  with pytest.raises(ValueError, match=r"^patching: over must be one of"):
    patching.activation_patching(model, params, (CLEAN,), (CORRUPT,), _metric, ["ln_final"], "layer")
  with pytest.raises(ValueError, match=r"^patching: over='head' needs a per-head activation"):
    patching.activation_patching(model, params, (CLEAN,), (CORRUPT,), _metric, ["ln_final"], "head")
