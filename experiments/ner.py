"""Named-entity recognition on WNUT 2017 (or any CoNLL folder): an EncoderTagger trained from scratch.

Question: how far does a small Transformer encoder get on novel and emerging entities with no
pretraining? WNUT 2017's test entities are mostly surface forms never seen in training (the 2017 shared
task's best systems reached about 40 entity F1). The words are lower-cased and backed by hashed
features (word shape, capitalisation, prefixes, suffixes, character n-grams; `attn.ner`), summed into
the token embedding: `--config.model.feature_buckets=0` turns them off (words only).
Metrics: entity precision, recall and F1 in percent, as conlleval computes them; "f1" on dev at every
evaluation, "test_f1" (and per type, "test_f1_person", ...) at the last.

Command: python -m launch.train --config=experiments/ner.py --workdir=runs/ner
Another CoNLL folder (files train, dev, test): add --config.data.path=DIR.
Presets: "" (the full run) and "smoke" (a few steps of a tiny model, for tests).
"""

import ml_collections

from experiments import base


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  config = base.get_config("smoke" if preset == "smoke" else "")
  config.task = ml_collections.ConfigDict()
  config.task.name = "ner"
  config.task.max_length = 64  # Training sentences are cut to this many tokens (WNUT's longest: 41).
  config.task.min_count = 2  # Words seen fewer times in train are <unk> (their features remain).
  config.task.max_features = 32  # Hashed features per token (F); the rest of a long word's are dropped.
  config.task.word_dropout = 0.1  # Fraction of training tokens replaced by <unk>.
  config.data.path = "../shared/data/wnut17"  # Folder holding train, dev, test (or *.conll) files.

  config.model.feature_buckets = 2**15  # Rows of the hashed-feature table; 0 = words only.
  config.model.d_model = 128
  config.model.num_heads = 4
  config.model.d_ff = 256
  config.model.num_encoder_layers = 2
  config.model.num_decoder_layers = 0  # Unused by the tagger.
  config.model.dropout_rate = 0.3
  config.model.max_length = 128
  config.label_smoothing = 0.0
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 200
  config.batch_size = 32
  config.eval_batch_size = 128
  config.num_train_steps = 2000
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.num_seeds = 1
  if preset == "smoke":
    config.task.max_length = 16
    config.task.max_features = 8
    config.model.feature_buckets = 64
    config.model.d_model = 32
    config.model.d_ff = 64
    config.model.num_encoder_layers = 1
    config.model.max_length = 64
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
  return config
