"""Runs a config's sweep: `python -m launch.sweep --config=experiments/NAME.py[:preset] --workdir=DIR
[--dry_run]`. One subdirectory per point; rerun to resume; ends by printing the comparison.

With `--coordinator_address --num_processes --process_id` (launch/distributed.py), every process runs
the sweep and each point trains as one multi-process run; process 0 writes the sweep's files."""

import sys

from absl import app, flags

from attn.runs import compare, sweep
from launch import distributed, run, start_quietly

_CONFIG = flags.DEFINE_string("config", None, "Experiment config file[:preset] defining get_sweep.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (one subdirectory per point).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the points and their flags; run nothing.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  start_quietly()
  try:
    distributed.check(distributed.given())
  except distributed.DistributedError as e:
    sys.exit(f"error: {e}")
  # Every process of a multi-process sweep runs this; each point is one multi-process launch.train.
  writer = distributed.PROCESS_ID.value in (None, 0)
  try:
    results = sweep.run_sweep(
      _CONFIG.value,
      _WORKDIR.value,
      dry_run=_DRY_RUN.value,
      train_args=distributed.forwarded(),
      writer=writer,
    )
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  if _DRY_RUN.value or not writer:
    return
  print(compare.compare(_WORKDIR.value))
  failed = [r.name for r in results if r.status == "failed"]
  if failed:
    sys.exit(f"error: {len(failed)} of {len(results)} points failed: {', '.join(failed)}")


if __name__ == "__main__":
  run(main)
