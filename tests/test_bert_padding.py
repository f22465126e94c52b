"""Unpad/repad helpers: exact layouts on small hand-checked batches."""
from __future__ import annotations

import torch

from engine.bert.padding import packed_layout, padded_layout, repad, unpad


def test_packed_layout_splits_rows_into_segments_with_restarting_positions():
    segment_ids = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1], [1, 2, 3, 0, 0, 0]])
    layout = packed_layout(segment_ids)
    assert layout.token_index.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.cu_seqlens.tolist() == [0, 2, 5, 11, 12, 13, 14]
    assert layout.position_ids.tolist() == [0, 1, 0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 0, 0]
    assert layout.max_seqlen == 6


def test_same_segment_id_in_consecutive_rows_starts_a_new_sequence():
    layout = packed_layout(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert layout.cu_seqlens.tolist() == [0, 2, 5]
    assert layout.position_ids.tolist() == [0, 1, 0, 1, 2]


def test_padded_layout_keeps_column_positions_like_transformers_even_with_left_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    layout = padded_layout(mask)
    assert layout.token_index.tolist() == [0, 1, 2, 6, 7]
    assert layout.position_ids.tolist() == [0, 1, 2, 2, 3]
    assert layout.cu_seqlens.tolist() == [0, 3, 5]  # the empty row is no sequence
    assert layout.max_seqlen == 3


def test_unpad_then_repad_restores_tokens_and_zeroes_padding():
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2) + 1
    token_index = torch.tensor([0, 1, 5])
    kept = unpad(x, token_index)
    assert kept.tolist() == [[1, 2], [3, 4], [11, 12]]
    back = repad(kept, token_index, 2, 3)
    assert back.shape == (2, 3, 2)
    assert back[0, :2].tolist() == x[0, :2].tolist() and back[1, 2].tolist() == [11, 12]
    assert back[0, 2].abs().sum() == 0 and back[1, :2].abs().sum() == 0


def test_packed_layout_attends_over_the_cheaper_grid():
    many_segments = packed_layout(torch.tensor([[1, 1, 1, 2, 2, 3, 3, 3], [1, 1, 1, 1, 1, 1, 1, 2]]))
    assert (many_segments.attention_grid.rows, many_segments.attention_grid.width) == (2, 8)  # 2*64 < 5*49
    one_short_segment = packed_layout(torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]))
    assert (one_short_segment.attention_grid.rows, one_short_segment.attention_grid.width) == (2, 3)
