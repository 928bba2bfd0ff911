"""The seed notes' tasks, generated in code: cue tagging, its two-cue variant, and word sense.

The notes argue for attention with sentences in which a word's label is decided by another word that
may stand anywhere ("Roopali ... she is a cow": Roopali is an animal) and with an ambiguous word whose
sense its context decides ("bank of the river" vs "State Bank of India"). Each task here draws such
sentences from a small grammar:

  sentence := filler* with the KEY word and its CUE words dropped in at random positions, every cue at
              least `min_distance` positions from the key word;
  filler   := one of FILLERS (neutral words that say nothing about any label).

  "cue":        KEY is a name, one CUE word (teacher / cow / robot ...) decides its tag: PERSON,
                ANIMAL or MACHINE.
  "two_cue":    KEY is a name, two CUE words decide its tag together: what it is (a person word or an
                animal word) times where it lives (a city word or a village word), four tags. A head
                that reads one cue knows half of the answer.
  "word_sense": KEY is an ambiguous word (bank, bat, plant), 1 to `max_context` CUE words of one of its
                senses decide the sense (river, water ... vs state, money ... for bank).

Tags: class 0 is "O" and every other token carries it with weight 0: only the key word is scored
(weight 1), so eval accuracy is the key word's accuracy and a model that cannot see the cue scores
chance (1/3 for "cue", 1/4 for "two_cue", 1/2 for "word_sense"). Positions and fillers are independent
of the label, so nothing but the cue words decides it; a model whose every layer sees only a window of
w tokens on each side sees no cue through L layers when L * w < min_distance.

`sense_shift` is the notes' first point made with these words and no parameters at all: the ambiguous
word's vector is identical in both senses before weightless self-attention and differs after it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from attn.core import attention
from attn.tasks.base import (
  EVAL_STREAM,
  SPECIALS,
  TRAIN_STREAM,
  Task,
  Vocabulary,
  pad_rows,
  split_batches,
  stream_rng,
)

NAMES = (
  "roopali",
  "arjun",
  "maya",
  "ravi",
  "anna",
  "omar",
  "lena",
  "kofi",
  "sara",
  "ivan",
  "mei",
  "tom",
)
FILLERS = (
  "the", "a", "went", "to", "market", "and", "saw", "yesterday", "with", "friend", "big", "small", "old",
  "new", "ran", "quickly", "home", "after", "lunch", "then", "sat", "near", "door", "very", "happy",
  "today", "morning", "was", "she", "he", "her", "his", "is", "of", "in", "slept", "late", "again",
)  # fmt: skip

# "cue": tag -> the words that decide it.
CUE_WORDS = {
  "PERSON": ("teacher", "doctor", "farmer", "singer", "pilot", "nurse"),
  "ANIMAL": ("cow", "dog", "horse", "goat", "cat", "parrot"),
  "MACHINE": ("robot", "drone", "car", "tractor", "computer", "train"),
}
# "two_cue": the two attributes; the tag is their product, "PERSON_CITY" ... "ANIMAL_VILLAGE".
KIND_WORDS = {"PERSON": CUE_WORDS["PERSON"], "ANIMAL": CUE_WORDS["ANIMAL"]}
HOME_WORDS = {
  "CITY": ("city", "town", "metro", "mall", "street", "tower"),
  "VILLAGE": ("village", "farm", "field", "hut", "well", "barn"),
}
# "word_sense": ambiguous word -> sense -> the context words that decide it.
SENSE_WORDS = {
  "bank": {"river": ("river", "water", "fish", "shore", "boat", "mud"),
           "money": ("state", "money", "loan", "india", "account", "cash")},
  "bat": {"animal": ("cave", "wings", "night", "fly", "insects", "fur"),
          "sport": ("cricket", "ball", "match", "hit", "player", "runs")},
  "plant": {"flora": ("leaves", "green", "garden", "soil", "flower", "roots"),
            "factory": ("factory", "steel", "workers", "machines", "production", "power")},
}  # fmt: skip

TASK_NAMES = ("cue", "two_cue", "word_sense")
# Defaults of the task fields a config may leave out: (min_length, max_length, min_distance).
_DEFAULTS = {
  "min_length": 12,
  "max_length": 24,
  "min_distance": 6,
  "max_context": 2,
  "eval_examples": 512,
}


def _vocabulary(name: str) -> Vocabulary:
  if name == "word_sense":
    keys = [*SENSE_WORDS, *(w for senses in SENSE_WORDS.values() for ws in senses.values() for w in ws)]
  else:
    cues = CUE_WORDS.values() if name == "cue" else (*KIND_WORDS.values(), *HOME_WORDS.values())
    keys = [*NAMES, *(w for ws in cues for w in ws)]
  words = (*SPECIALS, *FILLERS, *keys)
  assert len(set(words)) == len(words), "a word is both a filler and a key or cue word"
  return Vocabulary(tuple(words))


def _class_names(name: str) -> tuple[str, ...]:
  if name == "cue":
    return ("O", *CUE_WORDS)
  if name == "two_cue":
    return ("O", *(f"{kind}_{home}" for kind in KIND_WORDS for home in HOME_WORDS))
  return ("O", *(f"{word}/{sense}" for word, senses in SENSE_WORDS.items() for sense in senses))


@dataclasses.dataclass(frozen=True)
class SeedTask(Task):
  """One of the seed's tagging tasks ("cue", "two_cue", "word_sense"); see the module docstring.

  Sentence lengths are uniform in [min_length, max_length]; every cue word stands at least
  `min_distance` positions from the key word; "word_sense" puts 1 to `max_context` context words in.
  """

  name: str
  min_length: int = _DEFAULTS["min_length"]
  max_length: int = _DEFAULTS["max_length"]
  min_distance: int = _DEFAULTS["min_distance"]
  max_context: int = _DEFAULTS["max_context"]
  eval_examples: int = _DEFAULTS["eval_examples"]
  seed: int = 0

  kind = "tagging"
  main_metric = "accuracy"

  @property
  def vocab(self) -> Vocabulary:
    return _vocabulary(self.name)

  @property
  def class_names(self) -> tuple[str, ...]:
    return _class_names(self.name)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _key_and_cues(self, rng: np.random.Generator) -> tuple[str, list[str], str]:
    """The key word, its cue words and the key word's tag, for one sentence."""
    if self.name == "cue":
      tag = str(rng.choice(list(CUE_WORDS)))
      return str(rng.choice(NAMES)), [str(rng.choice(CUE_WORDS[tag]))], tag
    if self.name == "two_cue":
      kind, home = str(rng.choice(list(KIND_WORDS))), str(rng.choice(list(HOME_WORDS)))
      cues = [str(rng.choice(KIND_WORDS[kind])), str(rng.choice(HOME_WORDS[home]))]
      return str(rng.choice(NAMES)), cues, f"{kind}_{home}"
    word = str(rng.choice(list(SENSE_WORDS)))
    sense = str(rng.choice(list(SENSE_WORDS[word])))
    n = int(rng.integers(1, self.max_context + 1))
    return (
      word,
      [str(c) for c in rng.choice(SENSE_WORDS[word][sense], size=n, replace=False)],
      f"{word}/{sense}",
    )

  def sentence(self, rng: np.random.Generator) -> tuple[list[str], int, str]:
    """Draws one sentence: (words, position of the key word, its tag)."""
    key, cues, tag = self._key_and_cues(rng)
    length = int(rng.integers(self.min_length, self.max_length + 1))
    while True:  # A key position with room for every cue at min_distance or more (some always has).
      key_pos = int(rng.integers(length))
      far = [p for p in range(length) if abs(p - key_pos) >= self.min_distance]
      if len(far) >= len(cues):
        break
    words = [str(w) for w in rng.choice(FILLERS, size=length)]
    words[key_pos] = key
    for pos, cue in zip(rng.choice(far, size=len(cues), replace=False), cues, strict=True):
      words[int(pos)] = cue
    return words, key_pos, tag

  def _examples(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    vocab, tag_ids = self.vocab, {c: i for i, c in enumerate(self.class_names)}
    tokens, tags, weights = [], [], []
    for _ in range(n):
      words, key_pos, tag = self.sentence(rng)
      tokens.append(vocab.encode(words))
      tags.append(np.zeros(len(words), np.int32))
      tags[-1][key_pos] = tag_ids[tag]
      weights.append(np.zeros(len(words), np.float32))
      weights[-1][key_pos] = 1.0
    return {
      "tokens": pad_rows(tokens, self.max_length, vocab.pad_id),
      "tags": pad_rows(tags, self.max_length),
      "weights": pad_rows(weights, self.max_length).astype(np.float32),
    }

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """tokens, tags, weights [batch_size, max_length]; a pure function of (task, step)."""
    return self._examples(stream_rng(self.seed, TRAIN_STREAM, step), batch_size)

  def eval_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
    return split_batches(
      self._examples(stream_rng(self.seed, EVAL_STREAM), self.eval_examples), batch_size
    )

  def encode_text(self, text: str) -> np.ndarray:
    return self.vocab.encode(text.lower().split())

  def decode_ids(self, ids) -> str:
    return " ".join(self.vocab.decode(ids))


def make_task(task_config, data_config=None, *, seed: int = 0, workdir: str | None = None) -> SeedTask:
  """The seed task `task_config.name` names, from its fields (min_length, max_length, min_distance,
  max_context, eval_examples; a field the config lacks takes its default). `data_config` is unused.

  Raises:
    ValueError: naming `config.task.FIELD` for a bad field.
  """
  del data_config, workdir  # Generated in code: no files, nothing saved.
  name = task_config.name
  if name not in TASK_NAMES:
    raise ValueError(f"config.task.name: {name!r} is not a seed task; expected one of {TASK_NAMES}")
  values = {}
  for field, default in _DEFAULTS.items():
    value = task_config.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
      raise ValueError(f"config.task.{field}: must be an int, got {value!r}")
    values[field] = int(value)
  for field in ("min_length", "min_distance", "max_context", "eval_examples"):
    if values[field] <= 0:
      raise ValueError(f"config.task.{field}: must be positive, got {values[field]}")
  if values["min_length"] > values["max_length"]:
    raise ValueError(
      f"config.task.min_length: {values['min_length']} exceeds max_length {values['max_length']}"
    )
  num_cues = {"cue": 1, "two_cue": 2, "word_sense": values["max_context"]}[name]
  if values["min_length"] < values["min_distance"] + num_cues:
    raise ValueError(
      f"config.task.min_length: {values['min_length']} leaves no room for {num_cues} cue word(s) at "
      f"min_distance={values['min_distance']} from the key word; it must be at least "
      f"{values['min_distance'] + num_cues}"
    )
  if name == "word_sense" and values["max_context"] > min(
    len(ws) for s in SENSE_WORDS.values() for ws in s.values()
  ):
    raise ValueError(
      f"config.task.max_context: {values['max_context']} exceeds the context words of a sense (6)"
    )
  return SeedTask(name, seed=seed, **values)


def sense_shift(
  sentence_a: str = "bank of the river",
  sentence_b: str = "state bank of india",
  *,
  word: str = "bank",
  dim: int = 16,
  seed: int = 0,
) -> dict[str, float]:
  """The notes' "bank" example with no parameters: one fixed random vector per word (one table for
  both sentences), then weightless self-attention (`attn.self_attention`, 1/sqrt(dim)) over each.

  Returns:
    "before": the distance between `word`'s vectors in the two sentences before attention, relative to
      |word|: exactly 0, since both come from one table.
    "after": the same distance after attention: > 0, each copy being a mix weighted by its own context.
    "context_a", "context_b": the attention weight `word` puts on the words only its own sentence has
      ("river"; "state", "india").
  """
  words_a, words_b = sentence_a.lower().split(), sentence_b.lower().split()
  if word not in words_a or word not in words_b:
    raise ValueError(
      f"sense_shift: {word!r} must occur in both sentences: {sentence_a!r}, {sentence_b!r}"
    )
  vocab = sorted(set(words_a) | set(words_b))
  table_VD = np.random.default_rng(seed).standard_normal((len(vocab), dim)).astype(np.float32)
  x_a_TD, x_b_TD = (jnp.asarray(table_VD[[vocab.index(w) for w in ws]]) for ws in (words_a, words_b))
  y_a_TD, w_a_TT = attention.self_attention(x_a_TD, return_weights=True)
  y_b_TD, w_b_TT = attention.self_attention(x_b_TD, return_weights=True)
  i, j = words_a.index(word), words_b.index(word)
  norm = float(jnp.linalg.norm(x_a_TD[i]))
  only_a = np.array([w not in words_b for w in words_a])
  only_b = np.array([w not in words_a for w in words_b])
  return {
    "before": float(jnp.linalg.norm(x_a_TD[i] - x_b_TD[j])) / norm,
    "after": float(jnp.linalg.norm(y_a_TD[i] - y_b_TD[j])) / norm,
    "context_a": float(jnp.sum(w_a_TT[i] * only_a)),
    "context_b": float(jnp.sum(w_b_TT[j] * only_b)),
  }
