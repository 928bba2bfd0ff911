"""NER fine-tuned from a pretrained encoder: a BERT or RoBERTa checkpoint in Hugging Face's format
(`attn.nn.pretrained`), its own tokenizer, and a fresh classification head, on WNUT 2017 (or any
CoNLL folder).

The architecture is the checkpoint's (`config.init_from`'s config.json); this config sets only the
fine-tuning: `attn.train.setup.FINE_TUNING_FIELDS` of config.model (dropout, dtype, the output
layer), the optimizer (AdamW with betas (0.9, 0.999), 5e-5 after a linear warm-up of about 10 % of
the steps, weight decay 0.01, as Devlin et al. 2019 fine-tune; the decay here is cosine, not their
linear), 3 epochs of batch 32, the tokenizer's pieces with each word's tag
on its first piece (`attn.tasks.ner`). Token types are folded into the position table (one segment).

Command: python -m launch.train --config=experiments/ner_pretrained.py --workdir=runs/ner_bert
--config.init_from=DIR --config.task.tokenizer_file=DIR/tokenizer.json
with DIR a downloaded checkpoint folder (config.json, model.safetensors, tokenizer.json), e.g.
bert-base-cased from the Hugging Face hub.
Presets: "" and "smoke" (a few steps, for tests on a tiny random checkpoint).

Not run here: this machine cannot download weights, so no score is claimed. The tests fine-tune a
tiny random BERT through this config end to end (`tests/train/test_setup.py`), which shows the path,
not a score.
"""

import ml_collections

from experiments import ner


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  config = ner.get_config(preset)
  config.init_from = ""  # A Hugging Face BERT or RoBERTa folder: required.
  config.init_from_skip = "classifier,crf"  # The head is fresh: the checkpoint's tags are not ours.
  config.task.tokenizer_file = ""  # The checkpoint's tokenizer.json.
  config.task.max_length = 128  # Pieces per training sentence ([CLS] and [SEP] included).
  config.task.word_dropout = 0.0
  config.task.max_chars = 0
  config.task.max_features = 1
  config.model.dropout_rate = 0.1
  config.model.attention_dropout_rate = 0.1
  config.model.crf = "none"
  config.optimizer.learning_rate = 5e-5
  config.optimizer.schedule = "cosine"
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.warmup_steps = 32  # About 10 % of 3 epochs of WNUT 2017 (3394 sentences) at 32.
  config.optimizer.weight_decay = 0.01
  config.optimizer.grad_clip_norm = 1.0
  config.label_smoothing = 0.0
  config.num_train_epochs = 3
  config.early_stopping_patience = 0
  config.eval_every_steps = 100
  config.num_seeds = 1
  if preset == "smoke":
    config.task.max_length = 16
    config.num_train_epochs = 0
    config.num_train_steps = 2
    config.optimizer.warmup_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
  return config
