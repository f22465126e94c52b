"""Fused LayerNorm(dropout(x) + residual): output and every gradient match the torch reference."""
from __future__ import annotations

import pytest
import torch

from kernels.layer_norm import residual_layer_norm, residual_layer_norm_ref
from tests.kernel_cases import DEVICE, DTYPES, assert_within_torch_error, requires_triton

pytestmark = requires_triton

SHAPES = [(1, 7), (37, 97), (3, 5, 130)]


def _inputs(shape, dtype, residual: bool, bias: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = shape[-1]

    def make(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift).to(DEVICE)

    tensors = {
        "x": make(*shape, scale=2.0, shift=0.5),
        "residual": make(*shape) if residual else None,
        "weight": make(width, scale=0.5, shift=1.0),
        "bias": make(width) if bias else None,
    }
    return {k: None if t is None else t.to(dtype).requires_grad_() for k, t in tensors.items()}, make(*shape)


def _grads(out, inputs, dy):
    leaves = [t for t in inputs.values() if t is not None]
    return dict(zip([k for k, t in inputs.items() if t is not None],
                    torch.autograd.grad(out, leaves, dy.to(out.dtype))))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual,bias", [(True, True), (False, True), (True, False)], ids=["res+bias", "bias", "res"])
def test_fused_output_and_gradients_match_the_reference(shape, dtype, residual, bias):
    inputs, dy = _inputs(shape, dtype, residual, bias)
    fp32 = {k: None if t is None else t.detach().float().requires_grad_() for k, t in inputs.items()}
    eps = 1e-5
    got = residual_layer_norm(**inputs, eps=eps)
    same = residual_layer_norm_ref(**inputs, eps=eps)
    exact = residual_layer_norm_ref(**fp32, eps=eps)
    assert_within_torch_error("output", got, same, exact)
    got_grads, same_grads, exact_grads = (_grads(o, i, dy) for o, i in ((got, inputs), (same, inputs), (exact, fp32)))
    for name in got_grads:
        assert_within_torch_error(f"d{name}", got_grads[name], same_grads[name], exact_grads[name], floor=1e-4)


def test_dropout_backward_uses_the_forward_mask_and_drops_at_rate_p():
    p = 0.25
    inputs, dy = _inputs((64, 128), torch.float32, residual=True, bias=True, seed=3)
    torch.manual_seed(0)
    out = residual_layer_norm(**inputs, eps=1e-5, dropout_p=p)
    grads = _grads(out, inputs, dy)
    # d residual = d(sum); d x = d(sum) * keep / (1 - p): the kept elements are where dx is non-zero
    keep = grads["x"] != 0
    assert abs(keep.float().mean().item() - (1 - p)) < 0.02
    torch.testing.assert_close(grads["x"][keep], grads["residual"][keep] / (1 - p))
    replay = residual_layer_norm_ref(**inputs, eps=1e-5, dropout_p=p, keep_mask=keep)
    torch.testing.assert_close(out, replay, rtol=1e-5, atol=1e-5)
    for name, grad in _grads(replay, inputs, dy).items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5)


def test_dropout_mask_follows_torch_rng_seed():
    inputs, _ = _inputs((16, 33), torch.float32, residual=True, bias=True)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(residual_layer_norm(**inputs, eps=1e-5, dropout_p=0.5).detach())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_rejects_a_residual_of_another_dtype_by_name():
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="residual .* differs from x"):
        residual_layer_norm(x, x.half(), torch.ones(8, device=DEVICE), None, 1e-5)
