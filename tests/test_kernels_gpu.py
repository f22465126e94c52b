"""CUDA only: the fused kernels at BERT-base shapes, and inside torch.compile'd layers."""
from __future__ import annotations

import pytest
import torch

from engine.bert import BertForMaskedLM, preset
from kernels import dispatch
from kernels.layer_norm import residual_layer_norm, residual_layer_norm_ref
from tests.kernel_cases import assert_within_torch_error, requires_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    requires_triton,
]


def test_layer_norm_at_bert_base_shape_in_bf16():
    g = torch.Generator(device="cuda").manual_seed(0)
    x32, r32 = (torch.randn(4096, 768, device="cuda", generator=g) for _ in range(2))
    w32, b32 = torch.randn(768, device="cuda", generator=g), torch.randn(768, device="cuda", generator=g)
    low = [t.bfloat16().requires_grad_() for t in (x32, r32, w32, b32)]
    exact = [t.clone().requires_grad_() for t in (x32, r32, w32, b32)]
    dy = torch.randn(4096, 768, device="cuda", generator=g)
    got, same, ref = residual_layer_norm(*low, 1e-12), residual_layer_norm_ref(*low, 1e-12), residual_layer_norm_ref(*exact, 1e-12)
    assert_within_torch_error("output", got, same, ref)
    for name, a, s, e in zip("x residual weight bias".split(), torch.autograd.grad(got, low, dy.bfloat16()),
                             torch.autograd.grad(same, low, dy.bfloat16()), torch.autograd.grad(ref, exact, dy)):
        assert_within_torch_error(f"d{name}", a, s, e, floor=1e-3)


def _loss_and_grads(backend: str, compiled: bool):
    torch.manual_seed(0)
    model = BertForMaskedLM(preset("tiny", vocab_size=1000, hidden_dropout=0.0, attention_dropout=0.0)).cuda()
    if compiled:
        for layer in model.bert.encoder.layer:
            layer.compile(dynamic=True)
    g = torch.Generator().manual_seed(1)
    segment_ids = torch.tensor([[1] * 40 + [2] * 60 + [0] * 28, [1] * 128])
    ids = torch.randint(1, 1000, segment_ids.shape, generator=g) * (segment_ids > 0)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    labels[segment_ids == 0] = -100
    before = dispatch.get_backend()
    dispatch.set_backend(backend)
    try:
        out = model(input_ids=ids.cuda(), segment_ids=segment_ids.cuda(), labels=labels.cuda())
        out.loss.backward()
    finally:
        dispatch.set_backend(before)
    return out.loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_bert_on_cuda_matches_the_reference_eager_and_compiled(compiled):
    loss, grads = _loss_and_grads("auto", compiled)
    ref_loss, ref_grads = _loss_and_grads("reference", False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)
