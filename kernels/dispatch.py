"""The one place that decides which implementation runs each op (attention, LayerNorm, ...).

Backends: "reference" (torch ops; default), "fused" (our Triton kernels; forcing it where no kernel
applies, e.g. on a CPU or without Triton, raises `KernelUnavailableError` naming why), "auto" (the
fused kernel where it applies on a CUDA device, else the reference). Choose with `set_backend(...)`
(the trainer maps `[model] kernels` onto it) or the environment variable
`BIOPTIMUS_KERNELS=reference|fused|auto`. Per op the choice depends on device, dtype and shape;
every distinct choice is logged once (logger `kernels.dispatch`, level INFO).

On the CPU the fused kernels run only under `TRITON_INTERPRET=1` (Triton's interpreter, thousands
of times slower than torch: that is how the parity tests check them without a GPU), so there
"auto" means the reference unless that variable is set.
"""
from __future__ import annotations

import logging
import os
from typing import Literal

import torch
import torch.nn.functional as F

from kernels.attention import (
    TRITON_HEAD_DIMS,
    AttentionGrid,
    attention_ref,
    attention_varlen_flash,
    attention_varlen_ref,
    attention_varlen_triton,
    block_diagonal_grid,
    flash_varlen_available,
    sequence_grid,
    triton_attention_applies,
)
from kernels import bias_gelu as bg
from kernels import layer_norm as ln
from kernels.bias_gelu import linear_gelu_ref
from kernels.layer_norm import layer_norm_ref, residual_layer_norm_ref
from kernels.mlm_loss import chunked_mlm_loss, mlm_loss_ref
from kernels.triton_support import interpreting, triton_runs_on, why_not_triton

__all__ = [
    "AttentionGrid", "BACKENDS", "KernelUnavailableError", "attention", "attention_varlen",
    "block_diagonal_grid", "get_backend", "layer_norm", "linear_gelu", "mlm_loss", "residual_layer_norm",
    "sequence_grid", "set_backend",
]

Backend = Literal["reference", "fused", "auto"]
BACKENDS: tuple[str, ...] = ("reference", "fused", "auto")

log = logging.getLogger(__name__)


class KernelUnavailableError(RuntimeError):
    """A backend was forced that has no implementation for this op on this machine."""


def _initial_backend() -> str:
    value = os.environ.get("BIOPTIMUS_KERNELS", "reference")
    if value not in BACKENDS:
        raise ValueError(f"BIOPTIMUS_KERNELS={value!r} is not one of {list(BACKENDS)}")
    return value


_backend: str = _initial_backend()
# decided once at import: a plain bool keeps `attention_varlen` traceable by torch.compile
_FLASH_VARLEN: bool = flash_varlen_available()
_logged: set[tuple[str, str]] = set()


def set_backend(name: Backend) -> None:
    """Force the kernel backend for every later call ("reference", "fused" or "auto")."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend {name!r} is not one of {list(BACKENDS)}")
    _backend = name


def get_backend() -> str:
    """The backend currently forced."""
    return _backend


def _log_once(op: str, choice: str) -> None:
    if torch.compiler.is_compiling():  # logging inside a compiled region would break the graph
        return
    if (op, choice) not in _logged:
        _logged.add((op, choice))
        log.info("kernels: %s -> %s (backend=%s)", op, choice, _backend)


def _no_fused(op: str, why: str = "no fused kernel exists for it") -> KernelUnavailableError:
    return KernelUnavailableError(
        f"kernel backend 'fused' was forced but the fused {op} kernel cannot run: {why}; "
        "use kernels = \"auto\" or \"reference\""
    )


def _use_fused(op: str, x: torch.Tensor, applies: bool, why_not_applies: str) -> bool:
    """Whether `op` runs its Triton kernel on `x`; raises where 'fused' is forced and it cannot."""
    if _backend == "reference":
        return False
    # torch.compile cannot trace Triton's interpreter (it would trace its numpy code), so inside a
    # compiled region on the CPU the fused ops do not run; on CUDA dynamo captures the kernels
    runs = triton_runs_on(x) and not (x.device.type == "cpu" and torch.compiler.is_compiling())
    if _backend == "fused":
        if not runs:
            raise _no_fused(op, why_not_triton(x))
        if not applies:
            raise _no_fused(op, why_not_applies)
        return True
    return runs and applies


def residual_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """`LayerNorm(dropout(x) + residual)` over the last dim: `x`, `residual` [..., N], `weight`,
    `bias` [N]; `dropout_p` is applied as given (pass 0 in eval mode)."""
    applies = ln.kernel_applies(x, residual, weight, bias)
    why = f"{x.dtype} rows of {x.shape[-1]} with residual {None if residual is None else residual.dtype}"
    if _use_fused("residual_layer_norm", x, applies, f"unsupported input ({why})"):
        _log_once("residual_layer_norm", "triton residual_layer_norm")
        return ln.residual_layer_norm(x, residual, weight, bias, eps, dropout_p)
    _log_once("residual_layer_norm", "residual_layer_norm_ref (torch dropout + add + layer_norm)")
    return residual_layer_norm_ref(x, residual, weight, bias, eps, dropout_p)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`gelu(x @ weight^T + bias)` (exact GELU): `x` [..., K], `weight` [N, K], `bias` [N] -> [..., N].
    Fused: the GEMM without bias, then one kernel for bias + GELU."""
    # the kernel sees the GEMM output: x's dtype, weight.shape[0] wide
    applies = bias is not None and x.dtype in bg.SUPPORTED_DTYPES and bias.shape == weight.shape[:1] and x.numel() > 0
    if _use_fused("bias_gelu", x, applies, f"unsupported input ({x.dtype}, bias {None if bias is None else bias.dtype})"):
        _log_once("bias_gelu", "torch matmul + triton bias_gelu")
        return bg.bias_gelu(F.linear(x, weight), bias.to(x.dtype))
    _log_once("bias_gelu", "linear_gelu_ref (torch linear + gelu)")
    return linear_gelu_ref(x, weight, bias)


