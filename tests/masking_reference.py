"""A plain, slow, per-row Python statement of the masking spec, for checking the vectorised
`engine.curriculum.masking.mask_batch` against (tests/test_masking_reference.py).

Spec (same as the vectorised module docstring):
- a position is maskable when its id is not special and its segment id is not 0 (padding);
- units are single maskable tokens (unit="token") or whole words: a word-start position and the
  positions after it up to the next word start (unit="word"); a unit's size is its maskable tokens;
- each row's target is `rate * maskable tokens` TOKENS; units are visited in a random order and
  taken while the taken size stays below the target; the unit that crosses the target is taken
  with probability (target - taken) / size, so the expected count is exactly the target;
- every chosen position is predicted (label = original id); its input becomes [MASK] with
  probability mask_prob, a uniform draw from the replacement ids with probability random_prob,
  and stays as it is otherwise. Nothing else changes.
"""
from __future__ import annotations

import random

IGNORE_INDEX = -100


def row_units(ids: list[int], word_start: list[int], segments: list[int], special: set[int],
              unit: str) -> list[list[int]]:
    """The maskable positions of one row grouped into units (empty units dropped)."""
    maskable = [i for i in range(len(ids)) if ids[i] not in special and segments[i] != 0]
    if unit == "token":
        return [[i] for i in maskable]
    words: dict[int, list[int]] = {}
    word = -1
    for i in range(len(ids)):
        if word_start[i]:
            word += 1
        if i in maskable:
            words.setdefault(max(word, 0), []).append(i)
    return list(words.values())


def choose_row(units: list[list[int]], rate: float, rng: random.Random) -> set[int]:
    """Positions chosen in one row: units in random order up to the token target."""
    target = rate * sum(len(u) for u in units)
    order = units[:]
    rng.shuffle(order)
    chosen: set[int] = set()
    for unit in order:
        if len(chosen) + len(unit) <= target:
            chosen.update(unit)
            continue
        if rng.random() < (target - len(chosen)) / len(unit):
            chosen.update(unit)
        break
    return chosen


def reference_mask(ids, word_start, segments, special: set[int], mask_id: int, replacement: list[int],
                   unit: str, rate: float, mask_prob: float, random_prob: float,
                   rng: random.Random) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, labels) for a batch given as lists of rows."""
    inputs, labels = [], []
    for row_ids, row_starts, row_segments in zip(ids, word_start, segments):
        chosen = choose_row(row_units(row_ids, row_starts, row_segments, special, unit), rate, rng)
        row_in, row_labels = list(row_ids), [IGNORE_INDEX] * len(row_ids)
        for i in sorted(chosen):
            row_labels[i] = row_ids[i]
            draw = rng.random()
            if draw < mask_prob:
                row_in[i] = mask_id
            elif draw < mask_prob + random_prob:
                row_in[i] = rng.choice(replacement)
        inputs.append(row_in)
        labels.append(row_labels)
    return inputs, labels


def violations(ids, word_start, segments, special: set[int], mask_id: int, replacement: set[int], unit: str,
               inputs, labels) -> list[str]:
    """What in (inputs, labels) breaks the spec's exact rules, one line per broken rule and row."""
    found = []
    for r, (row_ids, row_starts, row_segments) in enumerate(zip(ids, word_start, segments)):
        units = row_units(row_ids, row_starts, row_segments, special, unit)
        maskable = {i for u in units for i in u}
        chosen = {i for i, label in enumerate(labels[r]) if label != IGNORE_INDEX}
        if not chosen <= maskable:
            found.append(f"row {r}: chose a special or padding position {sorted(chosen - maskable)[:3]}")
        if any(labels[r][i] != row_ids[i] for i in chosen):
            found.append(f"row {r}: a label is not the original id")
        if any(inputs[r][i] != row_ids[i] for i in range(len(row_ids)) if i not in chosen):
            found.append(f"row {r}: an input changed where nothing is predicted")
        if any(inputs[r][i] not in (mask_id, row_ids[i]) and inputs[r][i] not in replacement for i in chosen):
            found.append(f"row {r}: a chosen input is neither [MASK], the original, nor a replacement id")
        if any(0 < len(chosen & set(u)) < len(u) for u in units):
            found.append(f"row {r}: a unit was split")
    return found
