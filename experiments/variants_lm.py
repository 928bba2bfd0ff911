"""The attention variants of 2024-2026 on real text: does each do what its paper says, at this scale?

Question (issue 27): trained on the same tokens as a plain softmax baseline, does each variant reach
its loss, and do the papers' directions hold? Gated attention (Qiu et al. 2025) should remove the
first-token attention sink and the massive activations; differential attention (Ye et al. 2024)
should lower activation outliers; forgetting attention (FoX, Lin et al. 2025) and stick-breaking
(Tan et al. 2025) should degrade least past the training length; value residual (ResFormer, Zhou et
al. 2025) should reach the baseline's loss in fewer steps; multi-head latent attention (MLA,
DeepSeek-V2) should stay within 0.05 nats of MHA at a fraction of its cache; softpick (Zuhri et al.
2025) should remove the sink.

Protocol: the Tiny Shakespeare character model of the positions experiment (`experiments/
positions.py`: `experiments/shakespeare_char.py` made smaller so that nine points fit a session on 2
cores: 2 pre-LN blocks of D = 128, 4 heads, 1000 steps of 16 windows of L = 64, the same token
budget for every point, three seeds each). The baseline uses RoPE (the best kind at L in the
positions experiment); FoX and stick-breaking use no positions (their papers' setting: the forget
gate and the stick order carry position). Every evaluation scores every non-overlapping validation
window at L, 2L and 4L (loss per token, `loss_at_64`, `loss_at_128`, `loss_at_256`), and the
diagnostics step logs, per layer, the attention sink rate (mean weight on the first position),
the sparsity and entropy of the attention rows, and the residual stream's largest activation and
kurtosis (`attn/nn/attention.py`, `attn/nn/blocks.py`).

Command: python -m launch.sweep --config=experiments/variants_lm.py --workdir=runs/variants_lm
Then: python -m launch.compare runs/variants_lm --metric=loss --baseline=attention_kind=softmax \\
        --series=loss_at_64,loss_at_128,loss_at_256
and the diagnostics at the last evaluation, e.g.:
      python -m launch.compare runs/variants_lm --split=diagnostics --baseline=attention_kind=softmax \\
        --series=decoder/layer_1/attention/sink_rate,decoder/layer_1/max_activation
Presets: "" (the sweep above) and "smoke" (a tiny model, a few steps, two points; CI).
"""

import ml_collections

from experiments import positions

TRAIN_LENGTH = 64
EVAL_LENGTHS = (TRAIN_LENGTH, 2 * TRAIN_LENGTH, 4 * TRAIN_LENGTH)
BASELINE = {"model.attention_kind": "softmax"}
# Each point changes the baseline in the listed fields only.
POINTS = (
  BASELINE,
  {"model.attention_gate": "headwise"},
  {"model.attention_gate": "elementwise"},
  {"model.value_residual": "learned"},
  {"model.attention_kind": "softpick"},
  {"model.attention_kind": "stick_breaking", "model.positions": "none"},
  {"model.forget_gate": True, "model.positions": "none"},
  {"model.differential": True},
  {"model.mla_kv_rank": 32, "model.mla_rope_dim": 16},
)


def _check(preset: str) -> None:
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  _check(preset)
  config = positions.get_config(preset)
  config.model.positions = "rope"
  config.task.icl_windows = 0  # Scores and diagnostics only.
  if preset == "smoke":
    return config
  config.task.eval_lengths = EVAL_LENGTHS
  config.model.max_length = EVAL_LENGTHS[-1]
  config.eval_every_steps = 250  # Four points of each curve (value residual's "fewer steps").
  return config


def get_sweep(preset: str = ""):
  _check(preset)
  return list(POINTS[:2]) if preset == "smoke" else list(POINTS)
