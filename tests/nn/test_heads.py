"""Tests for attn/nn/heads.py and the gates of MultiHeadAttention: a gate of 1 changes nothing, a gate
of 0 is a head whose out-projection rows are zero, importance finds the one useful head (sign and
scale), and pruning removes the useless heads first."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn import heads
from attn.nn.attention import MultiHeadAttention
from attn.nn.config import ModelConfig
from attn.nn.models import Transformer

H = 4


def _transformer():
  config = ModelConfig(
    vocab_size=11, d_model=16, num_heads=H, d_ff=32, num_encoder_layers=2, num_decoder_layers=1
  )
  model = Transformer(config)
  src, tgt = jnp.arange(1, 7)[None] % 11, jnp.arange(2, 7)[None] % 11
  params = model.init(jax.random.PRNGKey(0), src, tgt)["params"]
  return model, params, src, tgt


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_gates_tree_is_keyed_like_the_parameters_by_layer_and_kind():
  _, params, _, _ = _transformer()
  paths = heads.attention_paths(params)
  assert paths == [
    ("decoder", "layer_0", "cross_attention"),
    ("decoder", "layer_0", "self_attention"),
    ("encoder", "layer_0", "self_attention"),
    ("encoder", "layer_1", "self_attention"),
  ]
  assert [heads.kind_of(p) for p in paths] == ["cross", "decoder_self", "encoder_self", "encoder_self"]
  gates = heads.head_gates(params)
  assert gates["encoder"]["layer_1"]["self_attention"]["gate"].tolist() == [1.0] * H


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_gate_one_is_a_no_op_and_gate_zero_equals_zeroed_out_projection_rows():
  model, params, src, tgt = _transformer()
  plain = model.apply({"params": params}, src, tgt)
  gates = heads.head_gates(params)
  np.testing.assert_array_equal(model.apply(heads.variables(params, gates), src, tgt), plain)
  for path in heads.attention_paths(params):
    gated = model.apply(heads.variables(params, heads.with_gate(gates, path, 2, 0.0)), src, tgt)
    zeroed = jax.tree.map(lambda x: x, params)
    node = zeroed
    for name in path:
      node = node[name]
    node["out"]["kernel"] = node["out"]["kernel"].at[2].set(0.0)  # [H, K, D]: head 2's rows.
    np.testing.assert_allclose(gated, model.apply({"params": zeroed}, src, tgt), atol=1e-6)
    assert not np.allclose(gated, plain)


def test_a_gate_of_the_wrong_shape_is_one_line():
  model, params, src, tgt = _transformer()
  gates = heads.head_gates(params)
  gates["encoder"]["layer_0"]["self_attention"]["gate"] = jnp.ones(3)
  with pytest.raises(
    ValueError, match=r"^head_gates: encoder/layer_0/self_attention/gate must be \[H\]"
  ):
    model.apply(heads.variables(params, gates), src, tgt)


def _one_useful_head():
  """One attention layer whose heads 1..3 have zero out-projection rows (they contribute nothing);
  the per-example loss is |out - 2 * out_at_gates_1|^2, so only head 0 matters, and more of it
  helps (its gate's gradient is negative)."""
  layer = MultiHeadAttention(num_heads=H)
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 5, 8))
  params = layer.init(jax.random.PRNGKey(2), x)["params"]
  params["out"]["kernel"] = params["out"]["kernel"].at[1:].set(0.0)
  target = 2.0 * layer.apply({"params": params}, x)

  def loss_fn(gates, batch):
    out = layer.apply(heads.variables(params, gates), batch["x"])
    return jnp.sum((out - batch["target"]) ** 2, axis=(-2, -1))

  batches = [{"x": x[:3], "target": target[:3]}, {"x": x[3:], "target": target[3:]}]
  return params, loss_fn, batches, x, target, layer


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_importance_finds_the_one_useful_head_with_its_sign_and_scale():
  params, loss_fn, batches, x, _, layer = _one_useful_head()
  gates = heads.head_gates(params)
  result = heads.head_importance(loss_fn, gates, batches)
  (layer_name,) = result["importance"]
  importance = result["importance"][layer_name]
  # d/dg |g o - 2 o|^2 at g = 1 is -2 |o|^2 per example: the mean of 2 |o|^2 over the examples.
  out = layer.apply({"params": params}, x)
  expected = float(jnp.mean(2.0 * jnp.sum(out**2, axis=(-2, -1))))
  assert importance[0] == pytest.approx(expected, rel=1e-4)
  np.testing.assert_array_equal(importance[1:], 0.0)
  np.testing.assert_allclose(result["normalized"][layer_name], [1.0, 0.0, 0.0, 0.0], atol=1e-7)
  # Ablation: gating head 0 off leaves |2 o|^2 instead of |o|^2, a rise of 3 |o|^2; the others 0.
  ablation = result["ablation"][layer_name]
  assert ablation[0] == pytest.approx(1.5 * expected, rel=1e-4)
  np.testing.assert_allclose(ablation[1:], 0.0, atol=1e-6)
  assert result["loss"] == pytest.approx(0.5 * expected, rel=1e-4)
  grad = jax.grad(lambda g: loss_fn(g, batches[0]).sum())(gates)
  assert float(grad["gate"][0]) < 0  # More of the useful head lowers the loss.


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_pruning_removes_the_useless_heads_first_and_records_the_curve():
  params, loss_fn, batches, _, _, _ = _one_useful_head()
  gates = heads.head_gates(params)
  metric = lambda g: -float(sum(loss_fn(g, b).mean() for b in batches))
  curve = heads.prune_heads(loss_fn, metric, gates, batches, step_fraction=0.25)
  assert [point["pruned"] for point in curve] == [0, 1, 2, 3, 4]
  assert [point["fraction"] for point in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert curve[-1]["removed"] == [":0"]  # The useful head goes last.
  assert curve[1]["metric"] == pytest.approx(curve[0]["metric"], abs=1e-6)  # Useless: no change.
  assert curve[-1]["metric"] < curve[-2]["metric"]
  assert heads.prune_heads(loss_fn, metric, gates, batches, kinds=("cross",)) == []
  with pytest.raises(ValueError, match=r"^kinds: unknown 'crosss'"):
    heads.prune_heads(loss_fn, metric, gates, batches, kinds=("crosss",))
