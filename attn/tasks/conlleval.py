"""Entity scores as conlleval computes them, for tags in IOB1 or IOB2.

A predicted entity is correct when an entity of the same type spans exactly the same tokens in the
gold tags; precision, recall and F1 are in percent, overall and per type. seqeval's default
(non-strict) mode gives the same numbers. `tests/tasks/test_conlleval.py` works cases by hand with
conlleval's chunk rules (IOB1 and IOB2, type changes inside a span, empty predictions).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence


def split_tag(tag: str) -> tuple[str, str]:
  """Prefix and type, split at the first hyphen: "B-creative-work" -> ("B", "creative-work");
  "O" -> ("O", "")."""
  if tag == "O":
    return "O", ""
  prefix, _, entity_type = tag.partition("-")
  return prefix, entity_type


def _ends(prev: str, tag: str, prev_type: str, entity_type: str) -> bool:
  """conlleval's endOfChunk for O/B/I tags: the chunk holding the previous token ends before this one."""
  if prev in ("B", "I") and tag in ("B", "O"):
    return True
  return prev != "O" and prev_type != entity_type  # A type change inside a span.


def _starts(prev: str, tag: str, prev_type: str, entity_type: str) -> bool:
  """conlleval's startOfChunk for O/B/I tags: a chunk starts at this token. B always starts one; so does
  an I after O (IOB1, or an IOB2 error) and an I whose type differs from the previous token's."""
  if tag == "B" or (prev == "O" and tag == "I"):
    return True
  return tag != "O" and prev_type != entity_type


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """The entities of one sentence's tags, (type, start, end) with `end` exclusive, by conlleval's rules.

  The sentence end closes an open entity (conlleval reads the blank line as an O).
  """
  out, start = [], None
  prev, prev_type = "O", ""
  for i, full in enumerate([*tags, "O"]):
    tag, entity_type = split_tag(full)
    if start is not None and _ends(prev, tag, prev_type, entity_type):
      out.append((prev_type, start, i))
      start = None
    if _starts(prev, tag, prev_type, entity_type):
      start = i
    prev, prev_type = tag, entity_type
  return out


def to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
  """The same entities (as `entities` reads them) tagged in IOB2: B- on each entity's first token,
  I- on the rest, O elsewhere. IOB1 (I- opens an entity; B- only between two adjacent entities of a
  type) becomes IOB2; IOB2 is returned unchanged."""
  out = ["O"] * len(tags)
  for entity_type, start, end in entities(tags):
    out[start:end] = [f"B-{entity_type}"] + [f"I-{entity_type}"] * (end - start - 1)
  return tuple(out)


def _prf(correct: int, guessed: int, gold: int) -> tuple[float, float, float]:
  precision = 100.0 * correct / guessed if guessed else 0.0
  recall = 100.0 * correct / gold if gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return precision, recall, f1


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
  """Entity precision, recall and F1 in percent, overall and per type, as conlleval reports them.

  Args:
    gold, predicted: one tag sequence per sentence; sentence i of both has the same length.

  Returns:
    {"precision", "recall", "f1"} overall, plus "precision_TYPE", "recall_TYPE", "f1_TYPE" for every
    type found in either (0 where a type has no predicted or no gold entity), and the entity counts
    "num_gold" and "num_predicted".
  """
  if len(gold) != len(predicted):
    raise ValueError(f"entity_scores: {len(gold)} gold sentences but {len(predicted)} predicted")
  counts = collections.defaultdict(lambda: [0, 0, 0])  # type -> [correct, guessed, gold]
  for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
    if len(g) != len(p):
      raise ValueError(f"entity_scores: sentence {i} has {len(g)} gold tags but {len(p)} predicted")
    gold_set, predicted_set = set(entities(g)), set(entities(p))
    for entity in gold_set:
      counts[entity[0]][2] += 1
    for entity in predicted_set:
      counts[entity[0]][1] += 1
      counts[entity[0]][0] += entity in gold_set
  totals = [sum(c[k] for c in counts.values()) for k in range(3)]
  precision, recall, f1 = _prf(*totals)
  out = {"precision": precision, "recall": recall, "f1": f1}
  for entity_type in sorted(counts):
    p, r, f = _prf(*counts[entity_type])
    out.update({f"precision_{entity_type}": p, f"recall_{entity_type}": r, f"f1_{entity_type}": f})
  out.update(num_gold=float(totals[2]), num_predicted=float(totals[1]))
  return out
