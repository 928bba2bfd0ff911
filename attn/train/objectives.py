"""What a kind of task means to training: one `Objective` per kind, asked by the steps, the evaluator,
`attn.train.analysis` and the launchers instead of string checks on a task's kind.

| objective | model | inputs -> targets | loss | predictions |
|---|---|---|---|---|
| `Seq2Seq` | `Transformer` | (src, tgt_in) -> tgt_out | token cross-entropy | argmax |
| `Tagging` | `EncoderTagger` | (tokens[, features[, chars]]) -> tags | token cross-entropy | argmax |
| `CRFTagging` | `EncoderTagger` with a CRF | the same | the CRF's sentence NLL | Viterbi |
| `LanguageModeling` | `LanguageModel` | (tokens,) -> targets | token cross-entropy | argmax |
| `Denoising` | `EncoderTagger` (vocabulary classes) | corrupted -> original | as tagging | argmax |

Every loss is a sum over the batch that the caller divides by the weight sum (the real target
tokens), so a batch padded with zero-weight rows scores what it would without them. The main metric
(the task's) and its direction (`attn.runs.metrics.higher_is_better`, the one rule compare uses)
decide early stopping and which sweep point is best.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn.core import crf
from attn.nn.config import ModelConfig
from attn.nn.models import EncoderTagger, LanguageModel, Transformer
from attn.runs import metrics as run_metrics
from attn.train.config import ConfigError


def token_losses(logits, targets, label_smoothing: float):
  """(smoothed cross-entropy, plain cross-entropy) per token, in float32."""
  logits = logits.astype(jnp.float32)
  plain = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if label_smoothing == 0.0:
    return plain, plain
  labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, labels), plain


def _per_seed(x) -> list[float]:
  return [float(v) for v in np.asarray(x).reshape(-1)]


@dataclasses.dataclass(frozen=True)
class Objective:
  """Token cross-entropy over a model's logits; subclasses say the model, inputs and extras.

  Attributes:
    main_metric: the eval metric that early stopping, sweeps and compare tables rank by.
  """

  main_metric: str
  name: ClassVar[str] = ""
  model_class: ClassVar[type] = type(None)

  @property
  def higher_is_better(self) -> bool:
    return run_metrics.higher_is_better(self.main_metric)

  def score_sign(self) -> float:
    """+1 or -1: the main metric times this is larger when better (what early stopping keeps)."""
    return 1.0 if self.higher_is_better else -1.0

  def build_model(self, model_config: ModelConfig, **kwargs):
    return self.model_class(model_config, **kwargs)

  target_key: ClassVar[str] = ""  # The batch entry the model predicts.

  def inputs(self, batch: dict) -> tuple:
    """The model's positional inputs from a batch."""
    raise NotImplementedError

  def inputs_and_targets(self, batch: dict) -> tuple[tuple, Any]:
    return self.inputs(batch), batch[self.target_key]

  def logits(self, outputs):
    """The per-token scores [..., C] in a model's outputs (a tagger's `TaggerOutput.logits`)."""
    return getattr(outputs, "logits", outputs)

  def loss_sums(self, outputs, targets, weights, *, label_smoothing: float = 0.0):
    """(smoothed loss sum, plain loss sum, predictions) of a model's outputs on one batch."""
    logits = self.logits(outputs)
    smoothed, plain = token_losses(logits, targets, label_smoothing)
    return jnp.sum(smoothed * weights), jnp.sum(plain * weights), jnp.argmax(logits, -1)

  def example_losses(self, outputs, targets, weights):
    """[B] each example's plain loss per weighted token (what head importance differentiates)."""
    _, plain = token_losses(self.logits(outputs), targets, 0.0)
    return jnp.sum(plain * weights, -1) / jnp.maximum(jnp.sum(weights, -1), 1.0)

  def predictions(self, outputs, weights):
    """The model's predicted targets (argmax; Viterbi for a CRF)."""
    del weights
    return jnp.argmax(self.logits(outputs), -1)

  def eval_sums(self, outputs, batch: dict) -> dict:
    """Sums over one eval batch (rows with zero weight count for nothing); `reduce` divides."""
    _, targets = self.inputs_and_targets(batch)
    weights = batch["weights"]
    _, plain, predictions = self.loss_sums(outputs, targets, weights)
    correct = (predictions == targets) | (weights == 0)
    return {
      "loss_sum": plain,
      "weight_sum": weights.sum(),
      "correct_sum": jnp.sum(correct * weights),
    }

  def reduce(self, totals: dict) -> dict[str, list[float]]:
    """The eval metrics, one value per seed, from the eval sums added over the eval set."""
    totals = jax.tree.map(np.asarray, totals)
    return {
      "loss": _per_seed(totals["loss_sum"] / np.maximum(totals["weight_sum"], 1)),
      "accuracy": _per_seed(totals["correct_sum"] / np.maximum(totals["weight_sum"], 1)),
    }


