"""Repeated random segments, the task on which induction heads form (Olsson et al. 2022).

Each example is a language-modelling sequence of `length` tokens: BOS, random symbols, and inside
them a segment of n random symbols followed at once by the same n again, n drawn per example from
[min_segment, max_segment] and the segment's start drawn too (a fixed offset would let a model solve
it by position). Only the second copy is predictable past its first token: there the token that came
after the current one in the first copy comes next, which a previous-token head composed with an
induction head finds. Losses and their baselines: ln V (a random guess), about ln n (copy some
earlier token of the segment), 0 (induction).

Training batches weight every position; the eval batches weight only the predictable tokens of the
second copy, so the eval "loss" is the second-copy loss. `score` adds each head's induction score
(`attn.core.detectors.induction_score`: the mean attention from each token of the second copy to the
token after its earlier occurrence), "induction_L<l>H<h>", and their maximum, "induction_max", on the
first `score_examples` eval examples.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attn.tasks.base import (
  EVAL_STREAM,
  SPECIALS,
  TRAIN_STREAM,
  Batch,
  Task,
  Vocabulary,
  split_batches,
  stream_rng,
)


@dataclasses.dataclass(frozen=True)
class RepeatedSegments(Task):
  """See the module docstring."""

  num_symbols: int = 64
  length: int = 32
  min_segment: int = 4
  max_segment: int = 15
  eval_examples: int = 256
  score_examples: int = 64
  seed: int = 0

  name = "induction"
  kind = "lm"
  num_classes = 0
  class_names = ()

  @property
  def vocab(self) -> Vocabulary:
    return Vocabulary((*SPECIALS, *(str(i) for i in range(self.num_symbols))))

  @property
  def main_metric(self) -> str:
    return "loss"

  def examples(self, rng: np.random.Generator, n: int) -> tuple[Batch, np.ndarray, np.ndarray]:
    """(tokens/targets [n, length] and the second copy's predictable targets [n, length], each
    segment's start [n] and length [n]), as token positions."""
    T = self.length
    seq = rng.integers(0, self.num_symbols, (n, T + 1)) + len(SPECIALS)
    seq[:, 0] = Vocabulary.bos_id
    seg = rng.integers(self.min_segment, self.max_segment + 1, n)
    start = np.array([rng.integers(1, T + 1 - 2 * s) for s in seg])  # Both copies in the tokens.
    second = np.zeros((n, T), bool)
    for i, (a, s) in enumerate(zip(start, seg, strict=True)):
      seq[i, a + s : a + 2 * s] = seq[i, a : a + s]
      second[i, a + s : a + 2 * s - 1] = (
        True  # Targets seq[j + 1] for j + 1 in the copy, past its first.
      )
    batch = {"tokens": seq[:, :T].astype(np.int32), "targets": seq[:, 1:].astype(np.int32)}
    return batch, second, start, seg

  def train_batch(self, step: int, batch_size: int) -> Batch:
    batch, *_ = self.examples(stream_rng(self.seed, TRAIN_STREAM, step), batch_size)
    batch["weights"] = np.ones(batch["tokens"].shape, np.float32)
    return batch

  def _eval(self):
    return self.examples(stream_rng(self.seed, EVAL_STREAM), self.eval_examples)

  def eval_batches(self, batch_size: int) -> list[Batch]:
    batch, second, _, _ = self._eval()
    batch["weights"] = second.astype(np.float32)
    return split_batches(batch, batch_size)

  def score(self, predictor, batch_size: int, *, final: bool) -> dict[str, float]:
    del batch_size, final
    batch, _, start, seg = self._eval()
    n = min(self.score_examples, self.eval_examples)
    patterns = predictor.self_attention_patterns({"tokens": batch["tokens"][:n]})  # [L, B, H, T, T]
    L, _, H = patterns.shape[:3]
    scores = np.zeros((L, H))
    for i in range(n):
      queries = np.arange(start[i] + seg[i], start[i] + 2 * seg[i])
      scores += patterns[:, i][:, :, queries, queries - seg[i] + 1].mean(-1)
    scores /= n
    out = {f"induction_L{layer}H{h}": float(scores[layer, h]) for layer in range(L) for h in range(H)}
    out["induction_max"] = float(scores.max())
    return out

  def encode_text(self, text: str) -> np.ndarray:
    return self.vocab.encode(text.split())

  def decode_ids(self, ids) -> str:
    return " ".join(self.vocab.decode(ids))


FIELDS = ("num_symbols", "length", "min_segment", "max_segment", "eval_examples", "score_examples")


def make_task(
  task_config, data_config=None, *, seed: int = 0, workdir: str | None = None
) -> RepeatedSegments:
  """The task of `config.task` (fields FIELDS; absent ones take their defaults).

  Raises:
    ValueError: naming the field, for a bad task field.
  """
  del data_config, workdir  # Generated in code: no files, nothing saved.
  values = {f: task_config[f] for f in FIELDS if f in task_config}
  for f, v in values.items():
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"config.task.{f}: must be an int >= 1, got {v!r}")
  task = RepeatedSegments(seed=seed, **values)
  if task.min_segment < 2 or task.min_segment > task.max_segment:
    raise ValueError(
      f"config.task.min_segment: must be at least 2 and at most max_segment={task.max_segment}, got "
      f"{task.min_segment}"
    )
  if 2 * task.max_segment + 1 > task.length:
    raise ValueError(
      f"config.task.max_segment: two copies of {task.max_segment} tokens after BOS need length >= "
      f"{2 * task.max_segment + 1}, got length={task.length}"
    )
  return task
