"""GELU(x + bias) with the exact (erf) GELU in one pass, forward and backward, and its torch reference.

BERT's feed-forward block is `gelu(x @ W1^T + b1)`: cuBLAS can add the bias inside the GEMM, but
then eager torch reads the [tokens, 3072] result back for GELU and writes it again, and backward
reads it twice more. Here the GEMM runs without bias and one kernel adds the bias and applies
GELU; backward recomputes GELU's derivative from the saved pre-bias input (no second activation
kept) and sums the bias gradient per tile in fp32 (partials summed afterwards).

Order (house style): kernels, host launchers, autograd.Function, functional API, torch reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.triton_support import HAS_TRITON, tl, triton

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_M = 16
BLOCK_N = 128

if HAS_TRITON:

    @triton.jit
    def _bias_gelu_fwd_kernel(
        X,  # [M, N] input without bias, contiguous
        B,  # [N] bias
        Y,  # [M, N] output gelu(x + b), dtype of X
        M,
        N,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        u = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
        u += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        y = 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))
        tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _bias_gelu_bwd_kernel(
        DY,  # [M, N] gradient of the output, contiguous
        X,  # [M, N] forward's input without bias
        B,  # [N] bias
        DX,  # [M, N] gradient of the input (= of x + b)
        DB_PART,  # [cdiv(M, BLOCK_M), N] fp32 per-row-block partial sums of the bias gradient
        M,
        N,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        u = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
        u += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(u * 0.7071067811865476))
        pdf = tl.exp(-0.5 * u * u) * 0.3989422804014327
        dx = tl.where(mask, dy * (cdf + u * pdf), 0.0)
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)
        tl.store(DB_PART + tl.program_id(0) * N + cols, tl.sum(dx, axis=0), mask=cols < N)


def check_inputs(x: torch.Tensor, bias: torch.Tensor) -> None:
    """Raise ValueError naming the argument the kernel cannot take."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"bias_gelu: x dtype {x.dtype} is not one of {SUPPORTED_DTYPES}")
    if bias.shape != (x.shape[-1],):
        raise ValueError(f"bias_gelu: bias shape {tuple(bias.shape)}, expected ({x.shape[-1]},)")


def _grid(rows: int, width: int) -> tuple[int, int]:
    return triton.cdiv(rows, BLOCK_M), triton.cdiv(width, BLOCK_N)


class BiasGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        bias = bias.contiguous()
        y = torch.empty_like(x2)
        _bias_gelu_fwd_kernel[_grid(*x2.shape)](x2, bias, y, *x2.shape, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        ctx.save_for_backward(x2, bias)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        rows, width = x2.shape
        dy2 = dy.reshape(rows, width).contiguous()
        dx = torch.empty_like(x2)
        grid = _grid(rows, width)
        db_part = torch.empty(grid[0], width, dtype=torch.float32, device=x2.device)
        _bias_gelu_bwd_kernel[grid](dy2, x2, bias, dx, db_part, rows, width, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        return dx.view(dy.shape), db_part.sum(0).to(bias.dtype)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Fused exact `gelu(x + bias)`: `x` [..., N], `bias` [N] -> like `x`."""
    check_inputs(x, bias)
    return BiasGeluFunction.apply(x, bias)


def linear_gelu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Torch reference of the feed-forward entry: `gelu(x @ weight^T + bias)` (bias inside the GEMM)."""
    return F.gelu(F.linear(x, weight, bias))


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Torch reference of `bias_gelu`."""
    return F.gelu(x + bias)
