"""Tests for attn/train/analysis.py on a tiny run (untrained: its initial checkpoint): every number
of analysis.json is there and well formed (importance per layer and head, pruning curves for self and
cross attention, role scores in [0, 1], rollout rows summing to one). launch/analyze.py is tested in
tests/launch/test_analyze.py."""

from __future__ import annotations

import numpy as np
import pytest

from attn import train
from attn.train import analysis
from tests.train.common import ATTENTION_LAYERS, smoke_config, write_untrained_run


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = smoke_config(
    num_train_steps=4, log_every_steps=2, eval_every_steps=4, checkpoint_every_steps=4
  )
  config.num_seeds = 1
  write_untrained_run(config, str(workdir))  # What is analysed needs a run, not a trained one.
  return workdir, analysis.analyze_run(str(workdir), max_examples=8, echo=lambda line: None)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_analysis_has_every_number(analyzed):
  _, result = analyzed
  assert result["num_examples"] == 8 and result["kind"] == "seq2seq"
  assert sorted(result["importance"]) == sorted(ATTENTION_LAYERS)
  for scores in result["importance"].values():
    assert len(scores["normalized"]) == len(scores["ablation"]) == 4  # The smoke model's 4 heads.
    assert np.linalg.norm(scores["normalized"]) == pytest.approx(1.0, abs=1e-6)
  assert set(result["pruning"]) == {"self", "cross", "all"}
  for label, heads_of_kind in (("self", 8), ("cross", 4), ("all", 12)):
    curve = result["pruning"][label]
    assert curve[0]["fraction"] == 0.0 and curve[-1]["fraction"] == 1.0
    assert curve[-1]["pruned"] == heads_of_kind
    assert all(0.0 <= point["metric"] <= 1.0 for point in curve)
  assert curve[0]["metric"] == pytest.approx(result["accuracy"])
  for scores in (*result["roles"].values(), *result["roles_at_init"].values()):
    for values in scores.values():
      assert all(-1e-6 <= v <= 1.0 + 1e-6 for v in values)
  assert sorted(result["roles"]) == ["decoder/layer_0/self_attention", "encoder/layer_0/self_attention"]
  for example in result["rollouts"]:
    np.testing.assert_allclose(np.asarray(example["rollout"]).sum(-1), 1.0, atol=1e-5)
  assert result["entity_types"] == [] and result["class_attention"] == {}  # Not a tagging task.
  assert result["circuits"] is None  # Not a language model.
  titles = [view["title"].split(": ")[1] for view in result["attention_views"]]
  assert titles == ["encoder self-attention", "decoder self-attention", "cross-attention"]
  for view in result["attention_views"]:
    patterns = np.asarray(view["patterns"])
    assert patterns.shape[2:] == (len(view["query_tokens"]), len(view["key_tokens"]))
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-3)


def test_iob2_tags_give_entity_types_and_others_none():
  types, of_tag = analysis._entity_types(("O", "B-location", "I-location", "B-person", "I-person"))
  assert types == ["location", "person"] and of_tag.tolist() == [-1, 0, 0, 1, 1]
  assert analysis._entity_types(("positive", "negative")) is None


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_token_importance_correlates_each_measure_with_ablation():
  """On an untrained cue tagger: every measure gives one correlation per example, in [-1, 1]; with
  one layer, rollout and raw attention rank the tokens alike."""
  import jax
  import jax.numpy as jnp

  from experiments import cue

  config = cue.get_config("smoke")
  config.model.num_encoder_layers = 1
  run = train.build_run(config)
  task, model = run.task, run.model
  batch = jax.tree.map(jnp.asarray, task.eval_batches(8)[0])
  params = model.init(jax.random.PRNGKey(0), batch["tokens"])["params"]
  result = analysis.token_importance(model, params, batch, task.vocab.unk_id, run.objective)
  assert result["examples"] == 8
  for name in ("rollout", "raw_attention", "input_gradient"):
    values = np.asarray(result["per_example"][name])
    assert values.shape == (8,) and np.all(np.abs(values[np.isfinite(values)]) <= 1.0 + 1e-9)
  np.testing.assert_allclose(result["per_example"]["rollout"], result["per_example"]["raw_attention"])


