"""Tests for launch/convert.py: a random GPT-2 folder (written with numpy, safetensors and tokenizers,
as save_pretrained lays one out) converted into a run directory that launch.sample (greedy, against
transformers' `generate`), launch.attend, launch.analyze and launch.train (`config.init_from`, through
RUN/finetune.py) open unchanged; the converted run's logits are transformers'; each bad folder is one
`error:` line and exit status 1.

`python -m tests.launch.test_convert DIR` writes the random GPT-2 folder these tests convert (the one
WORKSPACE.md's "Pretrained checkpoints" converts in CI); with `--no_tokenizer`, without tokenizer.json;
with `--llama`, a random Llama instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

LINES = [
  "the quick brown fox jumps over the lazy dog",
  "a stitch in time saves nine",
  "to be or not to be that is the question",
  "all that glitters is not gold",
]
GPT2 = dict(n_positions=64, n_embd=32, n_layer=2, n_head=4)
VOCAB_SIZE = 320  # The model's rows; the tokenizer trains at most as many tokens.
EOS = "<|endoftext|>"
PROMPT = "the quick brown"


def write_tokenizer(path: str, vocab_size: int):
  """A byte-level BPE tokenizer (GPT-2's kind) trained on LINES, of at most `vocab_size` tokens (256
  bytes, the end-of-text token, merges), saved as a tokenizer.json."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[EOS],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(LINES * 4, trainer)
  tokenizer.save(path)
  return tokenizer


def write_random_gpt2(folder: str, *, tokenizer: bool = True, seed: int = 0, std: float = 0.1) -> None:
  """A random GPT-2 (`GPT2LMHeadModel`'s config.json and model.safetensors, every weight and bias
  drawn with `std`) and, with `tokenizer`, a tokenizer.json: from numpy alone, no torch."""
  from safetensors.numpy import save_file

  os.makedirs(folder, exist_ok=True)
  eos = 0
  if tokenizer:
    eos = write_tokenizer(os.path.join(folder, "tokenizer.json"), VOCAB_SIZE).token_to_id(EOS)
  config = dict(
    model_type="gpt2",
    architectures=["GPT2LMHeadModel"],
    vocab_size=VOCAB_SIZE,
    n_ctx=GPT2["n_positions"],
    bos_token_id=eos,
    eos_token_id=eos,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    **GPT2,
  )
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1)
  rng = np.random.default_rng(seed)
  D, T = GPT2["n_embd"], GPT2["n_positions"]

  def normal(*shape):
    return (std * rng.standard_normal(shape)).astype(np.float32)

  tensors = {"transformer.wte.weight": normal(VOCAB_SIZE, D), "transformer.wpe.weight": normal(T, D)}
  shapes = {
    "attn.c_attn": (D, 3 * D),
    "attn.c_proj": (D, D),
    "mlp.c_fc": (D, 4 * D),
    "mlp.c_proj": (4 * D, D),
  }
  for i in range(GPT2["n_layer"]):
    for norm in ("ln_1", "ln_2"):
      tensors[f"transformer.h.{i}.{norm}.weight"] = 1 + normal(D)
      tensors[f"transformer.h.{i}.{norm}.bias"] = normal(D)
    for name, shape in shapes.items():
      tensors[f"transformer.h.{i}.{name}.weight"] = normal(*shape)
      tensors[f"transformer.h.{i}.{name}.bias"] = normal(shape[1])
  tensors["transformer.ln_f.weight"] = 1 + normal(D)
  tensors["transformer.ln_f.bias"] = normal(D)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


LLAMA = dict(
  hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
  num_hidden_layers=2, max_position_embeddings=64,
)  # fmt: skip


