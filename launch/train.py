"""Trains one config: `python -m launch.train --config=experiments/NAME.py[:preset] --workdir=DIR
[--config.FIELD=VALUE ...]`. Rerunning the same command resumes from the latest checkpoint.

A multi-process run gives every process the same flags plus `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (launch/distributed.py; `launch.local_cluster` does it on one
machine); on SLURM or a Cloud TPU slice jax reads them from the environment instead."""

import os
import sys
import traceback
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from attn import train
from attn.runs import files, sweep
from launch import distributed, run, start_quietly

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it holds a run).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a mistyped config field or a bad flag value ends in one line, not a traceback."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      try:
        sweep.check_config(arg.removeprefix("--config="))
      except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, ValueError, flags.Error) as e:
    message = str(e)
    if len(message) > 1 and message[0] == message[-1] == "'":  # ml_collections gives a repr.
      message = message[1:-1].replace("\\'", "'").replace("\\n", " ")
    message = " ".join(message.split())
    sys.exit(f"error: bad flag: {message}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  start_quietly()
  try:
    many = distributed.initialize()
  except distributed.DistributedError as e:
    sys.exit(f"error: {e}")
  # One process speaks for a multi-process run; the others say only warnings and errors.
  logging.set_verbosity(
    logging.INFO if not many or distributed.PROCESS_ID.value in (None, 0) else logging.WARNING
  )
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (train.ConfigError, train.NonFiniteLossError, files.RunInUseError) as e:
    _fail(f"error: {e}", many)
  except Exception:
    if not many:
      raise
    _fail(traceback.format_exc().rstrip(), many)


def _fail(message: str, many: bool) -> NoReturn:
  """Exits with `message` and status 1. A process of a multi-process run exits at once: jax's exit
  handler would wait in `jax.distributed`'s shutdown barrier for the other processes, which may be
  waiting in a barrier of the run for this one (seen: a process that failed alone, and both waiting
  until the coordination service's timeouts). The others are stopped by whatever started them
  (`launch.local_cluster`, the cluster's scheduler) when this one's exit status says it failed."""
  if not many:
    sys.exit(message)
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


if __name__ == "__main__":
  run(main, flags_parser=parse_flags)
