"""Tests for attn/train/steps.py: the train step's loss against a hand computation, the scale probe
without the scale, and the optional tagging features."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn import train
from tests.train.common import ATTENTION_LAYERS
from tests.train.common import smoke_config as _config


def test_train_step_loss_is_cross_entropy_and_label_smoothing_changes_it():
  # No dropout (the step's loss is then the deterministic one), no layers (quick to compile): the
  # loss only sees the logits.
  config = _config(
    **{"model.dropout_rate": 0.0, "model.num_encoder_layers": 0, "model.num_decoder_layers": 0}
  )
  run = train.build_run(config)
  task, model, optimizer = run.task, run.model, run.optimizer
  batch = jax.tree.map(jnp.asarray, task.train_batch(3, 8))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["src"], batch["tgt_in"])["params"]
  state = train.TrainState(
    jnp.asarray(0, jnp.int32), params, optimizer.init(params), jax.random.PRNGKey(1)
  )

  # The loss by hand, in float64, from the logits of the parameters before the step.
  logits = np.asarray(
    jax.jit(model.apply)({"params": params}, batch["src"], batch["tgt_in"]), np.float64
  )
  logits -= logits.max(-1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets, weights = np.asarray(batch["tgt_out"]), np.asarray(batch["weights"])
  assert 0 < weights.sum() < weights.size  # Some padding, which must not count.
  target_log_probs = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  cross_entropy = -(target_log_probs * weights).sum() / weights.sum()
  alpha, V = 0.1, log_probs.shape[-1]
  smoothed_tokens = -((1 - alpha) * target_log_probs + alpha / V * log_probs.sum(-1))
  smoothed = (smoothed_tokens * weights).sum() / weights.sum()

  def step(label_smoothing):
    fn = functools.partial(
      train.train_step,
      model=model,
      optimizer=optimizer,
      objective=run.objective,
      label_smoothing=label_smoothing,
    )
    new_state, metrics = jax.jit(fn)(state, batch)
    assert int(new_state.step) == 1
    return {k: float(v) for k, v in metrics.items()}

  plain = step(0.0)
  np.testing.assert_allclose(plain["loss"], cross_entropy, rtol=1e-5)
  np.testing.assert_allclose(plain["nll"], cross_entropy, rtol=1e-5)
  with_smoothing = step(alpha)
  np.testing.assert_allclose(with_smoothing["loss"], smoothed, rtol=1e-5)
  np.testing.assert_allclose(with_smoothing["nll"], cross_entropy, rtol=1e-5)  # nll stays unsmoothed.
  assert abs(with_smoothing["loss"] - plain["loss"]) > 1e-3


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_probe_without_scale_has_large_logits():
  config = _config(
    **{"model.scale": "none", "model.head_dim_policy": "fixed_head_dim", "model.head_dim": 64}
  )
  run = train.build_run(config)
  task, model, model_config = run.task, run.model, run.model_config
  batch = task.train_batch(0, 2)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["src"], batch["tgt_in"])["params"]
  probe = jax.jit(functools.partial(train.probe_step, model_config=model_config))(
    params, jax.random.PRNGKey(1)
  )
  assert sorted(probe) == sorted(
    f"{layer}/{name}"
    for layer in ATTENTION_LAYERS
    for name in ("entropy", "logit_std", "max_logit", "max_weight", "sink_rate", "sparsity")
  )
  for layer in ATTENTION_LAYERS:
    assert float(probe[f"{layer}/logit_std"]) > 4, layer
    assert float(probe[f"{layer}/entropy"]) < 3.4, layer


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_crf_tagger_step_loss_is_the_sentences_negative_log_likelihood_per_token():
  from attn.core import crf
  from experiments import cue

  # No encoder layers (quick to compile): the step's loss and the eval sums only see the emissions.
  config = cue.get_config("smoke")
  config.model.crf = "free"
  config.model.dropout_rate = 0.0
  config.model.num_encoder_layers = 0
  run = train.build_run(config)
  task, model, optimizer = run.task, run.model, run.optimizer
  batch = jax.tree.map(jnp.asarray, task.train_batch(0, 8))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["tokens"])["params"]
  params["crf"]["transitions"] = jax.random.normal(
    jax.random.PRNGKey(2), params["crf"]["transitions"].shape
  )
  state = train.TrainState(
    jnp.asarray(0, jnp.int32), params, jax.jit(optimizer.init)(params), jax.random.PRNGKey(1)
  )

  @jax.jit
  def by_hand(params, batch):
    """(each sentence's CRF log-likelihood, its Viterbi tags), from the model's emissions."""
    out = model.apply({"params": params}, batch["tokens"])
    emissions, scores = out.logits, out.crf
    mask = batch["weights"] > 0
    tags, _ = crf.viterbi(emissions, *scores, mask)
    return crf.log_likelihood(emissions, batch["tags"], *scores, mask), tags

  log_likelihood, tags = by_hand(params, batch)
  weights = batch["weights"]
  expected = -log_likelihood.sum() / weights.sum()
  step = functools.partial(
    train.train_step, model=model, optimizer=optimizer, objective=run.objective, label_smoothing=0.1
  )
  _, metrics = jax.jit(step)(state, batch)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)  # No label smoothing for a CRF.
  np.testing.assert_allclose(metrics["nll"], expected, rtol=1e-5)
  sums = jax.jit(functools.partial(train.eval_step, model=model, objective=run.objective))(params, batch)
  np.testing.assert_allclose(sums["loss_sum"], expected * weights.sum(), rtol=1e-5)
  correct = ((tags == batch["tags"]) * weights).sum()
  np.testing.assert_allclose(sums["correct_sum"], correct, rtol=1e-6)


@pytest.mark.parametrize(
  "changes",
  [{"forget_gate": True, "positions": "none"}, {"differential": True}, {"value_residual": "shared"}],
  ids=["forget_gate", "differential", "value_residual_shared"],
)
def test_probe_runs_on_every_language_model_variant(changes):
  """The probe (run at every evaluation) applies each attention layer on its own: forgetting
  attention only exists causally, a differential layer pairs its heads, a shared-value layer has no
  value projection; each gives finite logit statistics."""
  from attn.nn import LanguageModel, ModelConfig

  config = ModelConfig(
    vocab_size=11, d_model=16, num_heads=2, d_ff=0, num_encoder_layers=0, num_decoder_layers=2,
    norm="pre", dropout_rate=0.0, **changes,
  )  # fmt: skip
  tokens = jnp.ones((1, 8), jnp.int32)
  params = LanguageModel(config).init(jax.random.PRNGKey(0), tokens)["params"]
  probe = train.probe_step(params, jax.random.PRNGKey(1), model_config=config, length=8, batch=2)
  layers = {key.rsplit("/", 1)[0] for key in probe}
  assert len(layers) == 2, sorted(probe)
  for key, value in probe.items():
    assert np.isfinite(np.asarray(value)).all(), key
