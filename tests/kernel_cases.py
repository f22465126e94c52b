"""Shared by the kernel parity tests: where kernels run here, and the accuracy rule they must meet.

The rule (flash-attention's): a kernel's error against the fp32 reference may be at most twice
torch's own error in the same low precision, plus one rounding step of the result's dtype (on a
handful of elements torch can be lucky and land on the nearest value everywhere).
"""
from __future__ import annotations

import pytest
import torch

from kernels.triton_support import HAS_TRITON, interpreting

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

requires_triton = pytest.mark.skipif(
    not HAS_TRITON or (DEVICE.type == "cpu" and not interpreting()),
    reason="needs triton (pip install '.[triton]') and a CUDA device or TRITON_INTERPRET=1",
)


def assert_within_torch_error(name: str, got: torch.Tensor, torch_same_dtype: torch.Tensor,
                              fp32_reference: torch.Tensor, floor: float = 1e-5) -> None:
    """|got - ref| <= 2 * |torch_same_dtype - ref| + eps(dtype) * |ref| + floor (max norms)."""
    assert got.shape == fp32_reference.shape, f"{name}: shape {tuple(got.shape)} != {tuple(fp32_reference.shape)}"
    assert got.dtype == torch_same_dtype.dtype, f"{name}: dtype {got.dtype} != {torch_same_dtype.dtype}"
    ours = (got.float() - fp32_reference.float()).abs().max().item()
    theirs = (torch_same_dtype.float() - fp32_reference.float()).abs().max().item()
    one_step = torch.finfo(got.dtype).eps * fp32_reference.abs().max().item() if got.dtype != torch.float32 else 0.0
    bound = 2 * theirs + one_step + floor
    assert ours <= bound, f"{name}: error {ours:.3g} > 2 x torch's {theirs:.3g} + {one_step:.3g} + {floor}"
