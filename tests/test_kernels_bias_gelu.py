"""Fused bias + exact GELU: output and both gradients match the torch reference."""
from __future__ import annotations

import pytest
import torch

from kernels.bias_gelu import bias_gelu, bias_gelu_ref
from tests.kernel_cases import DEVICE, DTYPES, assert_within_torch_error, requires_triton

pytestmark = requires_triton


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 5), (33, 257), (2, 7, 131)], ids=str)
def test_fused_output_and_gradients_match_the_reference(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x32 = (torch.randn(*shape, generator=g) * 3).to(DEVICE)
    b32 = torch.randn(shape[-1], generator=g).to(DEVICE)
    dy = torch.randn(*shape, generator=g).to(DEVICE)
    x, b = (t.to(dtype).requires_grad_() for t in (x32, b32))
    x32.requires_grad_(), b32.requires_grad_()
    got, same, exact = bias_gelu(x, b), bias_gelu_ref(x, b), bias_gelu_ref(x32, b32)
    assert_within_torch_error("output", got, same, exact)
    got_g = torch.autograd.grad(got, (x, b), dy.to(dtype))
    same_g = torch.autograd.grad(same, (x, b), dy.to(dtype))
    exact_g = torch.autograd.grad(exact, (x32, b32), dy)
    for name, a, s, e in zip(("dx", "dbias"), got_g, same_g, exact_g):
        assert_within_torch_error(name, a, s, e, floor=1e-4)


def test_negative_inputs_use_the_exact_erf_gelu_not_the_tanh_approximation():
    x = torch.linspace(-6, 6, 97, device=DEVICE).reshape(1, 97)
    exact = torch.nn.functional.gelu(x)
    approx = torch.nn.functional.gelu(x, approximate="tanh")
    got = bias_gelu(x, torch.zeros(97, device=DEVICE))
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-6)
    assert (got - approx).abs().max() > 1e-4
