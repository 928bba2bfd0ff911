"""The notes' heads for names, places and organisations, measured: does any head of the WNUT 2017
tagger specialise on one entity type?

Question: the lecture notes motivate multi-head attention with NER ("AM1 for name, AM2 for place, AM3
for org"). This run trains `experiments/ner.py`'s tagger with 8 heads instead of 4 (three seeds), and
`launch.analyze` reports per head and entity type (person, location, group, corporation, product,
creative-work) the mean attention a token of that type gives to tokens of the same type
(class_attention.png, heads x types), beside the same score of the model at its random
initialisation, the baseline a specialisation claim needs.

Command: python -m launch.train --config=experiments/ner_heads.py --workdir=runs/ner_heads
Then, for each seed i in 0, 1, 2: python -m launch.analyze --workdir=runs/ner_heads --seed_index=i
Presets: "" (the run above) and "smoke" (a few steps of a tiny model, for tests).
Time on a 2-core CPU: 222 s to train (3 seeds vmapped, 500 steps), then about 60 s per analysis.

Found (the dev split; 1 encoder layer of 8 heads; test F1 16.0 ± 0.7, as with 4 heads). The score of
a head for type E is the mean attention from a token of type E to tokens of type E (itself included:
entities are one to three tokens long, so a head that looks within the entity scores high). The
baseline is one model at its random initialisation (seed + 1000), the same for the three analyses.
  mean over the 8 heads, trained (3 seeds) vs at init:
    corporation 0.25 vs 0.29, creative-work 0.50 vs 0.42, group 0.43 vs 0.27, location 0.46 vs
    0.32, person 0.46 vs 0.31, product 0.65 vs 0.56
  the best head's lead over the mean of the heads, averaged over types: 0.19 ± 0.02 trained, 0.12 at
  init; for location, 0.41 / 0.32 / 0.36 in the three seeds against 0.18 at init.
  each head's lead of its top type over its second: 0.125 ± 0.012 trained, 0.131 at init.
Training makes the heads look within entities more (group, location, person: +0.14 to +0.16 over
the random-init heads), and one head per seed stands out for location. But no head specialises on
one type the way the notes' "AM1 for names, AM2 for places" suggests: the head that leads for
location also leads for group (seeds 0 and 1) or person (seed 2), and a head's preference for its
top type over its second is no larger than a random head's. What the heads learn is "attend within
the entity", shared across types, not one type per head. Figure:
experiments/figures/ner_heads_class_attention_seed0.png (heads x types, trained beside random init).
"""

import ml_collections

from experiments import ner


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ner.get_config(preset)
  # The tagger as this experiment ran (before experiments/ner.py gained characters and a CRF).
  config.task.max_chars, config.model.char_buckets, config.model.crf = 0, 0, "none"
  config.num_train_epochs, config.early_stopping_patience = 0, 0  # 500 steps, as it ran.
  if preset != "smoke":
    config.model.num_heads = 8
    config.log_every_steps = config.eval_every_steps = 100
  return config