@pytest.mark.slow  # One compiled training step.
def test_on_a_crf_tagger_the_analysis_loss_is_the_training_steps_loss():
  """Head importance and pruning rank heads by the loss the model trains with: for a CRF tagger the
  sentence's negative log-likelihood per token (not the cross-entropy of its emissions), and by the
  accuracy of Viterbi's tags (not the emissions' argmax)."""
  import functools

  import jax
  import jax.numpy as jnp

  from attn.nn import heads
  from attn.train import objectives
  from experiments import cue

  config = cue.get_config("smoke")
  config.model.crf = "free"
  config.model.dropout_rate = 0.0
  config.model.num_encoder_layers = 1
  run = train.build_run(config)
  assert isinstance(run.objective, objectives.CRFTagging)
  batch = jax.tree.map(jnp.asarray, run.task.train_batch(0, 1))  # One sentence: mean = batch loss.
  state = jax.jit(run.state_initializer())(jax.random.PRNGKey(0))
  params = state.params
  for i, name in enumerate(("transitions", "start", "end")):  # Scores that change the likelihood.
    shape = params["crf"][name].shape
    params["crf"][name] = jax.random.normal(jax.random.PRNGKey(2 + i), shape)
  state = state.replace(params=params)
  step = functools.partial(
    train.train_step,
    model=run.model,
    optimizer=run.optimizer,
    objective=run.objective,
    label_smoothing=run.train.label_smoothing,
  )
  _, metrics = jax.jit(step)(state, batch)

  loss_fn, accuracy_fn = analysis.loss_and_metric(run.model, params, run.objective)
  gates = heads.head_gates(params)
  np.testing.assert_allclose(loss_fn(gates, batch), [metrics["loss"]], rtol=1e-5)
  assert accuracy_fn(gates, [batch]) == pytest.approx(float(metrics["accuracy"]), rel=1e-6)
  # Not the per-token cross-entropy over the emissions that analysis used to score a CRF with.
  plain = objectives.Tagging("f1")
  emissions = run.model.apply({"params": params}, batch["tokens"])
  cross_entropy = plain.example_losses(emissions, batch["tags"], batch["weights"])
  assert abs(float(cross_entropy[0]) - float(metrics["loss"])) > 1e-3


def test_a_model_without_attention_is_refused_naming_the_workdir(tmp_path):
  # It was a KeyError ('encoder') from deep inside the analysis.
  from experiments import cue

  config = cue.get_config("smoke")
  config.num_seeds = 1
  config.model.num_encoder_layers = 0
  write_untrained_run(config, str(tmp_path))
  with pytest.raises(train.ConfigError, match=r"^--workdir: the model of .* has no attention layer"):
    analysis.analyze_run(str(tmp_path), max_examples=4, echo=lambda _: None)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  """An untrained smoke run of the induction task: a 2-layer attention-only language model."""
  from experiments import induction

  workdir = tmp_path_factory.mktemp("lm")
  write_untrained_run(induction.get_config("smoke"), str(workdir))
  return str(workdir)


