"""Entity-level scores with seqeval in strict IOB2 mode (an entity counts only with exact span and type).

Strict mode is what BLURB-style reporting needs: a predicted `I-X` after `O` is not silently turned
into an entity, and a boundary or type error costs one false positive and one false negative.
"""
from __future__ import annotations

import warnings

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2


def score(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Micro precision/recall/F1 (fractions in [0, 1]) plus per-type scores and entity counts."""
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted must have the same sentences and lengths")
    with warnings.catch_warnings():  # seqeval averages empty arrays when there are no entities at all
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True,
                                       zero_division=0)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    per_type = {name: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                       "f1": float(v["f1-score"]), "support": int(v["support"])}
                for name, v in sorted(report.items())}
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]), "support": int(micro["support"]), "per_type": per_type}
