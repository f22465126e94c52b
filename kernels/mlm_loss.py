"""MLM decoder + cross-entropy over the masked rows, chunked so the logits are never whole, and its
torch reference.

The reference holds the [masked tokens x vocabulary] logits in the compute dtype, an fp32 copy for
the cross-entropy, the log-softmax that autograd saves, and in backward the fp32 gradient of the
logits and its low-precision copy: for BERT-base (5,000 masked tokens x 30,528) well over 2 GB. The
chunked version walks the rows in chunks of `chunk_rows`: per chunk it forms the logits, the loss,
the arg-max hits and, when a gradient is needed, the gradient of the hidden states, the decoder
weight and the bias right away (softmax minus one-hot, scaled by 1 / rows), so only one chunk of
logits ever exists and backward is a multiply by the incoming scalar. This is the approach of
Liger-Kernel's fused linear cross-entropy (`src/liger_kernel/ops/fused_linear_cross_entropy.py`,
BSD-2-Clause), written here in plain torch: the GEMMs are cuBLAS's either way and the per-chunk
softmax is memory-bound work on a chunk that stays in cache-sized pieces.

Order (house style): autograd.Function, functional API, torch reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_BYTES = 64 * 2**20
"""Default budget for one chunk's fp32 logits; sets `chunk_rows` from the vocabulary size."""


def default_chunk_rows(vocab_rows: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab_rows))


class ChunkedMLMLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, valid_vocab, chunk_rows, need_grad):
        rows = hidden.shape[0]
        scale = 1.0 / max(rows, 1)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        num_correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        if need_grad:
            d_hidden = torch.empty_like(hidden)
            d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            d_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        for start in range(0, rows, chunk_rows):
            h = hidden[start:start + chunk_rows]
            t = targets[start:start + chunk_rows]
            logits = F.linear(h, weight, bias).float()
            logits[:, valid_vocab:] = float("-inf")  # padded vocabulary rows
            lse = torch.logsumexp(logits, dim=-1)
            loss_sum += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            num_correct += (logits.argmax(-1) == t).sum()
            if need_grad:
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad = grad.mul_(scale).to(hidden.dtype)
                d_hidden[start:start + chunk_rows] = grad @ weight
                d_weight += grad.t() @ h
                d_bias += grad.float().sum(0)
        ctx.mark_non_differentiable(num_correct)
        if need_grad:
            ctx.save_for_backward(d_hidden, d_weight, d_bias)
        ctx.dtypes = (weight.dtype, bias.dtype)
        return loss_sum * scale, num_correct

    @staticmethod
    def backward(ctx, d_loss, _d_correct):
        d_hidden, d_weight, d_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (
            d_hidden * d_loss.to(d_hidden.dtype),
            (d_weight * d_loss).to(weight_dtype),
            (d_bias * d_loss).to(bias_dtype),
            None, None, None, None,
        )


def chunked_mlm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    valid_vocab: int,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of `hidden @ weight^T + bias` against `targets` and the arg-max hit count.

    `hidden` [N, H] (the head transform's output at masked tokens), `weight` [V, H], `bias` [V],
    `targets` int64 [N] in [0, valid_vocab); columns >= `valid_vocab` (vocabulary padding) never win.
    Returns (fp32 scalar loss, 0 when N = 0; int64 scalar count).
    """
    if hidden.dim() != 2 or weight.shape != (bias.shape[0], hidden.shape[1]) or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"chunked_mlm_loss: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, bias "
            f"{tuple(bias.shape)}, targets {tuple(targets.shape)} do not fit [N, H], [V, H], [V], [N]"
        )
    rows = chunk_rows or default_chunk_rows(weight.shape[0])
    # the gradient is computed in forward, so only when autograd will ask for it
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, weight, bias))
    return ChunkedMLMLossFunction.apply(hidden, weight, bias, targets, valid_vocab, rows, need_grad)


def mlm_loss_ref(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, valid_vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference: the whole logits, fp32 cross-entropy. Returns (loss, num_correct, logits [N, V])."""
    logits = F.linear(hidden, weight, bias)
    # Padded vocabulary columns get -inf in place (a few columns), so the GEMM and the
    # cross-entropy run on the contiguous padded matrix instead of a strided slice.
    logits[:, valid_vocab:] = float("-inf")
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / max(hidden.shape[0], 1)
    return loss, (logits.argmax(-1) == targets).sum(), logits
