"""A run's checkpoints (orbax) in `workdir/checkpoints`: the manager, restoring the newest one that
restores (setting unreadable ones aside), and reading the latest for inspection."""

from __future__ import annotations

import os
import time

import orbax.checkpoint as ocp
from absl import logging

from attn.runs import files
from attn.train.config import ConfigError


def manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  """orbax's manager of `workdir/checkpoints`, keeping the newest `keep`; saves are synchronous."""
  return ocp.CheckpointManager(
    files.checkpoints_dir(workdir),
    options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False),
  )


def has_checkpoints(workdir: str) -> bool:
  folder = files.checkpoints_dir(workdir)
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def save(checkpoints: ocp.CheckpointManager, step: int, state) -> None:
  checkpoints.save(step, args=ocp.args.StandardSave(state))
  checkpoints.wait_until_finished()


def restore_newest(checkpoints: ocp.CheckpointManager, abstract_state, workdir: str, keep: int):
  """(state of the newest checkpoint that restores onto the shardings `abstract_state` carries,
  whatever mesh wrote it; its step; the manager), or (None, None, the manager) when there is none.

  A checkpoint that does not restore (a truncated or missing file, an empty step folder) is said in
  one warning line and moved aside to `checkpoints_unreadable/`, and the next older one is tried.

  Raises:
    ConfigError: when there are checkpoints and none restores.
  """
  saved = sorted(checkpoints.all_steps(), reverse=True)
  unreadable = []
  for step in saved:
    try:
      state = checkpoints.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # Any corruption of the files: orbax has no one error type for it.
      reason = " ".join(str(e).split())[:160] or type(e).__name__
      logging.warning("Checkpoint %d does not restore (%s); trying an older one.", step, reason)
      unreadable.append(step)
      continue
    if unreadable:
      checkpoints = _set_aside(checkpoints, workdir, unreadable, keep)
    logging.info("Resuming %s from the checkpoint of step %d.", workdir, step)
    return state, step, checkpoints
  if saved:
    raise ConfigError(
      f"--workdir {workdir}: no checkpoint in {files.checkpoints_dir(workdir)} restores (steps "
      f"{', '.join(map(str, saved))}); move the folder away to start again"
    )
  return None, None, checkpoints


def _set_aside(checkpoints: ocp.CheckpointManager, workdir: str, steps: list[int], keep: int):
  """Moves unreadable step folders out of orbax's way (the run saves those steps again); returns a
  fresh manager that no longer lists them."""
  checkpoints.close()
  aside = files.path(workdir, files.UNREADABLE_CHECKPOINTS_DIR)
  os.makedirs(aside, exist_ok=True)
  for step in steps:
    source = os.path.join(files.checkpoints_dir(workdir), str(step))
    target = os.path.join(aside, f"{step}.{int(time.time())}")
    if os.path.exists(source):
      os.replace(source, target)
  return manager(workdir, keep)


def restore_latest(workdir: str, abstract_state):
  """The latest checkpoint's state of a run directory (for inspection), or None when it has none."""
  checkpoints = ocp.CheckpointManager(files.checkpoints_dir(workdir))
  try:
    latest = checkpoints.latest_step()
    if latest is None:
      return None
    return checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract_state))
  finally:
    checkpoints.close()
