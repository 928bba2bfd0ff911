"""The language model's training step side by side with nanoGPT's (`python -m launch.bench
--suite=nanogpt --nanogpt=DIR`, DIR a nanoGPT checkout holding its `model.py`).

Both train the same configuration (`experiments/shakespeare_char.py`: nanoGPT's CPU example) on the
same stream of tokens, one seed, batch and block size equal, and each step is timed as its training
loop runs it:
- ours: the loop's compiled train step (`attn.train.compiled.compile_steps`: forward, backward, clipping,
  AdamW, metrics), fed by the text task's `train_batch` put on the mesh (`sharding.to_global`), as
  `train_and_evaluate` does; compile time is measured apart (the first call's `lower().compile()`).
  Beside it, the bare step: the same model and AdamW as one `jax.jit(train.train_step)` (no seed axis,
  no mesh), so every run prints the loop's overhead as a ratio.
- nanoGPT: its own `GPT` from DIR/model.py with `configure_optimizers` (AdamW, decay on matrices), and
  the body of its train.py loop: the learning rate set per step, `get_batch` (torch.randint windows of
  a numpy array), forward, backward, `clip_grad_norm_`, `optimizer.step()`, `zero_grad`, and
  `loss.item()` (its CPU command logs every step). Eager PyTorch, as the CPU command runs it
  (`--compile=False`).
The tokens are random ids of the character vocabulary (the step time does not depend on the text),
so the suite needs no data file. At nanoGPT's GPU configuration (6 layers, 6 heads, D = 384, block
256, batch 64) one step each is timed after a warm-up step: the step-time ratio, not a run.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import math
import os
import string
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from attn import train
from attn.tasks import SPECIALS, Vocabulary
from attn.tasks.text import TextTask
from attn.train import compiled
from benchmarks.tables import suite_result
from benchmarks.timing import import_torch

CHARACTERS = 65  # Tiny Shakespeare's.
STREAM_TOKENS = 1_000_000  # The random token stream both loops draw windows from.
GPU_SHAPE = dict(num_decoder_layers=6, num_heads=6, d_model=384, d_ff=1536, block_size=256, batch=64)


def stream_task(config: ml_collections.ConfigDict, block_size: int, seed: int = 0) -> TextTask:
  """A text task over random characters: the experiment's vocabulary size, no file."""
  vocab = Vocabulary((*SPECIALS, *(string.printable[:CHARACTERS])))
  ids = np.random.default_rng(seed).integers(len(SPECIALS), len(vocab), STREAM_TOKENS).astype(np.int32)
  return TextTask(
    train_ids=ids,
    val_ids=ids[: 4 * block_size],
    val_chars=np.ones(4 * block_size, np.int32),
    vocab=vocab,
    tokenizer="char",
    block_size=block_size,
    eval_windows=0,
    seed=seed,
    files=(),
  )


def at_shape(config: ml_collections.ConfigDict, shape: dict[str, int]) -> ml_collections.ConfigDict:
  """The config at another model and batch shape (nanoGPT's GPU configuration)."""
  config = copy.deepcopy(config)
  for field in ("num_decoder_layers", "num_heads", "d_model", "d_ff"):
    config.model[field] = shape[field]
  config.model.max_length = config.task.block_size = shape["block_size"]
  config.batch_size = shape["batch"]
  return config


def _timed(step_fn, state, next_batch, steps: int, warmup: int) -> tuple[float, Any, Any]:
  """(seconds for `steps` steps after `warmup` untimed ones, final state, last metrics)."""
  metrics, start = None, time.perf_counter()
  for step in range(warmup + steps):
    if step == warmup:
      jax.block_until_ready(state)
      start = time.perf_counter()
    state, metrics = step_fn(state, next_batch(step))
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start, state, metrics


def _row(state, metrics, steps: int, elapsed: float, compile_s: float, seed_axis: bool) -> dict:
  params = sum(int(np.prod(x.shape[int(seed_axis) :])) for x in jax.tree.leaves(state.params))
  loss = np.asarray(metrics["loss"]).reshape(-1)[0]
  return {
    "params": params,
    "steps": steps,
    "step_ms": elapsed / steps * 1e3,
    "steps_per_s": steps / elapsed,
    "compile_s": compile_s,
    "last_loss": float(loss),
  }


def _run(config: ml_collections.ConfigDict):
  """The experiment's run (one seed) over the random token stream."""
  config = copy.deepcopy(config)
  config.num_seeds = 1
  return train.build_run(config, task=stream_task(config, int(config.task.block_size)))