@dataclasses.dataclass(frozen=True)
class Seq2Seq(Objective):
  """The encoder-decoder on (src, tgt_in) -> tgt_out; eval adds whole-sequence accuracy."""

  name: ClassVar[str] = "seq2seq"
  model_class: ClassVar[type] = Transformer

  target_key: ClassVar[str] = "tgt_out"

  def inputs(self, batch):
    return batch["src"], batch["tgt_in"]

  def eval_sums(self, outputs, batch):
    sums = super().eval_sums(outputs, batch)
    _, targets = self.inputs_and_targets(batch)
    weights = batch["weights"]
    correct = (self.predictions(outputs, weights) == targets) | (weights == 0)
    real_row = weights.sum(-1) > 0
    sums["sequence_correct_sum"] = jnp.sum(jnp.all(correct, -1) & real_row)
    sums["sequence_count"] = jnp.sum(real_row)
    return sums

  def reduce(self, totals):
    out = super().reduce(totals)
    totals = jax.tree.map(np.asarray, totals)
    out["sequence_accuracy"] = _per_seed(
      totals["sequence_correct_sum"] / np.maximum(totals["sequence_count"], 1)
    )
    return out


@dataclasses.dataclass(frozen=True)
class Tagging(Objective):
  """A tag per token from the encoder tagger (hashed features and characters when the batch has
  them)."""

  name: ClassVar[str] = "tagging"
  model_class: ClassVar[type] = EncoderTagger

  target_key: ClassVar[str] = "tags"

  def inputs(self, batch):
    if "chars" in batch:  # Each word's characters [B, T, W] (attn.tasks.ner with max_chars).
      return batch["tokens"], batch.get("features"), batch["chars"]
    if "features" in batch:  # Optional hashed per-token features [B, T, F] (attn.tasks.ner).
      return batch["tokens"], batch["features"]
    return (batch["tokens"],)


@dataclasses.dataclass(frozen=True)
class CRFTagging(Tagging):
  """A tagger whose logits are a linear-chain CRF's emissions (`ModelConfig.crf`): the loss is each
  sentence's negative log-likelihood of its tags (no label smoothing), predictions are Viterbi's."""

  name: ClassVar[str] = "crf_tagging"

  @staticmethod
  def _scores(outputs):
    if getattr(outputs, "crf", None) is None:
      raise ValueError("CRFTagging: the model's outputs carry no CRF scores (config.model.crf)")
    return outputs.crf

  def loss_sums(self, outputs, targets, weights, *, label_smoothing: float = 0.0):
    del label_smoothing
    mask = weights > 0
    nll = -jnp.sum(crf.log_likelihood(outputs.logits, targets, *self._scores(outputs), mask))
    return nll, nll, self.predictions(outputs, weights)

  def example_losses(self, outputs, targets, weights):
    nll = -crf.log_likelihood(outputs.logits, targets, *self._scores(outputs), weights > 0)
    return nll / jnp.maximum(jnp.sum(weights, -1), 1.0)

  def predictions(self, outputs, weights):
    return crf.viterbi(outputs.logits, *self._scores(outputs), weights > 0)[0]


@dataclasses.dataclass(frozen=True)
class Denoising(Tagging):
  """`config.objective = "denoise"` (attn.tasks.denoise): the tagger restores corrupted input tokens;
  the weights are 1 at the corrupted positions only, so accuracy is the masked-token accuracy."""

  name: ClassVar[str] = "denoise"


@dataclasses.dataclass(frozen=True)
class LanguageModeling(Objective):
  """Next-token prediction; eval adds perplexity and, when the batches count the characters their
  targets spell, bits per character."""

  name: ClassVar[str] = "lm"
  model_class: ClassVar[type] = LanguageModel

  target_key: ClassVar[str] = "targets"

  def inputs(self, batch):
    return (batch["tokens"],)

  def eval_sums(self, outputs, batch):
    sums = super().eval_sums(outputs, batch)
    if "characters" in batch:
      sums["character_sum"] = jnp.sum(batch["characters"])
    return sums

  def reduce(self, totals):
    out = super().reduce(totals)
    totals = jax.tree.map(np.asarray, totals)
    out["perplexity"] = [math.exp(min(x, 700.0)) for x in out["loss"]]  # exp(710) overflows.
    if "character_sum" in totals:
      nats_per_char = totals["loss_sum"] / np.maximum(totals["character_sum"], 1)
      out["bits_per_char"] = _per_seed(nats_per_char / math.log(2))
    return out


KINDS = {"seq2seq": Seq2Seq, "tagging": Tagging, "lm": LanguageModeling}


def objective_for(task, model_config: ModelConfig, objective: str = "supervised") -> Objective:
  """The objective of a task (its `kind` and `main_metric`) under `config.objective`, with a CRF when
  the model config asks for one.

  Raises:
    ConfigError: for a task kind no objective trains.
  """
  kind = task.kind
  if kind not in KINDS:
    raise ConfigError(f"config.task: task kind {kind!r} has no objective; expected one of {list(KINDS)}")
  main_metric = task.main_metric
  if kind == "tagging" and model_config.crf != "none":
    return CRFTagging(main_metric)
  if objective == "denoise":
    return Denoising(main_metric)
  return KINDS[kind](main_metric)
