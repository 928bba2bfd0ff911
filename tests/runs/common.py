"""What the sweep tests share: a tiny two-point sweep config whose second point fails."""

from __future__ import annotations

import pathlib

# Four steps of the smoke model (d_model=32); 3 heads do not divide 32, so that point fails fast with a
# config error, before anything compiles.
TINY_CONFIG = '''"""A two-point sweep of the smoke model whose second point fails."""

from experiments import base


def get_config(preset=""):
  config = base.get_config("smoke")
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.task.eval_examples = 16
  return config


def get_sweep(preset=""):
  return [{"model.num_heads": 2}, {"model.num_heads": 3}]
'''


def write_config(directory: pathlib.Path, text: str = TINY_CONFIG, name: str = "tiny.py") -> str:
  path = directory / name
  path.write_text(text, encoding="utf-8")
  return str(path)
