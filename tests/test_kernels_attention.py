"""Triton varlen attention (the dropout path torch lacks): output and q/k/v gradients match the
reference, attention stays inside each sequence, and dropout's mask is the same in forward and backward."""
from __future__ import annotations

import pytest
import torch

from kernels.attention import attention_dropout_mask, attention_varlen_ref, attention_varlen_triton
from tests.kernel_cases import DEVICE, DTYPES, assert_within_torch_error, requires_triton

pytestmark = requires_triton


def _inputs(lengths, heads, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    exact = [torch.randn(total, heads, head_dim, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]
    low = [t.detach().to(dtype).requires_grad_() for t in exact]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    dout = torch.randn(total, heads, head_dim, generator=g).to(DEVICE)
    return low, exact, cu, dout


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,heads,head_dim", [([7, 1, 33, 20], 2, 32), ([17, 5], 3, 64), ([19], 1, 128)])
def test_output_and_gradients_match_the_reference_without_dropout(lengths, heads, head_dim, dtype):
    if dtype == torch.bfloat16 and DEVICE.type == "cpu":
        pytest.skip("Triton's interpreter computes tl.dot of bf16 tiles wrongly (seen with triton 3.9); "
                    "the bf16 case runs on GPU")
    low, exact, cu, dout = _inputs(lengths, heads, head_dim, dtype)
    width = max(lengths)
    got = attention_varlen_triton(*low, cu, width)
    same = attention_varlen_ref(*low, cu, width)
    ref = attention_varlen_ref(*exact, cu, width)
    assert_within_torch_error("output", got, same, ref)
    for name, a, s, e in zip("qkv", torch.autograd.grad(got, low, dout.to(dtype)),
                             torch.autograd.grad(same, low, dout.to(dtype)), torch.autograd.grad(ref, exact, dout)):
        assert_within_torch_error(f"d{name}", a, s, e, floor=1e-4)


def _masked_reference(q, k, v, cu, keep, p, scale):
    """Attention per sequence with the given keep mask [H, T, max_seqlen] applied to the probabilities."""
    outs = []
    for s in range(len(cu) - 1):
        a, b = int(cu[s]), int(cu[s + 1])
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [H, L, D]
        probs = torch.softmax(qs @ ks.transpose(1, 2) * scale, dim=-1)
        probs = probs * keep[:, a:b, : b - a] / (1 - p)
        outs.append((probs @ vs).transpose(0, 1))
    return torch.cat(outs)


def test_dropout_follows_the_replayable_mask_in_forward_and_backward():
    p, lengths, heads, head_dim = 0.3, [21, 6, 30], 2, 32
    (q, k, v), _, cu, dout = _inputs(lengths, heads, head_dim, torch.float32, seed=4)
    seed = torch.tensor([1234], dtype=torch.int64, device=DEVICE)
    got = attention_varlen_triton(q, k, v, cu, 30, dropout_p=p, seed=seed)
    keep = attention_dropout_mask(cu, heads, 30, p, seed)
    valid = torch.cat([keep[:, int(a):int(b), : int(b - a)].reshape(-1) for a, b in zip(cu[:-1], cu[1:])])
    assert abs(valid.float().mean().item() - (1 - p)) < 0.03
    want = _masked_reference(q, k, v, cu, keep, p, head_dim ** -0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name, a, e in zip("qkv", torch.autograd.grad(got, (q, k, v), dout), torch.autograd.grad(want, (q, k, v), dout)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=f"d{name}")


def test_other_sequences_do_not_leak_into_a_sequence():
    (q, k, v), _, cu, _ = _inputs([9, 12], 1, 32, torch.float32, seed=5)
    alone = attention_varlen_triton(q[9:], k[9:], v[9:], cu[:2].clone().fill_(0) + torch.tensor([0, 12], dtype=torch.int32, device=DEVICE), 12)
    together = attention_varlen_triton(q, k, v, cu, 12)
    torch.testing.assert_close(together[9:], alone, rtol=1e-6, atol=1e-6)


def test_unsupported_head_dim_is_named():
    (q, k, v), _, cu, _ = _inputs([4], 1, 32, torch.float32)
    with pytest.raises(ValueError, match="D in"):
        attention_varlen_triton(q[..., :24], k[..., :24], v[..., :24], cu, 4)
