"""Scorer: entity-level strict IOB2 micro P/R/F1 — hand-computed values, and equal to seqeval's own."""
from __future__ import annotations

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from engine.ner.scoring import score

# (name, gold, predicted, expected precision, recall, F1) — counted by hand.
CASES = [
    ("exact", [["B-C", "I-C", "O", "B-D"]], [["B-C", "I-C", "O", "B-D"]], 1.0, 1.0, 1.0),
    ("right boundary too short", [["B-C", "I-C", "O", "B-D"]], [["B-C", "O", "O", "B-D"]], 0.5, 0.5, 0.5),
    ("left boundary too long", [["O", "B-C", "I-C"]], [["B-C", "I-C", "I-C"]], 0.0, 0.0, 0.0),
    ("type error", [["B-C", "I-C", "O", "B-D"]], [["B-D", "I-D", "O", "B-D"]], 0.5, 0.5, 0.5),
    ("one entity split in two", [["B-C", "I-C", "I-C"]], [["B-C", "B-C", "I-C"]], 0.0, 0.0, 0.0),
    ("spurious entity", [["O", "O", "B-C"]], [["B-D", "O", "B-C"]], 0.5, 1.0, 2 / 3),
    ("I- start is no entity in strict mode", [["B-C", "I-C", "O"]], [["I-C", "I-C", "O"]], 0.0, 0.0, 0.0),
    ("micro average over sentences", [["B-C", "O"], ["B-D", "I-D"], ["O", "B-C"]],
     [["B-C", "O"], ["B-D", "O"], ["B-C", "B-C"]], 2 / 4, 2 / 3, 4 / 7),
]


@pytest.mark.parametrize("name,gold,pred,p,r,f", CASES, ids=[c[0] for c in CASES])
def test_scores_match_hand_counts(name, gold, pred, p, r, f):
    result = score(gold, pred)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((p, r, f))


@pytest.mark.parametrize("name,gold,pred,p,r,f", CASES, ids=[c[0] for c in CASES])
def test_scores_equal_seqeval_strict_iob2(name, gold, pred, p, r, f):
    result = score(gold, pred)
    kwargs = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    assert result["precision"] == pytest.approx(precision_score(gold, pred, **kwargs))
    assert result["recall"] == pytest.approx(recall_score(gold, pred, **kwargs))
    assert result["f1"] == pytest.approx(f1_score(gold, pred, **kwargs))


def test_strict_mode_differs_from_seqeval_default_on_an_i_start():
    gold, pred = [["B-C", "I-C", "O"]], [["I-C", "I-C", "O"]]
    assert f1_score(gold, pred) == 1.0  # conlleval-style default accepts the I- start
    assert score(gold, pred)["f1"] == 0.0


def test_per_type_scores_separate_a_type_error_from_a_correct_type():
    result = score([["B-C", "O", "B-D"]], [["B-D", "O", "B-D"]])
    assert result["per_type"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_type"]["D"]["precision"] == pytest.approx(0.5)
    assert result["per_type"]["D"]["recall"] == 1.0
    assert result["support"] == 2


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError):
        score([["O", "O"]], [["O"]])
