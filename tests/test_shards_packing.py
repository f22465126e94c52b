"""Cutting documents at word starts and best-fit-decreasing packing of segments into rows."""
from __future__ import annotations

import numpy as np
import pytest

from engine.shards.packing import Packer, Segment, best_fit_decreasing, cut_points


def test_cuts_cover_the_document_without_overlap_and_respect_the_limit():
    rng = np.random.default_rng(0)
    word_start = rng.random(1000) < 0.7
    word_start[0] = True
    spans = cut_points(word_start, 30)
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(0 < end - begin <= 30 for begin, end in spans)


def test_cuts_land_on_word_starts():
    word_start = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    assert cut_points(word_start, 4) == [(0, 3), (3, 5), (5, 9), (9, 12)]


def test_a_word_longer_than_the_window_is_cut_at_the_window():
    word_start = np.array([1, 0, 0, 0, 0, 0, 1], dtype=bool)
    assert cut_points(word_start, 4) == [(0, 4), (4, 7)]


def _segments(sizes):
    return [Segment(i, 0, np.zeros(size - 2, dtype=np.uint16), np.ones(size - 2, dtype=bool))
            for i, size in enumerate(sizes)]


def test_best_fit_places_every_segment_once_within_row_capacity():
    sizes = list(np.random.default_rng(1).integers(3, 129, size=500))
    rows = best_fit_decreasing(_segments(sizes), 128)
    placed = sorted(s.doc for row in rows for s in row.segments)
    assert placed == list(range(500))
    assert all(sum(s.size for s in row.segments) == row.used <= 128 for row in rows)


def test_best_fit_fills_rows_nearly_completely_on_mixed_sizes():
    sizes = list(np.random.default_rng(2).integers(3, 129, size=2000))
    rows = best_fit_decreasing(_segments(sizes), 128)
    assert sum(sizes) / (len(rows) * 128) > 0.98


def test_packing_is_deterministic():
    sizes = list(np.random.default_rng(3).integers(3, 60, size=300))
    first = [[s.doc for s in row.segments] for row in best_fit_decreasing(_segments(sizes), 64)]
    second = [[s.doc for s in row.segments] for row in best_fit_decreasing(_segments(sizes), 64)]
    assert first == second


def test_packer_emits_full_rows_at_once_and_buffers_the_rest():
    packer = Packer(seq_len=8, buffer_segments=100)
    ids = np.arange(10, dtype=np.uint16)
    rows = packer.add_document(0, ids, np.ones(10, dtype=bool))  # cut 6 + 4: the 6 fills a row
    assert [len(row.segments[0].ids) for row in rows] == [6]
    assert [len(s.ids) for s in packer.buffer] == [4]
    assert [len(s.ids) for row in packer.flush() for s in row.segments] == [4]


def test_packer_rejects_rows_too_short_for_cls_token_sep():
    with pytest.raises(ValueError, match="seq_len"):
        Packer(seq_len=2)
