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


def write_untrained_run(config, workdir: str):
  """A run directory as `train_and_evaluate(config, workdir)` leaves one for `restore_run` and
  `init_from`, without the training: config.json (through the loop's own writer), the task's files
  and, at step `config.num_train_steps`, a checkpoint (through the loop's checkpoint manager) of the
  state that run starts from, each seed's initial parameters. Nothing but the initialisation is
  compiled: for tests of what reads a run. Returns that state (with its leading seed axis)."""
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from attn.train import loop, setup, steps

  task, model_config = setup.validate(config)
  os.makedirs(workdir, exist_ok=True)
  loop.write_config(config, workdir, model_config, task)
  task.save(workdir)
  model = setup.build_model(model_config, task.kind)
  example = jax.tree.map(jnp.asarray, task.train_batch(0, 1))
  example_inputs, _ = steps.inputs_and_targets(example, task.kind)
  init = steps.state_initializer(
    model, setup.make_optimizer(config), example_inputs, keep_best=setup.early_stopping(config) > 0
  )
  seeds = [int(config.seed) + i for i in range(int(config.num_seeds))]
  state = jax.jit(jax.vmap(init))(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
  checkpoints = loop.checkpoint_manager(config, workdir)
  checkpoints.save(int(config.num_train_steps), args=ocp.args.StandardSave(state))
  checkpoints.wait_until_finished()
  checkpoints.close()
  return state
