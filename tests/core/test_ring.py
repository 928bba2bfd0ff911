"""Tests for attn/core/ring.py: ring attention over 2, 4 and 8 devices equals the single-device flash
path (`attn.dot_product_attention(implementation="flash")`) in value and gradient.

The suite runs with one device, and forced host devices must be set before JAX starts, so the ring
runs in one child process with 8 forced CPU devices (the module-scoped fixture `ring_results`: one
process for every case and ring size); it saves its outputs and gradients to a file, and each test
compares them here with the flash path run on the same inputs in this process.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn
from attn.core import flash, ring

ROOT = pathlib.Path(__file__).resolve().parents[2]

# name -> the shapes and options of one comparison, and the ring sizes it runs on. Small tiles
# (BLOCK) give each device two query tiles per chunk on a ring of 2, so flash's causal tile skipping
# runs within the diagonal chunk as well as the ring's chunk skipping.
CASES = {
  "plain": dict(sizes=(2, 4, 8)),
  # Grouped-query heads, key padding, batch element 1 with no key at all (fully masked rows), NaN
  # in the masked keys, causal.
  "causal_padding_gqa": dict(sizes=(2, 4, 8), G=2, causal=True, lengths=(37, 0), nan_keys=True),
  "alibi_causal": dict(sizes=(4,), causal=True, relative="alibi"),
  # Cross-attention (T != S), T5's bidirectional bias, a soft-cap and a sink.
  "t5_cross_cap_sink": dict(sizes=(2,), S=32, relative="t5", soft_cap=2.0, sink=True),
  # Flash's looped (not unrolled) tiles, with a query offset for ALiBi.
  "looped_causal": dict(sizes=(2,), causal=True, relative="alibi", looped=True, q_offset=5),
}
B, T, H, K = 2, 64, 4, 8
BLOCK = 16


def _inputs(name):
  """q [B, T, H, K], k [B, S, G, K], v [B, S, G, K], key padding [B, S] or None, and the extra
  parameters whose gradients are compared too: {"relative": ALiBi's slopes or T5's table, "sink"}."""
  case = CASES[name]
  S, G = case.get("S", T), case.get("G", H)
  r = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(r[0], (B, T, H, K)) * 2  # Logits spread enough to make the softmax peaked.
  k = jax.random.normal(r[1], (B, S, G, K))
  v = jax.random.normal(r[2], (B, S, G, K))
  mask = None
  if "lengths" in case:
    mask = jnp.arange(S)[None, :] < jnp.asarray(case["lengths"])[:, None]
    if case.get("nan_keys"):
      k = jnp.where(mask[:, :, None, None], k, jnp.nan)
      v = jnp.where(mask[:, :, None, None], v, jnp.inf)
  extra = {}
  if case.get("relative") == "alibi":
    extra["relative"] = attn.alibi_slopes(H)
  elif case.get("relative") == "t5":
    extra["relative"] = jax.random.normal(r[3], (32, H))
  if case.get("sink"):
    extra["sink"] = jnp.linspace(-1.0, 1.0, H)
  return q, k, v, mask, extra


def _options(name, extra):
  """The keyword options shared by ring_attention and the flash reference (extra: as `_inputs`)."""
  case = CASES[name]
  options = dict(is_causal=case.get("causal", False), logit_soft_cap=case.get("soft_cap"))
  if "relative" in extra:
    options["relative_bias"] = attn.RelativeBias(
      case["relative"], extra["relative"], query_offset=case.get("q_offset", 0)
    )
  if "sink" in extra:
    options["sink_logits"] = extra["sink"]
  return options


def _value_and_grads(name, attention):
  """out and the gradients of sum(sin(out) out) w.r.t. q, k, v and the extra parameters, as numpy."""
  q, k, v, mask, extra = _inputs(name)

  def loss(q, k, v, extra):
    out = attention(q, k, v, mask, **_options(name, extra))
    return jnp.sum(jnp.sin(out) * out), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, extra)
  return [np.asarray(x) for x in (out, *grads[:3], *(grads[3][p] for p in sorted(extra)))]


@functools.cache
def _flash_results(name):
  return _value_and_grads(name, _flash)


def _flash(q, k, v, mask, **options):
  mask = None if mask is None else mask[:, None, None, :]
  return attn.dot_product_attention(q, k, v, mask=mask, implementation="flash", **options)


def _ring_on(n):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:n]), ("seq",))

  def run(q, k, v, mask, **options):
    return ring.ring_attention(
      q, k, v, mesh=mesh, axis_name="seq", mask=mask, block_q=BLOCK, block_k=BLOCK, **options
    )

  return run


def child_main(path: str) -> None:
  """The child process (8 forced devices): every case on each of its ring sizes, saved to `path`
  (.npz); a JSON line on stdout with what is not an array."""
  arrays, info = {}, {"devices": len(jax.devices())}
  for name, case in CASES.items():
    for n in case["sizes"]:
      unroll = flash.UNROLL_MAX_TILES
      flash.UNROLL_MAX_TILES = 0 if case.get("looped") else unroll
      try:
        results = _value_and_grads(name, _ring_on(n))
      finally:
        flash.UNROLL_MAX_TILES = unroll
      for j, x in enumerate(results):
        arrays[f"{name}/{n}/{j}"] = x
  q, k, v, _, _ = _inputs("plain")
  out = jax.jit(_ring_on(8))(q, k, v, None)
  info["out_sharding"] = str(out.sharding.spec)
  try:
    _ring_on(8)(q[:, :60], k, v, None)
  except ValueError as e:
    info["error"] = str(e)
  np.savez(path, **arrays)
  print(json.dumps(info))


@pytest.fixture(scope="module")
def ring_results(tmp_path_factory):
  """The child's arrays ({"case/n/j": array}) and its JSON line."""
  path = tmp_path_factory.mktemp("ring") / "results.npz"
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    # Unoptimised XLA compiles about twice as fast; float32 results agree to rounding.
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
  }
  code = "import sys; from tests.core import test_ring; test_ring.child_main(sys.argv[1])"
  argv = [sys.executable, "-c", code, str(path)]
  child = subprocess.Popen(
    argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  try:
    for name in CASES:  # The references, computed here while the child computes the ring.
      _flash_results(name)
    stdout, stderr = child.communicate(timeout=600)
  finally:
    if child.poll() is None:
      child.kill()
      child.communicate()
  assert child.returncode == 0, stderr[-3000:]
  with np.load(path) as arrays:
    return dict(arrays), json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
  ("name", "n"), [(name, n) for name, case in CASES.items() for n in case["sizes"]]
)
@pytest.mark.slow  # ring_results runs an 8-device child process.
def test_ring_equals_flash_in_value_and_gradient(ring_results, name, n):
  arrays, info = ring_results
  assert info["devices"] == 8
  ref = _flash_results(name)
  what = ["out", "d query", "d key", "d value", *(f"d {e}" for e in sorted(_inputs(name)[4]))]
  for j, expected in enumerate(ref):
    got = arrays[f"{name}/{n}/{j}"]
    assert np.all(np.isfinite(got)), (what[j], "not finite")
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5, err_msg=f"{name} n={n} {what[j]}")


