"""Tests for launch/demo.py: what the demo prints is what the maths says."""

import math
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from launch import demo

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bank_vectors_identical_before_and_different_after_self_attention():
  bank = demo.bank_example(jax.random.PRNGKey(0))
  assert bank["before"] == 0.0
  assert bank["after"] > 0.05
  for sentence in ("river", "india"):
    assert sum(bank[f"{sentence}_weights"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow  # Over ~3 s on 2 cores (compiling).
def test_scale_at_init_matches_theory():
  # Unit-variance q, k: scaled logits have std ~1 at every K, unscaled ~sqrt(K); scaled attention over
  # 64 keys keeps entropy near 3.7 nats while unscaled attention collapses as K grows.
  rows = demo.scale_at_init(jax.random.PRNGKey(0))
  unscaled_entropies = []
  for row in rows:
    (s_std, s_ent), (n_std, n_ent) = row["sqrt_d"], row["none"]
    assert s_std == pytest.approx(1.0, rel=0.1)
    assert n_std == pytest.approx(math.sqrt(row["K"]), rel=0.1)
    assert 3.5 < s_ent < math.log(64)
    unscaled_entropies.append(n_ent)
  assert unscaled_entropies == sorted(unscaled_entropies, reverse=True)
  assert unscaled_entropies[-1] < 0.5


@pytest.mark.slow  # Starts launch.demo (compiling every rung).
def test_main_prints_every_rung_and_its_first_line_is_its_own():
  # A child process with JAX left to probe for a TPU: its first line is the demo's, not JAX's
  # "Unable to initialize backend" (launch.start_quietly).
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  result = subprocess.run(
    [sys.executable, "-m", "launch.demo"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Unable to initialize backend" not in result.stderr
  out = result.stdout
  assert out.splitlines()[0].startswith("1. Weightless self-attention")
  for heading in ("1. Weightless", "2. Scaled", "3. Multi-head", "4. Encoder-decoder"):
    assert heading in out
  assert "logits (2, 5, 100)" in out
  assert "logits finite: True" in out
  assert "attn.tasks.seed.sense_shift, the same distance: before 0.000, after 0." in out
  assert "permuting the inputs permutes the outputs: max difference" in out
  assert "positions shifted by 100: RoPE logits change by" in out


def test_order_properties_hold_on_random_vectors():
  order = demo.order_properties(jax.random.PRNGKey(3))
  assert order["permutation"] < 1e-5 and order["rope_shift"] < 1e-3
  assert order["absolute_shift"] > 0.1
