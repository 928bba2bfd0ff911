"""Tests for attn.tasks.registry: every name builds its task; an unknown name lists the choices."""

import ml_collections
import pytest

from attn import tasks
from attn.tasks import registry


def task_config(**fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    {"name": "reverse", "num_symbols": 10, "min_length": 2, "max_length": 10, "eval_examples": 256}
  )
  config.update(fields)
  return config


def test_make_task_unknown_name_lists_choices():
  with pytest.raises(ValueError, match=r"^config\.task\.name: unknown task 'copyy'") as error:
    tasks.make_task(task_config(name="copyy"))
  for name in tasks.TASK_NAMES:
    assert repr(name) in str(error.value)
  assert set(tasks.TASK_NAMES) >= {"copy", "reverse", "sort", "cue", "word_sense", "ner", "translate"}


def test_registry_names_are_the_builders_keys():
  assert tuple(registry.BUILDERS) == tasks.TASK_NAMES
  assert tasks.make_task is registry.make_task
