"""What the attention benchmarks run: shapes (`AttentionCase`), FLOP and memory estimates, inputs, and
the attention call of each implementation compared (ours, jax.nn, Flax, torch SDPA)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attn.core import attention, masks, positions
from benchmarks.timing import import_torch

MODES = ("forward", "forward+backward")


# Ours first: ours/naive is the reference output, ours/auto the time the ratios divide by.
ATTENTION_IMPLS = ("ours/naive", "ours/flash", "ours/auto", "jax.nn/xla", "flax.linen", "torch/sdpa")


REFERENCE_IMPL, OURS_IMPL = "ours/naive", "ours/auto"


# forward+backward = 3.5 x forward: backward = 2.5 x forward, the FlashAttention papers' convention.
BACKWARD_FLOP_FACTOR = 3.5


SKIP_BYTES = 6e9  # Attention cases estimated to need more than this are skipped.


FLASH_TARGET_BYTES = 2e9  # Target peak of flash forward+backward at T = S = 16384.


def attention_flops(B: int, H: int, T: int, S: int, K: int, *, causal: bool, backward: bool) -> float:
  """FLOPs of attention by convention: 4 * B * H * T * S * K forward (q.k and weights @ v, a multiply
  and an add each), halved when causal, and BACKWARD_FLOP_FACTOR times that for forward+backward."""
  flops = 4.0 * B * H * T * S * K
  if causal:
    flops /= 2.0
  return flops * BACKWARD_FLOP_FACTOR if backward else flops


@dataclasses.dataclass(frozen=True)
class AttentionCase:
  """One attention shape: query [B, T, H, K], key and value [B, S, H, K], float32."""

  B: int
  H: int
  T: int
  S: int
  K: int
  causal: bool

  @property
  def name(self) -> str:
    return f"B={self.B} H={self.H} T={self.T} S={self.S} K={self.K}{' causal' if self.causal else ''}"

  def flops(self, mode: str) -> float:
    return attention_flops(
      self.B, self.H, self.T, self.S, self.K, causal=self.causal, backward=mode != "forward"
    )


def attention_bytes_estimate(impl: str, case: AttentionCase, mode: str) -> float:
  """A rough upper estimate of an attention call's working memory, to skip cases that would not fit.

  Inputs, outputs and gradients: about 8 arrays of B * T * H * K floats. Paths that materialise the
  [B, H, T, S] float32 logits hold several such arrays: up to 3 forward and 8 for forward+backward
  (measured by the memory suite at T = S = 4096: about 2 and 8 for ours/naive, 2 and 5 for jax.nn
  and Flax). Ours/flash holds none; torch's CPU kernel did not either, but it may fall back to the
  materialising one, so it is counted as materialising.
  """
  io = 8.0 * case.B * max(case.T, case.S) * case.H * case.K * 4
  if impl == "ours/flash" or (impl == OURS_IMPL and auto_choice(case) == "flash"):
    return io
  logits = float(case.B) * case.H * case.T * case.S * 4
  return io + logits * (3 if mode == "forward" else 8)


def auto_choice(case: AttentionCase) -> str:
  return attention.choose_implementation(None, T=case.T, S=case.S)


def attention_inputs(case: AttentionCase, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Unit-normal float32 query [B, T, H, K], key and value [B, S, H, K]."""
  q_rng, k_rng, v_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(q_rng, (case.B, case.T, case.H, case.K), jnp.float32)
  k = jax.random.normal(k_rng, (case.B, case.S, case.H, case.K), jnp.float32)
  v = jax.random.normal(v_rng, (case.B, case.S, case.H, case.K), jnp.float32)
  return q, k, v


# The variants suite's memory rows: flash attention with a relative-position bias computed per tile.
RELATIVE_IMPLS = ("ours/flash+alibi", "ours/flash+t5")


