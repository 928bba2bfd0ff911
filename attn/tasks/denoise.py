"""The notes' "masking as noise" as an objective: any task's input tokens, corrupted, to be restored.

`config.objective = "denoise"` wraps the task a config names in a `DenoisingTask` (BERT's masked-LM
objective): each batch's input tokens (`tokens`, or a translation task's `src`) are corrupted by
`attn.corrupt_tokens` (mask / random / keep mix, `config.denoise`), and an `EncoderTagger` whose
classes are the vocabulary predicts the original token at the corrupted positions only (weights 1
there, 0 elsewhere; a position whose original is <unk> has nothing to restore and is never chosen).
Hashed features and characters of a corrupted position are zeroed too, or the word would show
through them. The eval metric "accuracy" is then the masked-token accuracy.

A task may offer more text for this than its training split: `unlabelled_batch(step, batch_size)`
(the NER task's `config.data.unlabelled` files) is used instead of `train_batch` when it exists.
The corruption of a batch is a pure function of (seed, step), like the batches themselves.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from attn.core.corruption import corrupt_tokens
from attn.tasks.base import EVAL_STREAM, TRAIN_STREAM, Task

_INPUT_KEYS = ("tokens", "src")  # Which batch entry holds the input tokens, first found.
_HIDDEN_WITH_THE_TOKEN = ("features", "chars")  # Zeroed where the token is corrupted.


@dataclasses.dataclass(frozen=True)
class Corruption:
  rate: float = 0.15
  random_fraction: float = 0.1
  keep_fraction: float = 0.1


def corruption_from(config) -> Corruption:
  """`config.denoise` (rate, random_fraction, keep_fraction) checked; ValueError names the field."""
  fields = dict(config) if config is not None else {}
  unknown = set(fields) - {f.name for f in dataclasses.fields(Corruption)}
  if unknown:
    raise ValueError(f"config.denoise: unknown field(s) {sorted(unknown)}")
  out = Corruption(**fields)
  for name in ("rate", "random_fraction", "keep_fraction"):
    value = getattr(out, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
      raise ValueError(f"config.denoise.{name}: must be a number in [0, 1], got {value!r}")
  if out.rate == 0.0:
    raise ValueError("config.denoise.rate: must be positive (0 corrupts nothing to restore)")
  if out.random_fraction + out.keep_fraction > 1.0:
    raise ValueError("config.denoise.random_fraction: plus keep_fraction must be at most 1")
  return out


@functools.lru_cache(maxsize=8)
def _corrupt_fn(corruption: Corruption, mask_id: int, vocab_size: int):
  first_word = 4  # Past <pad>, <bos>, <eos>, <unk>: random replacements are real words.
  return jax.jit(
    lambda key, tokens, eligible: corrupt_tokens(
      key,
      tokens,
      corruption.rate,
      mask_id,
      eligible=eligible,
      random_fraction=corruption.random_fraction,
      keep_fraction=corruption.keep_fraction,
      random_range=(first_word, max(vocab_size, first_word + 1)),
    )
  )


@dataclasses.dataclass(eq=False)
class DenoisingTask(Task):
  """`inner`'s batches with their input tokens corrupted; targets are the original tokens."""

  inner: Any
  corruption: Corruption
  seed: int

  kind = "tagging"
  main_metric = "accuracy"

  def __post_init__(self):
    example = self.inner.train_batch(0, 1)
    if not any(k in example for k in _INPUT_KEYS):
      raise ValueError(
        f"config.objective: 'denoise' needs a task whose batches hold tokens or src; "
        f"{type(self.inner).__name__}'s hold {sorted(example)}"
      )
    self.vocab = self.inner.vocab
    # The mask token: <unk> (id 3), which the vocabulary already has and real text never targets.
    self.mask_id = self.vocab.unk_id

  @property
  def num_classes(self) -> int:
    return len(self.vocab)

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.vocab.tokens)

  def _corrupt(self, batch: dict, *stream: int) -> dict:
    key = next(k for k in _INPUT_KEYS if k in batch)
    tokens = np.asarray(batch[key])
    eligible = (tokens != self.vocab.pad_id) & (tokens != self.vocab.unk_id)
    eligible &= (tokens != self.vocab.bos_id) & (tokens != self.vocab.eos_id)
    rng = jax.random.PRNGKey(self.seed)
    for s in stream:
      rng = jax.random.fold_in(rng, s)
    fn = _corrupt_fn(self.corruption, self.mask_id, len(self.vocab))
    corrupted, chosen = (np.asarray(x) for x in fn(rng, tokens, eligible))
    out = {"tokens": corrupted, "tags": tokens, "weights": chosen.astype(np.float32)}
    for name in _HIDDEN_WITH_THE_TOKEN:
      if name in batch:
        hidden = np.asarray(batch[name]).copy()
        hidden[chosen] = 0
        out[name] = hidden
    return out

  @property
  def num_train_examples(self) -> int | None:
    """The inner task's unlabelled text (its training split and any more), when fixed."""
    return self.inner.num_unlabelled_examples

  @property
  def eval_lengths(self) -> tuple[int, ...]:
    return self.inner.eval_lengths

  def train_batch(self, step: int, batch_size: int) -> dict:
    return self._corrupt(self.inner.unlabelled_batch(step, batch_size), TRAIN_STREAM, step)

  def eval_batches(self, batch_size: int) -> list[dict]:
    return [self._corrupt(b, EVAL_STREAM, i) for i, b in enumerate(self.inner.eval_batches(batch_size))]

  def encode_text(self, text: str) -> np.ndarray:
    return self.inner.encode_text(text)

  def decode_ids(self, ids) -> str:
    return self.inner.decode_ids(ids)

  def save(self, workdir: str) -> None:
    self.inner.save(workdir)  # The vocabulary: a tagger that starts from this run needs the same.

  def data_files(self) -> list[str]:
    return self.inner.data_files()
