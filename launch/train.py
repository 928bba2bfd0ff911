"""Trains one config: `python -m launch.train --config=experiments/NAME.py[:preset] --workdir=DIR
[--config.FIELD=VALUE ...]`. Rerunning the same command resumes from the latest checkpoint."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from attn import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it holds a run).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  # Progress lines are ours; orbax's per-save INFO chatter would bury them.
  logging.get_absl_handler().addFilter(lambda record: "/orbax/" not in record.pathname)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (train.ConfigError, train.NonFiniteLossError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