@pytest.mark.slow  # ring_results runs an 8-device child process.
def test_ring_fully_masked_rows_are_zero_with_zero_gradient(ring_results):
  arrays, _ = ring_results
  for n in CASES["causal_padding_gqa"]["sizes"]:
    out, dq, dk, dv = (arrays[f"causal_padding_gqa/{n}/{j}"] for j in range(4))
    assert np.all(out[1] == 0.0) and np.all(dq[1] == 0.0), n  # Batch element 1 has no key.
    assert np.all(dk[1] == 0.0) and np.all(dv[1] == 0.0), n
    assert np.all(dk[0, 37:] == 0.0) and np.all(dv[0, 37:] == 0.0), n  # Masked keys (NaN there).
    assert np.any(out[0] != 0.0), n


@pytest.mark.slow  # ring_results runs an 8-device child process.
def test_ring_output_is_split_over_the_axis_and_lengths_must_divide(ring_results):
  _, info = ring_results
  assert info["out_sharding"] == str(jax.sharding.PartitionSpec(None, "seq"))
  assert "query length T = 60 does not divide by the ring size 8" in info["error"]


def test_ring_of_one_device_equals_flash():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("seq",))
  q, k, v, _, _ = _inputs("plain")
  run = jax.jit(lambda q, k, v: ring.ring_attention(q, k, v, mesh=mesh, axis_name="seq", is_causal=True))
  got = run(q, k, v)
  np.testing.assert_allclose(got, _flash(q, k, v, None, is_causal=True), atol=2e-6)


def test_ring_rejects_inputs_that_do_not_fit():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("seq",))
  q, k, v, _, _ = _inputs("t5_cross_cap_sink")  # T = 64, S = 32.
  with pytest.raises(ValueError, match="is_causal needs T == S"):
    ring.ring_attention(q, k, v, mesh=mesh, axis_name="seq", is_causal=True)
  with pytest.raises(ValueError, match="no axis 'data'"):
    ring.ring_attention(q, k, v, mesh=mesh, axis_name="data")
  with pytest.raises(ValueError, match=r"mask must be key padding, bool \[B, S\] = \(2, 32\)"):
    ring.ring_attention(q, k, v, mesh=mesh, axis_name="seq", mask=jnp.ones((2, 64), bool))
  with pytest.raises(ValueError, match="do not fit"):
    ring.ring_attention(q, k[..., :4], v, mesh=mesh, axis_name="seq")
