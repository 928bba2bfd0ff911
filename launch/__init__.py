"""Short absl entry points: `python -m launch.NAME`. Each runs through `run` (absl's app.run with one
boundary for Ctrl-C) and its `main` first calls `start_quietly()`."""

import logging
import sys

from absl import app
from absl import logging as absl_logging

# Libraries whose INFO lines would come before a program's own output: JAX's "Unable to initialize
# backend 'tpu'" on every machine without one, and orbax's checkpoint-manager set-up on each save.
_QUIET_LOGGERS = ("jax._src.xla_bridge",)
_QUIET_PATHS = ("/orbax/",)


def _not_library_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or not any(p in record.pathname for p in _QUIET_PATHS)


def start_quietly() -> None:
  """Hides the INFO lines of JAX's backend set-up and of orbax, so that a program's first screen is
  its own output; their warnings and errors still show."""
  for name in _QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  handler = absl_logging.get_absl_handler()
  if _not_library_info not in handler.filters:
    handler.addFilter(_not_library_info)


def run(main, **kwargs) -> None:
  """absl's `app.run(main)`, where a bad ATTN_DEFAULT_IMPLEMENTATION is one line before anything
  runs, and Ctrl-C ends in one line (with where a run stopped, when the exception says) and exit
  status 130 instead of a traceback."""

  def guarded(argv):
    from attn.core import attention  # The environment's choices, checked before anything runs.

    try:
      attention.check_default_implementation()
    except ValueError as e:
      sys.exit(f"error: {e}")
    try:
      return main(argv)
    except KeyboardInterrupt as e:
      said = " ".join(str(e).split()) or "interrupted; rerun the same command to resume"
      print(f"error: {said}", file=sys.stderr)
      sys.exit(130)

  app.run(guarded, **kwargs)
