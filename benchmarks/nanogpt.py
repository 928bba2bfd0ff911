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
so the suite needs no data file. The three are timed in interleaved rounds (`interleave`), so load
that comes and goes on a shared machine moves them alike. At nanoGPT's GPU configuration (6 layers,
6 heads, D = 384, block 256, batch 64) one step each is timed after a warm-up step: the step-time
ratio, not a run.
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
from collections.abc import Callable
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
ROUNDS = 10  # Interleaved timing rounds per shape (see `interleave`).
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


class _Contender:
  """A train step kept warm between timing rounds: `advance(n)` runs n more steps and adds their
  seconds to the total; `row()` reports every timed step. `sync` waits for the device (a no-op for
  eager torch, whose `loss.item()` already waits every step)."""

  def __init__(self, step: Callable[[], None], sync: Callable[[], None], warmup: int):
    self.step, self.sync = step, sync
    self.steps, self.elapsed = 0, 0.0
    for _ in range(warmup):
      step()
    sync()

  def advance(self, n: int) -> None:
    start = time.perf_counter()
    for _ in range(n):
      self.step()
    self.sync()
    self.elapsed += time.perf_counter() - start
    self.steps += n

  def timing(self) -> dict[str, Any]:
    return {
      "steps": self.steps,
      "step_ms": self.elapsed / self.steps * 1e3,
      "steps_per_s": self.steps / self.elapsed,
    }


