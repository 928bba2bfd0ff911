"""How many heads, and does it matter how the head dim follows from them? (The two-cue task.)

Question: the notes give each head one job (names, places, organisations). Here a name's tag needs two
separate cue words combined (`attn.seed_tasks`, task "two_cue": a person or animal word times a city
or village word, four tags, chance 1/4; each cue at least 6 positions from the name in sentences of 30
to 40 words). With one encoder layer, one head has a single softmax to spread over both cues; several
heads can each take one. With the model dim fixed (K = D/H, the paper) more heads also means smaller
heads and a different sqrt(K); with the head dim fixed (K = 16) more heads means more attention
parameters. This sweep trains an EncoderTagger (1 layer, D = 64) with 1, 2, 4, 8 and 16 heads under
both policies, 600 steps, three seeds each.

Command: python -m launch.sweep --config=experiments/heads.py --workdir=runs/heads_two_cue
(runs/heads_two_cue, not runs/heads: a sweep skips the points its directory already holds, and an
older runs/heads may hold the sort-task sweep this file used to run.)
Time on a 2-core CPU and findings: see below once the run ends.
"""

from experiments import cue

HEADS = (1, 2, 4, 8, 16)
POLICIES = ("fixed_model_dim", "fixed_head_dim")


def get_config(preset: str = ""):
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  config = cue.get_config(preset)
  config.task.name = "two_cue"
  config.model.num_encoder_layers = 1  # One layer: each head gets one look at the sentence.
  if preset != "smoke":
    config.task.min_length = 30  # Long sentences: many fillers for one softmax to spread over.
    config.task.max_length = 40
  return config


def _point(heads: int, policy: str) -> dict:
  point = {"model.num_heads": heads, "model.head_dim_policy": policy}
  if policy == "fixed_head_dim":
    point["model.head_dim"] = 16  # K = 16 for every H; under "fixed_model_dim" K = 64 / H.
  return point


def get_sweep(preset: str = ""):
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  if preset == "smoke":
    return [_point(1, "fixed_model_dim"), _point(2, "fixed_head_dim")]
  return [_point(h, p) for p in POLICIES for h in HEADS]
