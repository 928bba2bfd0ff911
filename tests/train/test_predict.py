"""Tests for attn/train/predict.py: the Predictor a task's metrics use gives the model's own logits
(a tagger's too), a CRF tagger's constrained scores (None without a CRF), and greedy translation as
attn.nn.decoding decodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attn import train
from attn.nn import decoding
from attn.train.predict import Predictor
from tests.train.common import smoke_config


def _run_and_params(config):
  run = train.build_run(config)
  params = jax.jit(run.state_initializer())(jax.random.PRNGKey(0)).params
  return run, params


def test_logits_and_crf_scores_of_a_tagger():
  from experiments import cue

  config = cue.get_config("smoke")
  config.model.crf = "free"
  run, params = _run_and_params(config)
  batch = run.task.eval_batches(4)[0]
  predictor = Predictor(run.model, run.objective, params)
  outputs = run.model.apply({"params": params}, jnp.asarray(batch["tokens"]))
  np.testing.assert_allclose(predictor.logits(batch), outputs.logits, atol=1e-5)  # jit vs eager.
  for got, want in zip(predictor.crf_scores(), outputs.crf, strict=True):
    np.testing.assert_array_equal(got, want)
  config.model.crf = "none"
  run, params = _run_and_params(config)
  assert Predictor(run.model, run.objective, params).crf_scores() is None


def test_translate_is_greedy_decoding():
  run, params = _run_and_params(smoke_config())
  src = run.task.eval_batches(4)[0]["src"]
  predictor = Predictor(run.model, run.objective, params)
  want = decoding.greedy_decode(run.model, params, jnp.asarray(src), max_new_tokens=5)
  np.testing.assert_array_equal(predictor.translate(src, max_new_tokens=5), want)
