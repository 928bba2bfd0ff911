"""A run's steps compiled once: vmapped over the seed axis and jitted with their shardings over the
run's mesh (`attn.train.sharding`): the state laid out by the rules (the seed axis whole), batches
split along B over data and fsdp, metrics replicated."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
from jax.sharding import NamedSharding

from attn.train import sharding, steps


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  train: Callable  # (state, batch) -> (state, metrics); donates the state.
  eval: Callable  # (params, batch) -> the objective's eval sums over the batch.
  diagnostics: Callable  # (params, batch) -> per-layer statistics.
  probe: Callable  # (params, rng) -> per-layer statistics on unit-variance inputs.
  init: Callable  # (seed rngs) -> a fresh state, laid out.
  abstract_init: Callable  # The same for jax.eval_shape (no mesh context, which jit refuses).
  keep_best: Callable  # (state, scores) -> state; donates the state.
  mesh: jax.sharding.Mesh
  state_shardings: object  # A tree like the state.
  data_sharding: NamedSharding
  replicated: NamedSharding

  def to_batch(self, host_batch):
    """A host batch laid out along B over the mesh (each process puts only its own rows)."""
    return sharding.to_global(host_batch, self.data_sharding)


def _in_mesh(fn, mesh):
  """`fn` (jitted) traced and run with the mesh and the logical rules in context, so the models'
  activation constraints (`attn.nn.sharding`) bind to this mesh; `.lower` as on `fn`."""

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      return fn(*args)

  def lower(*args):  # For ahead-of-time compilation (`.lower(...).compile()`), as on a jitted fn.
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      return fn.lower(*args)

  wrapped.lower = lower
  return wrapped


def over_seeds(fn: Callable, in_axes, num_seeds: int) -> Callable:
  """`jax.vmap(fn, in_axes)` over the seed axis (every output gains it at 0). With one seed, `fn`
  on the seed's slice, its outputs given the axis back: the same values, and the step XLA compiles
  is the unbatched one (under vmap a kernel with a size-1 seed axis batches every matmul and its
  gradient: the loop step 5-10 % slower at nanoGPT's CPU shape on XLA's CPU backend)."""
  if num_seeds != 1:
    return jax.vmap(fn, in_axes=in_axes)

  def one_seed(*args):
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    squeeze = functools.partial(jax.tree.map, lambda x: x[0])
    args = [a if ax is None else squeeze(a) for a, ax in zip(args, axes, strict=True)]
    return jax.tree.map(lambda x: x[None], fn(*args))

  return one_seed


def compile_steps(run, *, devices=None) -> CompiledSteps:
  """Jits `run`'s vmapped steps once, over the mesh of `run.train.mesh` on `devices` (default: all)."""
  mesh = sharding.make_mesh(run.train.mesh, devices)
  replicated = sharding.replicated(mesh)
  data_sharding = sharding.batch_sharding(mesh)
  boxed_init = run.state_initializer(boxed=True)
  state_shardings = sharding.state_shardings(mesh, jax.eval_shape(boxed_init, jax.random.PRNGKey(0)))
  params = state_shardings.params

  def jit(fn, in_axes, in_shardings, out_shardings, donate=False):
    """`fn` vmapped over the seed axis (`in_axes`) and jitted with these shardings, in the mesh."""
    jitted = jax.jit(
      over_seeds(fn, in_axes, run.train.num_seeds),
      in_shardings=in_shardings,
      out_shardings=out_shardings,
      donate_argnums=(0,) if donate else (),
    )
    return _in_mesh(jitted, mesh)

  on_model = dict(model=run.model, objective=run.objective)
  train = functools.partial(
    steps.train_step,
    optimizer=run.optimizer,
    label_smoothing=float(run.train.label_smoothing),
    **on_model,
  )
  eval_step = functools.partial(steps.eval_step, **on_model)
  diagnostics = functools.partial(steps.diagnostics_step, **on_model)
  probe = functools.partial(steps.probe_step, model_config=run.model_config)
  abstract_init = jax.jit(
    over_seeds(run.state_initializer(), 0, run.train.num_seeds), out_shardings=state_shardings
  )
  return CompiledSteps(
    train=jit(train, (0, None), (state_shardings, data_sharding), (state_shardings, replicated), True),
    eval=jit(eval_step, (0, None), (params, data_sharding), replicated),
    diagnostics=jit(diagnostics, (0, None), (params, data_sharding), replicated),
    probe=jit(probe, (0, None), (params, replicated), replicated),
    init=_in_mesh(abstract_init, mesh),
    abstract_init=abstract_init,
    keep_best=jit(steps.keep_best, 0, (state_shardings, replicated), state_shardings, True),
    mesh=mesh,
    state_shardings=state_shardings,
    data_sharding=data_sharding,
    replicated=replicated,
  )
