"""Chunked MLM loss: same loss, hit count and gradients as the whole-logits reference, any chunking."""
from __future__ import annotations

import pytest
import torch

from kernels.mlm_loss import chunked_mlm_loss, mlm_loss_ref
from tests.kernel_cases import DEVICE, DTYPES, assert_within_torch_error

VALID, PADDED, HIDDEN = 97, 128, 24


def _inputs(rows, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, HIDDEN, generator=g).to(DEVICE)
    weight = (torch.randn(PADDED, HIDDEN, generator=g) * 0.5).to(DEVICE)
    bias = torch.randn(PADDED, generator=g).to(DEVICE)
    targets = torch.randint(0, VALID, (rows,), generator=g).to(DEVICE)
    low = [t.to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    exact = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    return low, exact, targets


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,chunk_rows", [(1, 1), (29, 4), (29, 29), (64, 7)])
def test_loss_hits_and_every_gradient_match_the_reference(rows, chunk_rows, dtype):
    low, exact, targets = _inputs(rows, dtype)
    loss, hits = chunked_mlm_loss(*low, targets, VALID, chunk_rows=chunk_rows)
    same_loss, same_hits, _ = mlm_loss_ref(*low, targets, VALID)
    exact_loss, _, _ = mlm_loss_ref(*exact, targets, VALID)
    assert loss.dtype == torch.float32
    assert_within_torch_error("loss", loss, same_loss, exact_loss)
    if dtype == torch.float32:
        assert hits == same_hits
    scale = torch.tensor(1.7, device=DEVICE)  # an upstream gradient other than 1 must scale every gradient
    got = torch.autograd.grad(loss * scale, low)
    same = torch.autograd.grad(same_loss * scale, low)
    want = torch.autograd.grad(exact_loss * scale, exact)
    for name, a, s, e in zip(("d_hidden", "d_weight", "d_bias"), got, same, want):
        assert_within_torch_error(name, a, s, e, floor=1e-5)


def test_padded_vocabulary_columns_never_win_and_get_no_gradient():
    (hidden, weight, bias), _, targets = _inputs(16, torch.float32)
    with torch.no_grad():
        bias[VALID:] = 100.0  # would win every arg-max if the padding were not masked
    loss, hits = chunked_mlm_loss(hidden, weight, bias, targets, VALID, chunk_rows=5)
    ref_loss, ref_hits, _ = mlm_loss_ref(hidden, weight, bias, targets, VALID)
    torch.testing.assert_close(loss, ref_loss)
    assert hits == ref_hits
    d_weight, d_bias = torch.autograd.grad(loss, (weight, bias))
    assert d_weight[VALID:].abs().max() == 0 and d_bias[VALID:].abs().max() == 0


def test_no_masked_rows_give_a_zero_loss_that_still_backpropagates():
    (hidden, weight, bias), _, targets = _inputs(0, torch.float32)
    loss, hits = chunked_mlm_loss(hidden, weight, bias, targets, VALID)
    assert loss.item() == 0.0 and hits.item() == 0
    (d_weight,) = torch.autograd.grad(loss, (weight,))
    assert d_weight.abs().max() == 0


def test_mismatched_shapes_are_named():
    (hidden, weight, bias), _, targets = _inputs(4, torch.float32)
    with pytest.raises(ValueError, match="do not fit"):
        chunked_mlm_loss(hidden, weight[:, :5], bias, targets, VALID)
