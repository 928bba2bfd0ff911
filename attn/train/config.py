"""The typed training config: `TrainConfig` (and its `OptimizerConfig`), the one home of every
training field's default and check, beside `attn.nn.config.ModelConfig`.

A run's config is an ml_collections ConfigDict (what `--config` files build and `--config.FIELD`
overrides); `TrainConfig.from_config` reads its training fields (everything but `task`, `data` and
`model`, which the task and the ModelConfig read) into frozen, checked values. A field the ConfigDict
lacks takes the default here, so a run directory written before a field existed still restores.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from attn.tasks.denoise import Corruption

SCHEDULES = ("rsqrt", "cosine", "constant")
OBJECTIVES = ("supervised", "denoise")
# The ConfigDict's sections read elsewhere: the task (attn.tasks), its data, and the ModelConfig.
NOT_TRAINING = ("task", "data", "model")


class ConfigError(ValueError):
  """A configuration mistake; the message is one line naming the field."""


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fields_of(cls, section: str, values: dict) -> dict:
  """`values` checked against the dataclass's fields: unknown names are refused, naming them."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    where = f"config.{section}." if section else "config."
    raise ConfigError(f"{where}{unknown[0]}: unknown field; the fields are {', '.join(sorted(names))}")
  return values


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """`config.optimizer`: Adam with the paper's (0.9, 0.98, 1e-9) and a schedule (`make_schedule`)."""

  learning_rate: float = 3e-3  # Peak learning rate, reached at the end of warmup.
  schedule: str = "rsqrt"  # rsqrt (the paper's) | cosine | constant.
  warmup_steps: int = 100  # Linear warmup steps.
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-9
  grad_clip_norm: float = 0.0  # Global-norm clipping; 0 turns it off.
  weight_decay: float = 0.0  # AdamW's decoupled decay on matrices only; 0 = plain Adam.
  end_learning_rate: float = 0.0  # Where "cosine" ends at the last step.

  def __post_init__(self):
    if not _is_number(self.learning_rate) or not 0 < self.learning_rate < math.inf:
      raise ConfigError(f"config.optimizer.learning_rate: must be positive, got {self.learning_rate}")
    if self.schedule not in SCHEDULES:
      raise ConfigError(
        f"config.optimizer.schedule: unknown choice {self.schedule!r}; expected one of {SCHEDULES}"
      )
    if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
      raise ConfigError(f"config.optimizer.warmup_steps: must be an int >= 0, got {self.warmup_steps!r}")
    for name in ("b1", "b2"):
      value = getattr(self, name)
      if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"config.optimizer.{name}: must be in [0, 1), got {value!r}")
    if not _is_number(self.eps) or not 0.0 <= self.eps < math.inf:
      raise ConfigError(f"config.optimizer.eps: must be finite and >= 0, got {self.eps!r}")
    for name in ("grad_clip_norm", "weight_decay", "end_learning_rate"):
      value = getattr(self, name)
      if not _is_number(value) or not 0.0 <= value < math.inf:
        raise ConfigError(f"config.optimizer.{name}: must be finite and >= 0, got {value}")
    if self.end_learning_rate > self.learning_rate:
      raise ConfigError(
        f"config.optimizer.end_learning_rate: {self.end_learning_rate} is above the peak "
        f"learning_rate={self.learning_rate}"
      )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every training field of a run, checked; `experiments/base.py` sets the same values (a test
  holds the two together)."""

  batch_size: int = 32  # Training batch (split over the mesh's data x fsdp devices).
  eval_batch_size: int = 64
  num_train_steps: int = 600  # Optimizer steps; see `train_steps` for epochs.
  num_train_epochs: float = 0.0  # > 0: that many passes over a fixed training set instead.
  early_stopping_patience: int = 0  # > 0: evaluations without improvement before stopping.
  log_every_steps: int = 50
  eval_every_steps: int = 200
  checkpoint_every_steps: int = 200  # A multiple of log_every_steps.
  checkpoints_to_keep: int = 2
  label_smoothing: float = 0.1
  seed: int = 0  # Seed i of num_seeds uses seed + i.
  num_seeds: int = 3
  data_seed: int = 0
  objective: str = "supervised"  # supervised | denoise (attn.tasks.denoise).
  # attn.tasks.denoise.Corruption's fields: how many input tokens are corrupted, and how.
  denoise: dict = dataclasses.field(default_factory=lambda: dataclasses.asdict(Corruption()))
  init_from: str = ""  # A run directory whose parameters start this run (by name).
  init_from_skip: str = "classifier,crf"  # Comma-separated top-level parameters never taken.
  mesh: dict = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)

  def __post_init__(self):
    positive = (
      "batch_size",
      "eval_batch_size",
      "num_train_steps",
      "num_seeds",
      "log_every_steps",
      "eval_every_steps",  # 0 would divide by zero after compiling; the last step always evaluates.
      "checkpoint_every_steps",  # Likewise; the last step is always saved.
    )
    for name in positive:
      value = getattr(self, name)
      if not _is_int(value) or value <= 0:
        raise ConfigError(f"config.{name}: must be positive, got {value}")
    keep = self.checkpoints_to_keep
    if not _is_int(keep) or keep < 1:
      raise ConfigError(
        f"config.checkpoints_to_keep: must be at least 1 (the last one is the final state), got {keep!r}"
      )
    if self.checkpoint_every_steps % self.log_every_steps:
      raise ConfigError(
        f"config.checkpoint_every_steps: {self.checkpoint_every_steps} must be a multiple of "
        f"log_every_steps={self.log_every_steps} (checkpoints are taken where the loss is checked)"
      )
    if self.eval_every_steps % self.log_every_steps:
      raise ConfigError(
        f"config.eval_every_steps: {self.eval_every_steps} must be a multiple of "
        f"log_every_steps={self.log_every_steps} (evaluations are made where the loss is logged; "
        "others were skipped in silence)"
      )
    if not _is_number(self.label_smoothing) or not 0.0 <= self.label_smoothing < 1.0:
      raise ConfigError(f"config.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
    patience = self.early_stopping_patience
    if not _is_int(patience) or patience < 0:
      raise ConfigError(
        f"config.early_stopping_patience: must be an int >= 0 (0 = never stop early), got {patience!r}"
      )
    epochs = self.num_train_epochs
    if not _is_number(epochs) or not 0 <= epochs < math.inf:
      raise ConfigError(
        f"config.num_train_epochs: must be a number >= 0 (0 = use num_train_steps), got {epochs!r}"
      )
    for name in ("seed", "data_seed"):
      if not _is_int(getattr(self, name)):
        raise ConfigError(f"config.{name}: must be an int, got {getattr(self, name)!r}")
    if self.objective not in OBJECTIVES:
      raise ConfigError(
        f"config.objective: unknown choice {self.objective!r}; expected one of {OBJECTIVES}"
      )

  @classmethod
  def from_config(cls, config) -> TrainConfig:
    """The training fields of a ConfigDict (or dict); absent fields take their defaults.

    Raises:
      ConfigError: naming the field, for an unknown field or a bad value.
    """
    values = _plain(config)
    values = {k: v for k, v in values.items() if k not in NOT_TRAINING}
    _fields_of(cls, "", values)
    optimizer = _fields_of(OptimizerConfig, "optimizer", dict(values.pop("optimizer", None) or {}))
    for name in ("mesh", "denoise"):
      if values.get(name) is None:
        values.pop(name, None)
      else:
        values[name] = dict(values[name])
    try:
      return cls(**values, optimizer=OptimizerConfig(**optimizer))
    except TypeError as e:  # A field of the wrong structure.
      raise ConfigError(f"config: {e}") from None

  @property
  def patience(self) -> int:
    """Evaluations without a better main metric before the run stops (0: never early)."""
    return self.early_stopping_patience

  @property
  def seeds(self) -> list[int]:
    return [self.seed + i for i in range(self.num_seeds)]

  def train_steps(self, num_train_examples: int | None, task_name: str = "this") -> int:
    """The run's optimizer steps: `num_train_steps`, or with `num_train_epochs` > 0 that many passes
    over `num_train_examples` (rounded up to whole batches), so a larger data set is not cut short by
    a step count tuned to a smaller one.

    Raises:
      ConfigError: epochs given for a task without a fixed training set (`num_train_examples` None).
    """
    if self.num_train_epochs <= 0:
      return self.num_train_steps
    if not _is_int(num_train_examples):
      raise ConfigError(
        f"config.num_train_epochs: {self._drawing(task_name)} draws fresh examples (no fixed "
        "training set); give num_train_steps instead"
      )
    return max(1, math.ceil(self.num_train_epochs * num_train_examples / self.batch_size))

  def _drawing(self, task_name: str) -> str:
    """What draws the training examples, for the epochs message: the task, or the denoising
    objective over it (which reads the task's unlabelled text, `attn.tasks.denoise`)."""
    if self.objective == "denoise":
      return f"the denoising objective over the {task_name} task's unlabelled text"
    return f"the {task_name} task"


def _plain(config) -> dict[str, Any]:
  """A ConfigDict (or dict) as plain nested dicts."""
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return {
    k: (_plain(v) if hasattr(v, "to_dict") or isinstance(v, dict) else v) for k, v in config.items()
  }
