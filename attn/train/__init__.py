"""Layer 4: one training run.

`config` (`TrainConfig`: the training fields, typed and checked), `objectives` (an `Objective` per
task kind: inputs, loss, eval sums, main metric), `setup` (`build_run`: the run built once;
`restore_run`), `steps` (`TrainState` and the pure steps), `compiled` (the steps jitted over the
mesh), `evaluate` (`Evaluator`, `EarlyStopping`), `checkpoints` (orbax) and `loop`
(`train_and_evaluate`).
"""

from attn.train.config import ConfigError, OptimizerConfig, TrainConfig
from attn.train.evaluate import NonFiniteLossError
from attn.train.loop import TrainingInterrupted, train_and_evaluate
from attn.train.objectives import Objective, objective_for
from attn.train.setup import (
  Run,
  build_run,
  make_optimizer,
  make_schedule,
  model_config_from,
  restore_run,
)
from attn.train.steps import (
  TrainState,
  diagnostics_step,
  eval_step,
  probe_step,
  state_initializer,
  train_step,
)

__all__ = [
  "ConfigError",
  "NonFiniteLossError",
  "Objective",
  "OptimizerConfig",
  "Run",
  "TrainConfig",
  "TrainState",
  "TrainingInterrupted",
  "build_run",
  "diagnostics_step",
  "eval_step",
  "make_optimizer",
  "make_schedule",
  "model_config_from",
  "objective_for",
  "probe_step",
  "restore_run",
  "state_initializer",
  "train_and_evaluate",
  "train_step",
]
