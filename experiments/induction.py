"""Induction heads (Olsson et al. 2022): a 2-layer attention-only language model on repeated random
segments (`attn.tasks.induction`: [BOS, random symbols with a segment of n in 4..15 repeated once at
a varying offset], 32 tokens, 64 symbols), each head's induction score and the second-copy loss
logged at every evaluation.

Command: python -m launch.train --config=experiments/induction.py --workdir=runs/induction
(presets: "" 5 seeds vmapped; "one_layer" the negative control, a 1-layer model; "smoke" for tests)

Baselines of the second-copy loss (the eval "loss"): ln 64 = 4.16 nats (a random symbol), about
ln n = 1.4-2.7 (some earlier symbol of the segment), 0 (induction).

Results: not run yet (issue 25 is open); the table, the step of the phase change and the figure go
here when they are measured.
"""

import ml_collections

from experiments import base

PRESETS = ("", "one_layer", "smoke")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"config preset: unknown {preset!r}; expected one of {PRESETS}")
  config = base.get_config("smoke" if preset == "smoke" else "")

  config.task = ml_collections.ConfigDict()
  config.task.name = "induction"
  config.task.num_symbols = 64  # V, past the 4 special tokens.
  config.task.length = 32  # Tokens per example (BOS included).
  config.task.min_segment = 4  # n, drawn per example.
  config.task.max_segment = 15
  config.task.eval_examples = 512
  config.task.score_examples = 128  # Examples the induction scores average over.

  config.model.num_encoder_layers = 0
  config.model.num_decoder_layers = 1 if preset == "one_layer" else 2
  config.model.d_model = 128
  config.model.num_heads = 4
  config.model.d_ff = 0  # Attention-only.
  config.model.dropout_rate = 0.0
  config.model.norm = "pre"
  config.model.positions = "learned"
  config.model.max_length = 32
  config.model.tie_output = False

  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 100
  config.label_smoothing = 0.0
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_train_steps = 8000
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 1000
  config.num_seeds = 5

  if preset == "smoke":
    config.task.eval_examples = 32
    config.task.score_examples = 8
    config.model.d_model = 16
    config.model.num_heads = 2
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.num_seeds = 1
  return config
