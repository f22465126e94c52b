"""The vectorised masking checked against the plain per-row reference (tests/masking_reference.py):
its exact rules on every output, and its statistics (per-row counts, word-length neutrality,
80/10/10) against what the reference gives on the same rows."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from engine.benchmarks.synthetic import BERT_SPECIAL_IDS, synthetic_rows
from engine.curriculum.masking import IGNORE_INDEX, MaskingSpec, make_masking_vocab, mask_batch
from tests.masking_reference import choose_row, reference_mask, row_units, violations

VOCAB_SIZE = 2000
VOCAB = make_masking_vocab(VOCAB_SIZE, BERT_SPECIAL_IDS)
SPECIAL = set(BERT_SPECIAL_IDS.values())
REPLACEMENT = VOCAB.replacement_ids.tolist()
SEEDS = range(6)


@pytest.fixture(scope="module")
def batch():
    rows = synthetic_rows(192, 96, seed=21, vocab_size=VOCAB_SIZE, mean_pieces=1.8)
    return rows.ids.astype(int).tolist(), rows.word_start.astype(int).tolist(), rows.segment_ids.astype(int).tolist(), rows


def _vectorised(rows, unit: str, seed: int, rate: float = 0.15):
    out = mask_batch(rows, MaskingSpec(unit=unit, rate=rate), seed=seed, vocab=VOCAB)
    return out.input_ids.tolist(), out.labels.tolist()


def _reference(batch, unit: str, seed: int, rate: float = 0.15):
    ids, starts, segments, _ = batch
    return reference_mask(ids, starts, segments, SPECIAL, VOCAB.mask_id, REPLACEMENT, unit, rate, 0.8, 0.1,
                          random.Random(seed))


def _violations(batch, unit, inputs, labels):
    ids, starts, segments, _ = batch
    return violations(ids, starts, segments, SPECIAL, VOCAB.mask_id, set(REPLACEMENT), unit, inputs, labels)


@pytest.mark.parametrize("unit", ["token", "word"])
def test_vectorised_masking_keeps_every_exact_rule_of_the_spec(batch, unit):
    for seed in SEEDS:
        assert _violations(batch, unit, *_vectorised(batch[3], unit, seed)) == []


def test_the_rule_checker_catches_a_split_word_and_a_stray_change(batch):
    ids, starts, segments, _ = batch
    inputs, labels = _reference(batch, "word", seed=0)
    assert _violations(batch, "word", inputs, labels) == []
    row = next(r for r in range(len(ids)) if any(len(u) > 1 and labels[r][u[0]] != IGNORE_INDEX
                                                 for u in row_units(ids[r], starts[r], segments[r], SPECIAL, "word")))
    word = next(u for u in row_units(ids[row], starts[row], segments[row], SPECIAL, "word")
                if len(u) > 1 and labels[row][u[0]] != IGNORE_INDEX)
    split = [list(r) for r in labels]
    split[row][word[-1]] = IGNORE_INDEX
    assert any("split" in v for v in _violations(batch, "word", inputs, split))
    changed = [list(r) for r in inputs]
    free = next(i for i, label in enumerate(labels[row]) if label == IGNORE_INDEX)
    changed[row][free] = VOCAB.mask_id
    assert any("input changed" in v for v in _violations(batch, "word", changed, labels))


@pytest.mark.parametrize("unit", ["token", "word"])
def test_per_row_predicted_counts_match_the_reference_on_average(batch, unit):
    ids = batch[0]

    def mean_counts(run):
        counts = np.zeros(len(ids))
        for seed in SEEDS:
            _inputs, labels = run(seed)
            counts += [sum(label != IGNORE_INDEX for label in row) for row in labels]
        return counts / len(SEEDS)

    ours = mean_counts(lambda s: _vectorised(batch[3], unit, s))
    ref = mean_counts(lambda s: _reference(batch, unit, 1000 + s))
    assert abs(ours.mean() - ref.mean()) < 0.05 * ref.mean()
    assert np.abs(ours - ref).mean() < (1.0 if unit == "token" else 2.5)  # rows, not only the batch total


def test_whole_word_choice_is_as_neutral_to_word_length_as_the_reference(batch):
    ids, starts, segments, rows = batch
    words = [row_units(ids[r], starts[r], segments[r], SPECIAL, "word") for r in range(len(ids))]

    def rate_by_length(chosen_rows) -> dict[int, float]:
        taken, seen = Counter(), Counter()
        for r, chosen in enumerate(chosen_rows):
            for word in words[r]:
                size = min(len(word), 4)
                seen[size] += 1
                taken[size] += word[0] in chosen
        return {size: taken[size] / seen[size] for size in seen}

    ours, ref = Counter(), Counter()
    for seed in SEEDS:
        _inputs, labels = _vectorised(rows, "word", seed)
        for size, value in rate_by_length([{i for i, x in enumerate(row) if x != IGNORE_INDEX} for row in labels]).items():
            ours[size] += value / len(SEEDS)
        rng = random.Random(2000 + seed)
        for size, value in rate_by_length([choose_row(units, 0.15, rng) for units in words]).items():
            ref[size] += value / len(SEEDS)
    for size in ref:
        assert abs(ours[size] - ref[size]) < 0.02, (size, ours[size], ref[size])


@pytest.mark.parametrize("unit", ["token", "word"])
def test_corruption_shares_match_the_reference(batch, unit):
    ids = batch[0]

    def shares(run) -> tuple[float, float]:
        chosen = masked = kept = 0
        for seed in SEEDS:
            inputs, labels = run(seed)
            for r, row in enumerate(labels):
                for i, label in enumerate(row):
                    if label != IGNORE_INDEX:
                        chosen += 1
                        masked += inputs[r][i] == VOCAB.mask_id
                        kept += inputs[r][i] == ids[r][i]
        return masked / chosen, kept / chosen

    ours = shares(lambda s: _vectorised(batch[3], unit, s))
    ref = shares(lambda s: _reference(batch, unit, 3000 + s))
    assert abs(ours[0] - ref[0]) < 0.03 and abs(ours[1] - ref[1]) < 0.03


def test_random_replacements_spread_over_the_whole_pool_like_the_reference(batch):
    ids = batch[0]

    def replaced(run) -> list[int]:
        found = []
        for seed in range(20):
            inputs, labels = run(seed)
            found += [inputs[r][i] for r, row in enumerate(labels) for i, label in enumerate(row)
                      if label != IGNORE_INDEX and inputs[r][i] not in (VOCAB.mask_id, ids[r][i])]
        return found

    ours = torch.tensor(replaced(lambda s: _vectorised(batch[3], "token", s)), dtype=torch.float64)
    ref = torch.tensor(replaced(lambda s: _reference(batch, "token", 4000 + s)), dtype=torch.float64)
    assert not set(ours.long().tolist()) & SPECIAL
    pool = torch.tensor(REPLACEMENT, dtype=torch.float64)
    for sample in (ours, ref):  # a uniform draw over the pool: its mean and spread
        assert abs(sample.mean() - pool.mean()) < 4 * pool.std() / len(sample) ** 0.5
        assert abs(sample.std() / pool.std() - 1) < 0.1
