"""A Hugging Face checkpoint as a run: `python -m launch.convert --from=DIR --workdir=RUN [--data=TEXT
--block_size=N --dtype=float32]`

DIR is a model folder as `save_pretrained` writes it (config.json, model.safetensors or its shards,
and tokenizer.json); RUN a new (or empty) folder, then opened by `launch.sample`, `launch.attend` and
`launch.analyze` as any run, and fine-tuned by `launch.train --config=RUN/finetune.py --workdir=NEW`
(`config.init_from` = RUN). `--data` names the text to fine-tune and evaluate on (without it the run is
for inspection only); `--block_size` the context, at most the model's. Without a tokenizer.json, the
run's text is token ids separated by spaces. A folder that cannot be read or converted is one `error:`
line. See attn/train/convert.py.

The reverse: `python -m launch.convert --to=hf --from=RUN --workdir=DIR [--model_type=gpt2|llama
--seed_index=0]` writes a language model's run (trained, converted or edited here) as a Hugging Face
folder that transformers opens (`attn.nn.export`: GPT-2's or Llama's layout).
"""

import sys

from absl import app, flags

from attn import train
from attn.nn import pretrained
from attn.train import convert
from launch import run, start_quietly

_FROM = flags.DEFINE_string(
  "from", None, "A Hugging Face model folder (config.json, safetensors); with --to=hf, a run."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "The run directory to write (new or empty); with --to=hf, the model folder."
)
_TO = flags.DEFINE_enum("to", "run", ["run", "hf"], "run: a checkpoint into a run; hf: a run out.")
_MODEL_TYPE = flags.DEFINE_enum(
  "model_type", None, ["gpt2", "llama"], "With --to=hf: the layout; default from the model."
)
_SEED_INDEX = flags.DEFINE_integer("seed_index", 0, "With --to=hf: which of the run's seeds.")
_DATA = flags.DEFINE_string("data", "", "Text to fine-tune and evaluate on (config.data.path).")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", None, "Tokens per window; default the model's context.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Computation dtype.")
flags.mark_flags_as_required(["from", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  start_quietly()
  try:
    if _TO.value == "hf":
      convert.export_run(
        _FROM.value, _WORKDIR.value, model_type=_MODEL_TYPE.value, seed_index=_SEED_INDEX.value
      )
      return
    convert.convert_folder(
      _FROM.value, _WORKDIR.value, data=_DATA.value, block_size=_BLOCK_SIZE.value, dtype=_DTYPE.value
    )
  except (pretrained.CheckpointError, train.ConfigError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run(main)
