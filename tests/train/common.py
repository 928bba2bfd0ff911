"""What the tests of attn.train share: the smoke config of the reference run."""

from __future__ import annotations

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
  config = base.get_config("smoke")
  for name, value in {**OVERRIDES, **overrides}.items():
    *parents, field = name.split(".")
    holder = config
    for parent in parents:
      holder = holder[parent]
    holder[field] = value
  return config
