"""What the tests of attn.train share: the smoke config of the reference run, and a run directory
written without training it."""

from __future__ import annotations

import os

from experiments import base

STEPS = 40
# The reference config as launch.train flags; smoke_config() applies the same overrides in process.
OVERRIDES = {
  "num_train_steps": STEPS,
  "log_every_steps": 5,
  "eval_every_steps": STEPS,
  "checkpoint_every_steps": 10,
}
ATTENTION_LAYERS = (
  "encoder/layer_0/self_attention",
  "decoder/layer_0/self_attention",
  "decoder/layer_0/cross_attention",
)


def smoke_config(**overrides):
  """The smoke preset with OVERRIDES and then `overrides` ("model.scale" style keys) applied."""
  return set_fields(base.get_config("smoke"), {**OVERRIDES, **overrides})


def set_fields(config, fields: dict):
  """`config` with each of `fields` ("model.scale" style keys) set; returns it."""
  for name, value in fields.items():
    *parents, field = name.split(".")
    holder = config
    for parent in parents:
      holder = holder[parent]
    holder[field] = value
  return config


def write_untrained_run(config, workdir: str, edit=None):
  """A run directory as `train_and_evaluate(config, workdir)` leaves one for `restore_run` and
  `init_from`, without the training: config.json (through the loop's own writer), the task's files
  and, at step `config.num_train_steps`, a checkpoint (through the loop's checkpoint manager) of the
  state that run starts from, each seed's initial parameters. Nothing but the initialisation is
  compiled: for tests of what reads a run. `edit(state) -> state` changes the state before it is
  saved. Returns the saved state (with its leading seed axis)."""
  import jax

  from attn.train import checkpoints, loop, setup

  run = setup.build_run(config)
  os.makedirs(workdir, exist_ok=True)
  loop.write_config(run, workdir)
  run.task.save(workdir)
  state = jax.jit(jax.vmap(run.state_initializer()))(run.seed_rngs())
  if edit is not None:
    state = edit(state)
  manager = checkpoints.manager(workdir, run.train.checkpoints_to_keep)
  checkpoints.save(manager, run.num_train_steps, state)
  manager.close()
  return state
