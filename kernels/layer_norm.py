"""LayerNorm over the last dimension: the torch reference that a fused kernel must match.

A fused Triton kernel (later issue) goes above `layer_norm_ref` in this file, per house style.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`x` [..., N] normalised over N, scaled by `weight` [N] and shifted by `bias` [N]; same shape as `x`."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