def jax_attention_fn(impl: str, case: AttentionCase, mode: str) -> Callable:
  """The (unjitted) function of (q, k, v) that `impl` runs: the output, or the gradients of sum(out)
  with respect to q, k and v."""
  causal = case.causal

  def forward(q, k, v):
    if impl in RELATIVE_IMPLS:  # The flash kernel with ALiBi or a causal T5 bias, per tile.
      H = q.shape[-2]
      bias = (
        positions.RelativeBias("alibi", positions.alibi_slopes(H))
        if impl == "ours/flash+alibi"
        else positions.RelativeBias("t5", jnp.zeros((32, H)), bidirectional=False)
      )
      return attention.dot_product_attention(
        q, k, v, is_causal=causal, relative_bias=bias, implementation="flash"
      )
    if impl.startswith("ours/"):
      choice = {"ours/naive": "naive", "ours/flash": "flash", "ours/auto": None}[impl]
      return attention.dot_product_attention(q, k, v, is_causal=causal, implementation=choice)
    if impl == "jax.nn/xla":
      return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
    if impl == "flax.linen":
      mask = None
      if causal and case.T == case.S:
        mask = nn.make_causal_mask(jnp.ones((1, case.T), jnp.int32), dtype=jnp.bool_)  # [1, 1, T, T]
      elif causal:
        mask = masks.causal_mask(case.T, case.S)[None, None]
      return nn.dot_product_attention(q, k, v, mask=mask)
    raise ValueError(f"unknown JAX attention implementation {impl!r}")

  if mode == "forward":
    return forward
  return jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v)), argnums=(0, 1, 2))


def torch_attention_call(case: AttentionCase, mode: str, inputs=None) -> Callable[[], Any]:
  """A zero-argument call of torch's scaled_dot_product_attention on [B, H, T, K] tensors (made from
  `inputs`, numpy [B, T, H, K] arrays, when given). Forward runs under no_grad and returns the output
  as numpy [B, T, H, K]; forward+backward runs out.sum().backward() and returns q's gradient."""
  torch = import_torch()
  if inputs is None:
    generator = torch.Generator().manual_seed(0)
    shapes = ((case.B, case.H, case.T, case.K), (case.B, case.H, case.S, case.K))
    q, k, v = (torch.randn(shapes[i > 0], generator=generator) for i in range(3))
  else:
    q, k, v = (torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2))) for x in inputs)
  sdpa = torch.nn.functional.scaled_dot_product_attention
  if mode == "forward":

    def run():
      with torch.no_grad():
        return sdpa(q, k, v, is_causal=case.causal).transpose(1, 2).numpy()

    return run
  for x in (q, k, v):
    x.requires_grad_(True)

  def run_backward():
    for x in (q, k, v):
      x.grad = None
    sdpa(q, k, v, is_causal=case.causal).sum().backward()
    return q.grad

  return run_backward


def attention_cases(smoke: bool) -> list[AttentionCase]:
  if smoke:
    return [AttentionCase(1, 2, 64, 64, 16, False), AttentionCase(1, 2, 64, 64, 16, True)]
  return [
    AttentionCase(8, 8, 512, 512, 64, False),
    AttentionCase(8, 8, 512, 512, 64, True),
    AttentionCase(1, 8, 4096, 4096, 64, False),  # The non-causal twin, for the causal speed-up.
    AttentionCase(1, 8, 4096, 4096, 64, True),
  ]


def memory_cases(smoke: bool) -> list[tuple[str, AttentionCase, str, float | None]]:
  """(impl, case, mode, target peak bytes or None)."""
  if smoke:
    return [("ours/flash", AttentionCase(1, 2, 128, 128, 16, True), "forward+backward", None)]
  return [
    ("ours/flash", AttentionCase(1, 8, 16384, 16384, 64, True), "forward+backward", FLASH_TARGET_BYTES),
    ("ours/flash", AttentionCase(1, 8, 65536, 65536, 64, True), "forward", None),
    ("ours/naive", AttentionCase(1, 8, 4096, 4096, 64, True), "forward+backward", None),
  ]