def interleave(contenders: list[_Contender], steps: int, rounds: int) -> None:
  """Times `steps` steps of each contender in `rounds` alternating rounds (the order rotated each
  round), so a machine that slows down or speeds up during the run moves every contender alike and
  the ratios between them stay honest."""
  chunk = max(1, steps // rounds)
  for r in range(max(1, steps // chunk)):
    for contender in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
      contender.advance(chunk)


class _JaxContender(_Contender):
  def __init__(self, step_fn, state, next_batch, warmup: int, compile_s: float, seed_axis: bool):
    self.state, self.metrics, self.next_batch, self.i = state, None, next_batch, 0
    self.step_fn, self.compile_s, self.seed_axis = step_fn, compile_s, seed_axis
    super().__init__(self._step, lambda: jax.block_until_ready((self.state, self.metrics)), warmup)

  def _step(self) -> None:
    self.state, self.metrics = self.step_fn(self.state, self.next_batch(self.i))
    self.i += 1

  def row(self) -> dict[str, Any]:
    leaves = jax.tree.leaves(self.state.params)
    params = sum(int(np.prod(x.shape[int(self.seed_axis) :])) for x in leaves)
    loss = np.asarray(self.metrics["loss"]).reshape(-1)[0]
    return {"params": params, **self.timing(), "compile_s": self.compile_s, "last_loss": float(loss)}


def _run(config: ml_collections.ConfigDict):
  """The experiment's run (one seed) over the random token stream."""
  config = copy.deepcopy(config)
  config.num_seeds = 1
  return train.build_run(config, task=stream_task(config, int(config.task.block_size)))


def ours(config: ml_collections.ConfigDict, warmup: int) -> _JaxContender:
  """The loop's compiled train step, data included; compile time apart."""
  run = _run(config)
  task, B = run.task, run.train.batch_size
  steps_ = compiled.compile_steps(run)
  state = steps_.init(run.seed_rngs())
  start = time.perf_counter()
  step_fn = steps_.train.lower(state, steps_.to_batch(task.train_batch(0, B))).compile()
  compile_s = time.perf_counter() - start
  next_batch = lambda s: steps_.to_batch(task.train_batch(s, B))
  return _JaxContender(step_fn, state, next_batch, warmup, compile_s, seed_axis=True)


def bare(config: ml_collections.ConfigDict, warmup: int) -> _JaxContender:
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
  next_batch = lambda s: task.train_batch(s, B)
  return _JaxContender(step_fn, state, next_batch, warmup, compile_s, seed_axis=False)


def load_nanogpt(directory: str):
  """nanoGPT's model.py module from a checkout, or raises ValueError naming the path."""
  path = os.path.join(directory, "model.py")
  if not os.path.isfile(path):
    raise ValueError(f"--nanogpt: {path!r} does not exist; give a nanoGPT checkout")
  spec = importlib.util.spec_from_file_location("nanogpt_model", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def nanogpt_contender(config: ml_collections.ConfigDict, nanogpt, warmup: int) -> _NanoGPT:
  """nanoGPT's train.py loop body on its own GPT, at the same config and token stream."""
  return _NanoGPT(config, nanogpt, stream_task(config, int(config.task.block_size)), warmup, seed=0)


def nanogpt_validation_loss(config: ml_collections.ConfigDict, nanogpt, seed: int) -> dict[str, Any]:
  """nanoGPT's GPT trained by its loop for config.num_train_steps on the config's real text, then
  scored on the text task's validation windows (every non-overlapping window, as our runs are)."""
  torch = import_torch()
  task = train.build_run(config).task
  contender = _NanoGPT(config, nanogpt, task, 0, seed=seed)
  contender.advance(int(config.num_train_steps))
  model, result = contender.model, contender.row()
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


class _NanoGPT(_Contender):
  """nanoGPT's GPT and the body of its train.py loop on the task's training ids."""

  def __init__(self, config, nanogpt, task: TextTask, warmup: int, *, seed: int):
    self.torch = torch = import_torch()
    self.data = task.train_ids.astype(np.uint16)  # prepare.py writes uint16 ids.
    self.block_size, self.batch_size = int(config.task.block_size), int(config.batch_size)
    m, opt = config.model, config.optimizer
    torch.manual_seed(1337 + seed)
    gpt_config = nanogpt.GPTConfig(
      block_size=self.block_size,
      vocab_size=len(task.vocab),
      n_layer=m.num_decoder_layers,
      n_head=m.num_heads,
      n_embd=m.d_model,
      dropout=m.dropout_rate,
      bias=m.use_bias,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # Its parameter counts; the table has them.
      self.model = nanogpt.GPT(gpt_config)
      self.optimizer = self.model.configure_optimizers(
        opt.weight_decay, opt.learning_rate, (opt.b1, opt.b2), "cpu"
      )
    self.total, self.warmup_iters = int(config.num_train_steps), int(opt.warmup_steps)
    self.peak, self.floor = float(opt.learning_rate), float(opt.end_learning_rate)
    self.clip = opt.grad_clip_norm
    self.it, self.loss = 0, None
    self.X, self.Y = self.get_batch()
    super().__init__(self._step, lambda: None, warmup)

  def get_lr(self, it):  # train.py's get_lr.
    if it < self.warmup_iters:
      return self.peak * (it + 1) / (self.warmup_iters + 1)
    if it > self.total:
      return self.floor
    ratio = (it - self.warmup_iters) / (self.total - self.warmup_iters)
    return self.floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.peak - self.floor)

  def get_batch(self):  # train.py's get_batch on the CPU.
    torch, data, T = self.torch, self.data, self.block_size
    ix = torch.randint(len(data) - T, (self.batch_size,))
    x = torch.stack([torch.from_numpy((data[i : i + T]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + T]).astype(np.int64)) for i in ix])
    return x, y

  def _step(self) -> None:  # train.py's loop body.
    torch = self.torch
    lr = self.get_lr(self.it)
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    _, loss = self.model(self.X, self.Y)
    self.X, self.Y = self.get_batch()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.loss = loss.item()
    self.it += 1

  def row(self) -> dict[str, Any]:
    params = sum(p.numel() for p in self.model.parameters())
    return {"params": params, **self.timing(), "last_loss": float(self.loss)}


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
    contenders = [ours(shape_config, w), bare(shape_config, w)]
    if nanogpt is not None:
      contenders.append(nanogpt_contender(shape_config, nanogpt, w))
    interleave(contenders, n, rounds=ROUNDS if n >= ROUNDS else 1)
    loop_row = {"config": label, "impl": "ours: the loop's compiled step", **contenders[0].row()}
    bare_row = {"config": label, "impl": "ours: bare jax.jit(train_step)", **contenders[1].row()}
    loop_row["loop_over_bare_ms"] = loop_row["step_ms"] / bare_row["step_ms"]
    rows.extend([loop_row, bare_row])
    if nanogpt is None:
      rows.append({"config": label, "impl": "nanoGPT model.py + train.py loop", "skipped": why})
      continue
    peer = contenders[2].row()
    rows.append({"config": label, "impl": "nanoGPT model.py + train.py loop", **peer})
    for row in (loop_row, bare_row):
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
