"""The pure steps of training, each on one seed's state (`attn.train.loop` vmaps them over seeds and
jits them once): `train_step`, `eval_step`, `diagnostics_step` and `probe_step`, and the `TrainState`
they carry. What a batch means (inputs, targets, loss) is the run's `Objective`'s.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from attn.nn import blocks, sharding
from attn.nn.config import ModelConfig
from attn.train.objectives import Objective


@struct.dataclass
class TrainState:
  step: jax.Array  # Steps taken: the next batch is the task's batch of this step.
  params: Any
  opt_state: Any
  rng: jax.Array  # Dropout key; step s uses fold_in(rng, s).
  # Early stopping only (else None): {"params": the best evaluation's, "score": its main metric
  # (negated where lower is better), "step": its step, "since": evaluations without improvement}.
  best: Any = None


def result_params(state: TrainState):
  """The run's parameters: the one definition every reader of a run uses (`restore_run`, so
  `launch.analyze`, `launch.sample` and `launch.attend`, and `config.init_from`). Under early stopping,
  each seed's best evaluation's parameters, those its final metrics were computed on; elsewhere, and
  for a seed not yet evaluated, the last step's. Leaves may carry leading seed axes."""
  if state.best is None:
    return state.params
  evaluated = jnp.isfinite(state.best["score"])  # [seeds...]; -inf until the first evaluation.

  def pick(best, last):
    where = evaluated.reshape(evaluated.shape + (1,) * (best.ndim - evaluated.ndim))
    return jnp.where(where, best, last)

  return jax.tree.map(pick, state.best["params"], state.params)


def state_initializer(model, optimizer, example_inputs, *, keep_best: bool = False, boxed=False):
  """rng -> a fresh TrainState for one seed (parameters from init_rng, dropout from the other half);
  with `keep_best`, also the best-so-far record early stopping keeps. `boxed`: the parameters (and the
  optimizer state that mirrors them) keep their logical axis names as flax partitioning boxes, for
  `nn.get_partition_spec` (see `attn.train.sharding`); else plain arrays."""

  def init_state(rng):
    init_rng, dropout_rng = jax.random.split(rng)
    with sharding.logical_axis_names() if boxed else contextlib.nullcontext():
      params = model.init(init_rng, *example_inputs)["params"]
    best = None
    if keep_best:
      zero = jnp.asarray(0, jnp.int32)
      best = {"params": params, "score": jnp.asarray(-jnp.inf), "step": zero, "since": zero}
    return TrainState(jnp.asarray(0, jnp.int32), params, optimizer.init(params), dropout_rng, best)

  return init_state


def keep_best(state: TrainState, score: jax.Array) -> TrainState:
  """One seed's state after an evaluation scoring `score` (higher is better): the params kept when
  it beats the best so far, else one more evaluation without improvement."""
  best = state.best
  improved = score > best["score"]
  return state.replace(
    best={
      "params": jax.tree.map(lambda b, p: jnp.where(improved, p, b), best["params"], state.params),
      "score": jnp.where(improved, score, best["score"]),
      "step": jnp.where(improved, state.step, best["step"]),
      "since": jnp.where(improved, 0, best["since"] + 1),
    }
  )


def train_step(
  state: TrainState, batch: dict, *, model, optimizer, objective: Objective, label_smoothing: float
):
  """One optimizer step on one seed's state; returns (new state, metrics)."""
  inputs, targets = objective.inputs_and_targets(batch)
  weights = batch["weights"]
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    outputs = model.apply(
      {"params": params}, *inputs, deterministic=False, rngs={"dropout": dropout_rng}
    )
    smoothed, plain, predictions = objective.loss_sums(
      outputs, targets, weights, label_smoothing=label_smoothing
    )
    denom = jnp.maximum(weights.sum(), 1.0)
    return smoothed / denom, (predictions, plain / denom)

  (loss, (predictions, nll)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  correct = (predictions == targets) * weights
  metrics = {
    "loss": loss,
    "nll": nll,
    "accuracy": correct.sum() / jnp.maximum(weights.sum(), 1.0),
    "grad_norm": optax.tree.norm(grads),
  }
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model, objective: Objective) -> dict:
  """Sums over one eval batch (`objective.eval_sums`); the caller adds them up and reduces."""
  inputs, _ = objective.inputs_and_targets(batch)
  return objective.eval_sums(model.apply({"params": params}, *inputs), batch)


def diagnostics_step(params, batch: dict, *, model, objective: Objective) -> dict:
  """Per attention layer: logit std, largest logit, attention entropy and maximum weight on an eval
  batch, and the gradient norms of its query and key projections; per block (`encoder/layer_0`, ...)
  the gradient norm of all its parameters (dropout off)."""
  inputs, targets = objective.inputs_and_targets(batch)
  weights = batch["weights"]

  def loss_fn(params):
    outputs, state = model.apply({"params": params}, *inputs, mutable=["diagnostics"])
    _, plain, _ = objective.loss_sums(outputs, targets, weights)
    # A model without attention layers records nothing.
    return plain / jnp.maximum(weights.sum(), 1.0), state.get("diagnostics", {})

  grads, diagnostics = jax.grad(loss_fn, has_aux=True)(params)
  out = {}
  for path, value in jax.tree_util.tree_leaves_with_path(diagnostics):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    out["/".join(names)] = value  # e.g. encoder/layer_0/self_attention/entropy
  layer_squares: dict[str, jax.Array] = {}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if len(names) >= 2 and names[-2] in ("query", "key") and names[-1] == "kernel":
      out["/".join(names[:-2]) + f"/{names[-2]}_grad_norm"] = jnp.linalg.norm(g)
    layer = _layer_prefix(names)
    if layer is not None:
      layer_squares[layer] = layer_squares.get(layer, 0.0) + jnp.sum(jnp.square(g.astype(jnp.float32)))
  for layer, squares in layer_squares.items():  # Xiong et al. 2020 compare these across depth.
    out[f"{layer}/grad_norm"] = jnp.sqrt(squares)
  return out


def _layer_prefix(names: list[str]) -> str | None:
  """ "encoder/layer_3" for a parameter path inside a block (its first `layer_N` and what precedes
  it), else None."""
  for i, name in enumerate(names):
    if name.startswith("layer_") and name[len("layer_") :].isdigit():
      return "/".join(names[: i + 1])
  return None


def probe_step(params, rng, *, model_config: ModelConfig, length: int = 64, batch: int = 8) -> dict:
  """Each attention layer applied with its own parameters to unit-variance inputs over `length`
  tokens: the logit std and entropy the scale ablation predicts (about 1 and 3.7 nats under
  "sqrt_d" at T=64 whatever K; about sqrt(K) and falling with K under "none")."""
  out = {}
  x_BTD = jax.random.normal(rng, (batch, length, model_config.d_model))

  def visit(tree, path):
    if isinstance(tree, dict) and "query" in tree and "key" in tree:
      cross = bool(path) and path[-1] == "cross_attention"  # No relative positions there.
      layer = blocks.attention_layer(model_config, "probe", cross=cross)
      # Forgetting attention is causal self-attention only: the probe attends causally there.
      causal = bool(getattr(layer, "forget_gate", False))
      _, state = layer.apply({"params": tree}, x_BTD, is_causal=causal, mutable=["diagnostics"])
      for name, value in state["diagnostics"].items():
        out["/".join((*path, name))] = value[0]
      return
    if isinstance(tree, dict):
      for k, v in tree.items():
        visit(v, (*path, k))

  visit(params, ())
  return out