@pytest.mark.slow  # Compiles the circuits' programs (~10 s on 2 cores).
def test_a_language_model_gets_a_consistent_circuits_report(lm_run):
  result = analysis.analyze_run(lm_run, max_examples=16, echo=lambda _: None)
  circuits = result["circuits"]
  L, H = 2, 2  # The smoke model's layers and heads.
  repeated = circuits["repeated"]
  assert repeated["tokens"][0] == "<bos>" and repeated["start"] == 1
  n = repeated["segment_length"]
  assert repeated["tokens"][1 : 1 + n] == repeated["tokens"][1 + n : 1 + 2 * n]
  for kind in (*analysis.detectors.HEAD_KINDS, "induction_score"):
    scores = np.asarray(circuits["detectors"][kind])
    assert scores.shape == (L, H) and np.all((scores >= -1e-6) & (scores <= 1 + 1e-6)), kind

  # The lens of the last residual is the model itself: its loss, and agreeing everywhere.
  lensed = circuits["logit_lens"]
  assert lensed["names"] == ["blocks.0.resid_pre", "blocks.1.resid_pre", "blocks.1.resid_post"]
  assert lensed["loss"][-1] == pytest.approx(lensed["model_loss"], abs=1e-5)
  assert lensed["top1_agreement"][-1] == 1.0

  # Direct logit attribution: the components sum to the logit, in the residual's order.
  dla = circuits["dla"]
  assert abs(dla["sum"] - dla["logit"]) < 1e-4
  names = list(dla["components"])
  assert names[0] == "embed" and names[-1] == "constant" and "blocks.1.attn.head_1" in names
  assert dla["tokens"][0] == "<bos>" and dla["position"] == len(dla["tokens"]) - 1

  # Patching the default pair: clean = the repeat without its last token, corrupted = the second
  # copy resampled; where the two runs agree (BOS and the first copy) patching resid_pre changes
  # nothing.
  patched = circuits["patching"]
  assert patched["default_pair"] and len(patched["clean_tokens"]) == 2 * n
  resid = np.asarray(patched["resid_pre"])
  assert resid.shape == (L, 2 * n)
  np.testing.assert_allclose(resid[0, : 1 + n], patched["corrupt_metric"], atol=1e-5)
  assert np.asarray(patched["heads"]).shape == np.asarray(patched["heads_attribution"]).shape == (L, H)
  assert patched["spearman"] is None or -1.0 <= patched["spearman"] <= 1.0
  assert patched["clean_metric"] <= 0.0 and patched["corrupt_metric"] <= 0.0  # Log-probabilities.

  titles = [view["title"] for view in result["attention_views"]]
  assert titles == [
    "first example: decoder self-attention",
    "repeated random tokens: decoder self-attention",
  ]
  for view in result["attention_views"]:
    patterns = np.asarray(view["patterns"])
    assert patterns.shape == (L, H, len(view["query_tokens"]), len(view["key_tokens"]))
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-3)


@pytest.mark.slow  # Restores a run.
def test_prompts_are_encoded_and_refused_in_one_line_naming_the_flag(lm_run):
  from attn.train import setup

  run, _ = setup.restore_run(lm_run)
  prompt, pair = analysis.encode_prompts(run.task, run.model, "1 2 3", "1 2", "1 3")
  assert prompt.tolist() == run.task.vocab.encode(["1", "2", "3"]).tolist()
  assert [p.tolist() for p in pair] == [[5, 6], [5, 7]]
  assert analysis.encode_prompts(run.task, run.model, "", None, None)[0].tolist() == [1]  # BOS.
  for args, message in (
    (("1", "1 2", "1"), r"^--clean, --corrupt: the pair must have one token length, got 2 and 1"),
    ((None, "1 2", None), r"^--clean, --corrupt: give both"),
    (("1 " * 40, None, None), r"^--prompt: 40 tokens, more than the model's max_length 32"),
  ):
    with pytest.raises(train.ConfigError, match=message):
      analysis.encode_prompts(run.task, run.model, *args)
  with pytest.raises(train.ConfigError, match=r"^--prompt: .* holds a seq2seq run"):
    workdir = pytest.importorskip("pathlib").Path(lm_run).parent / "seq2seq"
    config = smoke_config()
    config.num_seeds = 1
    write_untrained_run(config, str(workdir))
    analysis.analyze_run(str(workdir), prompt="1", echo=lambda _: None)
