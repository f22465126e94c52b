"""Synthetic packed shards with the exact `PackedShards` layout: the masking benchmark's default input
(tests use it too, as a large cheap batch).

Rows look like real packed rows: several `[CLS] words [SEP]` segments (segment ids 1..k), words of
1 to several WordPiece pieces (`word_start` = 1 on the first piece and on special tokens), and a
`[PAD]` tail (segment id 0) on some rows. Ids use BERT's special layout ([PAD] 0, [UNK] 100,
[CLS] 101, [SEP] 102, [MASK] 103) and never draw a special id as an ordinary piece.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

BERT_SPECIAL_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


class SyntheticBatch(NamedTuple):
    """Same fields and dtypes as `engine.shards.PackedBatch`."""

    ids: np.ndarray  # uint16 [B, L]
    word_start: np.ndarray  # uint8 [B, L]
    segment_ids: np.ndarray  # uint8 [B, L]


def synthetic_rows(num_rows: int, seq_len: int, seed: int = 0, vocab_size: int = 30522,
                   mean_pieces: float = 1.4, mean_segment: int = 60, pad_share: float = 0.3) -> SyntheticBatch:
    """`num_rows` packed rows; words have 1 + Poisson(mean_pieces - 1) pieces (capped at 8)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((num_rows, seq_len), dtype=np.uint16)
    word_start = np.ones((num_rows, seq_len), dtype=np.uint8)
    segment_ids = np.zeros((num_rows, seq_len), dtype=np.uint8)
    first_ordinary = max(BERT_SPECIAL_IDS.values()) + 1
    for r in range(num_rows):
        used = seq_len - (int(rng.integers(1, seq_len // 4)) if rng.random() < pad_share else 0)
        pos, segment = 0, 0
        while used - pos >= 3:
            segment += 1
            length = min(used - pos, max(3, int(rng.poisson(mean_segment))))
            body = length - 2
            ids[r, pos] = BERT_SPECIAL_IDS["cls"]
            ids[r, pos + length - 1] = BERT_SPECIAL_IDS["sep"]
            ids[r, pos + 1:pos + 1 + body] = rng.integers(first_ordinary, vocab_size, body)
            starts = np.zeros(body, dtype=np.uint8)
            i = 0
            while i < body:
                starts[i] = 1
                i += min(8, 1 + int(rng.poisson(mean_pieces - 1)))
            word_start[r, pos + 1:pos + 1 + body] = starts
            segment_ids[r, pos:pos + length] = segment
            pos += length
    return SyntheticBatch(ids, word_start, segment_ids)


class SyntheticShards:
    """An in-memory stand-in for `PackedShards(root, split, seq_len)`."""

    def __init__(self, num_rows: int, seq_len: int, seed: int = 0, vocab_size: int = 30522, mean_pieces: float = 1.4):
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.special_ids = dict(BERT_SPECIAL_IDS)
        self.manifest_hash = f"synthetic-{num_rows}-{seq_len}-{seed}-{vocab_size}"
        self._rows = synthetic_rows(num_rows, seq_len, seed, vocab_size, mean_pieces)

    def __len__(self) -> int:
        return len(self._rows.ids)

    def get_batch(self, indices: np.ndarray) -> SyntheticBatch:
        return SyntheticBatch(self._rows.ids[indices], self._rows.word_start[indices], self._rows.segment_ids[indices])
