"""LayerNorm(dropout(x) + residual) over the last dimension in one pass, and its torch reference.

BERT ends its attention and feed-forward blocks with `LayerNorm(dropout(dense(h)) + h_in)`. Eager
torch runs that as three memory-bound kernels (dropout writes x and a mask, the add writes the sum,
LayerNorm reads it back); the fused kernel reads x and the residual once and writes the output,
the pre-norm sum (backward needs it), and fp32 mean / rstd per row. Dropout draws its keep mask
from a Philox stream keyed by a seed tensor and the element index, so backward regenerates the
mask instead of storing it, and the seed comes from torch's RNG on the tensor's device (a resumed
run that restores the RNG states repeats the masks). The kernel design (one program per row,
weight/bias gradients accumulated per program and summed afterwards) follows the Triton LayerNorm
tutorial and flash-attention's `flash_attn/ops/triton/layer_norm.py` (BSD-3-Clause); the code is ours.

Order (house style): kernels, host launchers, autograd.Function, functional API, torch reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.triton_support import HAS_TRITON, tl, triton

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Input/residual dtypes the kernel accepts; statistics are always fp32."""
MAX_FUSED_BYTES = 65536
"""One row must fit one program's registers/shared memory: N * element size at most this."""

if HAS_TRITON:

    @triton.jit
    def _residual_layer_norm_fwd_kernel(
        X,  # [M, N] input (the dense output), contiguous
        RES,  # [M, N] residual, same dtype as X (unused when not HAS_RESIDUAL)
        W,  # [N] LayerNorm weight
        B,  # [N] LayerNorm bias (unused when not HAS_BIAS)
        SEED,  # [1] int64 dropout seed (unused when not HAS_DROPOUT)
        Y,  # [M, N] output, dtype of X
        Z,  # [M, N] pre-norm sum dropout(x) + residual, dtype of X, kept for backward
        MEAN,  # [M] fp32 row means of Z
        RSTD,  # [M] fp32 row 1 / sqrt(var + eps) of Z
        N,  # row width
        eps,  # LayerNorm epsilon
        dropout_p,  # probability of zeroing an element of X
        HAS_RESIDUAL: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_DROPOUT: tl.constexpr,
        BLOCK_N: tl.constexpr,  # next power of two >= N
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        offsets = row.to(tl.int64) * N + cols
        x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            keep = tl.rand(tl.load(SEED).to(tl.uint32), row * N + cols) >= dropout_p
            x = tl.where(keep, x / (1.0 - dropout_p), 0.0)
        if HAS_RESIDUAL:
            x += tl.load(RES + offsets, mask=mask, other=0.0).to(tl.float32)
        # statistics of the sum as stored, so backward's x_hat is exactly forward's
        z = x.to(Z.dtype.element_ty)
        tl.store(Z + offsets, z, mask=mask)
        z = z.to(tl.float32)
        mean = tl.sum(z, axis=0) / N
        centred = tl.where(mask, z - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / N + eps)
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)
        y = centred * rstd * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _residual_layer_norm_bwd_kernel(
        DY,  # [M, N] gradient of the output, contiguous, dtype of X
        Z,  # [M, N] pre-norm sum saved by forward
        W,  # [N] LayerNorm weight
        MEAN,  # [M] fp32 saved by forward
        RSTD,  # [M] fp32 saved by forward
        SEED,  # [1] int64 forward's dropout seed (unused when not HAS_DROPOUT)
        DZ,  # [M, N] gradient of the pre-norm sum = gradient of the residual
        DX,  # [M, N] gradient of X (DZ through the dropout mask)
        DW_PART,  # [programs, N] fp32 per-program partial sums of the weight gradient
        DB_PART,  # [programs, N] fp32 per-program partial sums of the bias gradient
        M,  # rows
        N,  # row width
        dropout_p,
        rows_per_program,
        HAS_DROPOUT: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
        db = tl.zeros((BLOCK_N,), dtype=tl.float32)
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, M)
        first_row = row_start.to(tl.int64)  # int64 offsets: M * N may exceed 2**31
        for row in range(row_start, row_end):
            offsets = (first_row + (row - row_start)) * N + cols
            z = tl.load(Z + offsets, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            x_hat = tl.where(mask, (z - tl.load(MEAN + row)) * rstd, 0.0)
            dw += dy * x_hat
            db += dy
            w_dy = w * dy
            c1 = tl.sum(x_hat * w_dy, axis=0) / N
            c2 = tl.sum(w_dy, axis=0) / N
            dz = (w_dy - (x_hat * c1 + c2)) * rstd
            tl.store(DZ + offsets, dz.to(DZ.dtype.element_ty), mask=mask)
            if HAS_DROPOUT:
                keep = tl.rand(tl.load(SEED).to(tl.uint32), row * N + cols) >= dropout_p
                dz = tl.where(keep, dz / (1.0 - dropout_p), 0.0)
            tl.store(DX + offsets, dz.to(DX.dtype.element_ty), mask=mask)
        tl.store(DW_PART + pid * N + cols, dw, mask=mask)
        tl.store(DB_PART + pid * N + cols, db, mask=mask)


def check_inputs(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise ValueError naming the argument the kernel cannot take (dispatch checks `kernel_applies` first)."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"residual_layer_norm: x dtype {x.dtype} is not one of {SUPPORTED_DTYPES}")
    width = x.shape[-1]
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual_layer_norm: residual {tuple(residual.shape)} {residual.dtype} differs from x "
            f"{tuple(x.shape)} {x.dtype}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (width,):
            raise ValueError(f"residual_layer_norm: {name} shape {tuple(p.shape)}, expected ({width},)")
    if width * x.element_size() > MAX_FUSED_BYTES:
        raise ValueError(f"residual_layer_norm: row width {width} exceeds {MAX_FUSED_BYTES} bytes per row")


def kernel_applies(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `check_inputs` accepts these arguments (dtype table, shapes, row width)."""
    try:
        check_inputs(x, residual, weight, bias)
    except ValueError:
        return False
    return x.numel() > 0


def _num_warps(block_n: int) -> int:
    return min(max(block_n // 256, 1), 16)


def _backward_programs(rows: int, device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over; each sums its own dw/db partials."""
    if device.type == "cuda":
        return max(1, min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(rows, 4))


def _forward(x2, res2, weight, bias, eps, dropout_p, seed):
    rows, width = x2.shape
    y = torch.empty_like(x2)
    z = torch.empty_like(x2)
    mean = torch.empty(rows, dtype=torch.float32, device=x2.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x2.device)
    block_n = triton.next_power_of_2(width)
    _residual_layer_norm_fwd_kernel[(rows,)](
        x2, res2 if res2 is not None else x2, weight, bias if bias is not None else weight, seed,
        y, z, mean, rstd, width, eps, dropout_p,
        HAS_RESIDUAL=res2 is not None, HAS_BIAS=bias is not None, HAS_DROPOUT=dropout_p > 0.0,
        BLOCK_N=block_n, num_warps=_num_warps(block_n),
    )
    return y, z, mean, rstd


def _backward(dy2, z, weight, mean, rstd, dropout_p, seed):
    rows, width = z.shape
    dz = torch.empty_like(z)
    dx = torch.empty_like(z)
    programs = _backward_programs(rows, z.device)
    dw_part = torch.empty(programs, width, dtype=torch.float32, device=z.device)
    db_part = torch.empty(programs, width, dtype=torch.float32, device=z.device)
    block_n = triton.next_power_of_2(width)
    _residual_layer_norm_bwd_kernel[(programs,)](
        dy2, z, weight, mean, rstd, seed, dz, dx, dw_part, db_part, rows, width, dropout_p,
        triton.cdiv(rows, programs), HAS_DROPOUT=dropout_p > 0.0,
        BLOCK_N=block_n, num_warps=_num_warps(block_n),
    )
    return dx, dz, dw_part.sum(0), db_part.sum(0)


class ResidualLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, dropout_p, seed):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        res2 = residual.reshape(-1, shape[-1]).contiguous() if residual is not None else None
        y, z, mean, rstd = _forward(x2, res2, weight.contiguous(), bias.contiguous() if bias is not None else None,
                                    eps, dropout_p, seed)
        ctx.save_for_backward(z, weight, mean, rstd, seed)
        ctx.dropout_p = dropout_p
        ctx.has_residual = residual is not None
        ctx.has_bias = bias is not None
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        z, weight, mean, rstd, seed = ctx.saved_tensors
        shape = dy.shape
        dx, dz, dw, db = _backward(dy.reshape(-1, shape[-1]).contiguous(), z, weight.contiguous(), mean, rstd,
                                   ctx.dropout_p, seed)
        return (
            dx.view(shape),
            dz.view(shape) if ctx.has_residual else None,
            dw.to(weight.dtype),
            db.to(weight.dtype) if ctx.has_bias else None,
            None, None, None,
        )


def residual_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused `LayerNorm(dropout(x) + residual)` over the last dim: `x`, `residual` [..., N] of one
    dtype, `weight`, `bias` [N]; same shape and dtype as `x`. `seed` (int64 [1] on x's device) fixes
    the dropout mask; by default it is drawn from torch's RNG."""
    check_inputs(x, residual, weight, bias)
    if seed is None:
        seed = torch.randint(0, 2**31 - 1, (1,), device=x.device, dtype=torch.int64)
    return ResidualLayerNormFunction.apply(x, residual, weight, bias, eps, float(dropout_p), seed)


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`x` [..., N] normalised over N, scaled by `weight` [N] and shifted by `bias` [N]; same shape as `x`."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def residual_layer_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    dropout_p: float = 0.0,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Torch reference of `residual_layer_norm`: `F.dropout` (or the given bool `keep_mask`, to
    replay a kernel's mask in tests), add, `F.layer_norm`."""
    if keep_mask is not None:
        x = x.masked_fill(~keep_mask, 0.0) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        x = F.dropout(x, dropout_p)
    if residual is not None:
        x = x + residual
    return layer_norm_ref(x, weight, bias, eps)
