"""The tasks a config can name (`config.task.name`), each mapped to the function that builds it.

Explicit imports rather than module names in strings, so the import graph shows every task. To add a
task, write `make_task(task_config, data_config, *, seed, workdir=None) -> Task` in its module (every
builder takes `workdir`, a run directory whose saved files it may use) and add its name here.
"""

from __future__ import annotations

from collections.abc import Callable

from attn.tasks import induction, ner, seed, synthetic, text, translation
from attn.tasks.base import Task

BUILDERS: dict[str, Callable[..., Task]] = {
  **dict.fromkeys(synthetic.TRANSFORMS, synthetic.make_task),
  **dict.fromkeys(seed.TASK_NAMES, seed.make_task),
  "ner": ner.make_task,
  "translate": translation.make_task,
  "text": text.make_task,
  "induction": induction.make_task,
}
TASK_NAMES = tuple(BUILDERS)


def make_task(task_config, data_config=None, *, seed: int = 0, workdir: str | None = None) -> Task:
  """Builds the task a config names.

  Args:
    task_config: `config.task`: `name` and that task's fields.
    data_config: `config.data` (with `path`) for tasks that read files.
    seed: fixes the data stream.
    workdir: a run directory whose saved task files (a subword model) are used instead of building
      them again from the training data: how `restore_run` inspects a run.

  Raises:
    ValueError: naming the field, for an unknown task or a bad task field.
  """
  name = task_config.name
  if name not in BUILDERS:
    choices = ", ".join(map(repr, TASK_NAMES))
    raise ValueError(f"config.task.name: unknown task {name!r}; expected one of {choices}")
  return BUILDERS[name](task_config, data_config, seed=seed, workdir=workdir)
