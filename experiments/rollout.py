"""Does attention rollout explain a tagger better than raw attention? (Abnar & Zuidema 2020, on the
cue task.)

Question: in the cue task one cue word decides the name's tag, so ablation (replacing a token by
<unk> and measuring the drop in log p of the predicted tag) says which tokens matter. The paper's
claim is that attention rollout agrees with such an importance better than the raw attention of the
last layer. This run trains `experiments/cue.py`'s tagger (2 layers, 4 heads, full attention) with
three seeds; `launch.analyze` then computes, on one dev batch, the Spearman correlation with ablation
of rollout, of the last layer's raw attention and of the input gradient, per example, averaged.

Command: python -m launch.train --config=experiments/rollout.py --workdir=runs/rollout
Then, for each seed i in 0, 1, 2: python -m launch.analyze --workdir=runs/rollout --seed_index=i
(analysis.json: "token_importance").
Presets: "" (the run above) and "smoke" (a few steps of a tiny model, for tests).
Time on a 2-core CPU: (not yet run).

Found: (not yet run).
"""

import ml_collections

from experiments import cue


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  return cue.get_config(preset)
