"""Layer 4: one training run.

`setup` (the config checked and turned into a task, model and optimizer; `restore_run`), `steps`
(`TrainState` and the pure steps) and `loop` (`train_and_evaluate`: the jitted steps, checkpoints,
metrics and resumption).
"""

from attn.train.loop import NonFiniteLossError, TrainingInterrupted, train_and_evaluate
from attn.train.setup import (
  ConfigError,
  build_model,
  make_optimizer,
  make_schedule,
  model_config_from,
  restore_run,
  validate,
)
from attn.train.steps import (
  TrainState,
  diagnostics_step,
  eval_step,
  inputs_and_targets,
  probe_step,
  state_initializer,
  train_step,
)

__all__ = [
  "ConfigError",
  "NonFiniteLossError",
  "TrainState",
  "TrainingInterrupted",
  "build_model",
  "diagnostics_step",
  "eval_step",
  "inputs_and_targets",
  "make_optimizer",
  "make_schedule",
  "model_config_from",
  "probe_step",
  "restore_run",
  "state_initializer",
  "train_and_evaluate",
  "train_step",
  "validate",
]
