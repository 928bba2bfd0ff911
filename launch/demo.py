"""The ladder of the lecture notes, run end to end on random vectors: `python -m launch.demo`.

1. Weightless self-attention: the same "bank" vector comes out different in two contexts.
2. The 1/sqrt(K) scale: logit spread and attention entropy at initialisation, scaled and unscaled.
3. Multi-head attention: parameters and output shape.
4. The encoder-decoder Transformer: a forward pass and a few greedily decoded tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from absl import flags

import attn
from attn.nn import decoding
from attn.nn.attention import MultiHeadAttention
from attn.nn.config import ModelConfig
from attn.nn.models import Transformer, attention_weights
from attn.tasks import seed as seed_tasks
from launch import run, start_quietly

_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for the random word vectors and parameters.")


def bank_example(rng: jax.Array, dim: int = 8) -> dict[str, object]:
  """Embeds "bank of the river" and "State Bank of India" with one random vector per word, so that
  "bank" is the same vector in both, and measures how far apart the two "bank" vectors are (relative
  to their norm) before and after weightless self-attention, with the weights "bank" gives each word."""
  words = ["bank", "of", "the", "river", "state", "india"]
  table = dict(zip(words, jax.random.normal(rng, (len(words), dim)), strict=True))
  river_words, india_words = ("bank", "of", "the", "river"), ("state", "bank", "of", "india")
  river_TD = jnp.stack([table[w] for w in river_words])
  india_TD = jnp.stack([table[w] for w in india_words])
  after_river, w_river = attn.self_attention(river_TD, return_weights=True)
  after_india, w_india = attn.self_attention(india_TD, return_weights=True)
  norm = jnp.linalg.norm(table["bank"])
  return {
    "before": float(jnp.linalg.norm(river_TD[0] - india_TD[1]) / norm),
    "after": float(jnp.linalg.norm(after_river[0] - after_india[1]) / norm),
    "river_weights": dict(zip(river_words, w_river[0].tolist(), strict=True)),
    "india_weights": dict(zip(india_words, w_india[1].tolist(), strict=True)),
  }


def order_properties(rng: jax.Array, T: int = 6, K: int = 8) -> dict[str, float]:
  """The position properties on random vectors, as max absolute differences: weightless
  self-attention commutes with a permutation of its inputs (no positions: order plays no part);
  RoPE's logits are unchanged when both positions shift (they depend on i - j only); with sinusoidal
  positions added to the vectors they change."""
  x_rng, q_rng, k_rng = jax.random.split(rng, 3)
  x_TD = jax.random.normal(x_rng, (T, K))
  perm = jax.random.permutation(rng, T)
  permuted = jnp.abs(attn.self_attention(x_TD[perm]) - attn.self_attention(x_TD)[perm]).max()
  q, k = jax.random.normal(q_rng, (T, 1, K)), jax.random.normal(k_rng, (T, 1, K))
  pos = jnp.arange(T)

  def rope_logits(shift):
    return jnp.einsum("thk,shk->ts", attn.rope(q, pos + shift), attn.rope(k, pos + shift))

  def absolute_logits(shift):
    pe = attn.sinusoidal_positions(pos + shift, K)[:, None]
    return jnp.einsum("thk,shk->ts", q + pe, k + pe)

  return {
    "permutation": float(permuted),
    "rope_shift": float(jnp.abs(rope_logits(100) - rope_logits(0)).max()),
    "absolute_shift": float(jnp.abs(absolute_logits(100) - absolute_logits(0)).max()),
  }


def scale_at_init(rng: jax.Array, head_dims=(16, 64, 256), T: int = 64) -> list[dict[str, float]]:
  """Logit std and mean attention entropy (nats) for unit-variance queries and keys over T keys."""
  rows = []
  for K in head_dims:
    q_rng, k_rng = jax.random.split(jax.random.fold_in(rng, K))
    q = jax.random.normal(q_rng, (8, T, 1, K))
    k = jax.random.normal(k_rng, (8, T, 1, K))
    row = {"K": K}
    for scale in ("sqrt_d", "none"):
      w = attn.attention_weights(q, k, scale=scale)
      logits_std = float(jnp.std(jnp.einsum("BTHK,BSHK->BHTS", q, k) * attn.resolve_scale(scale, K)))
      entropy = float(jnp.mean(-jnp.sum(w * jnp.log(jnp.maximum(w, 1e-30)), axis=-1)))
      row[scale] = (logits_std, entropy)
    rows.append(row)
  return rows


def main(argv):
  start_quietly()
  del argv
  rng = jax.random.PRNGKey(_SEED.value)
  bank_rng, scale_rng, mha_rng, model_rng = jax.random.split(rng, 4)

  print("1. Weightless self-attention (no parameters, any length)")
  bank = bank_example(bank_rng)
  before, after = bank["before"], bank["after"]
  print(f'   distance between the two "bank" vectors / |bank|: before {before:.3f}, after {after:.3f}')
  for sentence in ("river", "india"):
    weights = ", ".join(f"{w} {p:.2f}" for w, p in bank[f"{sentence}_weights"].items())
    print(f'   "bank" attends ({sentence} sentence): {weights}')
  shift = seed_tasks.sense_shift()  # The word-sense task's function: 16-dim vectors, the same sentences.
  before, after = shift["before"], shift["after"]
  print(f"   attn.tasks.seed.sense_shift, the same distance: before {before:.3f}, after {after:.3f}")
  order = order_properties(bank_rng)
  print(f"   permuting the inputs permutes the outputs: max difference {order['permutation']:.1e}")
  print(
    f"   positions shifted by 100: RoPE logits change by {order['rope_shift']:.1e}, "
    f"sinusoidal ones by {order['absolute_shift']:.2f}"
  )

  print("2. Scaled dot-product attention at initialisation, T=64 keys, unit-variance q and k")
  print(f"   {'K':>4}  {'logit std sqrt_d':>16}  {'none':>6}  {'entropy sqrt_d':>14}  {'none':>6}")
  for row in scale_at_init(scale_rng):
    (s_std, s_ent), (n_std, n_ent) = row["sqrt_d"], row["none"]
    print(f"   {row['K']:>4}  {s_std:>16.2f}  {n_std:>6.2f}  {s_ent:>14.2f}  {n_ent:>6.2f}")
  print(f"   (uniform attention over 64 keys has entropy ln 64 = {math.log(64):.2f} nats)")

  print("3. Multi-head attention")
  x_BTD = jax.random.normal(mha_rng, (2, 5, 64))
  mha = MultiHeadAttention(num_heads=4)
  variables = mha.init(mha_rng, x_BTD)
  y_BTD, w_BHTS = attention_weights(mha, variables, x_BTD)
  n_params = sum(p.size for p in jax.tree.leaves(variables))
  print(f"   4 heads, D=64: {n_params} parameters")
  print(f"   x {x_BTD.shape} -> y {y_BTD.shape}, weights {w_BHTS.shape} [B, H, T, S]")

  print("4. Encoder-decoder Transformer (untrained)")
  cfg = ModelConfig(vocab_size=100, d_model=64, num_heads=4, d_ff=128, dropout_rate=0.0)
  model = Transformer(cfg)
  src_BS = jax.random.randint(model_rng, (2, 7), 3, cfg.vocab_size)
  tgt_BT = jax.random.randint(jax.random.fold_in(model_rng, 1), (2, 5), 3, cfg.vocab_size)
  params = model.init(model_rng, src_BS, tgt_BT)["params"]
  logits_BTV = model.apply({"params": params}, src_BS, tgt_BT)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f"   {n_params} parameters; src {src_BS.shape}, tgt {tgt_BT.shape} -> logits {logits_BTV.shape}")
  print(f"   logits finite: {bool(jnp.isfinite(logits_BTV).all())}")
  greedy = decoding.greedy_decode(model, params, src_BS, max_new_tokens=6)
  print(f"   greedy decoding with the key/value cache, 6 tokens: {greedy.tolist()}")


if __name__ == "__main__":
  run(main)
