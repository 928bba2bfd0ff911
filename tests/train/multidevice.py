"""Checks that need several devices, run in a child process with forced host devices (which must be
set before jax starts, while the test suite runs on one): `python -m tests.train.multidevice NAME
JSON_ARGS`, printing one JSON line of results last. `run(name, devices, **args)` starts it from a test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
MESHES = {
  "8,1,1": {"data": 8, "fsdp": 1, "tensor": 1},
  "4,2,1": {"data": 4, "fsdp": 2, "tensor": 1},
  "2,2,2": {"data": 2, "fsdp": 2, "tensor": 2},
  "1,1,8": {"data": 1, "fsdp": 1, "tensor": 8},
  "1,8,1": {"data": 1, "fsdp": 8, "tensor": 1},
}


def run(name: str, devices: int, **args) -> dict:
  """The results of check `name` in a child process with `devices` forced host devices."""
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    # Unoptimised XLA compiles about twice as fast; these checks compare numbers, not speed.
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
  }
  result = subprocess.run(
    [sys.executable, "-m", "tests.train.multidevice", name, json.dumps(args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def small_config(**changes):
  """A small encoder-decoder whose sizes every mesh axis of 8 divides (8 heads, D = 32)."""
  from experiments import base
  from tests.train.common import set_fields

  config = base.get_config("smoke")
  config.model.num_heads = 8
  config.model.d_model = 32
  config.model.d_ff = 64
  config.model.dropout_rate = 0.0
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_seeds = 1
  return set_fields(config, changes)


def loss_curves(steps: int) -> dict:
  """The training loss of `steps` steps on one device and on each of MESHES (all 8 devices), and
  the bytes of parameters (and of the whole state) the fullest device holds."""
  import jax
  import jax.numpy as jnp

  from attn.train import compiled as compiled_lib
  from attn.train import setup, sharding

  config = small_config()
  run = setup.build_run(config)
  task = run.task
  rngs = jnp.stack([jax.random.PRNGKey(0)])
  out = {"losses": {}, "param_bytes": {}, "state_bytes": {}}
  cases = {
    "one": ({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
    **{name: (mesh, None) for name, mesh in MESHES.items()},
  }
  for name, (mesh, devices) in cases.items():
    on_mesh = dataclasses.replace(run, train=dataclasses.replace(run.train, mesh=mesh))
    compiled = compiled_lib.compile_steps(on_mesh, devices=devices)
    state = compiled.init(rngs)
    out["param_bytes"][name] = sharding.bytes_per_device(state.params)
    out["state_bytes"][name] = sharding.bytes_per_device(state)
    losses = []
    for step in range(steps):
      batch = sharding.to_global(task.train_batch(step, config.batch_size), compiled.data_sharding)
      state, metrics = compiled.train(state, batch)
      losses.append(float(metrics["loss"][0]))
    out["losses"][name] = losses
  return out


def train_then_restore(workdir: str, mesh: dict, train: bool) -> dict:
  """With `train`, trains a small run on `mesh` in `workdir`; then restores its latest checkpoint
  onto `mesh` over this process's devices; returns the parameters' digests and how many are sharded."""
  import jax
  import numpy as np

  from attn.train import checkpoints, loop, setup
  from attn.train import compiled as compiled_lib

  config = small_config(
    **{"num_train_steps": 4, "log_every_steps": 2, "checkpoint_every_steps": 2, "eval_every_steps": 4}
  )
  config.mesh = mesh
  if train:
    loop.train_and_evaluate(config, workdir)
  run = setup.build_run(config)
  compiled = compiled_lib.compile_steps(run)
  state = checkpoints.restore_latest(workdir, run.abstract_state(compiled.state_shardings))
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  return {
    "devices": jax.device_count(),
    "sha256": {
      jax.tree_util.keystr(p): hashlib.sha256(np.asarray(x).tobytes()).hexdigest() for p, x in leaves
    },
    "sharded": sum(not x.sharding.is_fully_replicated for _, x in leaves),
  }


def bytes_table(d_model: int, num_heads: int, d_ff: int, layers: int) -> dict:
  """Per-device bytes of the parameters and of the whole state (Adam's moments included) of a
  larger encoder-decoder on each mesh of 8 devices, from shapes and shardings alone (nothing runs)."""
  import jax
  import jax.numpy as jnp

  from attn.train import compiled as compiled_lib
  from attn.train import setup, sharding

  config = small_config(
    **{
      "model.d_model": d_model,
      "model.num_heads": num_heads,
      "model.d_ff": d_ff,
      "model.num_encoder_layers": layers,
      "model.num_decoder_layers": layers,
    }
  )
  run = setup.build_run(config)
  out = {}
  for name, mesh in {
    "replicated (8,1,1)": MESHES["8,1,1"],
    "fsdp 8 (1,8,1)": MESHES["1,8,1"],
    "tensor 8 (1,1,8)": MESHES["1,1,8"],
    "2,2,2": MESHES["2,2,2"],
  }.items():
    on_mesh = dataclasses.replace(run, train=dataclasses.replace(run.train, mesh=mesh))
    compiled = compiled_lib.compile_steps(on_mesh)
    abstract = sharding.with_shardings(
      jax.eval_shape(compiled.abstract_init, jnp.stack([jax.random.PRNGKey(0)])),
      compiled.state_shardings,
    )
    out[name] = {
      "params": sharding.bytes_per_device(abstract.params),
      "state": sharding.bytes_per_device(abstract),
    }
  return out


CHECKS = {
  "loss_curves": loss_curves,
  "train_then_restore": train_then_restore,
  "bytes_table": bytes_table,
}

if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  print(json.dumps(CHECKS[sys.argv[1]](**json.loads(sys.argv[2]))))