def time_ours(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict[str, Any]:
  """Steps per second of the loop's compiled train step, data included; compile time apart."""
  run = _run(config)
  task, B = run.task, run.train.batch_size
  steps_ = compiled.compile_steps(run)
  state = steps_.init(run.seed_rngs())
  start = time.perf_counter()
  step_fn = steps_.train.lower(state, steps_.to_batch(task.train_batch(0, B))).compile()
  compile_s = time.perf_counter() - start
  elapsed, state, metrics = _timed(
    step_fn, state, lambda s: steps_.to_batch(task.train_batch(s, B)), steps, warmup
  )
  return _row(state, metrics, steps, elapsed, compile_s, seed_axis=True)


def time_bare(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict[str, Any]:
  """The same model, objective and AdamW as a bare `jax.jit` of `train.train_step` (no seed axis, no
  mesh, the state donated), fed the same host batches: what the loop's step adds is the difference."""
  run = _run(config)
  task, B = run.task, run.train.batch_size
  step = functools.partial(
    train.train_step,
    model=run.model,
    optimizer=run.optimizer,
    objective=run.objective,
    label_smoothing=run.train.label_smoothing,
  )
  state = jax.jit(run.state_initializer())(run.seed_rngs()[0])
  start = time.perf_counter()
  step_fn = jax.jit(step, donate_argnums=(0,)).lower(state, task.train_batch(0, B)).compile()
  compile_s = time.perf_counter() - start
  elapsed, state, metrics = _timed(step_fn, state, lambda s: task.train_batch(s, B), steps, warmup)
  return _row(state, metrics, steps, elapsed, compile_s, seed_axis=False)


def load_nanogpt(directory: str):
  """nanoGPT's model.py module from a checkout, or raises ValueError naming the path."""
  path = os.path.join(directory, "model.py")
  if not os.path.isfile(path):
    raise ValueError(f"--nanogpt: {path!r} does not exist; give a nanoGPT checkout")
  spec = importlib.util.spec_from_file_location("nanogpt_model", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def time_nanogpt(config: ml_collections.ConfigDict, nanogpt, steps: int, warmup: int) -> dict[str, Any]:
  """Steps per second of nanoGPT's train.py loop body on its own GPT, at the same config."""
  task = stream_task(config, int(config.task.block_size))
  _, result = _nanogpt_train(config, nanogpt, task, steps, warmup, seed=0)
  return result


def nanogpt_validation_loss(config: ml_collections.ConfigDict, nanogpt, seed: int) -> dict[str, Any]:
  """nanoGPT's GPT trained by its loop for config.num_train_steps on the config's real text, then
  scored on the text task's validation windows (every non-overlapping window, as our runs are)."""
  torch = import_torch()
  task = train.build_run(config).task
  model, result = _nanogpt_train(config, nanogpt, task, int(config.num_train_steps), 0, seed=seed)
  model.eval()
  loss_sum, count = 0.0, 0
  with torch.no_grad():
    for batch in task.eval_batches(int(config.eval_batch_size)):
      real = batch["weights"].sum(-1) > 0
      if not real.any():
        continue
      x = torch.from_numpy(batch["tokens"][real].astype(np.int64))
      y = torch.from_numpy(batch["targets"][real].astype(np.int64))
      _, loss = model(x, y)  # The mean over the rows' tokens.
      loss_sum += float(loss) * y.numel()
      count += y.numel()
  return {**result, "val_loss": loss_sum / count}


def _nanogpt_train(config, nanogpt, task: TextTask, steps: int, warmup: int, *, seed: int):
  """nanoGPT's GPT and its train.py loop body for warmup + steps iterations on the task's training
  ids; returns (the model, the timing of the last `steps`)."""
  torch = import_torch()
  data = task.train_ids.astype(np.uint16)  # prepare.py writes uint16 ids.
  block_size, batch_size = int(config.task.block_size), int(config.batch_size)
  m, opt = config.model, config.optimizer
  torch.manual_seed(1337 + seed)
  gpt_config = nanogpt.GPTConfig(
    block_size=block_size,
    vocab_size=len(task.vocab),
    n_layer=m.num_decoder_layers,
    n_head=m.num_heads,
    n_embd=m.d_model,
    dropout=m.dropout_rate,
    bias=m.use_bias,
  )
  with contextlib.redirect_stdout(io.StringIO()):  # Its parameter counts; the table has them.
    model = nanogpt.GPT(gpt_config)
    optimizer = model.configure_optimizers(opt.weight_decay, opt.learning_rate, (opt.b1, opt.b2), "cpu")
  total, warmup_iters, peak, floor = (
    int(config.num_train_steps),
    int(opt.warmup_steps),
    float(opt.learning_rate),
    float(opt.end_learning_rate),
  )

  def get_lr(it):  # train.py's get_lr.
    if it < warmup_iters:
      return peak * (it + 1) / (warmup_iters + 1)
    if it > total:
      return floor
    ratio = (it - warmup_iters) / (total - warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)

  def get_batch():  # train.py's get_batch on the CPU.
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy((data[i : i + block_size]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + block_size]).astype(np.int64)) for i in ix])
    return x, y

  X, Y = get_batch()
  loss = None
  for it in range(warmup + steps):
    if it == warmup:
      start = time.perf_counter()
    lr = get_lr(it)
    for group in optimizer.param_groups:
      group["lr"] = lr
    _, loss = model(X, Y)
    X, Y = get_batch()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()
  elapsed = time.perf_counter() - start
  return model, {
    "params": sum(p.numel() for p in model.parameters()),
    "steps": steps,
    "step_ms": elapsed / steps * 1e3,
    "steps_per_s": steps / elapsed,
    "last_loss": float(loss.item()),
  }


