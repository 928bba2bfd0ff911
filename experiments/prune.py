"""Are sixteen heads really better than one? Michel et al.'s three findings on the sort task.

Question (Michel et al. 2019): (a) most single heads can be removed at test time with no significant
loss; (b) a large fraction of all heads can be pruned (greedily by importance, re-scored each step)
before accuracy drops sharply; (c) cross-attention is more sensitive to pruning than self-attention.
This run trains an encoder-decoder on the sort task (`experiments/base.py`'s task) at 2 + 2 layers,
8 heads, D = 128, three seeds (vmapped); `launch.analyze` then gates heads off at test time on the
dev split: each head alone (the ablation score), and greedily in steps of 10 % of the heads of
self-attention, of cross-attention, and of all.

Command: python -m launch.train --config=experiments/prune.py --workdir=runs/prune
Then, for each seed i in 0, 1, 2: python -m launch.analyze --workdir=runs/prune --seed_index=i
(runs/prune/analysis*/: ablation.png, pruning.png, analysis.json).
Presets: "" (the run above) and "smoke" (a tiny model, a few steps).
Time on a 2-core CPU: (not yet run).

Found: (not yet run).
"""

import ml_collections

from experiments import base


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  config = base.get_config("smoke" if preset == "smoke" else "")
  config.task.name = "sort"
  if preset == "smoke":
    return config
  config.model.d_model = 128
  config.model.num_heads = 8
  config.model.d_ff = 256
  config.model.num_encoder_layers = 2
  config.model.num_decoder_layers = 2
  config.num_train_steps = 1000
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
