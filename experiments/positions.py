"""Length extrapolation: which positions keep their loss on contexts longer than they trained on?

Question (Press et al. 2022, "Train Short, Test Long"): a causal language model trained on windows of
L tokens is scored on windows of L, 2L, 4L and 8L. ALiBi's claim is that its linear distance penalty
(and T5's bucketed bias, which shares one bucket beyond its max distance) holds the loss beyond L,
while sinusoidal and rotary positions degrade there. This sweep trains the Tiny Shakespeare character
model (`experiments/shakespeare_char.py`, made smaller: 2 pre-LN blocks of D = 128, 4 heads, 1000
steps of 16 windows of L = 64) once per position kind: sinusoidal, learned (its table has 8L rows, of
which only the first L are ever trained: the rows past L are its initialisation), rope, alibi, t5_bias
and none (NoPE: a causal model can still count), three seeds each. The final evaluation scores every
non-overlapping window of the validation split at each length (`config.task.eval_lengths`; the loss
per token over all positions of a window, as the paper evaluates).

Command: python -m launch.sweep --config=experiments/positions.py --workdir=runs/positions
Then: python -m launch.compare runs/positions --metric=loss \
        --series=loss_at_64,loss_at_128,loss_at_256,loss_at_512
(runs/positions/series.md and series.png: the loss against the evaluation length, a line per kind).
Presets: "" (the sweep above) and "smoke" (a tiny model, a few steps, two kinds).
Time on a 2-core CPU: 18 min (1102 s for the 6 points, shared with another sweep).

Found (validation loss per token, mean ± std over 3 seeds, trained at L = 64):
  kind          64              128             256             512
  sinusoidal    1.999 ± 0.004   2.578 ± 0.014   2.899 ± 0.007   3.074 ± 0.020
  learned       2.292 ± 0.003   2.396 ± 0.009   2.496 ± 0.021   2.568 ± 0.029
  rope          1.879 ± 0.004   1.969 ± 0.052   2.309 ± 0.101   2.730 ± 0.134
  alibi         1.994 ± 0.004   1.988 ± 0.003   1.987 ± 0.004   1.988 ± 0.004
  t5_bias       2.156 ± 0.006   2.241 ± 0.004   2.370 ± 0.002   2.484 ± 0.001
  none          2.318 ± 0.001   2.386 ± 0.003   2.452 ± 0.004   2.502 ± 0.004
ALiBi holds its loss out to 8L, as the paper says; sinusoidal and RoPE degrade (RoPE is the best at
L and loses it by 4L). T5's bias degrades here, unlike the paper's direction: its buckets past
`t5_max_distance` = 128 share one learned scalar (our guess, not tested: the softmax still spreads
over more keys than it ever saw, which the bias's decay does not offset). NoPE degrades least of the
rest. Figure: experiments/figures/positions_loss_vs_length.png.
"""

import ml_collections

from experiments import shakespeare_char

KINDS = ("sinusoidal", "learned", "rope", "alibi", "t5_bias", "none")
TRAIN_LENGTH = 64
EVAL_LENGTHS = tuple(TRAIN_LENGTH * f for f in (1, 2, 4, 8))


def _check(preset: str) -> None:
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  _check(preset)
  config = shakespeare_char.get_config(preset)
  config.task.num_samples = 0  # Scores only: no samples.
  if preset == "smoke":
    config.task.eval_lengths = (16, 32)
    config.model.max_length = 32
    return config
  config.task.block_size = TRAIN_LENGTH
  config.task.eval_lengths = EVAL_LENGTHS
  config.model.num_decoder_layers = 2
  config.model.max_length = EVAL_LENGTHS[-1]  # The learned table's rows past L stay untrained.
  config.batch_size = 16
  config.num_train_steps = 1000
  config.optimizer.warmup_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config


def get_sweep(preset: str = ""):
  _check(preset)
  kinds = ("rope", "alibi") if preset == "smoke" else KINDS
  return [{"model.positions": kind} for kind in kinds]