def nanogpt_suite(
  config: ml_collections.ConfigDict,
  nanogpt_dir: str | None,
  *,
  smoke: bool,
  train_seeds: int = 0,
) -> dict[str, Any]:
  """Ours against nanoGPT at the experiment's configuration (steps/s) and at nanoGPT's GPU shape
  (one step each); nanoGPT's rows are skipped, and say why, without torch or a checkout. With
  `train_seeds`, also nanoGPT's validation loss after a full run per seed, on our windows."""
  steps, warmup = (3, 1) if smoke else (200, 20)
  torch = import_torch()
  nanogpt, why = None, None
  if torch is None:
    why = "torch does not import"
  elif not nanogpt_dir:
    why = "no --nanogpt checkout given"
  else:
    nanogpt = load_nanogpt(nanogpt_dir)
  shapes = [("CPU example", config, steps, warmup)]
  if not smoke:
    shapes.append(("GPU shape", at_shape(config, GPU_SHAPE), 1, 1))
  rows = []
  for label, shape_config, n, w in shapes:
    ours = {"config": label, "impl": "ours: the loop's compiled step", **time_ours(shape_config, n, w)}
    bare = {"config": label, "impl": "ours: bare jax.jit(train_step)", **time_bare(shape_config, n, w)}
    ours["loop_over_bare_ms"] = ours["step_ms"] / bare["step_ms"]
    rows.extend([ours, bare])
    if nanogpt is None:
      rows.append({"config": label, "impl": "nanoGPT model.py + train.py loop", "skipped": why})
      continue
    peer = time_nanogpt(shape_config, nanogpt, n, w)
    rows.append({"config": label, "impl": "nanoGPT model.py + train.py loop", **peer})
    for row in (ours, bare):
      row["ratio_vs_nanogpt"] = row["steps_per_s"] / peer["steps_per_s"]
  if nanogpt is not None:
    for seed in range(train_seeds):
      run = nanogpt_validation_loss(config, nanogpt, seed)
      impl = f"nanoGPT full run, seed {seed}"
      rows.append({"config": "CPU example", "impl": impl, **run})
  m = config.model
  columns = [
    ("config", "config", ""),
    ("impl", "impl", ""),
    ("params", "params", ",d"),
    ("steps", "steps", "d"),
    ("ms/step", "step_ms", ".1f"),
    ("steps/s", "steps_per_s", ".2f"),
    ("compile s", "compile_s", ".2f"),
    ("loop/bare ms", "loop_over_bare_ms", ".3f"),
    ("ours/nanoGPT steps/s", "ratio_vs_nanogpt", ".2f"),
    ("val loss", "val_loss", ".4f"),
  ]
  notes = [
    f"CPU example: {m.num_decoder_layers} layers, {m.num_heads} heads, D={m.d_model}, block "
    f"{config.task.block_size}, batch {config.batch_size}, vocabulary {CHARACTERS} + 4 specials, "
    f"bias={m.use_bias}, dropout {m.dropout_rate}; {steps} timed steps after {warmup} warm-up steps.",
    "GPU shape: 6 layers, 6 heads, D=384, block 256, batch 64; one step timed after one warm-up step.",
    "a step = fetch a batch, forward, backward, clip, AdamW; nanoGPT reads the loss every step (its "
    "CPU command logs each), ours once per log interval as the loop does; ratio > 1: ours is faster.",
    "compile s: ours' lower().compile() of the train step, not in the step times; eager torch has none.",
    "bare: the same model, objective and AdamW as one jax.jit(train.train_step), no seed axis or mesh; "
    "loop/bare ms: the loop's step time over the bare one (what the loop's vmap and shardings cost).",
    "nanoGPT full run: its model and loop trained num_train_steps on the config's text (seed 1337 + "
    "seed), val loss over every non-overlapping validation window, as our runs report it.",
  ]
  return suite_result("nanogpt", columns, rows, notes)
