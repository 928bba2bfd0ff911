"""A run's device mesh and the rules that lay its state and batches over it.

`config.mesh` names the sizes of three axes (maxtext's and big_vision's, in their order):
  data    data parallel: the batch is split over it, everything else is replicated;
  fsdp    fully sharded data parallel: the batch is split over it too, and every parameter's "embed"
          axis (and the optimizer state's, which mirrors the parameters) is sharded over it;
  tensor  tensor (Megatron) parallel: heads, key/value heads, the feed-forward hidden units and the
          vocabulary are split over it; XLA's SPMD partitioner then all-reduces after the attention
          output and after the feed-forward, where the residual stream is constrained whole.
-1 is the rest of the devices (at most one axis); the default is data=-1, fsdp=1, tensor=1 (plain data
parallelism over every device, as before meshes existed). The rules (`RULES`) map the logical names of
`attn.nn.sharding` to these axes; a parameter dimension that does not divide by its mesh axes stays
whole (e.g. a vocabulary of 37 under tensor=2), so small models shard what they can.

The seed axis of vmapped seeds (the state's leading axis) is never sharded: every seed lies on every
device like the rest of its state, so seeds and the mesh are independent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn.nn import sharding as names
from attn.nn.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # A batch's B is split over both.
RULES = (
  (names.BATCH, BATCH_AXES),
  (names.LENGTH, None),
  (names.ACTIVATION_EMBED, None),
  (names.EMBED, "fsdp"),
  (names.HEADS, "tensor"),
  (names.KV_HEADS, "tensor"),
  (names.MLP, "tensor"),
  (names.VOCAB, "tensor"),
  (names.HEAD_DIM, None),
)
DEFAULT_MESH = {"data": -1, "fsdp": 1, "tensor": 1}


class MeshError(ValueError):
  """A mesh that does not fit the devices or the model; the message names the field."""


def mesh_shape(mesh_config, device_count: int | None = None) -> dict[str, int]:
  """{axis: size} of `config.mesh` (a ConfigDict or dict over MESH_AXES; None = the default) with
  the -1 resolved against `device_count` (default: every device of every process).

  Raises:
    MeshError: an unknown axis, a size that is not a positive int (or -1), two -1s, or sizes that do
      not multiply to the device count.
  """
  n = jax.device_count() if device_count is None else device_count
  if isinstance(mesh_config, ml_collections.ConfigDict):
    mesh_config = mesh_config.to_dict()
  given = dict(mesh_config or {})
  unknown = sorted(set(given) - set(MESH_AXES))
  if unknown:
    raise MeshError(f"config.mesh: unknown axis {unknown[0]!r}; the axes are {', '.join(MESH_AXES)}")
  sizes = {**DEFAULT_MESH, **given}
  if "data" not in given and -1 in given.values():
    sizes["data"] = 1  # Another axis takes the rest.
  for axis, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise MeshError(f"config.mesh.{axis}: must be a positive int or -1 (the rest), got {size!r}")
  rest = [a for a in MESH_AXES if sizes[a] == -1]
  if len(rest) > 1:
    raise MeshError(f"config.mesh: only one axis may be -1, got {', '.join(rest)}")
  known = math.prod(sizes[a] for a in MESH_AXES if sizes[a] != -1)
  if rest:
    if n % known:
      raise MeshError(
        f"config.mesh: the sizes given multiply to {known}, which does not divide the {n} devices"
      )
    sizes[rest[0]] = n // known
  total = math.prod(sizes.values())
  if total != n:
    shown = ", ".join(f"{a}={sizes[a]}" for a in MESH_AXES)
    raise MeshError(f"config.mesh: {shown} multiply to {total}, but there are {n} devices")
  return {a: sizes[a] for a in MESH_AXES}


def make_mesh(mesh_config=None, devices=None) -> jax.sharding.Mesh:
  """The mesh of `config.mesh` over `devices` (default: every device of every process)."""
  shape = mesh_shape(mesh_config, None if devices is None else len(devices))
  return jax.make_mesh(
    tuple(shape.values()),
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    devices=devices,
  )


def check_fits(train, model_config: ModelConfig, device_count: int | None = None) -> dict[str, int]:
  """The mesh shape of `train.mesh` (a `TrainConfig`) over `device_count` devices (default: all),
  checked against the model and the batch sizes.

  Raises:
    MeshError: the tensor axis does not divide the heads or key/value heads, or the data axes do not
      divide a batch size.
  """
  shape = mesh_shape(train.mesh, device_count)
  tensor = shape["tensor"]
  heads = model_config.num_heads
  kv_heads = model_config.num_kv_heads or heads
  if heads % tensor:
    raise MeshError(
      f"config.mesh.tensor: {tensor} does not divide config.model.num_heads={heads} (tensor "
      "parallelism splits the heads)"
    )
  if kv_heads % tensor:
    raise MeshError(f"config.mesh.tensor: {tensor} does not divide config.model.num_kv_heads={kv_heads}")
  data = shape["data"] * shape["fsdp"]
  for field in ("batch_size", "eval_batch_size"):
    if getattr(train, field) % data:
      raise MeshError(
        f"config.{field}: {getattr(train, field)} is not divisible by the mesh's data x fsdp = {data} "
        "(the batch is split over both)"
      )
  return shape


def mesh_axes_for(logical: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
  """The mesh PartitionSpec of an array of `shape` whose axes carry the `logical` names: RULES
  applied, and any mesh axis that does not divide its dimension dropped (that dimension whole)."""
  axes = nn.logical_to_mesh_axes(tuple(logical), RULES)
  out = []
  for dim, axis in zip(shape, tuple(axes) + (None,) * (len(shape) - len(axes)), strict=True):
    group = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
    group = tuple(a for a in group if mesh.shape[a] > 1)
    if not group or dim % math.prod(mesh.shape[a] for a in group):
      out.append(None)
    else:
      out.append(group[0] if len(group) == 1 else group)
  return P(*out)


def state_shardings(mesh: jax.sharding.Mesh, boxed_state, *, seed_axis: bool = True):
  """NamedShardings for a state whose per-seed abstract value `boxed_state` carries flax's logical
  names (`steps.state_initializer(..., boxed=True)` under `jax.eval_shape`); `seed_axis`: the real
  state has a leading seed axis, which stays unsharded."""
  specs = nn.get_partition_spec(boxed_state)
  abstract = nn.unbox(boxed_state)

  def one(spec, leaf):
    inner = mesh_axes_for(spec, leaf.shape, mesh)
    return NamedSharding(mesh, P(None, *inner) if seed_axis else inner)

  return jax.tree.map(one, specs, abstract, is_leaf=lambda x: isinstance(x, P))


def with_shardings(abstract, shardings):
  """The abstract values (ShapeDtypeStructs) of `abstract` carrying the `shardings` of a tree like it:
  what orbax restores straight onto, and what `bytes_per_device` reads."""
  return jax.tree.map(
    lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where),
    abstract,
    shardings,
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A batch's B split over data and fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(tree, shardings):
  """Host arrays (the same on every process) as global arrays of `shardings` (one, or a tree like
  `tree`): each process puts only the slices its own devices hold, so nothing crosses processes."""
  if isinstance(shardings, NamedSharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def one(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # Global already: reshard.
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree, shardings)


def bytes_per_device(tree) -> int:
  """The largest number of bytes any one device holds of the arrays in `tree` (abstract values with
  a `.sharding` or real arrays)."""
  per_device: dict = {}
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    nbytes = math.prod(shard) * np.dtype(leaf.dtype).itemsize
    for device in leaf.sharding.device_set:
      per_device[device] = per_device.get(device, 0) + nbytes
  return max(per_device.values()) if per_device else 0


def describe(shape: Mapping[str, int]) -> str:
  return ", ".join(f"{axis}={size}" for axis, size in shape.items())
