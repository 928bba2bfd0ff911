"""English to French translation on Tatoeba: how far does a small Transformer get on a 2-core CPU?

Question: the encoder-decoder of "Attention Is All You Need", trained from scratch on the Tatoeba
English-French pairs (../shared/data/tatoeba_fra_eng: train.tsv, dev.tsv, test.tsv, `source<TAB>target`)
with one joint SentencePiece BPE vocabulary built from the training split and saved in the run
directory. Reports sacrebleu BLEU of the detokenised output: greedy on a sample of dev sentences at
every evaluation ("bleu", the main metric), and on the whole test split with greedy and beam search at
the end ("test_bleu_greedy", "test_bleu_beam").

Command: nice -n 10 python -m launch.train --config=experiments/translate.py --workdir=runs/translate
Any other parallel text: --config.data.path=DIR (a folder with train.tsv, dev.tsv and test.tsv).
Presets: "" (the run above) and "smoke" (a tiny model for a few steps, for tests; seconds).
Time on a 2-core CPU: 24 min (1448 s wall: 3000 steps at 1.4-3.9 steps/s as other jobs came and went,
four evaluations, the final greedy and beam decoding of the test split in under a minute; the run was
stopped once at step 1200 and resumed by rerunning the command).

Found (one seed; 1.9M parameters: D = 128, 4 heads, 3 + 3 layers, 4000 joint BPE pieces; 3000 steps
of 64 pairs, about 1.2 epochs of the 160,345 training pairs that fit 32 tokens):
  test BLEU (all 3211 test lines, one reference each): greedy 19.7, beam (4, alpha 0.6) 21.6.
  dev greedy BLEU on 300 sampled lines: 3.8 / 14.5 / 18.8 at steps 1000 / 2000 / 3000, still rising:
  the run is compute-bound, not converged (dev teacher-forced token accuracy 0.41 / 0.52 / 0.58, dev
  loss 3.33 / 2.58 / 2.20).
  The numbers come from runs/translate/summary.json and metrics.jsonl.
"""

import ml_collections

from experiments import base


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  config = base.get_config("smoke" if preset == "smoke" else "")

  config.task = ml_collections.ConfigDict()
  config.task.name = "translate"
  config.task.vocab_size = 4000  # SentencePiece BPE pieces, one vocabulary for both languages.
  config.task.max_source_length = 32  # Source subword tokens; longer training pairs are left out.
  config.task.max_target_length = 32  # Target tokens with eos; also the most tokens decoded.
  config.task.beam_size = 4  # Beam width for the final test BLEU.
  config.task.length_penalty_alpha = 0.6  # GNMT length penalty of beam search (0 turns it off).
  config.task.dev_bleu_examples = 300  # Dev lines decoded (greedy) for BLEU at each evaluation.
  config.task.test_bleu_examples = 0  # Test lines decoded at the end; 0 = the whole test split.
  config.data.path = "../shared/data/tatoeba_fra_eng"

  # Small for the compute: about 25 min of a shared 2-core CPU.
  config.model.d_model = 128
  config.model.num_heads = 4
  config.model.d_ff = 512
  config.model.num_encoder_layers = 3
  config.model.num_decoder_layers = 3
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 400
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_train_steps = 3000
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 200
  config.num_seeds = 1  # One seed: the run is the budget.

  if preset == "smoke":
    config.task.vocab_size = 64
    config.task.max_source_length = 16
    config.task.max_target_length = 16
    config.task.beam_size = 2
    config.task.dev_bleu_examples = 8
    config.task.test_bleu_examples = 16
    config.model.d_model = 32
    config.model.d_ff = 64
    config.model.num_encoder_layers = 1
    config.model.num_decoder_layers = 1
    config.optimizer.warmup_steps = 10
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
  return config