def write_random_llama(folder: str, *, seed: int = 0, std: float = 0.1) -> None:
  """A random Llama (`LlamaForCausalLM`'s config.json and model.safetensors: grouped-query heads,
  RMSNorm, SiLU gates, RoPE, an untied output) and the byte-level tokenizer.json, from numpy alone."""
  from safetensors.numpy import save_file

  os.makedirs(folder, exist_ok=True)
  eos = write_tokenizer(os.path.join(folder, "tokenizer.json"), VOCAB_SIZE).token_to_id(EOS)
  config = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    vocab_size=VOCAB_SIZE,
    bos_token_id=eos,
    eos_token_id=eos,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    **LLAMA,
  )
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1)
  rng = np.random.default_rng(seed)
  D, F = LLAMA["hidden_size"], LLAMA["intermediate_size"]
  K = D // LLAMA["num_attention_heads"]
  G = LLAMA["num_key_value_heads"]

  def normal(*shape):
    return (std * rng.standard_normal(shape)).astype(np.float32)

  tensors = {"model.embed_tokens.weight": normal(VOCAB_SIZE, D), "lm_head.weight": normal(VOCAB_SIZE, D)}
  shapes = {
    "self_attn.q_proj": (D, D), "self_attn.k_proj": (G * K, D), "self_attn.v_proj": (G * K, D),
    "self_attn.o_proj": (D, D), "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F),
  }  # fmt: skip
  for i in range(LLAMA["num_hidden_layers"]):
    for norm in ("input_layernorm", "post_attention_layernorm"):
      tensors[f"model.layers.{i}.{norm}.weight"] = 1 + normal(D)
    for name, shape in shapes.items():
      tensors[f"model.layers.{i}.{name}.weight"] = normal(*shape)
  tensors["model.norm.weight"] = 1 + normal(D)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def _start(module: str, *args: str) -> subprocess.Popen:
  """`python -m module args...` from the repository root, started (children run side by side)."""
  from tests.launch.common import ENV, ROOT

  return subprocess.Popen(
    [sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, text=True,
    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
  )  # fmt: skip


def _finish(child: subprocess.Popen) -> tuple[int, str, str]:
  stdout, stderr = child.communicate(timeout=600)
  return child.returncode, stdout, stderr


def _transformers_greedy(folder: str, prompt: str, num_tokens: int) -> str:
  """transformers' own greedy continuation of `prompt`, decoded by the folder's tokenizer."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer

  model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
  tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
  ids = tokenizer.encode(prompt).ids
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=num_tokens, do_sample=False, pad_token_id=0)
  return prompt + tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=False)


@pytest.mark.slow  # Starts launch.convert, sample, attend, analyze and train: child processes.
def test_a_converted_gpt2_samples_attends_analyzes_and_fine_tunes(tmp_path):
  from tests.launch.common import run

  folder, workdir, data = tmp_path / "gpt2", tmp_path / "run", tmp_path / "text.txt"
  write_random_gpt2(str(folder))
  data.write_text("\n".join(LINES * 8) + "\n", encoding="utf-8")
  result = run(
    "launch.convert", f"--from={folder}", f"--workdir={workdir}", f"--data={data}", "--block_size=16"
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "converted gpt2" in result.stdout
  for name in ("config.json", "tokenizer.json", "finetune.py", "checkpoints"):
    assert (workdir / name).exists(), name
  config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  assert (
    config["resolved_model"]["vocab_size"] == VOCAB_SIZE and config["resolved_model"]["pad_id"] is None
  )
  assert config["task"]["block_size"] == 16 and config["num_seeds"] == 1

  num_tokens = 12  # The prompt's 3 tokens and 12 more fit the 16-token context: no refill.
  children = {
    "sample": _start(
      "launch.sample", f"--workdir={workdir}", f"--prompt={PROMPT}", f"--num_tokens={num_tokens}",
      "--temperature=0",
    ),
    "attend": _start("launch.attend", f"--workdir={workdir}", f"--text={PROMPT}"),
    "analyze": _start(
      "launch.analyze", f"--workdir={workdir}", f"--prompt={PROMPT}", "--max_examples=2"
    ),
    "train": _start(
      "launch.train", f"--config={workdir / 'finetune.py'}", f"--workdir={tmp_path / 'tuned'}",
      "--config.num_train_steps=2", "--config.log_every_steps=1", "--config.eval_every_steps=2",
      "--config.checkpoint_every_steps=2", "--config.task.num_samples=0",
    ),
  }  # fmt: skip
  expected = _transformers_greedy(str(folder), PROMPT, num_tokens)
  done = {name: _finish(child) for name, child in children.items()}
  for name, (code, _, stderr) in done.items():
    assert code == 0, f"{name}: {stderr[-2000:]}"
  assert done["sample"][1] == expected + "\n"
  assert (workdir / "attend" / "decoder_self_attention.png").read_bytes().startswith(b"\x89PNG")
  assert (workdir / "analysis" / "report.html").stat().st_size > 0
  tuned = tmp_path / "tuned"
  assert json.loads((tuned / "summary.json").read_text(encoding="utf-8"))["num_train_steps"] == 2
  assert (tuned / "tokenizer.json").read_bytes() == (workdir / "tokenizer.json").read_bytes()
  assert "Parameters taken by name from" in done["train"][2]


@pytest.mark.slow  # Imports torch and transformers.
def test_the_converted_runs_logits_are_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from attn.train import convert, restore_run

  folder = str(tmp_path / "gpt2")
  write_random_gpt2(folder, seed=1)
  convert.convert_folder(folder, str(tmp_path / "run"), echo=lambda _: None)
  restored, params = restore_run(str(tmp_path / "run"))
  tokens = np.random.default_rng(0).integers(0, VOCAB_SIZE, (2, 24))
  ours = restored.model.apply({"params": params}, tokens)
  with torch.no_grad():
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


@pytest.mark.slow  # Imports torch and transformers.
def test_a_converted_llamas_logits_are_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from attn.train import convert, restore_run

  folder = str(tmp_path / "llama")
  write_random_llama(folder)
  convert.convert_folder(folder, str(tmp_path / "run"), echo=lambda _: None)
  restored, params = restore_run(str(tmp_path / "run"))
  assert restored.model_config.num_kv_heads == LLAMA["num_key_value_heads"]
  tokens = np.random.default_rng(0).integers(0, VOCAB_SIZE, (2, 24))
  ours = restored.model.apply({"params": params}, tokens)
  with torch.no_grad():
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=5e-5, rtol=1e-4)


def _truncate(folder):
  path = folder / "model.safetensors"
  path.write_bytes(path.read_bytes()[:1000])


def _retype(folder):
  config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
  (folder / "config.json").write_text(json.dumps({**config, "model_type": "bloom"}), encoding="utf-8")


def _misshape(folder):
  from safetensors.numpy import load_file, save_file

  tensors = load_file(str(folder / "model.safetensors"))
  tensors["transformer.h.1.mlp.c_fc.weight"] = tensors["transformer.h.1.mlp.c_fc.weight"][:, :-1]
  save_file(tensors, str(folder / "model.safetensors"))


BAD_FOLDERS = {
  "no_config": (lambda f: (f / "config.json").unlink(), "config.json: missing"),
  "no_weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors: missing"),
  "truncated": (_truncate, "not a readable safetensors file"),
  "model_type": (_retype, "model_type: 'bloom' is not supported"),
  "misshapen": (_misshape, "transformer.h.1.mlp.c_fc.weight: shape (32, 127)"),
}


@pytest.mark.slow  # Starts launch.convert and launch.sample: child processes.
def test_bad_folders_and_workdirs_are_one_line_and_no_tokenizer_takes_ids(tmp_path):
  children = {}
  for name, (spoil, _) in BAD_FOLDERS.items():
    folder = tmp_path / name
    write_random_gpt2(str(folder), tokenizer=False)
    spoil(folder)
    children[name] = _start(
      "launch.convert", f"--from={folder}", f"--workdir={tmp_path / 'runs' / name}"
    )
  plain = tmp_path / "plain"
  write_random_gpt2(str(plain), tokenizer=False)
  full = tmp_path / "full"
  full.mkdir()
  (full / "something").write_text("x", encoding="utf-8")
  children["not_empty"] = _start("launch.convert", f"--from={plain}", f"--workdir={full}")
  children["no_tokenizer_data"] = _start(
    "launch.convert",
    f"--from={plain}",
    f"--workdir={tmp_path / 'nodata'}",
    f"--data={full / 'something'}",
  )
  children["no_tokenizer"] = _start("launch.convert", f"--from={plain}", f"--workdir={tmp_path / 'ids'}")
  messages = {
    **{name: message for name, (_, message) in BAD_FOLDERS.items()},
    "not_empty": "--workdir: ",
    "no_tokenizer_data": "has no tokenizer.json",
  }
  done = {name: _finish(child) for name, child in children.items()}
  for name, message in messages.items():
    code, _, stderr = done[name]
    assert code == 1 and "Traceback" not in stderr, f"{name}: {stderr[-2000:]}"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, f"{name}: {last}"
    assert not (tmp_path / "runs" / name).exists()  # Nothing half-written stays behind.
  assert (full / "something").exists() and len(os.listdir(full)) == 1
  assert done["no_tokenizer"][0] == 0, done["no_tokenizer"][2][-2000:]
  text_prompt = _start(
    "launch.sample", f"--workdir={tmp_path / 'ids'}", "--prompt=hello", "--num_tokens=3"
  )
  ids_prompt = _start(
    "launch.sample",
    f"--workdir={tmp_path / 'ids'}",
    "--prompt=5 17 3",
    "--num_tokens=3",
    "--temperature=0",
  )
  code, _, stderr = _finish(text_prompt)
  assert code == 1 and stderr.strip().splitlines()[-1].startswith(
    "error: --prompt: the run has no tokenizer"
  ), stderr[-2000:]
  code, stdout, stderr = _finish(ids_prompt)
  assert code == 0, stderr[-2000:]
  assert stdout.startswith("5 17 3 ") and len(stdout.split()) == 6


if __name__ == "__main__":
  args = [a for a in sys.argv[1:] if a not in ("--no_tokenizer", "--llama")]
  if len(args) != 1:
    sys.exit("usage: python -m tests.launch.test_convert DIR [--no_tokenizer | --llama]")
  if "--llama" in sys.argv:
    write_random_llama(args[0])
  else:
    write_random_gpt2(args[0], tokenizer="--no_tokenizer" not in sys.argv)
  sys.exit(0)
