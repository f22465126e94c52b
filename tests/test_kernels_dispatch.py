"""Kernel dispatch: the torch references are correct, the backend switch is honest, kernels/ stays torch-only."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels import dispatch
from kernels.attention import attention_varlen_ref, block_diagonal_grid, sequence_grid
from tests.kernel_cases import DEVICE, requires_triton


@pytest.fixture(autouse=True)
def reference_backend():
    before = dispatch.get_backend()
    dispatch.set_backend("reference")
    yield
    dispatch.set_backend(before)


def _varlen_inputs(lengths, heads=3, head_dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, head_dim, generator=g, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def _per_sequence_loop(q, k, v, cu):
    outs = []
    for s in range(len(cu) - 1):
        a, b = int(cu[s]), int(cu[s + 1])
        outs.append(F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v))).transpose(0, 1))
    return torch.cat(outs)


def test_varlen_reference_equals_attending_each_sequence_alone():
    lengths = [7, 1, 13, 4]
    q, k, v, cu = _varlen_inputs(lengths)
    out = dispatch.attention_varlen(q, k, v, cu, max(lengths))
    torch.testing.assert_close(out, _per_sequence_loop(q, k, v, cu), rtol=1e-5, atol=1e-6)


def test_varlen_gradients_match_the_per_sequence_loop():
    lengths = [5, 11, 3]
    q, k, v, cu = _varlen_inputs(lengths, seed=1)
    dout = torch.randn(sum(lengths), 3, 5)
    grads = torch.autograd.grad((dispatch.attention_varlen(q, k, v, cu, 11) * dout).sum(), (q, k, v))
    expected = torch.autograd.grad((_per_sequence_loop(q, k, v, cu) * dout).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_block_diagonal_grid_over_packed_rows_equals_sequence_grid_and_has_finite_grads():
    # two rows of width 8: row 0 = segments of 3 and 4 tokens + 1 empty slot, row 1 = 5 tokens + 3 empty
    segment_ids = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    token_index = torch.nonzero(segment_ids.reshape(-1) > 0).squeeze(1)
    q, k, v, cu = _varlen_inputs([3, 4, 5], seed=2)
    rows = attention_varlen_ref(q, k, v, cu, 5, grid=block_diagonal_grid(token_index, segment_ids))
    seqs = attention_varlen_ref(q, k, v, cu, 5, grid=sequence_grid(cu, 12, 5))
    torch.testing.assert_close(rows, seqs, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(rows.square().sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


def test_layer_norm_dispatch_normalises_the_last_dimension():
    x = torch.randn(4, 7) * 3 + 2
    weight, bias = torch.full((7,), 2.0), torch.full((7,), 0.5)
    out = dispatch.layer_norm(x, weight, bias, 1e-5)
    standard = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(out, standard * 2.0 + 0.5, rtol=1e-5, atol=1e-5)


def test_forcing_fused_without_triton_on_this_device_raises_with_the_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    dispatch.set_backend("fused")
    x = torch.randn(2, 4)
    with pytest.raises(dispatch.KernelUnavailableError, match="fused layer_norm kernel cannot run: .*(cpu|triton is not installed)"):
        dispatch.layer_norm(x, torch.ones(4), torch.zeros(4), 1e-5)


def test_forcing_fused_raises_for_ops_without_a_kernel_and_for_unsupported_shapes(monkeypatch):
    pytest.importorskip("triton", reason="the shape refusals are only reached when Triton is installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch.set_backend("fused")
    q, k, v, cu = _varlen_inputs([2, 3], head_dim=5)
    with pytest.raises(dispatch.KernelUnavailableError, match="fused attention_varlen kernel cannot run: .*head dim 5"):
        dispatch.attention_varlen(q, k, v, cu, 3)
    padded = torch.randn(1, 2, 3, 16)
    with pytest.raises(dispatch.KernelUnavailableError, match="padded attention has no fused kernel"):
        dispatch.attention(padded, padded, padded)
    x = torch.randn(2, 4, dtype=torch.float64)
    if dispatch.triton_runs_on(x):
        with pytest.raises(dispatch.KernelUnavailableError, match="unsupported input .*float64"):
            dispatch.layer_norm(x, torch.ones(4, dtype=torch.float64), None, 1e-5)


def test_auto_runs_the_reference_on_cpu_unless_triton_interprets(monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    dispatch.set_backend("auto")
    dispatch._logged.clear()
    x, res = torch.randn(3, 8), torch.randn(3, 8)
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        out = dispatch.residual_layer_norm(x, res, torch.ones(8), torch.zeros(8), 1e-5)
    torch.testing.assert_close(out, F.layer_norm(x + res, (8,), eps=1e-5))
    assert "residual_layer_norm -> residual_layer_norm_ref" in caplog.text


@requires_triton
def test_auto_picks_the_triton_kernel_where_it_runs(caplog):
    dispatch.set_backend("auto")
    dispatch._logged.clear()
    x, res = torch.randn(3, 8, device=DEVICE), torch.randn(3, 8, device=DEVICE)
    ones, zeros = torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE)
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        out = dispatch.residual_layer_norm(x, res, ones, zeros, 1e-5)
    torch.testing.assert_close(out, F.layer_norm(x + res, (8,), eps=1e-5), rtol=1e-5, atol=1e-5)
    assert "residual_layer_norm -> triton residual_layer_norm" in caplog.text


def test_unknown_backend_is_rejected_by_name():
    with pytest.raises(ValueError, match="'triton' is not one of"):
        dispatch.set_backend("triton")


def test_dispatch_logs_each_choice_once(caplog):
    dispatch._logged.clear()
    x = torch.randn(2, 4)
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        for _ in range(3):
            dispatch.layer_norm(x, torch.ones(4), torch.zeros(4), 1e-5)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("kernels: layer_norm -> layer_norm_ref (backend=reference)") == 1


def test_kernels_package_imports_no_engine_module():
    code = "import sys, kernels.dispatch; print(sorted(m for m in sys.modules if m.split('.')[0] == 'engine'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
