"""Unpad/repad helpers: the encoder works on (total_tokens, hidden) with int32 `cu_seqlens`.

B = batch rows, L = row length, T = kept (non-pad) tokens, S = sequences (segments) among them.
Token order is row-major in the original [B, L] grid, so sequence s is rows cu_seqlens[s]:cu_seqlens[s+1].
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from kernels.dispatch import AttentionGrid, block_diagonal_grid, sequence_grid


class TokenLayout(NamedTuple):
    """Where the kept tokens of a [B, L] batch live and how they group into sequences."""

    token_index: torch.Tensor
    """int64 [T]: flat index into the [B * L] grid of each kept token, ascending."""
    position_ids: torch.Tensor
    """int64 [T]: position of each token for the position embedding."""
    cu_seqlens: torch.Tensor
    """int32 [S + 1]: sequence s holds tokens cu_seqlens[s] .. cu_seqlens[s+1]-1."""
    max_seqlen: int
    """Length of the longest sequence (python int, for kernels that size buffers by it)."""
    attention_grid: AttentionGrid
    """Padded grid for the SDPA reference attention, built once per batch (the cheaper of one row
    per sequence and the packed rows with a block-diagonal mask)."""


def _cu_seqlens_from_starts(starts: torch.Tensor, total: int) -> torch.Tensor:
    """int64 [S] sequence start offsets -> int32 [S + 1] cumulative lengths ending in `total`."""
    end = torch.tensor([total], dtype=starts.dtype, device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def packed_layout(segment_ids: torch.Tensor) -> TokenLayout:
    """Layout of a packed batch: `segment_ids` [B, L] with 0 = padding and 1..k = k-th segment of the row.

    Every maximal run of one segment id within a row is a sequence; positions restart at 0 in each.
    """
    batch, seqlen = segment_ids.shape
    flat = segment_ids.reshape(-1)
    token_index = torch.nonzero(flat > 0).squeeze(1)
    total = token_index.numel()
    seg = flat.index_select(0, token_index)
    row = torch.div(token_index, seqlen, rounding_mode="floor")
    is_start = torch.ones(total, dtype=torch.bool, device=flat.device)
    is_start[1:] = (seg[1:] != seg[:-1]) | (row[1:] != row[:-1])
    starts = torch.nonzero(is_start).squeeze(1)
    cu_seqlens = _cu_seqlens_from_starts(starts, total)
    seq_of_token = torch.cumsum(is_start.to(torch.int64), 0) - 1
    position_ids = torch.arange(total, device=flat.device) - starts.index_select(0, seq_of_token)
    max_seqlen = _max_len(cu_seqlens)
    num_seqs = starts.numel()
    if batch * seqlen * seqlen < num_seqs * max_seqlen * max_seqlen:
        grid = block_diagonal_grid(token_index, segment_ids)
    else:
        grid = sequence_grid(cu_seqlens, total, max_seqlen)
    return TokenLayout(token_index, position_ids, cu_seqlens, max_seqlen, grid)


def padded_layout(attention_mask: torch.Tensor) -> TokenLayout:
    """Layout of a padded batch with HF semantics: `attention_mask` [B, L], 1 = token, 0 = padding.

    Each non-empty row is one sequence; position ids are the column index (as in `transformers`,
    also with left padding or holes), and the row's tokens attend to each other only.
    """
    batch, seqlen = attention_mask.shape
    keep = attention_mask.reshape(-1) != 0
    token_index = torch.nonzero(keep).squeeze(1)
    counts = keep.view(batch, seqlen).sum(1)
    counts = counts[counts > 0]
    zero = torch.zeros(1, dtype=counts.dtype, device=counts.device)
    cu_seqlens = torch.cat([zero, torch.cumsum(counts, 0)]).to(torch.int32)
    position_ids = torch.remainder(token_index, seqlen)
    max_seqlen = _max_len(cu_seqlens)
    grid = sequence_grid(cu_seqlens, token_index.numel(), max_seqlen)
    return TokenLayout(token_index, position_ids, cu_seqlens, max_seqlen, grid)


def _max_len(cu_seqlens: torch.Tensor) -> int:
    if cu_seqlens.numel() < 2:
        return 0
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def unpad(x: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """[B, L, ...] -> [T, ...]: keep the tokens at `token_index` (flat over B * L)."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, token_index)


def repad(x: torch.Tensor, token_index: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """[T, ...] -> [B, L, ...]: scatter tokens back to their grid slots; padding slots are zero."""
    out = x.new_zeros(batch * seqlen, *x.shape[1:])
    out.index_copy_(0, token_index, x)
    return out.view(batch, seqlen, *x.shape[1:])
