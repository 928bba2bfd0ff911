"""Tests for `attn.nn.config.ModelConfig`: defaults, validation of every field, head dim, replace."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn.nn.config import (
  ACTIVATIONS,
  ATTENTION_GATES,
  ATTENTION_KINDS,
  DTYPES,
  HEAD_DIM_POLICIES,
  INIT_SCHEMES,
  MODULE_SCALE_CHOICES,
  NORM_POSITIONS,
  POSITION_KINDS,
  VALUE_RESIDUALS,
  ModelConfig,
)


def _raises_on(field, **changes):
  """Asserts ModelConfig(**changes) raises ValueError whose message starts with `field`."""
  with pytest.raises(ValueError) as info:
    ModelConfig(**changes)
  message = str(info.value)
  assert message.startswith(f"{field}:"), message
  return message


def test_defaults_construct():
  cfg = ModelConfig()
  assert cfg.d_model == 256 and cfg.num_heads == 4
  assert cfg.head_dim_policy == "fixed_model_dim"
  assert cfg.head_dim is None and cfg.num_kv_heads is None
  assert cfg.scale == "sqrt_d"
  assert cfg.norm == "post"
  assert cfg.positions == "sinusoidal"
  assert cfg.resolved_head_dim == 64
  assert cfg.compute_dtype == jnp.float32


def test_config_is_frozen():
  cfg = ModelConfig()
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.d_model = 128


def test_valid_non_default_config_constructs():
  cfg = ModelConfig(
    vocab_size=11,
    d_model=16,
    num_heads=4,
    num_kv_heads=2,
    d_ff=32,
    num_encoder_layers=0,
    dropout_rate=0.0,
    attention_dropout_rate=0.5,
    scale=0.25,
    norm="pre",
    positions="learned",
    activation="gelu",
    dtype="bfloat16",
    pad_id=10,
    bos_id=0,
    eos_id=5,
  )
  assert cfg.num_kv_heads == 2
  assert cfg.compute_dtype == jnp.bfloat16


# Head dim.


@pytest.mark.parametrize("d_model,num_heads", [(16, 3), (256, 3), (16, 32), (30, 4)])
def test_num_heads_must_divide_d_model_under_fixed_model_dim(d_model, num_heads):
  message = _raises_on("num_heads", d_model=d_model, num_heads=num_heads)
  assert str(num_heads) in message and str(d_model) in message


@pytest.mark.parametrize("num_heads", [0, -4])
def test_num_heads_must_be_positive(num_heads):
  _raises_on("num_heads", num_heads=num_heads)


@pytest.mark.parametrize("head_dim", [None, 0, -8])
def test_fixed_head_dim_needs_a_positive_head_dim(head_dim):
  _raises_on("head_dim", head_dim_policy="fixed_head_dim", head_dim=head_dim)


def test_head_dim_contradicting_fixed_model_dim():
  message = _raises_on("head_dim", d_model=16, num_heads=4, head_dim=8)
  assert "4" in message  # The K that fixed_model_dim gives.
  # Agreeing with D / H is allowed.
  assert ModelConfig(d_model=16, num_heads=4, head_dim=4).resolved_head_dim == 4


def test_unknown_head_dim_policy():
  message = _raises_on("head_dim_policy", head_dim_policy="fixed_k")
  for choice in HEAD_DIM_POLICIES:
    assert repr(choice) in message


@pytest.mark.parametrize("d_model,num_heads,want", [(256, 4, 64), (16, 1, 16), (16, 8, 2)])
def test_resolved_head_dim_fixed_model_dim(d_model, num_heads, want):
  assert ModelConfig(d_model=d_model, num_heads=num_heads).resolved_head_dim == want


@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 16])
def test_resolved_head_dim_fixed_head_dim(num_heads):
  # K stays at head_dim whatever H is, even where H does not divide D.
  cfg = ModelConfig(d_model=16, num_heads=num_heads, head_dim_policy="fixed_head_dim", head_dim=8)
  assert cfg.resolved_head_dim == 8


@pytest.mark.parametrize("num_kv_heads", [3, 8, 0, -2])
def test_num_kv_heads_must_divide_num_heads(num_kv_heads):
  _raises_on("num_kv_heads", num_heads=4, num_kv_heads=num_kv_heads)


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_num_kv_heads_dividing_num_heads(num_kv_heads):
  assert ModelConfig(num_heads=4, num_kv_heads=num_kv_heads).num_kv_heads == num_kv_heads


# Sizes and rates.


@pytest.mark.parametrize(
  "field,value",
  [
    ("d_model", 0),
    ("d_model", -16),
    ("d_ff", -1),
    ("vocab_size", 0),
    ("vocab_size", -5),
    ("max_length", 0),
    ("num_encoder_layers", -1),
    ("num_decoder_layers", -2),
    ("num_classes", -1),
  ],
)
def test_negative_sizes(field, value):
  message = _raises_on(field, **{field: value})
  assert str(value) in message


@pytest.mark.parametrize("field", ["num_encoder_layers", "num_decoder_layers", "num_classes", "d_ff"])
def test_zero_counts_are_allowed(field):
  assert getattr(ModelConfig(**{field: 0}), field) == 0


@pytest.mark.parametrize("field", ["dropout_rate", "attention_dropout_rate"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_out_of_range(field, value):
  _raises_on(field, **{field: value})


@pytest.mark.parametrize("field", ["dropout_rate", "attention_dropout_rate"])
@pytest.mark.parametrize("value", [0.0, 0.5, 0.99])
def test_dropout_in_range(field, value):
  assert getattr(ModelConfig(**{field: value}), field) == value


# Named choices.


@pytest.mark.parametrize(
  "field,value,choices",
  [
    ("scale", "sqrt", MODULE_SCALE_CHOICES),
    ("scale", "SQRT_D", MODULE_SCALE_CHOICES),
    ("norm", "sandwich", NORM_POSITIONS),
    ("positions", "rotary", POSITION_KINDS),
    ("activation", "swish", ACTIVATIONS),
    ("init", "xavier", INIT_SCHEMES),
    ("dtype", "float64", DTYPES),
    ("dtype", "int32", DTYPES),
    ("attention_gate", "sigmoid", ATTENTION_GATES),
    ("value_residual", "resformer", VALUE_RESIDUALS),
  ],
)
def test_unknown_choice_lists_the_choices(field, value, choices):
  message = _raises_on(field, **{field: value})
  assert repr(value) in message
  for choice in choices:
    assert repr(choice) in message


def test_choice_lists():
  assert set(MODULE_SCALE_CHOICES) == {"sqrt_d", "none", "d", "learned", "init_folded"}
  assert set(NORM_POSITIONS) == {"post", "pre"}
  assert set(POSITION_KINDS) == {"sinusoidal", "learned", "rope", "alibi", "t5_bias", "none", "xpos"}
  assert set(ACTIVATIONS) == {"relu", "gelu", "silu", "gelu_exact"}
  assert set(INIT_SCHEMES) == {"default", "gpt2"}
  assert set(DTYPES) == {"float32", "bfloat16", "float16"}
  assert set(ATTENTION_GATES) == {"none", "headwise", "elementwise"}
  assert set(VALUE_RESIDUALS) == {"none", "learned", "shared"}
  assert set(ATTENTION_KINDS) == {"softmax", "sigmoid", "ssmax", "softpick", "stick_breaking"}


@pytest.mark.parametrize("scale", [*MODULE_SCALE_CHOICES, 0.5, 1, 2.0])
def test_valid_scales(scale):
  assert ModelConfig(scale=scale).scale == scale


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan"), True, None, [0.5]])
def test_invalid_numeric_scale(scale):
  message = _raises_on("scale", scale=scale)
  for choice in MODULE_SCALE_CHOICES:
    assert repr(choice) in message


@pytest.mark.parametrize("dtype", DTYPES)
def test_compute_dtype(dtype):
  assert ModelConfig(dtype=dtype).compute_dtype == jnp.dtype(dtype)


# Token ids.


@pytest.mark.parametrize("field", ["pad_id", "bos_id", "eos_id"])
@pytest.mark.parametrize("value", [-1, 11, 100])
def test_token_ids_outside_vocabulary(field, value):
  message = _raises_on(field, vocab_size=11, **{field: value})
  assert "11" in message


def test_token_ids_at_vocabulary_edges():
  cfg = ModelConfig(vocab_size=11, pad_id=10, bos_id=0, eos_id=10)
  assert (cfg.pad_id, cfg.bos_id, cfg.eos_id) == (10, 0, 10)


def test_pad_id_may_be_none_but_not_a_float():
  assert ModelConfig(pad_id=None).pad_id is None  # No padding token (GPT-2, Llama checkpoints).
  assert "must be an int" in _raises_on("pad_id", pad_id=1.5)
  assert "must be an int" in _raises_on("bos_id", bos_id=None)


# Positions.


def test_odd_d_model_with_sinusoidal_positions():
  message = _raises_on("d_model", d_model=15, num_heads=3, positions="sinusoidal")
  assert "15" in message and "sinusoidal" in message


@pytest.mark.parametrize("positions", ["learned", "none"])
def test_odd_d_model_without_sinusoidal_positions(positions):
  assert ModelConfig(d_model=15, num_heads=3, positions=positions).d_model == 15


# replace.


def test_replace_returns_a_new_config():
  cfg = ModelConfig(d_model=16, num_heads=4)
  wider = cfg.replace(num_heads=8)
  assert isinstance(wider, ModelConfig)
  assert wider.num_heads == 8 and wider.resolved_head_dim == 2
  assert wider.d_model == 16
  assert cfg.num_heads == 4 and cfg.resolved_head_dim == 4
  assert cfg.replace() == cfg


@pytest.mark.parametrize(
  "field,changes",
  [
    ("num_heads", {"num_heads": 3}),
    ("head_dim", {"head_dim_policy": "fixed_head_dim"}),
    ("num_kv_heads", {"num_kv_heads": 3}),
    ("dropout_rate", {"dropout_rate": 1.0}),
    ("norm", {"norm": "middle"}),
    ("pad_id", {"pad_id": 1000}),
    ("eos_id", {"vocab_size": 2}),
    ("d_model", {"d_model": 13, "num_heads": 1}),
  ],
)
def test_replace_revalidates(field, changes):
  cfg = ModelConfig(d_model=16, num_heads=4)
  with pytest.raises(ValueError, match=f"^{re.escape(field)}:"):
    cfg.replace(**changes)


def test_replace_can_switch_policy_with_head_dim():
  cfg = ModelConfig(d_model=16, num_heads=4)
  fixed = cfg.replace(head_dim_policy="fixed_head_dim", head_dim=8, num_heads=3)
  assert fixed.resolved_head_dim == 8


# Local attention window.


def test_projection_biases_follow_use_bias_unless_set():
  assert (ModelConfig().resolved_qkv_bias, ModelConfig().resolved_out_bias) == (True, True)
  off = ModelConfig(use_bias=False)
  assert (off.resolved_qkv_bias, off.resolved_out_bias) == (False, False)
  qwen2 = ModelConfig(use_bias=False, qkv_bias=True, out_bias=False)
  assert (qwen2.resolved_qkv_bias, qwen2.resolved_out_bias) == (True, False)


def test_new_fields_default_to_the_old_model():
  config = ModelConfig()
  assert (config.ff_glu, config.embed_norm, config.qkv_bias, config.out_bias) == (
    False,
    False,
    None,
    None,
  )
  assert config.rope_theta == 10000.0 and ModelConfig(rope_theta=1e6).rope_theta == 1e6
  assert (config.attention_gate, config.value_residual) == ("none", "none")
  assert config.forget_gate is False and config.differential is False
  assert config.rope_interleaved is False


def test_attention_window_defaults_to_full_attention():
  assert ModelConfig().attention_window is None
  assert ModelConfig(attention_window=0).attention_window == 0
  assert ModelConfig(attention_window=5).attention_window == 5


@pytest.mark.parametrize("window", [-1, 2.0, True, "3"])
def test_attention_window_must_be_a_non_negative_int(window):
  message = _raises_on("attention_window", attention_window=window)
  assert repr(window) in message


# Hashed token features.


@pytest.mark.parametrize("buckets", [0, 2, 2**15])
def test_feature_buckets_zero_or_at_least_two(buckets):
  assert ModelConfig(feature_buckets=buckets).feature_buckets == buckets


@pytest.mark.parametrize("buckets", [1, -1])
def test_feature_buckets_one_or_negative_is_an_error(buckets):
  message = _raises_on("feature_buckets", feature_buckets=buckets)
  assert str(buckets) in message


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"positions": "rotary"}, "positions: unknown choice 'rotary'"),
    ({"qk_norm": "l2"}, "qk_norm: unknown choice 'l2'"),
    ({"attention_kind": "relu"}, "attention_kind: unknown choice 'relu'"),
    ({"norm_kind": "batch"}, "norm_kind: unknown choice 'batch'"),
    ({"attention_gate": "headwise_sigmoid"}, "attention_gate: unknown choice 'headwise_sigmoid'"),
    ({"attention_gate": None}, "attention_gate: unknown choice None"),
    ({"value_residual": "svformer"}, "value_residual: unknown choice 'svformer'"),
    ({"value_residual": True}, "value_residual: unknown choice True"),
    ({"forget_gate": 1}, "forget_gate: must be a bool, got 1"),
    ({"forget_gate": None}, "forget_gate: must be a bool, got None"),
    ({"differential": "yes"}, "differential: must be a bool, got 'yes'"),
    ({"rope_interleaved": 0}, "rope_interleaved: must be a bool, got 0"),
    ({"positions": "xpos", "rope_fraction": 0.01}, "rope_fraction: 0.01 of head dim 64 rotates no pair"),
    ({"differential": True, "num_heads": 1}, "differential: needs an even num_heads and num_kv_heads"),
    (
      {"differential": True, "num_heads": 4, "num_kv_heads": 1},
      "differential: needs an even num_heads and num_kv_heads",
    ),
    (
      {"differential": True, "attention_implementation": "jax"},
      "differential: True is not served by attention_implementation='jax'; use 'naive', 'flash'",
    ),
    ({"rope_fraction": 0.0}, "rope_fraction: must be in (0, 1]"),
    ({"rope_fraction": 1.5}, "rope_fraction: must be in (0, 1]"),
    ({"positions": "rope", "rope_fraction": 0.01}, "rope_fraction: 0.01 of head dim 64 rotates no pair"),
    ({"t5_num_buckets": 1}, "t5_num_buckets: 1 buckets (bidirectional) need at least 4"),
    ({"logit_soft_cap": 0.0}, "logit_soft_cap: must be None or a positive float"),
    ({"logit_soft_cap": -3.0}, "logit_soft_cap: must be None or a positive float"),
    ({"norm_epsilon": 0.0}, "norm_epsilon: must be a float in (0, 1)"),
    ({"norm_epsilon": True}, "norm_epsilon: must be a float in (0, 1)"),
    ({"attention_sink": True, "attention_kind": "sigmoid"}, "attention_sink: a sink adds to a softmax"),
    ({"attention_sink": True, "attention_kind": "softpick"}, "attention_sink: a sink adds to a softmax"),
    (
      {"attention_sink": True, "attention_kind": "stick_breaking"},
      "attention_sink: a sink adds to a softmax",
    ),
    ({"ff_glu": 1}, "ff_glu: must be a bool"),
    ({"embed_norm": None}, "embed_norm: must be a bool"),
    ({"qkv_bias": 0}, "qkv_bias: must be None (follow use_bias) or a bool"),
    ({"out_bias": "no"}, "out_bias: must be None (follow use_bias) or a bool"),
    ({"rope_theta": 0.0}, "rope_theta: must be a positive float"),
    ({"rope_theta": -1e4}, "rope_theta: must be a positive float"),
    ({"rope_theta": float("inf")}, "rope_theta: must be a positive float"),
    ({"rope_theta": True}, "rope_theta: must be a positive float"),
  ],
)
def test_variant_fields_are_checked_in_one_line(changes, message):
  with pytest.raises(ValueError) as error:
    ModelConfig(**changes)
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
  "fields, message",
  [  # Each validated before, then failed when the model ran (a ZeroDivisionError or a trace error).
    (dict(positions="t5_bias", t5_num_buckets=3, t5_max_distance=2), r"^t5_num_buckets: 3 buckets"),
    (dict(positions="t5_bias", t5_num_buckets=8, t5_max_distance=4), r"^t5_num_buckets: 8 buckets"),
    (
      dict(attention_implementation="flash", attention_dropout_rate=0.1),
      r"^attention_dropout_rate: 0\.1 needs the weights",
    ),
    (  # Found by the property test below.
      dict(attention_implementation="jax", attention_dropout_rate=0.1),
      r"^attention_dropout_rate: 0\.1 needs the weights, which attention_implementation='jax'",
    ),
    (
      dict(attention_implementation="jax", logit_soft_cap=5.0),
      r"^logit_soft_cap: 5\.0 is not served by attention_implementation='jax'",
    ),
    (
      dict(attention_implementation="jax", attention_sink=True),
      r"^attention_sink: True is not served by attention_implementation='jax'",
    ),
    (
      dict(attention_implementation="jax", attention_kind="sigmoid"),
      r"^attention_kind: 'sigmoid' is not served by attention_implementation='jax'",
    ),
    (
      dict(attention_implementation="jax", attention_kind="softpick"),
      r"^attention_kind: 'softpick' is not served by attention_implementation='jax'; use 'naive', "
      r"'flash' or None$",
    ),
    (
      dict(attention_implementation="flash", attention_kind="stick_breaking"),
      r"^attention_kind: 'stick_breaking' is not served by attention_implementation='flash'; use "
      r"'naive' or None$",
    ),
    (
      dict(attention_implementation="jax", attention_kind="stick_breaking"),
      r"^attention_kind: 'stick_breaking' is not served by attention_implementation='jax'",
    ),
  ],
)
def test_configs_the_model_cannot_run_are_refused_naming_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**fields)


# --------------------------------------------------------------------------------------------------
# Every accepted config runs: a property over the whole space (hypothesis).
# --------------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}

CONFIGS = st.fixed_dictionaries(
  {
    # Repeated choices weight the draws towards valid configs; the rest probe the refusals.
    "d_model": st.sampled_from([8, 16, 16, 16, 12]),
    "num_heads": st.sampled_from([1, 2, 2, 4, 4, 3]),
    "head": st.sampled_from(  # (head_dim_policy, head_dim): mostly consistent pairs.
      [("fixed_model_dim", None)] * 4
      + [("fixed_head_dim", 4), ("fixed_head_dim", 6), ("fixed_model_dim", 4), ("fixed_head_dim", None)]
    ),
    "num_kv_heads": st.sampled_from([None, None, 1, 2]),
    "d_ff": st.sampled_from([8, 16, 16, 0]),  # 0: attention-only.
    "num_encoder_layers": st.integers(0, 2),
    "num_decoder_layers": st.integers(0, 2),
    "dropout_rate": st.sampled_from([0.0, 0.1]),
    "attention_dropout_rate": st.sampled_from([0.0, 0.0, 0.1]),
    "scale": st.sampled_from([*MODULE_SCALE_CHOICES, 0.5]),
    "norm": st.sampled_from(NORM_POSITIONS),
    "positions": st.sampled_from(POSITION_KINDS),
    "rope_fraction": st.sampled_from([0.25, 0.5, 1.0]),
    "t5": st.sampled_from([(8, 16)] * 4 + [(4, 16), (2, 16), (8, 4)]),  # Buckets, max distance.
    "qk_norm": st.sampled_from(["none", "rms"]),
    "logit_soft_cap": st.sampled_from([None, None, 2.0]),
    "attention_sink": st.sampled_from([False, False, True]),
    "attention_kind": st.sampled_from(ATTENTION_KINDS),
    "norm_kind": st.sampled_from(["layer", "rms"]),
    "max_length": st.sampled_from([8, 16]),
    "tie_output": st.booleans(),
    "activation": st.sampled_from(ACTIVATIONS),
    "init": st.sampled_from(INIT_SCHEMES),
    "use_bias": st.booleans(),
    "dtype": st.sampled_from(["float32", "bfloat16"]),
    "attention_implementation": st.sampled_from([None, None, "naive", "flash", "jax"]),
    "attention_window": st.sampled_from([None, 0, 2]),
    "ff_glu": st.booleans(),
    "qkv_bias": st.sampled_from([None, True, False]),
    "out_bias": st.sampled_from([None, True, False]),
    "rope_theta": st.sampled_from([10000.0, 500.0]),
    "embed_norm": st.booleans(),
    "attention_gate": st.sampled_from(ATTENTION_GATES),
    "value_residual": st.sampled_from(VALUE_RESIDUALS),
    # (mla_kv_rank, mla_q_rank, mla_rope_dim): mostly off.
    "mla": st.sampled_from([(None, None, 0)] * 4 + [(6, None, 4), (4, 4, 0), (4, None, 2)]),
    "forget_gate": st.booleans(),
    "differential": st.sampled_from([False, False, True]),
    "rope_interleaved": st.booleans(),
  }
)


@hypothesis.given(fields=CONFIGS, kind=st.sampled_from(["lm", "tagger", "seq2seq"]))
def test_every_config_either_runs_or_is_refused_in_one_line_naming_a_field(fields, kind):
  """A config drawn from the whole accepted space is refused by a ValueError whose message starts
  with one of ModelConfig's fields, or the model initialises, trains (a gradient with dropout on a
  padded batch) with finite values, and a language model decodes with its cache."""
  from attn.nn import decoding, models

  fields = dict(fields)
  fields["head_dim_policy"], fields["head_dim"] = fields.pop("head")
  fields["t5_num_buckets"], fields["t5_max_distance"] = fields.pop("t5")
  fields["mla_kv_rank"], fields["mla_q_rank"], fields["mla_rope_dim"] = fields.pop("mla")
  try:
    config = ModelConfig(vocab_size=11, num_classes=3, **fields)
    model = {"lm": models.LanguageModel, "tagger": models.EncoderTagger, "seq2seq": models.Transformer}
    model = model[kind](config)
    tokens = jnp.array([[1, 5, 6, 7, 0, 0], [1, 8, 9, 3, 4, 5]], jnp.int32)  # Row 0 padded.
    inputs = (tokens, tokens[:, :4]) if kind == "seq2seq" else (tokens,)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    params = jax.jit(model.init)(rngs, *inputs)["params"]

    def loss(params):
      dropout = {"dropout": rngs["dropout"]}
      out = model.apply({"params": params}, *inputs, deterministic=False, rngs=dropout)
      logits = out.logits if kind == "tagger" else out
      return jnp.mean(jnp.square(logits.astype(jnp.float32)))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    if kind == "lm":
      decoded = decoding.greedy_decode(model, params, tokens[:, :3], max_new_tokens=2)
  except ValueError as e:
    field = re.match(r"^(\w+): ", str(e))
    assert field and field.group(1) in FIELDS, f"{type(e).__name__}: {e}"
    return
  assert np.isfinite(float(value))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  if kind == "lm":
    assert decoded.shape[0] == 2 and bool(jnp.all((decoded >= 0) & (decoded < 11)))
