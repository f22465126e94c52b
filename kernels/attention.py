"""Bidirectional multi-head attention, padded and variable-length (varlen), in torch reference form.

Varlen layout: tokens of all sequences concatenated, `q, k, v` of shape (total_tokens, heads, head_dim),
sequence `i` occupying rows `cu_seqlens[i]:cu_seqlens[i+1]` (int32, length num_seqs + 1), and
`max_seqlen` (python int) the longest sequence. Attention never crosses a sequence boundary.

Two torch implementations of varlen:
- `attention_varlen_ref` (any device, any dtype, dropout): scatters the tokens into a padded grid
  and runs one SDPA call with a boolean mask. The grid is either one row per sequence
  (`sequence_grid`: S x max_seqlen^2 work, key-padding mask; best for padded batches) or the packed
  rows themselves (`block_diagonal_grid`: B x L^2 work, block-diagonal mask; best when rows hold
  several segments: with 2 segments per row it does half the work of the per-sequence grid). The
  caller builds the grid once per forward, so no layer recomputes indices or synchronises with the
  host. A per-segment python loop was rejected: one tiny SDPA call per segment is dispatch-bound on
  CPU and launch/sync-bound on GPU.
- `attention_varlen_flash` (CUDA, fp16/bf16, no dropout): torch's own flash varlen kernel
  (`torch.nn.attention.varlen.varlen_attn`), which skips padding entirely.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Padded attention: `q, k, v` [B, H, L, D]; `attn_mask` bool broadcastable to [B, H, L, L]
    (True = may attend) or None; returns [B, H, L, D]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


class AttentionGrid(NamedTuple):
    """A padded [rows, width] grid that the SDPA reference scatters varlen tokens into.

    Built once per forward by the caller (who may know a cheaper grid than one row per sequence,
    e.g. the packed rows themselves with a block-diagonal mask); kernels that need no grid ignore it.
    """

    slot: torch.Tensor
    """int64 [T]: flat slot of each token in the [rows * width] grid."""
    rows: int
    width: int
    mask: torch.Tensor
    """bool, broadcastable to [rows, heads, width, width]: True where a query slot may attend a key
    slot. Every query row must allow at least one key (else SDPA yields NaN, which leaks into the
    key gradients); `block_diagonal_grid` lets empty slots attend to themselves."""


def sequence_grid(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int) -> AttentionGrid:
    """One grid row per sequence, `max_seqlen` wide, keys masked beyond each sequence's length.

    Token t of sequence s goes to slot s * max_seqlen + (t - cu_seqlens[s]). Built on device from
    `cu_seqlens` alone: no host synchronisation.
    """
    device = cu_seqlens.device
    starts = cu_seqlens.to(torch.int64)
    token = torch.arange(total_tokens, device=device, dtype=torch.int64)
    seq = torch.searchsorted(starts[1:], token, right=True)
    slot = seq * max_seqlen + (token - starts[seq])
    num_seqs = cu_seqlens.shape[0] - 1
    lengths = starts[1:] - starts[:-1]
    key_valid = torch.arange(max_seqlen, device=device)[None, :] < lengths[:, None]
    return AttentionGrid(slot, num_seqs, max_seqlen, key_valid.view(num_seqs, 1, 1, max_seqlen))


def block_diagonal_grid(token_index: torch.Tensor, segment_ids: torch.Tensor) -> AttentionGrid:
    """The packed rows as the grid: `segment_ids` [B, L] (0 = empty slot, 1..k = segment), tokens at
    flat slots `token_index` [T]; a query attends keys of its own segment in its row. Costs
    B * L^2 instead of S * max_seqlen^2, cheaper when rows hold several segments."""
    batch, width = segment_ids.shape
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real_key = (segment_ids > 0)[:, None, :]
    self_slot = torch.eye(width, dtype=torch.bool, device=segment_ids.device)[None]
    mask = (same & real_key) | self_slot
    return AttentionGrid(token_index, batch, width, mask[:, None])


def attention_varlen_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    scale: float | None = None,
    grid: AttentionGrid | None = None,
) -> torch.Tensor:
    """Varlen attention via a padded grid + SDPA: `q, k, v` (T, H, D) -> (T, H, D).

    `grid` defaults to `sequence_grid(cu_seqlens, T, max_seqlen)`; a caller-supplied grid must put
    exactly the tokens of each cu_seqlens sequence in one another's reach.
    """
    total, heads, head_dim = q.shape
    if grid is None:
        grid = sequence_grid(cu_seqlens, total, max_seqlen)
    size = grid.rows * grid.width

    def scatter(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(size, heads, head_dim)
        out.index_copy_(0, grid.slot, x)
        return out.view(grid.rows, grid.width, heads, head_dim).transpose(1, 2)  # [rows, H, width, D]

    out = attention_ref(scatter(q), scatter(k), scatter(v), grid.mask, dropout_p, scale)
    return out.transpose(1, 2).reshape(size, heads, head_dim).index_select(0, grid.slot)


@functools.lru_cache(maxsize=None)
def flash_varlen_available() -> bool:
    """Whether torch ships its flash varlen kernel and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def attention_varlen_flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Varlen attention with torch's flash kernel (CUDA, fp16/bf16, no dropout): (T, H, D) -> (T, H, D)."""
    from torch.nn.attention.varlen import varlen_attn

    cu = cu_seqlens.to(torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale)
