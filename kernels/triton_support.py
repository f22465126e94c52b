"""Whether Triton kernels can run on a tensor: Triton importable, and the tensor on a CUDA device
(or on the CPU under `TRITON_INTERPRET=1`, which is how the parity tests run without a GPU).

Triton is an optional dependency (`pip install bioptimus-engine[triton]`): CPU users never need it,
so every kernel module imports it through here and keeps its torch reference usable without it.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

HAS_TRITON: bool = triton is not None


def interpreting() -> bool:
    """Triton's interpreter runs kernels on CPU tensors with numpy (slow; for tests only)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can be launched on tensor `t` here."""
    if not HAS_TRITON:
        return False
    return t.is_cuda or (t.device.type == "cpu" and interpreting())


def why_not_triton(t: torch.Tensor) -> str:
    """The reason `triton_runs_on(t)` is False, for dispatch's log and error lines."""
    if not HAS_TRITON:
        return "triton is not installed (pip install 'bioptimus-engine[triton]')"
    return f"tensors are on {t.device.type} (Triton needs CUDA, or TRITON_INTERPRET=1 on CPU)"
