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
Time on a 2-core CPU: (not yet run).

Found: (not yet run).
"""

import ml_collections

from experiments import ner


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ner.get_config(preset)
  if preset != "smoke":
    config.model.num_heads = 8
  return config
