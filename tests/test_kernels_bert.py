"""A BERT whose LayerNorm / bias+GELU / MLM loss run through the fused kernels matches the reference
BERT: same loss, same gradient for every parameter (dropout off: the two draw different masks)."""
from __future__ import annotations

import logging

import pytest
import torch

from engine.bert import BertForMaskedLM, preset
from kernels import dispatch
from tests.kernel_cases import DEVICE, requires_triton

pytestmark = requires_triton


def _loss_and_grads(backend: str, caplog):
    torch.manual_seed(0)
    model = BertForMaskedLM(preset("tiny", vocab_size=203, hidden_dropout=0.0, attention_dropout=0.0)).to(DEVICE)
    g = torch.Generator().manual_seed(1)
    segment_ids = torch.tensor([[1] * 9 + [2] * 6 + [0] * 2, [1] * 17])
    ids = torch.randint(1, 203, segment_ids.shape, generator=g) * (segment_ids > 0)
    labels = torch.full_like(ids, -100)
    labels[0, [2, 5, 11]] = ids[0, [2, 5, 11]]
    labels[1, [0, 7, 8, 16]] = ids[1, [0, 7, 8, 16]]
    before = dispatch.get_backend()
    dispatch.set_backend(backend)
    dispatch._logged.clear()
    try:
        with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
            out = model(input_ids=ids.to(DEVICE), segment_ids=segment_ids.to(DEVICE), labels=labels.to(DEVICE))
            out.loss.backward()
    finally:
        dispatch.set_backend(before)
    return out, {name: p.grad for name, p in model.named_parameters()}


def test_fused_bert_matches_the_reference_loss_and_every_gradient(caplog):
    fused, fused_grads = _loss_and_grads("auto", caplog)
    for fused_choice in ("triton residual_layer_norm", "triton bias_gelu", "chunked_mlm_loss", "triton attention_varlen"):
        assert fused_choice in caplog.text
    caplog.clear()
    ref, ref_grads = _loss_and_grads("reference", caplog)
    assert "triton" not in caplog.text
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-5, atol=1e-5)
    assert fused.num_correct == ref.num_correct
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
