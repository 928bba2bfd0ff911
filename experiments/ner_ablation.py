"""What each part of the WNUT 2017 tagger adds: hashed features, a character encoder, a CRF, and
pre-training by denoising.

Question: `experiments/ner.py`'s tagger (hashed features, per-token softmax) stops at 16 test F1.
NER taggers since 2016 add a character-level word encoder (Ma & Hovy; Lample et al.) and a
linear-chain CRF; the notes add "masking as noise" (`experiments/denoise.py`). Each row here adds
one part to the one above, and the last drops the characters from the CRF tagger; three seeds each,
chosen on dev F1, test scored at the end.

Command: python -m launch.sweep --config=experiments/ner_ablation.py --workdir=runs/ner_ablation
With pre-training: python -m launch.train --config=experiments/ner_ablation.py
  --config.init_from=runs/denoise/rate=0.15 --workdir=runs/ner_pretrained
Presets: "" (the sweep above) and "smoke" (a few steps of a tiny model).
Time on a 2-core CPU: (not yet run).

Found: (not yet run).
"""

import ml_collections

from experiments import ner

# Each row adds one part to the row before; the last takes the characters away again.
ROWS = {
  "features": {"model.char_buckets": 0, "task.max_chars": 0, "model.crf": "none"},
  "+chars": {"model.char_buckets": 512, "task.max_chars": 16, "model.crf": "none"},
  "+crf": {"model.char_buckets": 512, "task.max_chars": 16, "model.crf": "iob2"},
  "features, crf (no chars)": {"model.char_buckets": 0, "task.max_chars": 0, "model.crf": "iob2"},
}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ner.get_config(preset)
  config.task.max_chars = 16  # Characters per word for the character encoder.
  config.model.char_buckets = 512  # Rows of the character table (code points hash into them).
  config.model.char_dim = 32
  config.model.crf = "iob2"
  if preset == "smoke":
    config.task.max_chars = 6
    config.model.char_buckets = 64
    config.model.char_dim = 8
  return config


def get_sweep(preset: str = ""):
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  rows = list(ROWS.values())
  return rows[1:3] if preset == "smoke" else rows
