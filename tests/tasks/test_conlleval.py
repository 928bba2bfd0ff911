"""Tests for attn.tasks.conlleval: entities and scores, worked by hand with conlleval's chunk rules."""

import pytest

from attn.tasks import conlleval

# Entities and scores, worked by hand with conlleval's chunk rules.


@pytest.mark.parametrize(
  "tags, want",
  [
    # IOB2: B starts, I continues; an entity running to the end of the sentence is closed there.
    (["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], [("PER", 0, 2), ("LOC", 3, 5)]),
    # An I- with no B- before it starts an entity.
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),
    # A type change inside a span ends one entity and starts another.
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),
    # IOB1: entities start with I-; B- only splits two adjacent entities of one type.
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]),
    # B after B of the same type: two one-token entities. Types may hold hyphens.
    (["B-creative-work", "B-creative-work"], [("creative-work", 0, 1), ("creative-work", 1, 2)]),
    (["O", "O"], []),
    ([], []),
  ],
)
def test_entities(tags, want):
  assert conlleval.entities(tags) == want


def test_entity_scores_worked_by_hand():
  gold = [
    ["B-PER", "I-PER", "O", "B-LOC"],  # PER 0-2, LOC 3-4
    ["O", "B-LOC", "I-LOC"],  # LOC 1-3, to the end of the sentence
    ["B-ORG", "I-ORG", "O"],  # ORG 0-2
  ]
  predicted = [
    ["B-PER", "I-PER", "O", "B-ORG"],  # PER 0-2 right; ORG 3-4 wrong
    ["O", "I-LOC", "I-LOC"],  # LOC 1-3 right, though it starts with I-
    ["B-ORG", "I-PER", "O"],  # ORG 0-1 and PER 1-2 (a type change): both wrong
  ]
  # Gold: PER 1, LOC 2, ORG 1 (4). Predicted: PER 2, LOC 1, ORG 2 (5). Correct: PER 1, LOC 1 (2).
  scores = conlleval.entity_scores(gold, predicted)
  assert scores["precision"] == pytest.approx(40.0)  # 2 / 5
  assert scores["recall"] == pytest.approx(50.0)  # 2 / 4
  assert scores["f1"] == pytest.approx(2 * 40 * 50 / 90)  # 44.44
  assert (scores["precision_PER"], scores["recall_PER"]) == pytest.approx((50.0, 100.0))
  assert scores["f1_PER"] == pytest.approx(200 / 3)
  assert (scores["precision_LOC"], scores["recall_LOC"]) == pytest.approx((100.0, 50.0))
  assert scores["f1_LOC"] == pytest.approx(200 / 3)
  assert (scores["precision_ORG"], scores["recall_ORG"], scores["f1_ORG"]) == (0.0, 0.0, 0.0)
  assert (scores["num_gold"], scores["num_predicted"]) == (4, 5)


def test_entity_scores_iob1_against_iob2_and_empty_cases():
  iob1 = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]
  iob2 = [["B-PER", "I-PER", "B-PER", "O", "B-LOC"]]
  assert conlleval.entity_scores(iob1, iob2)["f1"] == pytest.approx(100.0)  # The same three entities.
  nothing = conlleval.entity_scores([["O", "O"]], [["O", "O"]])
  assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)
  none_found = conlleval.entity_scores([["B-PER"]], [["O"]])
  assert (none_found["precision"], none_found["recall"], none_found["f1"]) == (0.0, 0.0, 0.0)


def test_entity_scores_check_lengths():
  with pytest.raises(ValueError, match="sentence 0 has 2 gold tags but 1 predicted"):
    conlleval.entity_scores([["O", "O"]], [["O"]])
