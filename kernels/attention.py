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

And one Triton kernel for what torch lacks, varlen attention WITH dropout (BERT trains with 0.1):
`attention_varlen_triton`, flash-style (online softmax over key blocks, never a [L, L] matrix in
memory; backward recomputes the probabilities from the saved log-sum-exp, one kernel for dK/dV and
one for dQ). The dropout mask is drawn from Philox keyed by a seed and the (head, query token, key)
position, so backward regenerates it. The structure follows the Triton fused-attention tutorial
(MIT) and FlashAttention-2's algorithm; the code is ours.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels.triton_support import HAS_TRITON, tl, triton

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TRITON_HEAD_DIMS = (16, 32, 64, 128)

if HAS_TRITON:

    @triton.jit
    def _dropout_keep(SEED, head, tokens, keys, total, max_seqlen, dropout_p):
        """Keep mask [len(tokens), len(keys)] of (head, global query token, key index in its sequence)."""
        offsets = (head * total + tokens)[:, None] * max_seqlen + keys[None, :]
        return tl.rand(tl.load(SEED).to(tl.uint32), offsets) >= dropout_p

    @triton.jit
    def _attention_fwd_kernel(
        Q, K, V,  # [T, H, D] contiguous, one dtype
        O,  # [T, H, D] output
        LSE,  # [H, T] fp32 log-sum-exp of each query row's scaled scores (for backward)
        CU,  # [S + 1] int32 sequence starts
        SEED,  # [1] int64 dropout seed
        total, max_seqlen, scale, dropout_p,
        H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_DROPOUT: tl.constexpr,
        PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (torch's fp32 matmul is not TF32), else "tf32"
    ):
        seq = tl.program_id(1) // H
        head = tl.program_id(1) % H
        start = tl.load(CU + seq)
        length = tl.load(CU + seq + 1) - start
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        if tl.program_id(0) * BLOCK_M < length:
            dims = tl.arange(0, D)
            row_ok = rows < length
            q = tl.load(Q + ((start + rows) * H + head)[:, None] * D + dims[None, :], mask=row_ok[:, None], other=0.0)
            m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
            l_i = tl.zeros((BLOCK_M,), tl.float32)
            acc = tl.zeros((BLOCK_M, D), tl.float32)
            for block in range(0, tl.cdiv(length, BLOCK_N)):
                cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
                col_ok = cols < length
                kv_offsets = ((start + cols) * H + head)[:, None] * D + dims[None, :]
                k = tl.load(K + kv_offsets, mask=col_ok[:, None], other=0.0)
                v = tl.load(V + kv_offsets, mask=col_ok[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                s = tl.where(col_ok[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                p = tl.exp(s - m_new[:, None])
                alpha = tl.exp(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                if HAS_DROPOUT:
                    keep = _dropout_keep(SEED, head, start + rows, cols, total, max_seqlen, dropout_p)
                    p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m_i = m_new
            out = acc / l_i[:, None]
            tl.store(O + ((start + rows) * H + head)[:, None] * D + dims[None, :], out.to(O.dtype.element_ty),
                     mask=row_ok[:, None])
            tl.store(LSE + head * total + start + rows, m_i + tl.log(l_i), mask=row_ok)

    @triton.jit
    def _attention_bwd_dkdv_kernel(
        Q, K, V, DO,  # [T, H, D]
        LSE, DELTA,  # [H, T] fp32: forward's log-sum-exp; rowsum(dO * O)
        DK, DV,  # [T, H, D] outputs
        CU, SEED,
        total, max_seqlen, scale, dropout_p,
        H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_DROPOUT: tl.constexpr,
        PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (torch's fp32 matmul is not TF32), else "tf32"
    ):
        seq = tl.program_id(1) // H
        head = tl.program_id(1) % H
        start = tl.load(CU + seq)
        length = tl.load(CU + seq + 1) - start
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        if tl.program_id(0) * BLOCK_N < length:
            dims = tl.arange(0, D)
            col_ok = cols < length
            kv_offsets = ((start + cols) * H + head)[:, None] * D + dims[None, :]
            k = tl.load(K + kv_offsets, mask=col_ok[:, None], other=0.0)
            v = tl.load(V + kv_offsets, mask=col_ok[:, None], other=0.0)
            dk = tl.zeros((BLOCK_N, D), tl.float32)
            dv = tl.zeros((BLOCK_N, D), tl.float32)
            for block in range(0, tl.cdiv(length, BLOCK_M)):
                rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
                row_ok = rows < length
                q_offsets = ((start + rows) * H + head)[:, None] * D + dims[None, :]
                q = tl.load(Q + q_offsets, mask=row_ok[:, None], other=0.0)
                do = tl.load(DO + q_offsets, mask=row_ok[:, None], other=0.0)
                lse = tl.load(LSE + head * total + start + rows, mask=row_ok, other=0.0)
                delta = tl.load(DELTA + head * total + start + rows, mask=row_ok, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                if HAS_DROPOUT:
                    keep = _dropout_keep(SEED, head, start + rows, cols, total, max_seqlen, dropout_p)
                    dv += tl.dot(tl.trans(tl.where(keep, p / (1.0 - dropout_p), 0.0).to(do.dtype)), do, input_precision=PRECISION)
                    dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
                else:
                    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
            tl.store(DK + kv_offsets, (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
            tl.store(DV + kv_offsets, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    @triton.jit
    def _attention_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA,
        DQ,  # [T, H, D] output
        CU, SEED,
        total, max_seqlen, scale, dropout_p,
        H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_DROPOUT: tl.constexpr,
        PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (torch's fp32 matmul is not TF32), else "tf32"
    ):
        seq = tl.program_id(1) // H
        head = tl.program_id(1) % H
        start = tl.load(CU + seq)
        length = tl.load(CU + seq + 1) - start
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        if tl.program_id(0) * BLOCK_M < length:
            dims = tl.arange(0, D)
            row_ok = rows < length
            q_offsets = ((start + rows) * H + head)[:, None] * D + dims[None, :]
            q = tl.load(Q + q_offsets, mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + q_offsets, mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE + head * total + start + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + head * total + start + rows, mask=row_ok, other=0.0)
            dq = tl.zeros((BLOCK_M, D), tl.float32)
            for block in range(0, tl.cdiv(length, BLOCK_N)):
                cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
                col_ok = cols < length
                kv_offsets = ((start + cols) * H + head)[:, None] * D + dims[None, :]
                k = tl.load(K + kv_offsets, mask=col_ok[:, None], other=0.0)
                v = tl.load(V + kv_offsets, mask=col_ok[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                if HAS_DROPOUT:
                    keep = _dropout_keep(SEED, head, start + rows, cols, total, max_seqlen, dropout_p)
                    dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            tl.store(DQ + q_offsets, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _dropout_mask_kernel(
        KEEP,  # [H, T, max_seqlen] bool output: the keep mask the attention kernels draw
        CU, SEED, total, max_seqlen, dropout_p,
        H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        seq = tl.program_id(1) // H
        head = tl.program_id(1) % H
        start = tl.load(CU + seq)
        length = tl.load(CU + seq + 1) - start
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        for block in range(0, tl.cdiv(length, BLOCK_N)):
            cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
            keep = _dropout_keep(SEED, head, start + rows, cols, total, max_seqlen, dropout_p)
            ok = (rows < length)[:, None] & (cols < length)[None, :]
            tl.store(KEEP + (head * total + start + rows)[:, None] * max_seqlen + cols[None, :], keep, mask=ok)


def triton_attention_applies(q: torch.Tensor) -> bool:
    """Dtype and head-dim table of `attention_varlen_triton`."""
    return q.dtype in TRITON_DTYPES and q.dim() == 3 and q.shape[-1] in TRITON_HEAD_DIMS and q.numel() > 0


def _precision(q: torch.Tensor) -> str:
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _blocks(device: torch.device, head_dim: int) -> tuple[int, int]:
    if device.type != "cuda":
        return 16, 16  # the interpreter: small tiles keep the parity tests quick
    return (64, 64) if head_dim <= 64 else (64, 32)


class AttentionVarlenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, seed):
        total, heads, head_dim = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        cu = cu_seqlens.to(torch.int32).contiguous()
        out = torch.empty_like(q)
        lse = torch.empty(heads, total, dtype=torch.float32, device=q.device)
        block_m, block_n = _blocks(q.device, head_dim)
        grid = (triton.cdiv(max_seqlen, block_m), (cu.shape[0] - 1) * heads)
        _attention_fwd_kernel[grid](q, k, v, out, lse, cu, seed, total, max_seqlen, scale, dropout_p,
                                    H=heads, D=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
                                    HAS_DROPOUT=dropout_p > 0.0, PRECISION=_precision(q))
        ctx.save_for_backward(q, k, v, out, lse, cu, seed)
        ctx.args = (max_seqlen, dropout_p, scale)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse, cu, seed = ctx.saved_tensors
        max_seqlen, dropout_p, scale = ctx.args
        total, heads, head_dim = q.shape
        d_out = d_out.contiguous()
        delta = (d_out.float() * out.float()).sum(-1).t().contiguous()  # [H, T]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        block_m, block_n = _blocks(q.device, head_dim)
        common = dict(H=heads, D=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, HAS_DROPOUT=dropout_p > 0.0,
                      PRECISION=_precision(q))
        sequences = (cu.shape[0] - 1) * heads
        _attention_bwd_dkdv_kernel[(triton.cdiv(max_seqlen, block_n), sequences)](
            q, k, v, d_out, lse, delta, dk, dv, cu, seed, total, max_seqlen, scale, dropout_p, **common)
        _attention_bwd_dq_kernel[(triton.cdiv(max_seqlen, block_m), sequences)](
            q, k, v, d_out, lse, delta, dq, cu, seed, total, max_seqlen, scale, dropout_p, **common)
        return dq, dk, dv, None, None, None, None, None


def attention_varlen_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    scale: float | None = None,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Varlen attention with dropout, Triton: `q, k, v` (T, H, D), D in 16/32/64/128 -> (T, H, D).
    `seed` (int64 [1]) fixes the dropout mask; by default it is drawn from torch's RNG."""
    if not triton_attention_applies(q) or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"attention_varlen_triton: q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}: need equal (T, H, D) shapes, D in {TRITON_HEAD_DIMS}, "
                         f"dtype in {TRITON_DTYPES}")
    if seed is None:
        seed = torch.randint(0, 2**31 - 1, (1,), device=q.device, dtype=torch.int64)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return AttentionVarlenFunction.apply(q, k, v, cu_seqlens, max_seqlen, float(dropout_p), float(scale), seed)


def attention_dropout_mask(cu_seqlens: torch.Tensor, heads: int, max_seqlen: int, dropout_p: float,
                           seed: torch.Tensor) -> torch.Tensor:
    """The keep mask `attention_varlen_triton` draws for `seed`: bool [H, T, max_seqlen] (query token
    t of head h may see key j of its sequence); for replaying the kernel in tests."""
    cu = cu_seqlens.to(torch.int32).contiguous()
    total = int(cu[-1])
    keep = torch.zeros(heads, total, max_seqlen, dtype=torch.bool, device=cu.device)
    grid = (triton.cdiv(max_seqlen, 16), (cu.shape[0] - 1) * heads)
    _dropout_mask_kernel[grid](keep, cu, seed, total, max_seqlen, float(dropout_p), H=heads, BLOCK_M=16, BLOCK_N=16)
    return keep


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
