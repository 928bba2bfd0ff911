"""Text from a trained language model: `python -m launch.sample --workdir=RUN --prompt="ROMEO:"
--num_tokens=500 [--temperature=0.8 --top_k=200 --num_samples=1 --seed=0 --seed_index=0]`

Samples with the key/value cache (`attn.nn.decoding.sample_decode`); the model sees at most the run's
`block_size` tokens, the cache being refilled from the last half of them when it is full. Temperature
0 is greedy. A prompt with a character the run's vocabulary lacks is one `error:` line.
"""

import sys

import jax
import numpy as np
from absl import app, flags

from attn import train
from attn.nn import decoding
from attn.train import objectives
from launch import run, start_quietly

_WORKDIR = flags.DEFINE_string("workdir", None, "A language model's run directory (of launch.train).")
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text the samples continue.")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 500, "Tokens to generate per sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens only.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples, drawn together in one batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_SEED_INDEX = flags.DEFINE_integer("seed_index", 0, "Which of the run's seeds samples.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  start_quietly()
  if _NUM_TOKENS.value < 1:
    sys.exit(f"error: --num_tokens: must be at least 1, got {_NUM_TOKENS.value}")
  if _NUM_SAMPLES.value < 1:
    sys.exit(f"error: --num_samples: must be at least 1, got {_NUM_SAMPLES.value}")
  try:
    decoding.check_sampling(_TEMPERATURE.value, _TOP_K.value)
  except ValueError as e:
    sys.exit(f"error: --{e}")
  try:
    restored, params = train.restore_run(_WORKDIR.value, _SEED_INDEX.value)
  except train.ConfigError as e:
    sys.exit(f"error: {e}")
  task, model = restored.task, restored.model
  if not isinstance(restored.objective, objectives.LanguageModeling):
    sys.exit(f"error: --workdir: {_WORKDIR.value!r} holds a {task.kind} run, not a language model")
  try:
    prompt = task.encode_text(_PROMPT.value)
  except ValueError as e:
    sys.exit(f"error: --prompt: {e}")
  if len(prompt) == 0:
    prompt = np.array([task.vocab.bos_id], np.int32)
  tokens = decoding.sample_decode(
    model,
    params,
    np.repeat(prompt[None], _NUM_SAMPLES.value, axis=0),
    max_new_tokens=_NUM_TOKENS.value,
    rng=jax.random.PRNGKey(_SEED.value),
    temperature=_TEMPERATURE.value,
    top_k=_TOP_K.value,
    context=getattr(task, "block_size", None),
  )
  for number, row in enumerate(np.asarray(tokens)):
    if _NUM_SAMPLES.value > 1:
      print(f"=== sample {number} ===")
    print(_PROMPT.value + task.decode_ids(row))


if __name__ == "__main__":
  run(main)
