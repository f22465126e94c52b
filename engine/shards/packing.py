"""Cutting documents into segments and packing segments into fixed-width rows.

A document's token ids are cut into segments of at most `seq_len - 2` tokens, each cut placed at
a word start so that no word is split across segments (whole-word masking stays whole); each
segment becomes `[CLS] tokens [SEP]`. Segments that fill a row exactly become rows at once; the
rest wait in a buffer that is packed best-fit-decreasing (largest first, each into the fullest row
that still has room, ties by order of arrival), so the output depends only on the input order.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

MAX_SEGMENTS_PER_ROW = 255  # segment_ids are uint8, 0 meaning padding


def cut_points(word_start: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """[(start, end)) spans of at most `max_tokens` covering the document, cut at word starts.

    A cut moves back to the last word start inside the window; a single word longer than the
    window (rare: WordPiece maps words over 100 characters to [UNK]) is cut at the window's end.
    """
    n = len(word_start)
    spans = []
    starts = np.flatnonzero(word_start)
    begin = 0
    while n - begin > max_tokens:
        end = begin + max_tokens
        if not word_start[end]:
            k = int(np.searchsorted(starts, end, side="right")) - 1
            if k >= 0 and starts[k] > begin:
                end = int(starts[k])
        spans.append((begin, end))
        begin = end
    if n > begin:
        spans.append((begin, n))
    return spans


@dataclass
class Segment:
    """One `[CLS] tokens [SEP]` unit: where it came from and its content tokens."""

    doc: int  # index of the document in its split
    doc_offset: int  # position of the first content token within the document's tokens
    ids: np.ndarray  # content token ids (without [CLS]/[SEP])
    word_start: np.ndarray  # bool per content token

    @property
    def size(self) -> int:
        return len(self.ids) + 2


@dataclass
class Row:
    """Segments packed into one row of `seq_len` positions (the rest is padding)."""

    segments: list[Segment] = field(default_factory=list)
    used: int = 0


def best_fit_decreasing(segments: list[Segment], seq_len: int) -> list[Row]:
    """Pack segments into as few rows as possible; deterministic for a given segment order."""
    order = sorted(range(len(segments)), key=lambda i: (-segments[i].size, i))
    rows: list[Row] = []
    by_room: list[deque[int]] = [deque() for _ in range(seq_len + 1)]  # room left → open rows, oldest first
    for i in order:
        segment = segments[i]
        size = segment.size
        chosen = -1
        for room in range(size, seq_len + 1):
            if by_room[room]:
                chosen = by_room[room].popleft()
                break
        if chosen < 0:
            chosen = len(rows)
            rows.append(Row())
        row = rows[chosen]
        row.segments.append(segment)
        row.used += size
        # a row with room for fewer than 3 tokens can take no segment ([CLS] token [SEP])
        if seq_len - row.used > 2 and len(row.segments) < MAX_SEGMENTS_PER_ROW:
            by_room[seq_len - row.used].append(chosen)
    return rows


class Packer:
    """Buffers segments for one (split, seq_len) and hands out packed rows, streaming.

    Memory is bounded by `buffer_segments`; rows come out in a deterministic order.
    """

    def __init__(self, seq_len: int, buffer_segments: int = 4096):
        if seq_len < 3:
            raise ValueError(f"seq_len must be at least 3 ([CLS] token [SEP]), got {seq_len}")
        self.seq_len = seq_len
        self.buffer_segments = buffer_segments
        self.buffer: list[Segment] = []

    def add_document(self, doc: int, ids: np.ndarray, word_start: np.ndarray) -> list[Row]:
        """Cut one document into segments; return the rows that are ready."""
        ready = []
        for begin, end in cut_points(word_start, self.seq_len - 2):
            if end - begin + 2 == self.seq_len:
                ready.append(Row([Segment(doc, begin, ids[begin:end], word_start[begin:end])], self.seq_len))
            else:  # copied: a view would keep the whole document's arrays alive while buffered
                self.buffer.append(Segment(doc, begin, ids[begin:end].copy(), word_start[begin:end].copy()))
        if len(self.buffer) >= self.buffer_segments:
            ready += self.flush()
        return ready

    def flush(self) -> list[Row]:
        """Pack and return everything buffered."""
        rows = best_fit_decreasing(self.buffer, self.seq_len)
        self.buffer = []
        return rows


def fill_rows(rows: list[Row], seq_len: int, pad_id: int, cls_id: int, sep_id: int,
              dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """Rows → (ids, word_start, segment_ids) arrays `[len(rows), seq_len]` and per-segment records
    (row within this block, column, size incl. [CLS]/[SEP], segment number 1..k)."""
    ids = np.full((len(rows), seq_len), pad_id, dtype=dtype)
    word_start = np.zeros((len(rows), seq_len), dtype=np.uint8)
    segment_ids = np.zeros((len(rows), seq_len), dtype=np.uint8)
    records = []
    for r, row in enumerate(rows):
        col = 0
        for k, segment in enumerate(row.segments, start=1):
            n = len(segment.ids)
            ids[r, col] = cls_id
            ids[r, col + 1:col + 1 + n] = segment.ids
            ids[r, col + 1 + n] = sep_id
            word_start[r, col] = 1
            word_start[r, col + 1:col + 1 + n] = segment.word_start
            word_start[r, col + 1 + n] = 1
            segment_ids[r, col:col + n + 2] = k
            records.append((r, col, n + 2, k))
            col += n + 2
    return ids, word_start, segment_ids, records