def mlm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    valid_vocab: int,
    need_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """MLM decoder + mean cross-entropy at the masked rows: `hidden` [N, H], `weight` [V, H], `bias`
    [V], `targets` [N] -> (fp32 loss, int64 arg-max hits, logits [N, V] or None). The chunked
    version never holds the whole logits, so it cannot return them: `need_logits` takes the reference."""
    applies = hidden.dim() == 2 and weight.shape == (bias.shape[0], hidden.shape[-1]) and not need_logits
    why = "the logits were asked for" if need_logits else f"shapes {tuple(hidden.shape)} x {tuple(weight.shape)}"
    # plain torch, so no Triton needed; "auto" takes it on CUDA (the memory it saves is GPU memory)
    # and on the CPU only in kernel-test mode (TRITON_INTERPRET=1), like the Triton ops
    if _backend == "fused" and not applies:
        raise _no_fused("mlm_loss", why)
    if _backend == "fused" or (_backend == "auto" and applies and (hidden.is_cuda or interpreting())):
        _log_once("mlm_loss", "chunked_mlm_loss (logits never whole)")
        loss, num_correct = chunked_mlm_loss(hidden, weight, bias, targets, valid_vocab)
        return loss, num_correct, None
    _log_once("mlm_loss", "mlm_loss_ref (whole logits)")
    return mlm_loss_ref(hidden, weight, bias, targets, valid_vocab)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim of `x` [..., N] with `weight`, `bias` [N]."""
    applies = ln.kernel_applies(x, None, weight, bias)
    if _use_fused("layer_norm", x, applies, f"unsupported input ({x.dtype} rows of {x.shape[-1]})"):
        _log_once("layer_norm", "triton residual_layer_norm (no residual, no dropout)")
        return ln.residual_layer_norm(x, None, weight, bias, eps)
    _log_once("layer_norm", "layer_norm_ref")
    return layer_norm_ref(x, weight, bias, eps)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Padded attention: `q, k, v` [B, H, L, D], bool `attn_mask` (True = attend) -> [B, H, L, D]."""
    if _backend == "fused":
        raise _no_fused("attention", "padded attention has no fused kernel (torch SDPA is the fast path)")
    _log_once("attention", "attention_ref (torch SDPA)")
    return attention_ref(q, k, v, attn_mask, dropout_p, scale)


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    scale: float | None = None,
    grid: AttentionGrid | None = None,
) -> torch.Tensor:
    """Varlen attention confined to each sequence: `q, k, v` (T, H, D), int32 `cu_seqlens`
    [num_seqs + 1], python int `max_seqlen` -> (T, H, D). `grid` is an optional hint for the SDPA
    reference (see `kernels.attention.AttentionGrid`); kernels that need none ignore it."""
    flash = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0 and _FLASH_VARLEN
    if flash:
        # torch's own flash varlen kernel (a torch op, so on every backend) is the fastest correct
        # path where it applies: CUDA half precision, no dropout
        _log_once("attention_varlen", "torch flash varlen_attn")
        return attention_varlen_flash(q, k, v, cu_seqlens, max_seqlen, scale)
    applies = triton_attention_applies(q)
    why = f"unsupported input ({q.dtype}, head dim {q.shape[-1]}; needs one of {TRITON_HEAD_DIMS})"
    if _use_fused("attention_varlen", q, applies, why):
        _log_once("attention_varlen", "triton attention_varlen (dropout in the kernel)")
        return attention_varlen_triton(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale)
    _log_once("attention_varlen", "attention_varlen_ref (repad + torch SDPA)")
    return attention_varlen_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, grid)
