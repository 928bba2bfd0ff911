"""Word sense: does attention find the context words that decide an ambiguous word's sense?

Question: the notes' "bank of the river" vs "State Bank of India": the ambiguous word (bank, bat or
plant) has one vector whatever it means, and only the words around it can say which sense it has
(`attn.tasks.seed`, task "word_sense": 1 or 2 context words of one sense, every one at least
`min_distance` = 6 positions away; only the ambiguous word is scored, with its sense, chance 1/2 once
the word is known). An EncoderTagger with full attention is compared with the same model whose encoder
self-attention sees only |i - j| <= w (`model.attention_window`): through 2 layers it reaches 2w
tokens, so w = 2 never sees the context and w = 4 sometimes does. Three seeds each (vmapped).
`attn.tasks.seed.sense_shift` (a line of `python -m launch.demo`) shows the same with no parameters.

Command: python -m launch.sweep --config=experiments/word_sense.py --workdir=runs/word_sense
Presets: "" (the sweep above) and "smoke" (two tiny points, for tests).
The full-attention point is `attention_window=64`, a band as wide as `model.max_length`: exactly full
attention (a config flag cannot carry None).
Time on a 2-core CPU: 1.5 min (93 s, shared with other jobs).

Found (600 steps, D = 64, 2 layers, 4 heads, 72,583 parameters; eval accuracy on the 512 ambiguous
words of the fixed eval set, mean ± std over 3 seeds, from runs/word_sense/compare.md):
  full attention (w = 64)   1.00 ± 0.00   every sense right
  window w = 4 (reach 8)    0.81 ± 0.00   right when a context word stands within 8 tokens (2 chances)
  window w = 2 (reach 4)    0.49 ± 0.00   chance (1/2 once the word itself is known): no context in sight
  In both seed-task sweeps (this one and experiments/cue.py) a window that cannot reach the cue is at
  chance whatever the seed (the seeds agree to the example), and full attention gets every key word
  right by step 200.
"""

from experiments import cue

WINDOWS = cue.WINDOWS


def get_config(preset: str = ""):
  config = cue.get_config(preset)
  config.task.name = "word_sense"
  config.task.max_context = 2  # Context words per sentence: 1 to this many, all of one sense.
  return config


def get_sweep(preset: str = ""):
  return cue.get_sweep(preset)
