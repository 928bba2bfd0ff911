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
Time on a 2-core CPU: 46 s to train (3 seeds vmapped, 600 steps), then about 30 s per analysis.

Found (64 dev examples per seed, Spearman correlation with ablation importance, averaged over the
examples; mean ± std over 3 seeds; every seed tags the dev split perfectly):
  rollout           0.297 ± 0.054   (0.371, 0.273, 0.246)
  raw attention     0.178 ± 0.027   (0.199, 0.195, 0.140; the last layer's, averaged over heads)
  input gradient    0.264 ± 0.078   (0.366, 0.250, 0.176)
Rollout agrees with ablation better than the last layer's raw attention in every seed, as Abnar &
Zuidema report; the claim holds. All three correlations are weak (below 0.4): in a tagger this
accurate most tokens' ablation barely moves log p, so the ranks below the cue word are mostly noise.
"""

import ml_collections

from experiments import cue


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  return cue.get_config(preset)
