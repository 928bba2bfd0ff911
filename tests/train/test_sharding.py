"""Tests for attn.train.sharding: `config.mesh` resolved and checked in one line per mistake, the
rules' mesh axes, and (with 8 forced host devices, in a child process: tests/train/multidevice.py)
every mesh of the issue training the loss curve of one device while each device holds less, and a
checkpoint restoring onto a different mesh with identical parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from attn.nn import sharding as names
from attn.train import setup, sharding
from tests.train import multidevice


def test_mesh_shape_defaults_to_data_parallel_and_resolves_the_rest():
  assert sharding.mesh_shape(None, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.mesh_shape({"fsdp": 2, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.mesh_shape({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert sharding.mesh_shape({"data": 2, "fsdp": 4, "tensor": 1}, 8) == {
    "data": 2,
    "fsdp": 4,
    "tensor": 1,
  }


@pytest.mark.parametrize(
  ("mesh", "message"),
  [
    ({"model": 2}, "config.mesh: unknown axis 'model'"),
    ({"fsdp": 0}, "config.mesh.fsdp: must be a positive int or -1"),
    ({"data": -1, "fsdp": -1}, "config.mesh: only one axis may be -1"),
    (
      {"data": 3, "fsdp": 1, "tensor": 1},
      "config.mesh: data=3, fsdp=1, tensor=1 multiply to 3, but there are 8",
    ),
    ({"tensor": 3}, "config.mesh: the sizes given multiply to 3, which does not divide the 8 devices"),
  ],
)
def test_a_bad_mesh_is_one_line_naming_the_field(mesh, message):
  with pytest.raises(sharding.MeshError) as raised:
    sharding.mesh_shape(mesh, 8)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_tensor_axis_must_divide_the_heads_and_the_data_axes_the_batch():
  run = setup.build_run(multidevice.small_config())
  model_config = run.model_config  # 8 heads.

  def fits(model_config, **fields):
    return sharding.check_fits(dataclasses.replace(run.train, **fields), model_config, device_count=8)

  assert fits(model_config, mesh={"tensor": 8})["tensor"] == 8
  fewer_heads = dataclasses.replace(model_config, num_heads=4)
  with pytest.raises(
    sharding.MeshError, match=r"^config.mesh.tensor: 8 does not divide config.model.num_heads=4"
  ):
    fits(fewer_heads, mesh={"tensor": 8})
  grouped = dataclasses.replace(model_config, num_kv_heads=2)
  with pytest.raises(
    sharding.MeshError, match=r"^config.mesh.tensor: 4 does not divide config.model.num_kv_heads=2"
  ):
    fits(grouped, mesh={"tensor": 4})
  with pytest.raises(
    sharding.MeshError, match=r"^config.batch_size: 12 is not divisible by the mesh's data x fsdp = 8"
  ):
    fits(model_config, mesh={"data": 8}, batch_size=12)


def test_a_mesh_that_does_not_fit_this_machine_is_a_config_error():
  config = multidevice.small_config()
  config.mesh = {"data": 2}
  with pytest.raises(setup.ConfigError, match=r"^config.mesh: data=2, fsdp=1, tensor=1 multiply to 2"):
    setup.build_run(config)


def test_the_rules_map_logical_names_and_keep_dimensions_the_mesh_does_not_divide_whole():
  mesh = AbstractMesh((2, 2, 2), sharding.MESH_AXES)
  kernel = P(names.EMBED, names.HEADS, names.HEAD_DIM)
  assert sharding.mesh_axes_for(kernel, (32, 8, 4), mesh) == P("fsdp", "tensor", None)
  assert sharding.mesh_axes_for(kernel, (33, 8, 4), mesh) == P(None, "tensor", None)
  table = P(names.VOCAB, names.EMBED)
  assert sharding.mesh_axes_for(table, (37, 32), mesh) == P(None, "fsdp")
  assert sharding.mesh_axes_for(P(), (5,), mesh) == P(None)
  one = AbstractMesh((8, 1, 1), sharding.MESH_AXES)
  assert sharding.mesh_axes_for(kernel, (32, 8, 4), one) == P(None, None, None)


@pytest.mark.slow  # Trains in 8-device child processes.
def test_every_mesh_trains_the_loss_curve_of_one_device_and_shards_the_parameters():
  steps = 8
  out = multidevice.run("loss_curves", 8, steps=steps)
  reference = np.asarray(out["losses"]["one"])
  assert reference.shape == (steps,) and reference[-1] < reference[0]
  for name in multidevice.MESHES:
    np.testing.assert_allclose(out["losses"][name], reference, rtol=1e-5, err_msg=name)
  whole = out["param_bytes"]["one"]
  assert out["param_bytes"]["8,1,1"] == whole  # Data parallel replicates the parameters.
  # FSDP 8 and tensor 8 leave each device about an eighth (the norms and biases stay whole).
  assert out["param_bytes"]["1,8,1"] < whole / 5
  assert out["param_bytes"]["1,1,8"] < whole / 4
  assert out["param_bytes"]["4,2,1"] < 0.6 * whole
  assert out["state_bytes"]["1,8,1"] < out["state_bytes"]["one"] / 5  # The optimizer state too.


@pytest.mark.slow  # Trains in 8-device child processes.
def test_a_checkpoint_restores_onto_a_different_mesh_with_identical_parameters(tmp_path):
  workdir = str(tmp_path / "run")
  on_8 = multidevice.run(
    "train_then_restore", 8, workdir=workdir, mesh=multidevice.MESHES["4,2,1"], train=True
  )
  assert on_8["devices"] == 8 and on_8["sharded"] > 0
  on_2 = multidevice.run("train_then_restore", 2, workdir=workdir, mesh={"data": 2}, train=False)
  assert on_2["devices"] == 2 and on_2["sha256"] == on_8["sha256"]
  # And on this one device, through restore_run (what launch.attend and launch.analyze use).
  import hashlib

  import jax

  _, params = setup.restore_run(workdir)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  assert len(leaves) == len(on_8["sha256"])
  # restore_run takes seed 0 of the seed axis; the run has one seed, so the bytes are the same.
  for path, leaf in leaves:
    digest = hashlib.sha256(np.asarray(leaf)[None].tobytes()).hexdigest()
    assert digest == on_8["sha256"][jax.tree_util.keystr(path)], jax.tree_util.keystr(path)
