"""Tests for attn/train/evaluate.py: early stopping keeps each seed's best parameters by the main
metric's direction and stops after `patience` evaluations without improvement; the largest-logit
summary. (The Evaluator itself runs in every training test: tests/train/test_loop.py.)"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.train import evaluate, objectives, sharding, steps


def _early(patience: int, main_metric: str) -> evaluate.EarlyStopping:
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  compiled = types.SimpleNamespace(
    keep_best=jax.jit(jax.vmap(steps.keep_best)), replicated=sharding.replicated(mesh)
  )
  return evaluate.EarlyStopping(patience, objectives.Seq2Seq(main_metric), compiled)


def _state(step: int, params: float, best=None) -> steps.TrainState:
  """Two seeds' states whose parameter is `params`."""
  zero = jnp.zeros(2, jnp.int32)
  if best is None:
    best = {"params": jnp.zeros(2), "score": jnp.full(2, -jnp.inf), "step": zero, "since": zero}
  return steps.TrainState(jnp.full(2, step, jnp.int32), jnp.full(2, params), None, None, best)


@pytest.mark.parametrize(
  ("metric", "values", "best_step", "stopped_after"),
  [
    ("loss", [3.0, 2.0, 2.5, 2.1], 1, 3),  # Lower is better: step 1's 2.0; two without, stop.
    ("accuracy", [0.1, 0.5, 0.4, 0.45], 1, 3),  # Higher is better: step 1's 0.5.
    ("loss", [3.0, 2.0, 1.0, 0.5], 3, None),  # Always improving: never stops.
  ],
)
def test_early_stopping_keeps_the_best_by_the_metrics_direction(
  metric, values, best_step, stopped_after
):
  early = _early(2, metric)
  state = _state(0, 0.0)
  stopped_at = None
  for step, value in enumerate(values):
    state = _state(step, float(step), state.best)
    state = early.update(state, {metric: [value, value]})
    if early.stopped(state) and stopped_at is None:
      stopped_at = step
  assert stopped_at == stopped_after
  np.testing.assert_array_equal(state.best["step"], [best_step, best_step])
  np.testing.assert_array_equal(state.best["params"], [best_step, best_step])  # Its parameters.


def test_no_patience_never_stops_and_changes_nothing():
  early = _early(0, "loss")
  state = _state(0, 0.0)
  assert not early and not early.stopped(state)
  assert early.update(state, {"loss": [1.0, 1.0]}) is state


def test_largest_logit_of_a_model_without_attention_is_absent():
  assert evaluate.largest_logit({"encoder/layer_0/grad_norm": [1.0]}) == {}
  assert evaluate.largest_logit({"a/max_logit": [1.0, 5.0], "b/max_logit": [2.0, 3.0]}) == {
    "max_attention_logit": [2.0, 5.0]
  }
